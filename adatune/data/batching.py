"""Minibatches: each epoch's order, this rank's slice of every batch, endless validation passes.

:func:`batches` iterates a dataset in minibatches ``(x, y)``. Tensor-backed
datasets (a :class:`~torch.utils.data.TensorDataset` of ``(x, y)``, an
:class:`~adatune.data.datasets.AugmentedImages`, a ``Subset`` of either) are
indexed batch-wise without per-sample Python work; any other dataset goes
through a :class:`~torch.utils.data.DataLoader`. Under several ranks every rank
reads only its slice of each batch (:func:`shard_bounds`). :class:`Passes`
draws validation batches forever, and its position can be checkpointed.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset, default_collate

from adatune.data.datasets import AugmentedImages
from adatune.errors import ConfigError

__all__ = ["Passes", "batches", "shard_bounds"]


class _Batches:
    """Iterable over ``(x, y)`` minibatches; every iteration is one epoch."""

    def __init__(
        self,
        dataset: Dataset,
        batch_size: int,
        shuffle: bool,
        generator: torch.Generator | None,
        drop_last: bool,
        workers: int = 0,
        pin_memory: bool = False,
        shard: tuple[int, int] | None = None,
    ) -> None:
        self.dataset = dataset
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.generator = generator
        self.drop_last = drop_last
        self.workers = workers
        self.pin_memory = pin_memory
        self.shard = shard
        self._fast = _fast_getter(dataset)

    def __len__(self) -> int:
        n = len(self.dataset)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        n = len(self.dataset)
        # The order is drawn the same way on both paths, so a dataset gives the same
        # batches whether it is held as tensors or read through a DataLoader.
        if self.shuffle:
            gen_device = self.generator.device if self.generator is not None else "cpu"
            order = torch.randperm(n, generator=self.generator, device=gen_device).cpu()
        else:
            order = torch.arange(n)
        stop = len(self) * self.batch_size if self.drop_last else n
        if self._fast is None:
            index = order.tolist()
            kw: dict = {"batch_size": self.batch_size, "sampler": index,
                        "drop_last": self.drop_last}
            if self.shard is not None:  # this rank's slice of every batch, read by this rank
                kw = {"batch_sampler": [_slice(index[i : i + self.batch_size], self.shard)
                                        for i in range(0, stop, self.batch_size)]}
            loader = DataLoader(
                self.dataset,
                generator=_worker_seeds(self.generator),
                num_workers=self.workers,
                pin_memory=self.pin_memory,
                collate_fn=_collate_maybe_empty if self.shard is not None else None,
                **kw,
            )
            yield from loader
            return
        get, base = self._fast
        if base is not None:
            order = base[order]
        for start in range(0, stop, self.batch_size):
            index = order[start : start + self.batch_size]
            if self.shard is None:
                yield get(index, self.generator)
            elif getattr(get, "draws", True):
                # augmentation draws per example: draw for the whole batch, as one
                # process would, and keep this rank's slice
                x, y = get(index, self.generator)
                yield _slice(x, self.shard), _slice(y, self.shard)
            else:
                yield get(_slice(index, self.shard), self.generator)


def shard_bounds(n: int, rank: int, world: int) -> tuple[int, int]:
    """Rank ``rank``'s contiguous slice ``[lo, hi)`` of ``n`` items split over ``world``.

    Sizes differ by at most one; with ``n < world`` some slices are empty.
    """
    return rank * n // world, (rank + 1) * n // world


def _slice(items, shard: tuple[int, int]):
    lo, hi = shard_bounds(len(items), *shard)
    return items[lo:hi]


def _collate_maybe_empty(samples):
    if samples:
        return default_collate(samples)
    return torch.empty(0), torch.empty(0, dtype=torch.long)


def _worker_seeds(generator: torch.Generator | None) -> torch.Generator:
    """Where a DataLoader pass seeds its workers: derived from ``generator``'s state.

    Derived, not drawn, so the pass consumes ``generator`` exactly as the
    in-memory path does, and torch's global generator is left alone.
    """
    state = b"" if generator is None else generator.get_state().numpy().tobytes()
    seed = int.from_bytes(hashlib.sha256(state).digest()[:8], "little") & (2**63 - 1)
    return torch.Generator().manual_seed(seed)


def _fast_getter(dataset: Dataset):
    """``(get_batch, base_index)`` for tensor-backed datasets, else ``None``."""
    base = None
    if isinstance(dataset, Subset):
        base = torch.as_tensor(np.asarray(dataset.indices), dtype=torch.long)
        dataset = dataset.dataset
        if isinstance(dataset, Subset):  # nested subsets: use the general path
            return None
    if isinstance(dataset, AugmentedImages):
        return dataset.get_batch, base
    if isinstance(dataset, TensorDataset) and len(dataset.tensors) == 2:
        x, y = dataset.tensors

        def get(index: Tensor, generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
            index = index.to(x.device)
            return x[index], y[index]

        get.draws = False  # draws nothing from the generator: a shard can index directly
        return get, base
    return None


def batches(
    dataset: Dataset,
    batch_size: int,
    *,
    shuffle: bool,
    generator: torch.Generator | None = None,
    drop_last: bool = False,
    workers: int = 0,
    pin_memory: bool = False,
    shard: tuple[int, int] | None = None,
) -> _Batches:
    """Minibatches ``(x, y)`` of ``dataset``; ``len()`` is the number of batches.

    Each iteration is one pass (epoch); with ``shuffle=True`` it draws a new
    permutation from ``generator`` (torch's global generator if ``None``), so the
    sequence of epochs is reproducible from the generator's seed. Tensor
    datasets (:class:`~torch.utils.data.TensorDataset` of ``(x, y)``,
    :class:`AugmentedImages`, and :class:`~torch.utils.data.Subset` of either)
    are indexed batch-wise, with augmentation randomness also drawn from
    ``generator``; any other dataset goes through a
    :class:`~torch.utils.data.DataLoader` with ``workers`` worker processes
    (0: in this process, where per-sample transforms use torch's global
    generator; with workers, each pass seeds its workers from ``generator``,
    so an epoch is still reproducible) and ``pin_memory``.

    ``shard=(rank, world)`` yields only that rank's contiguous slice of every
    batch (:func:`shard_bounds`; the batches themselves, and ``len()``, are
    the same as without it): data parallelism, where the batch size is the
    global one. Augmentation is drawn for the whole batch, so every rank's
    generator stays in step and the union of the slices is the one-process batch.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"Invalid batch_size: {batch_size!r} (need a positive integer)")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise ConfigError(f"Invalid workers: {workers!r} (need an integer >= 0)")
    return _Batches(dataset, batch_size, bool(shuffle), generator, bool(drop_last), workers,
                    bool(pin_memory), shard)


