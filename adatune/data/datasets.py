"""Datasets and their train / validation / test splits.

``digits`` (scikit-learn's bundled 8x8 handwritten digits) needs no download and
is the embedded default. ``mnist``, ``fashion_mnist``, ``cifar10`` and ``cifar100``
are read from the torchvision on-disk layout under a data directory and fetched
through torchvision when ``download=True``.

Protocol: the validation split, on which hypergradients are computed, is carved
from the training set with the run's seed; the test set is only used for
reporting. ``val_source="test"`` reproduces the original project's protocol
(validation = test set) and warns.

Splits are held in memory: images without per-sample randomness are normalised
``float32`` tensors in a :class:`~torch.utils.data.TensorDataset`; the CIFAR
training split is an :class:`AugmentedImages` that applies the usual random
crop and horizontal flip batch-wise. :mod:`adatune.data.batching` iterates
both without per-sample Python work.

The datasets' names, aliases, shapes and files are tables of the torch-free
:mod:`adatune.catalog` (re-exported here), so a configuration is checked
without importing this module.
"""

from __future__ import annotations

import gzip
import os
import pickle
import shutil
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset, TensorDataset

from adatune.catalog import (
    CIFAR10_TRAIN_FILES,
    DATASET_NAMES,
    DATASETS,
    DatasetSource,
    DataSpec,
    canonical_dataset,
    data_root,
    dataset_spec,
    default_data_dir,
    missing_message,
)
from adatune.errors import ConfigError, DatasetError

__all__ = [
    "DATASET_NAMES",
    "AugmentedImages",
    "DataSpec",
    "DataSplits",
    "TestAsValidationWarning",
    "canonical_dataset",
    "dataset_spec",
    "default_data_dir",
    "load_splits",
]

VAL_SOURCES = ("train", "test")

# The digits test split is fixed (independent of the run seed) so that every run
# is evaluated on the same images.
DIGITS_TEST_FRACTION = 0.2
_DIGITS_TEST_SEED = 1797

# Stream tags for numpy SeedSequence: independent random streams per purpose.
_STREAM_TEST, _STREAM_VAL, _STREAM_SUBSET = 0, 1, 2


class TestAsValidationWarning(UserWarning):
    """The test set is used as the validation set (``val_source="test"``)."""

    __test__ = False  # not a pytest test class


@dataclass(frozen=True)
class DataSplits:
    """Training, validation and test splits of one dataset."""

    spec: DataSpec
    train: Dataset
    val: Dataset
    test: Dataset


# --------------------------------------------------------------------------- datasets


