"""Flushing to disk what a checkpoint or a new store file wrote (standard library only)."""

from __future__ import annotations

import os
from pathlib import Path


def fsync_path(path: Path) -> None:
    """``fsync`` a file, or a folder (so a rename or link into it survives a power cut).

    A folder that cannot be opened (no directory handles, as on Windows) or a
    file system that cannot sync one is skipped; a file that cannot be opened
    raises ``OSError``.
    """
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        if path.is_dir():  # pragma: no cover - no directory handles here (Windows)
            return
        raise
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - some file systems cannot sync folders
        pass
    finally:
        os.close(fd)
