"""Writing files whole and durably (standard library only).

* :func:`fsync_path` flushes a file, or a folder after a rename into it.
* :func:`temporary_beside` creates a temporary file beside a target: an
  unpredictable name, created exclusively (``mkstemp``: ``O_CREAT | O_EXCL``),
  so that a planted file or symbolic link is never written through.
* :func:`write_output` writes a file the user asked for (a report, an exported
  schedule): it refuses, in one line, a target that is not a regular file
  (a folder, a device such as ``/dev/null``, a symbolic link, a pipe), an
  SQLite database (a store), an adatune checkpoint, or one of the paths the
  caller protects (the store being read); it then writes a temporary file
  beside the target, flushes it, and renames it over the target, so the target
  is the old file or the new one, never a torn one.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
import zipfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO

from adatune.errors import ConfigError

_SQLITE_MAGIC = b"SQLite format 3\x00"
_ZIP_MAGIC = b"PK\x03\x04"
#: What an adatune checkpoint's pickle says it is (``checkpoint.FORMAT``).
_CHECKPOINT_MARK = b"adatune-checkpoint"
#: Bytes of a zip archive's ``data.pkl`` read to tell an adatune checkpoint.
_PICKLE_BYTES = 1 << 20


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


@contextlib.contextmanager
def temporary_beside(target: Path) -> Iterator[tuple[IO[bytes], Path]]:
    """A new temporary file in ``target``'s folder, open for writing: ``(file, path)``.

    Its name (``.NAME.XXXXXXXX.tmp``) is unpredictable and it is created
    exclusively, so nothing planted there is followed; it gets the permissions
    a new file gets (0666 less the umask). On an error inside the block the
    file is removed; on success the caller renames it (or removes it).
    """
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp",
                                dir=target.parent if str(target.parent) else ".")
    tmp = Path(name)
    with contextlib.suppress(OSError):  # a file system without permissions keeps its own
        os.fchmod(fd, 0o666 & ~_umask())
    try:
        with os.fdopen(fd, "wb") as f:
            yield f, tmp
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def _kind(mode: int) -> str | None:
    """What a file that is not a regular file is (None for a regular file)."""
    for test, name in ((stat.S_ISREG, None), (stat.S_ISDIR, "a directory"),
                       (stat.S_ISLNK, "a symbolic link"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISFIFO, "a named pipe"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


def _is_checkpoint(path: Path, head: bytes) -> bool:
    """An adatune checkpoint: a torch zip archive whose pickle names adatune's format."""
    if not head.startswith(_ZIP_MAGIC):
        return False
    try:
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                if info.filename == "data.pkl" or info.filename.endswith("/data.pkl"):
                    with archive.open(info) as pickled:
                        return _CHECKPOINT_MARK in pickled.read(_PICKLE_BYTES)
    except (OSError, zipfile.BadZipFile, RuntimeError, ValueError, EOFError):
        return False
    return False


def check_output(path: str | os.PathLike[str], *,
                 protected: Iterable[tuple[str | os.PathLike[str], str]] = ()) -> Path:
    """``path`` as a Path, if :func:`write_output` may write it; else one ConfigError line.

    ``protected`` pairs a path with what it is (``(store_path, "the store the runs are read
    from")``): writing over it is refused too, however it is spelled.
    """
    target = Path(path)
    try:
        found = os.lstat(target)
    except FileNotFoundError:
        return target
    except OSError as exc:
        raise ConfigError(f"cannot write {target}: {exc.strerror or exc}") from None
    kind = _kind(found.st_mode)
    if kind is not None:
        raise ConfigError(f"refusing to write {target}: it is {kind}, not a regular file "
                          "(adatune replaces only regular files)")
    for other, what in protected:
        with contextlib.suppress(OSError):
            if os.path.samefile(target, other):
                raise ConfigError(f"refusing to write {target}: it is {what}")
    try:
        with open(target, "rb") as f:
            head = f.read(len(_SQLITE_MAGIC))
    except OSError:
        head = b""  # unreadable: writing it is the file system's to refuse
    if head == _SQLITE_MAGIC:
        raise ConfigError(f"refusing to write {target}: it is an SQLite database (an adatune "
                          "store?); choose another file")
    if _is_checkpoint(target, head):
        raise ConfigError(f"refusing to write {target}: it is an adatune checkpoint; choose "
                          "another file")
    return target


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_output(path: str | os.PathLike[str], data: bytes, *,
                 protected: Iterable[tuple[str | os.PathLike[str], str]] = ()) -> Path:
    """Write ``data`` to ``path`` whole (see the module doc); returns the path.

    Refusals (:func:`check_output`) are :class:`~adatune.errors.ConfigError`; a
    file system error (a read-only folder, a full disk) is ``OSError`` and leaves
    nothing behind. A new file gets the usual permissions (0666 less the umask);
    one written over keeps its own.
    """
    target = check_output(path, protected=protected)
    try:
        mode: int | None = stat.S_IMODE(os.stat(target).st_mode)
    except OSError:
        mode = None
    with temporary_beside(target) as (f, tmp):
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        check_output(target, protected=protected)  # as it is now, just before the rename
        os.replace(tmp, target)
    return target


__all__ = ["check_output", "fsync_path", "temporary_beside", "write_output"]