class AugmentedImages(Dataset):
    """Images with CIFAR-style training augmentation, applied batch-wise.

    Holds ``uint8`` images ``(N, C, H, W)`` and ``int64`` labels. Each draw zero-pads
    the images by ``padding`` pixels, crops a random ``H x W`` window, flips
    horizontally with probability 1/2 (``flip=True``), scales to [0, 1] and
    normalises with ``mean`` / ``std`` per channel — the usual
    ``RandomCrop(32, padding=4)``, ``RandomHorizontalFlip``, ``ToTensor``,
    ``Normalize`` pipeline. :meth:`get_batch` draws the randomness from a
    generator, so that an epoch is reproducible; ``dataset[i]`` uses torch's
    global generator.
    """

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        *,
        mean: Sequence[float],
        std: Sequence[float],
        padding: int = 4,
        flip: bool = True,
    ) -> None:
        if images.dim() != 4 or images.dtype != torch.uint8:
            raise ValueError(
                f"Invalid images: expected uint8 (N, C, H, W), got {images.dtype} "
                f"{tuple(images.shape)}"
            )
        if labels.shape != (images.shape[0],):
            raise ValueError(
                f"Invalid labels: shape {tuple(labels.shape)} for {images.shape[0]} images"
            )
        if padding < 0:
            raise ValueError(f"Invalid padding: {padding}")
        channels = images.shape[1]
        if len(mean) != channels or len(std) != channels:
            raise ValueError(f"Invalid mean/std: need {channels} values each")
        self.images = images
        self.labels = labels.long()
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        self.padding = padding
        self.flip = flip

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        x, y = self.get_batch(torch.tensor([index]))
        return x[0], y[0]

    def get_batch(
        self, index: Tensor, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """Augmented, normalised images and labels at ``index`` (a 1-D index tensor)."""
        device = self.images.device
        index = index.to(device)
        x = self.images[index]
        n, _, h, w = x.shape
        gen_device = generator.device if generator is not None else torch.device("cpu")
        p = self.padding
        if p > 0:
            x = F.pad(x, (p, p, p, p))
            oy = torch.randint(0, 2 * p + 1, (n,), generator=generator, device=gen_device)
            ox = torch.randint(0, 2 * p + 1, (n,), generator=generator, device=gen_device)
            rows = (oy.to(device)[:, None] + torch.arange(h, device=device))[:, :, None]
            cols = (ox.to(device)[:, None] + torch.arange(w, device=device))[:, None, :]
            batch = torch.arange(n, device=device)[:, None, None]
            # advanced indices around a slice: result is (N, H, W, C)
            x = x[batch, :, rows, cols].permute(0, 3, 1, 2)
        if self.flip:
            flip = torch.rand((n,), generator=generator, device=gen_device) < 0.5
            x = torch.where(flip.to(device)[:, None, None, None], x.flip(-1), x)
        x = x.to(torch.float32).div_(255.0)
        x = (x - self.mean.to(device)) / self.std.to(device)
        return x, self.labels[index]


# --------------------------------------------------------------------------- splits


def load_splits(
    name: str,
    *,
    data_dir: str | os.PathLike | None = None,
    download: bool = False,
    val_fraction: float = 0.1,
    val_source: str = "train",
    seed: int = 0,
    train_subset: float | None = None,
) -> DataSplits:
    """Load a dataset and split it into training, validation and test sets.

    ``val_source="train"`` carves a stratified ``val_fraction`` of the training
    set with ``seed``; ``"test"`` uses the test set as validation (the original
    project's protocol; warns with :class:`TestAsValidationWarning`).
    ``train_subset`` keeps a seeded, stratified fraction of the remaining
    training set (cheap probe runs). ``data_dir`` defaults to
    :func:`default_data_dir`; ``download=True`` fetches missing files through
    torchvision. ``digits`` is bundled with scikit-learn and reads no files.
    """
    key = canonical_dataset(name)
    val_fraction = _check_fraction("val_fraction", val_fraction, allow_one=False)
    if val_source not in VAL_SOURCES:
        raise ConfigError(
            f"Invalid val_source: {val_source!r} (choose from: {', '.join(VAL_SOURCES)})"
        )
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigError(f"Invalid seed: {seed!r} (need a non-negative integer)")
    seed = int(seed)
    if train_subset is not None:
        train_subset = _check_fraction("train_subset", train_subset, allow_one=True)

    source = DATASETS[key]
    root = data_root(data_dir)
    if key == "digits":
        raw = _read_digits()
    elif key in ("mnist", "fashion_mnist"):
        raw = _read_mnist(key, source, root, download)
    else:
        raw = _read_cifar(key, source, root, download)
    x_train, y_train, x_test, y_test = raw
    _check_labels(key, source.spec.num_classes, y_train, y_test)

    n = len(y_train)
    if val_source == "train":
        n_val = round(val_fraction * n)
        if not 1 <= n_val < n:
            raise ConfigError(
                f"Invalid val_fraction: {val_fraction} leaves {n_val} of {n} training "
                f"examples for validation"
            )
        val_idx, train_idx = _stratified_split(y_train, n_val, seed, _STREAM_VAL)
    else:
        warnings.warn(
            f"val_source='test': the {key} test set is used as the validation set, as in "
            "the original AdaTune protocol; test metrics are then not held out",
            TestAsValidationWarning,
            stacklevel=2,
        )
        val_idx, train_idx = None, np.arange(n)
    if train_subset is not None and train_subset < 1.0:
        n_keep = max(1, round(train_subset * len(train_idx)))
        keep, _ = _stratified_split(y_train[train_idx], n_keep, seed, _STREAM_SUBSET)
        train_idx = train_idx[np.sort(keep)]

    if key.startswith("cifar"):
        train = AugmentedImages(
            torch.from_numpy(x_train[train_idx]),
            torch.from_numpy(y_train[train_idx]),
            mean=source.mean,
            std=source.std,
        )
        test = _normalised(x_test, y_test, source.mean, source.std)
        if val_idx is None:
            val = test
        else:  # the validation split is never augmented
            val = _normalised(x_train[val_idx], y_train[val_idx], source.mean, source.std)
    else:  # x_* already normalised float32 (N, C, H, W)
        train = TensorDataset(
            torch.from_numpy(x_train[train_idx]), torch.from_numpy(y_train[train_idx])
        )
        test = TensorDataset(torch.from_numpy(x_test), torch.from_numpy(y_test))
        if val_idx is None:
            val = test
        else:
            val = TensorDataset(
                torch.from_numpy(x_train[val_idx]), torch.from_numpy(y_train[val_idx])
            )
    return DataSplits(spec=source.spec, train=train, val=val, test=test)


def _check_fraction(arg: str, value: float, *, allow_one: bool) -> float:
    ok = isinstance(value, (int, float, np.floating)) and not isinstance(value, bool)
    if ok:
        value = float(value)
        ok = 0.0 < value < 1.0 or (allow_one and value == 1.0)
    if not ok:
        interval = "(0, 1]" if allow_one else "(0, 1)"
        raise ConfigError(f"Invalid {arg}: {value!r} (need a number in {interval})")
    return value


def _stratified_split(
    labels: np.ndarray, n_first: int, seed: int, stream: int
) -> tuple[np.ndarray, np.ndarray]:
    """Split ``arange(len(labels))`` into ``n_first`` and the rest, stratified by label.

    Every class contributes to the first part in proportion to its size: after a
    seeded shuffle, each example's key is its (rank + 1/2) / class size within its
    class, and the ``n_first`` smallest keys are taken (ties in shuffled order).
    Both parts are returned sorted.
    """
    rng = np.random.default_rng(np.random.SeedSequence([seed, stream]))
    perm = rng.permutation(len(labels))
    lab = labels[perm]
    order = np.argsort(lab, kind="stable")
    sorted_lab = lab[order]
    starts = np.searchsorted(sorted_lab, sorted_lab, side="left")
    counts = np.bincount(lab)[sorted_lab]
    keys = np.empty(len(lab))
    keys[order] = (np.arange(len(lab)) - starts + 0.5) / counts
    chosen = np.argsort(keys, kind="stable")[:n_first]
    mask = np.zeros(len(labels), dtype=bool)
    mask[perm[chosen]] = True
    return np.flatnonzero(mask), np.flatnonzero(~mask)


def _normalised(images: np.ndarray, labels: np.ndarray, mean, std) -> TensorDataset:
    x = torch.from_numpy(images).to(torch.float32).div_(255.0)
    x = (x - torch.tensor(mean).view(1, -1, 1, 1)) / torch.tensor(std).view(1, -1, 1, 1)
    return TensorDataset(x, torch.from_numpy(labels))


def _check_labels(key: str, num_classes: int, *label_sets: np.ndarray) -> None:
    for labels in label_sets:
        if len(labels) == 0:
            raise DatasetError(f"{key}: a split has no examples")
        if labels.min() < 0 or labels.max() >= num_classes:
            raise DatasetError(
                f"{key}: labels must lie in 0..{num_classes - 1}, found "
                f"{labels.min()}..{labels.max()}"
            )


# --------------------------------------------------------------------------- readers


def _read_digits():
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).reshape(-1, 1, 8, 8)
    y = y.astype(np.int64)
    test_idx, train_idx = _stratified_split(
        y, round(DIGITS_TEST_FRACTION * len(y)), _DIGITS_TEST_SEED, _STREAM_TEST
    )
    # normalise with statistics of the (fixed) training portion only
    mean, std = x[train_idx].mean(), x[train_idx].std()
    x = ((x - mean) / std).astype(np.float32)
    return x[train_idx], y[train_idx], x[test_idx], y[test_idx]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _download(key: str, folder: Path, files: Sequence[str], fetch) -> None:
    try:
        fetch()
    except (OSError, RuntimeError, ValueError) as exc:  # URLError is an OSError
        raise DatasetError(
            f"could not download {key} ({_first_line(exc)}); without network, put "
            f"{', '.join(files)} in {folder}"
        ) from exc


