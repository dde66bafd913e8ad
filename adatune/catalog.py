"""What a user can name, as plain data: datasets, networks, schedules, tuners, optimizers.

This module imports neither torch nor numpy, so that a configuration can be
checked, and the command can answer ``--help`` or reject a bad option, without
loading the training stack. Each table lives here once;
:mod:`adatune.data.datasets`, :mod:`adatune.data.models`,
:mod:`adatune.methods.schedules` and :mod:`adatune.running.config` build on it
and re-export the names they always had. Two more tables of names a command
checks before torch are light where they are defined: the peer optimizers
(:data:`adatune.methods.peers.PEER_NAMES`) and the losses
(:data:`adatune.running.losses.LOSS_NAMES`). ``tests/test_catalog.py`` checks
that every name builds the part it names.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from adatune._names import canonical_name
from adatune.errors import ConfigError, DatasetError

__all__ = [
    "DATASETS",
    "DATASET_NAMES",
    "NETWORK_NAMES",
    "OPTIMIZER_NAMES",
    "SCHEDULE_NAMES",
    "TUNER_NAMES",
    "DataSpec",
    "DatasetSource",
    "canonical_dataset",
    "canonical_network",
    "canonical_schedule",
    "check_compatible",
    "check_dataset_files",
    "data_root",
    "dataset_spec",
    "default_data_dir",
    "missing_message",
]

# --------------------------------------------------------------------------- tuners, optimizers

TUNER_NAMES = ("marthe", "rtho", "hd")
OPTIMIZER_NAMES = ("sgd", "adam", "adamw")

# --------------------------------------------------------------------------- datasets

DATASET_NAMES: tuple[str, ...] = ("digits", "mnist", "fashion_mnist", "cifar10", "cifar100")

# Names used by the original project and common spellings. Keys are compared after
# lower-casing and replacing "-" with "_".
_DATASET_ALIASES = {
    "cifar_10": "cifar10",
    "cifar_100": "cifar100",
    "fashionmnist": "fashion_mnist",
    "fmnist": "fashion_mnist",
    "sklearn_digits": "digits",
}


@dataclass(frozen=True)
class DataSpec:
    """Shape of a dataset's inputs, ``(channels, height, width)``, and its class count."""

    name: str
    input_shape: tuple[int, int, int]
    num_classes: int


@dataclass(frozen=True)
class DatasetSource:
    """Where a dataset's files live and how its inputs are normalised."""

    spec: DataSpec
    mean: tuple[float, ...]
    std: tuple[float, ...]
    folder: str  # sub-folder of the data directory holding the files
    files: tuple[str, ...]  # files expected in that folder
    gzipped: bool = False  # a file may also be there as <file>.gz (decompressed on reading)


MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
CIFAR10_TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))

DATASETS: dict[str, DatasetSource] = {
    "digits": DatasetSource(DataSpec("digits", (1, 8, 8), 10), (), (), "", ()),
    "mnist": DatasetSource(
        DataSpec("mnist", (1, 28, 28), 10), (0.1307,), (0.3081,), "MNIST/raw", MNIST_FILES,
        gzipped=True,
    ),
    "fashion_mnist": DatasetSource(
        DataSpec("fashion_mnist", (1, 28, 28), 10),
        (0.2860,),
        (0.3530,),
        "FashionMNIST/raw",
        MNIST_FILES,
        gzipped=True,
    ),
    "cifar10": DatasetSource(
        DataSpec("cifar10", (3, 32, 32), 10),
        (0.4914, 0.4822, 0.4465),
        (0.2470, 0.2435, 0.2616),
        "cifar-10-batches-py",
        (*CIFAR10_TRAIN_FILES, "test_batch", "batches.meta"),
    ),
    "cifar100": DatasetSource(
        DataSpec("cifar100", (3, 32, 32), 100),
        (0.5071, 0.4865, 0.4409),
        (0.2673, 0.2564, 0.2762),
        "cifar-100-python",
        ("train", "test", "meta"),
    ),
}


def canonical_dataset(name: str) -> str:
    """Return the canonical name of a dataset, accepting the original project's aliases."""
    return canonical_name("dataset", name, _DATASET_ALIASES, DATASET_NAMES)


def dataset_spec(name: str) -> DataSpec:
    """Input shape and class count of a dataset, without reading any file."""
    return DATASETS[canonical_dataset(name)].spec


