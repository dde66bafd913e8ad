"""A data factory that fails on one rank only (its files "missing" there)."""

from __future__ import annotations

import os

from tests.userpkg.data import sequences


def data(seed: int = 0):
    if os.environ.get("RANK") == "1":
        raise FileNotFoundError("/data/sequences.npz is not on this machine")
    return sequences(seed)