def _read_mnist(key: str, source: DatasetSource, root: Path, download: bool):
    from torchvision import datasets

    cls = datasets.MNIST if key == "mnist" else datasets.FashionMNIST
    folder = root / source.folder
    _gunzip_missing(folder, source.files)
    if download and not _all_exist(folder, source.files):
        _download(key, folder, source.files, lambda: cls(str(root), train=True, download=True))
    if not _all_exist(folder, source.files):
        raise DatasetError(missing_message(key, folder, source.files))
    try:
        parts = []
        for train in (True, False):
            ds = cls(str(root), train=train, download=False)
            images = ds.data.numpy()
            parts += [images, ds.targets.numpy().astype(np.int64)]
    except (OSError, RuntimeError, ValueError, TypeError, AssertionError) as exc:
        raise DatasetError(f"cannot read {key} from {folder}: {_first_line(exc)}") from exc
    x_train, y_train, x_test, y_test = parts
    for images, labels in ((x_train, y_train), (x_test, y_test)):
        if images.shape[1:] != source.spec.input_shape[1:] or len(images) != len(labels):
            raise DatasetError(
                f"cannot read {key} from {folder}: images of shape {images.shape[1:]} "
                f"and {len(labels)} labels for {len(images)} images"
            )
    (mean,), (std,) = source.mean, source.std

    def norm(images: np.ndarray) -> np.ndarray:
        x = images.astype(np.float32)[:, None] / np.float32(255.0)
        return (x - np.float32(mean)) / np.float32(std)

    return norm(x_train), y_train, norm(x_test), y_test


