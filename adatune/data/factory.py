"""The user's own data: a factory's (or a caller's) datasets, checked and made Datasets.

``adatune train --data module:factory`` calls the factory with the seed (and
the data directory) and expects ``(train, val)`` or ``(train, val, test)``;
``adatune.fit`` takes the datasets directly. Either way each set is a torch
``Dataset`` or an ``(x, y)`` pair of tensors (:func:`as_dataset`), and every
problem is one :class:`~adatune.errors.ConfigError` line naming the argument.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset, Subset, TensorDataset

from adatune import imports
from adatune.catalog import DataSpec
from adatune.data.datasets import DataSplits
from adatune.errors import ConfigError

__all__ = ["EXPECTED", "as_dataset", "user_splits"]

#: What a data factory returns.
EXPECTED = "(train, val) or (train, val, test), each a torch Dataset or an (x, y) tensor pair"


def as_dataset(what: str, part: Any) -> Dataset:
    """``part`` as a Dataset: a Dataset as it is, an ``(x, y)`` pair of tensors as a
    ``TensorDataset``; anything else, a pair of unequal lengths or an empty set is one
    ConfigError line about ``what`` (``train``, or ``val set of data='pkg:load'``)."""
    if isinstance(part, Dataset):
        dataset = part
    elif isinstance(part, (tuple, list)) and len(part) == 2 \
            and all(isinstance(t, Tensor) for t in part):
        x, y = part
        if x.shape[0] != y.shape[0]:
            raise ConfigError(f"invalid {what}: {x.shape[0]} inputs but {y.shape[0]} targets")
        dataset = TensorDataset(x, y)
    else:
        raise ConfigError(f"invalid {what}: {imports.describe_type(part)} (expected a torch "
                          "Dataset or an (x, y) pair of tensors)")
    if len(dataset) == 0:
        raise ConfigError(f"invalid {what}: the set is empty")
    return dataset


def user_splits(path: str, *, seed: int, data_dir: str | None, val_source: str,
                train_subset: float | None, classification: bool) -> DataSplits:
    """Call the factory ``path`` names with the seed (and data directory); check what it returns.

    ``val_source="test"`` validates on the test set; ``train_subset`` keeps a
    seeded fraction of the training set. With ``classification`` the class
    count comes from the data (a ``classes``/``num_classes`` attribute, else
    the largest label + 1).
    """
    factory = imports.load_callable("data", path)
    kwargs: dict[str, Any] = {}
    args: list[Any] = []
    if imports.accepts_keyword(factory, "seed"):
        kwargs["seed"] = seed
        if imports.accepts_keyword(factory, "data_dir"):
            kwargs["data_dir"] = data_dir
    else:
        arity = imports.positional_arity(factory)
        args = [seed, data_dir][: 2 if arity is None else min(arity, 2)]
    returned = imports.call("data", path, factory, *args, **kwargs)
    if not isinstance(returned, (tuple, list)) or len(returned) not in (2, 3):
        raise ConfigError(f"data={path!r} returned {imports.describe_type(returned)}; "
                          f"expected {EXPECTED}")
    names = ("train", "val", "test")
    sets: list[Dataset | None] = []
    for name, part in zip(names, returned):
        if part is None and name != "test":
            raise ConfigError(f"data={path!r} returned no {name} set")
        sets.append(None if part is None else as_dataset(f"{name} set of data={path!r}", part))
    train, val = sets[0], sets[1]
    test = sets[2] if len(sets) == 3 else None
    if val_source == "test":
        if test is None:
            raise ConfigError(f"val_source='test': data={path!r} returned no test set")
        val = test
    if train_subset is not None and train_subset < 1.0:
        keep = max(1, round(train_subset * len(train)))
        order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))
        train = Subset(train, sorted(order[:keep].tolist()))
    x0, _ = train[0]
    num_classes = _num_classes(path, returned[0], [train, val, test]) if classification else None
    spec = DataSpec(imports.attr_name(path), tuple(torch.as_tensor(x0).shape), num_classes)
    return DataSplits(spec=spec, train=train, val=val, test=test)


def _num_classes(path: str, raw: Any, sets: Sequence[Dataset | None]) -> int:
    """The class count: a ``classes``/``num_classes`` attribute, else the largest label + 1."""
    for source in (raw, sets[0]):
        if isinstance(getattr(source, "num_classes", None), int):
            return source.num_classes
        classes = getattr(source, "classes", None)
        if isinstance(classes, (list, tuple)) and classes:
            return len(classes)
    top = -1
    for ds in sets:
        if ds is None:
            continue
        labels = _labels(ds)
        if labels.dtype.is_floating_point or labels.dim() != 1:
            raise ConfigError(f"data={path!r}: cross-entropy needs integer class labels, got "
                              f"{labels.dtype} targets of shape {tuple(labels.shape[1:])} per "
                              "example (use loss='mse' for regression)")
        if labels.numel():
            top = max(top, int(labels.max()))
    return top + 1


def _labels(ds: Dataset) -> Tensor:
    base, index = ds, None
    if isinstance(ds, Subset):
        base, index = ds.dataset, torch.as_tensor(ds.indices, dtype=torch.long)
    if isinstance(base, TensorDataset) and len(base.tensors) == 2:
        y = base.tensors[1]
        return y if index is None else y[index]
    return torch.stack([torch.as_tensor(ds[i][1]) for i in range(len(ds))])
