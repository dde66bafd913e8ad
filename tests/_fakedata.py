"""Write tiny datasets in the torchvision on-disk formats (for tests).

MNIST / Fashion-MNIST: big-endian IDX files ``<root>/<MNIST|FashionMNIST>/raw/
{train,t10k}-{images-idx3,labels-idx1}-ubyte`` (optionally gzipped only).
CIFAR-10 / CIFAR-100: python pickles ``<root>/cifar-10-batches-py/data_batch_1..5,
test_batch, batches.meta`` and ``<root>/cifar-100-python/train, test, meta``.

Labels cycle through every class so that stratified splits are well defined;
images are random uint8 with a per-class brightness offset so that a model can
tell them apart. Every writer returns the arrays it wrote.
"""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np


def _labels(n: int, num_classes: int, rng: np.random.Generator) -> np.ndarray:
    return rng.permutation(np.arange(n) % num_classes).astype(
        np.uint8 if num_classes <= 256 else np.int64
    )


def _images(
    labels: np.ndarray, shape: tuple[int, ...], num_classes: int, rng: np.random.Generator
) -> np.ndarray:
    noise = rng.integers(0, 64, size=(len(labels), *shape))
    offset = (labels.astype(np.int64) * (191 // max(num_classes - 1, 1))).reshape(
        -1, *([1] * len(shape))
    )
    return (noise + offset).astype(np.uint8)


def write_idx(path: Path, array: np.ndarray, *, gz: bool = False) -> Path:
    """Write a uint8 array in IDX format (magic 0x00000800 + ndim, big-endian dims)."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = struct.pack(">I", 0x0800 + array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        path = path.with_name(path.name + ".gz")
        with gzip.open(path, "wb") as f:
            f.write(payload)
    else:
        path.write_bytes(payload)
    return path


def write_mnist(
    root: Path,
    *,
    n_train: int = 200,
    n_test: int = 50,
    folder: str = "MNIST",
    seed: int = 0,
    gz: bool = False,
) -> dict:
    """Write an MNIST-format dataset (``folder="FashionMNIST"`` for Fashion-MNIST)."""
    rng = np.random.default_rng(seed)
    raw = Path(root) / folder / "raw"
    out = {}
    for split, n in (("train", n_train), ("t10k", n_test)):
        y = _labels(n, 10, rng)
        x = _images(y, (28, 28), 10, rng)
        write_idx(raw / f"{split}-images-idx3-ubyte", x, gz=gz)
        write_idx(raw / f"{split}-labels-idx1-ubyte", y, gz=gz)
        out[split] = (x, y.astype(np.int64))
    return out


def _dump(path: Path, obj: dict, protocol: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=protocol)


def write_cifar10(
    root: Path, *, n_per_batch: int = 20, n_test: int = 30, seed: int = 0, protocol: int = 2
) -> dict:
    """Write a CIFAR-10-format dataset: five training batches, a test batch, the meta."""
    rng = np.random.default_rng(seed)
    folder = Path(root) / "cifar-10-batches-py"
    xs, ys = [], []
    for i in range(1, 6):
        y = _labels(n_per_batch, 10, rng).astype(np.int64)
        x = _images(y, (3, 32, 32), 10, rng)
        _dump(
            folder / f"data_batch_{i}",
            {
                "batch_label": f"training batch {i} of 5",
                "labels": y.tolist(),
                "data": x.reshape(len(y), -1),
                "filenames": [f"{j}.png" for j in range(len(y))],
            },
            protocol,
        )
        xs.append(x)
        ys.append(y)
    y = _labels(n_test, 10, rng).astype(np.int64)
    x = _images(y, (3, 32, 32), 10, rng)
    _dump(
        folder / "test_batch",
        {
            "batch_label": "testing batch 1 of 1",
            "labels": y.tolist(),
            "data": x.reshape(len(y), -1),
        },
        protocol,
    )
    _dump(
        folder / "batches.meta",
        {
            "label_names": [f"class{i}" for i in range(10)],
            "num_cases_per_batch": n_per_batch,
            "num_vis": 3072,
        },
        protocol,
    )
    return {"train": (np.concatenate(xs), np.concatenate(ys)), "test": (x, y)}


def write_cifar100(
    root: Path, *, n_train: int = 200, n_test: int = 100, seed: int = 0, protocol: int = 2
) -> dict:
    """Write a CIFAR-100-format dataset: ``train``, ``test`` and ``meta``."""
    rng = np.random.default_rng(seed)
    folder = Path(root) / "cifar-100-python"
    out = {}
    for split, n in (("train", n_train), ("test", n_test)):
        y = _labels(n, 100, rng).astype(np.int64)
        x = _images(y, (3, 32, 32), 100, rng)
        _dump(
            folder / split,
            {
                "filenames": [f"{j}.png" for j in range(n)],
                "batch_label": split,
                "fine_labels": y.tolist(),
                "coarse_labels": (y // 5).tolist(),
                "data": x.reshape(n, -1),
            },
            protocol,
        )
        out[split] = (x, y)
    _dump(
        folder / "meta",
        {
            "fine_label_names": [f"fine{i}" for i in range(100)],
            "coarse_label_names": [f"coarse{i}" for i in range(20)],
        },
        protocol,
    )
    return out