def _read_cifar(key: str, source: DatasetSource, root: Path, download: bool):
    """Read the CIFAR python pickles directly (no md5 check on existing files).

    torchvision verifies the md5 sums of the official archives, which rejects
    any other copy of the layout; files that already exist are read here from
    the documented format (a dict with ``data``: uint8 (N, 3072) and
    ``labels`` / ``fine_labels``), while ``download=True`` for a missing folder
    goes through torchvision, which verifies the downloaded archive.
    """
    from torchvision import datasets

    cls = datasets.CIFAR10 if key == "cifar10" else datasets.CIFAR100
    folder = root / source.folder
    if download and not _all_exist(folder, source.files):
        _download(key, folder, source.files, lambda: cls(str(root), train=True, download=True))
    if not _all_exist(folder, source.files):
        raise DatasetError(missing_message(key, folder, source.files))
    if key == "cifar10":
        train_files, test_files = CIFAR10_TRAIN_FILES, ("test_batch",)
        label_key, meta_file, meta_key = "labels", "batches.meta", "label_names"
    else:
        train_files, test_files = ("train",), ("test",)
        label_key, meta_file, meta_key = "fine_labels", "meta", "fine_label_names"

    meta = _load_pickle(key, folder / meta_file)
    names = meta.get(meta_key) if isinstance(meta, dict) else None
    if names is None or len(names) != source.spec.num_classes:
        raise DatasetError(
            f"cannot read {key} from {folder}: {meta_file} should list "
            f"{source.spec.num_classes} {meta_key}"
        )
    c, h, w = source.spec.input_shape

    def read(files: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        xs, ys = [], []
        for file in files:
            entry = _load_pickle(key, folder / file)
            try:
                data = np.asarray(entry["data"], dtype=np.uint8)
                labels = np.asarray(entry[label_key], dtype=np.int64)
                xs.append(data.reshape(-1, c, h, w))
            except (KeyError, TypeError, ValueError) as exc:
                raise DatasetError(
                    f"cannot read {key} batch {folder / file}: expected 'data' "
                    f"(N x {c * h * w} uint8) and '{label_key}' ({_first_line(exc)})"
                ) from exc
            if labels.shape != (xs[-1].shape[0],):
                raise DatasetError(
                    f"cannot read {key} batch {folder / file}: {labels.size} labels for "
                    f"{xs[-1].shape[0]} images"
                )
            ys.append(labels)
        return np.ascontiguousarray(np.concatenate(xs)), np.concatenate(ys)

    x_train, y_train = read(train_files)
    x_test, y_test = read(test_files)
    return x_train, y_train, x_test, y_test


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickler limited to what the CIFAR batches contain (numpy arrays, builtins)."""

    _ALLOWED = {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("builtins", "bytearray"),
        ("_codecs", "encode"),
        ("copy_reg", "_reconstructor"),
        ("copyreg", "_reconstructor"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def _load_pickle(key: str, path: Path):
    try:
        with open(path, "rb") as f:
            return _ArrayUnpickler(f, encoding="latin1").load()
    except (
        OSError,
        EOFError,
        pickle.UnpicklingError,
        ValueError,
        TypeError,
        AttributeError,
        IndexError,
    ) as exc:
        raise DatasetError(f"cannot read {key} file {path}: {_first_line(exc)}") from exc


def _all_exist(folder: Path, files: Sequence[str]) -> bool:
    return all((folder / f).is_file() for f in files)


def _gunzip_missing(folder: Path, files: Sequence[str]) -> None:
    """Decompress ``<file>.gz`` next to a missing ``<file>`` (the distributed form)."""
    for file in files:
        target, packed = folder / file, folder / f"{file}.gz"
        if not target.exists() and packed.is_file():
            tmp = folder / f".{file}.partial"
            try:
                with gzip.open(packed, "rb") as src, open(tmp, "wb") as dst:
                    shutil.copyfileobj(src, dst)
                os.replace(tmp, target)
            except OSError as exc:
                tmp.unlink(missing_ok=True)
                raise DatasetError(f"cannot decompress {packed}: {_first_line(exc)}") from exc
