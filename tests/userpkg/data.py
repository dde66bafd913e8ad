"""Data factories generated from the run's seed: no files, no downloads."""

from __future__ import annotations

import math

import torch
from torch.utils.data import Dataset

CLASSES = 3
LENGTH = 32


def _sequences(seed: int, n: int):
    """Noisy sines; the class is the frequency."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, CLASSES, (n,), generator=g)
    t = torch.arange(LENGTH, dtype=torch.float32)
    phase = torch.rand(n, 1, generator=g) * 2 * math.pi
    x = torch.sin((y[:, None] + 1) * 2 * math.pi * t / LENGTH + phase)
    x = x + 0.3 * torch.randn(n, LENGTH, generator=g)
    return x[:, None, :], y  # (N, 1, LENGTH)


def sequences(seed, data_dir=None):
    """(train, val, test) as (x, y) tensor pairs; the split does not depend on the seed."""
    x, y = _sequences(1234, 360)
    return (x[:240], y[:240]), (x[240:300], y[240:300]), (x[300:], y[300:])


def sequences_no_test(seed):
    train, val, _ = sequences(seed)
    return train, val


class SequenceDataset(Dataset):
    """Not a tensor dataset: batches come from a DataLoader."""

    classes = [str(k) for k in range(CLASSES)]

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        return self.x[i].clone(), int(self.y[i])


def sequence_datasets(seed):
    parts = sequences(seed)
    return tuple(SequenceDataset(x, y) for x, y in parts)


def regression(seed):
    """y = w.x + noise, 8 features: targets of shape (N,)."""
    g = torch.Generator().manual_seed(99)
    w = torch.randn(8, generator=g)
    x = torch.randn(300, 8, generator=g)
    y = x @ w + 0.1 * torch.randn(300, generator=g)
    return (x[:200], y[:200]), (x[200:250], y[200:250]), (x[250:], y[250:])


def wrong(seed):
    return "not datasets"


def one_set(seed):
    return (sequences(seed)[0],)


def exits(seed):
    """A data factory that ends the process (``sys.exit(0)``)."""
    import sys

    sys.exit(0)