class Passes:
    """Endless passes over ``make_pass()`` whose position can be saved and restored.

    Each pass draws its order from ``generator`` when it starts; the position is
    the generator's state at the start of the current pass and the number of
    items taken from it, so a restored iterator replays that pass's order and
    continues where the saved one stood.
    """

    def __init__(self, make_pass: Any, generator: Any,
                 position: Mapping[str, Any] | None = None) -> None:
        self._make, self._gen = make_pass, generator
        self._it: Iterator[Any] | None = None
        self._start: Any = None
        self._used = 0
        if position:
            generator.set_state(position["start"].cpu())
            self._open()
            for _ in range(int(position["used"])):
                next(self._it)
            self._used = int(position["used"])

    def _open(self) -> None:
        self._start = self._gen.get_state()
        self._it = iter(self._make())
        self._used = 0

    def __iter__(self) -> Passes:
        return self

    def __next__(self) -> Any:
        if self._it is None:
            self._open()
        for _ in range(2):
            try:
                item = next(self._it)
            except StopIteration:
                self._open()
                continue
            self._used += 1
            return item
        raise ValueError("Invalid dataset: a pass over it yields nothing (is it empty?)")

    def position(self) -> dict[str, Any] | None:
        """Where the iterator stands (None before its first item)."""
        return None if self._it is None else {"start": self._start, "used": self._used}
