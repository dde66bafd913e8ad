"""What a run will read and write, checked before the training stack is loaded.

:class:`~adatune.config.TrainConfig` checks values and names; this checks the
file system: the dataset's files are there (or are to be downloaded), a peer
optimizer's package and the top-level packages of the user's own
``--model``/``--data``/``--loss`` are installed (looked up, not imported), and
the checkpoint directory is, or can be made, a writable directory. None of it
needs torch, so the command rejects such input at once, before any run is
written. The user's modules are imported when the run's parts are built.
"""

from __future__ import annotations

import os
from pathlib import Path

from adatune.catalog import check_dataset_files
from adatune.config import TrainConfig
from adatune.errors import ConfigError
from adatune.imports import check_findable
from adatune.peers import check_available
from adatune.runtypes import DEFAULT_CHECKPOINT_DIR


def check_writable_dir(path: str | os.PathLike[str], what: str) -> None:
    """Raise :class:`ConfigError` unless ``path`` is, or can be created as, a writable folder."""
    target = Path(path).expanduser().absolute()
    existing = target
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent  # the deepest part that exists: it must be a folder
    if not existing.is_dir():
        raise ConfigError(f"invalid {what}: {path} ({existing} is not a directory)")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"invalid {what}: {path} ({existing} is not writable)")


def check_run_inputs(config: TrainConfig) -> None:
    """The dataset's files, the packages and the checkpoint directory ``config`` names.

    Raises :class:`ConfigError` or :class:`~adatune.errors.DatasetError`.
    """
    if config.dataset is not None:  # None: the user's own --data
        check_dataset_files(config.dataset, config.data_dir, download=config.download)
    if config.is_peer:
        check_available(config.method)
    for option, path in (("--model", config.model), ("--data", config.data),
                         ("--loss", config.loss)):
        if path is not None and ":" in path:  # an import path (not a built-in loss name)
            check_findable(option, path)
    check_writable_dir(config.checkpoint_dir or DEFAULT_CHECKPOINT_DIR, "checkpoint_dir")
