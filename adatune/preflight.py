"""What a run will read and write, checked before the training stack is loaded.

:class:`~adatune.config.TrainConfig` checks values and names; this checks the
file system: the dataset's files are there (or are to be downloaded), and the
checkpoint directory is, or can be made, a writable directory. Neither needs
torch, so the command rejects such input at once, before any run is written.
"""

from __future__ import annotations

import os
from pathlib import Path

from adatune.catalog import check_dataset_files
from adatune.config import TrainConfig
from adatune.errors import ConfigError
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
    """The dataset's files and the checkpoint directory of ``config`` (ConfigError/DatasetError)."""
    check_dataset_files(config.dataset, config.data_dir, download=config.download)
    check_writable_dir(config.checkpoint_dir or DEFAULT_CHECKPOINT_DIR, "checkpoint_dir")
