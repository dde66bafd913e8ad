"""Data factories that differ by rank: files "missing" on one, or other data there."""

from __future__ import annotations

import os

from tests.userpkg.data import sequences


def data(seed: int = 0):
    if os.environ.get("RANK") == "1":
        raise FileNotFoundError("/data/sequences.npz is not on this machine")
    return sequences(seed)


def shifted(seed: int = 0):
    """The same lengths on every rank, but rank 1's examples differ (its own copy of the files)."""
    (x, y), val, test = sequences(seed)
    if os.environ.get("RANK") == "1":
        x = x + 1.0
    return (x, y), val, test


def shorter(seed: int = 0):
    """Rank 1 has fewer training examples than rank 0."""
    (x, y), val, test = sequences(seed)
    if os.environ.get("RANK") == "1":
        x, y = x[:-8], y[:-8]
    return (x, y), val, test