def default_data_dir() -> Path:
    """Where datasets live unless a data directory is given.

    ``$ADATUNE_DATA`` if set, else ``$XDG_CACHE_HOME/adatune/data`` (by default
    ``~/.cache/adatune/data``). Evaluated at each call.
    """
    env = os.environ.get("ADATUNE_DATA")
    if env:
        return Path(env).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache")
    return Path(cache).expanduser() / "adatune" / "data"


def data_root(data_dir: str | os.PathLike | None) -> Path:
    """The absolute data directory: ``data_dir``, or :func:`default_data_dir`."""
    root = Path(data_dir).expanduser() if data_dir is not None else default_data_dir()
    return root.absolute()  # error messages name the full path


def missing_message(key: str, folder: Path, files: Sequence[str]) -> str:
    """The one line that says a dataset's files are not where they should be."""
    return (
        f"{key} not found: expected {', '.join(files)} in {folder} "
        "(use download=True to fetch them when online, "
        "or data_dir= to point at another folder)"
    )


def check_dataset_files(name: str, data_dir: str | os.PathLike | None = None, *,
                        download: bool = False) -> None:
    """Raise :class:`DatasetError` when the dataset's files are missing and not to be fetched.

    Only checks that the files are there (reading them is
    :func:`adatune.data.datasets.load_splits`'s job); ``digits`` needs none, and with
    ``download`` missing files are fetched later.
    """
    key = canonical_dataset(name)
    source = DATASETS[key]
    if not source.files or download:
        return
    folder = data_root(data_dir) / source.folder

    def present(file: str) -> bool:
        return (folder / file).is_file() or (source.gzipped and (folder / f"{file}.gz").is_file())

    if not all(present(f) for f in source.files):
        raise DatasetError(missing_message(key, folder, source.files))


# --------------------------------------------------------------------------- networks

NETWORK_NAMES: tuple[str, ...] = ("mlp", "lenet", "vgg11", "resnet18", "wrn28_10", "densenet_bc100",
                                  "transformer")

# Names of the original project and common spellings; keys are compared after
# lower-casing and replacing "-" with "_".
_NETWORK_ALIASES = {
    "lenet5": "lenet",
    "lenet_5": "lenet",
    "vgg": "vgg11",
    "vgg_11": "vgg11",
    "resnet": "resnet18",
    "resnet_18": "resnet18",
    "wide_resnet": "wrn28_10",
    "wideresnet": "wrn28_10",
    "wrn": "wrn28_10",
    "wrn_28_10": "wrn28_10",
    "densenet": "densenet_bc100",
    "densenet_bc": "densenet_bc100",
    "densenet_bc_100": "densenet_bc100",
    "densenetbc100": "densenet_bc100",
    "transformer_block": "transformer",
}

# Smallest input height/width each network can process.
_MIN_SIZE = {"mlp": 1, "lenet": 4, "vgg11": 32, "resnet18": 1, "wrn28_10": 1, "densenet_bc100": 4,
             "transformer": 1}


def canonical_network(name: str) -> str:
    """Return the canonical name of a network, accepting the original project's aliases."""
    return canonical_name("network", name, _NETWORK_ALIASES, NETWORK_NAMES)


def check_compatible(network: str, spec: DataSpec) -> None:
    """Raise :class:`ConfigError` naming the reason if ``network`` cannot take ``spec``'s data."""
    key = canonical_network(network)
    c, h, w = spec.input_shape
    if min(c, h, w) < 1 or spec.num_classes < 2:
        raise ConfigError(
            f"Invalid data spec for {spec.name}: input {c}x{h}x{w} with {spec.num_classes} classes"
        )
    size = _MIN_SIZE[key]
    if h < size or w < size:
        raise ConfigError(
            f"{key} needs inputs of at least {size}x{size}; {spec.name} is {c}x{h}x{w}"
        )


# --------------------------------------------------------------------------- schedules

SCHEDULE_NAMES = ("constant", "staircase", "exponential", "cosine")
_SCHEDULE_ALIASES = {
    "ed": "exponential",
    "exp": "exponential",
    "cyclic": "cosine",
    "cosine-annealing": "cosine",
    "cosine_annealing": "cosine",
    "step": "staircase",
    "fixed": "constant",
}


def canonical_schedule(name: str) -> str:
    """Return the canonical name of a baseline schedule, accepting the original's names."""
    key = name.strip().lower()
    key = _SCHEDULE_ALIASES.get(key, key)
    if key not in SCHEDULE_NAMES:
        raise ConfigError(f"unknown lr scheduler {name!r} (choose from: "
                          f"{', '.join(SCHEDULE_NAMES)}; the original's hd, ed, cyclic, "
                          "staircase are accepted too)")
    return key
