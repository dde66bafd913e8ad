"""Reading the files a user names (schedules, search spaces): bounded, and as given.

:func:`open_input` opens the path itself, without resolving it first, so that a
pipe (``--from-file <(cat schedule.csv)``, whose ``/dev/fd/N`` names a pipe
that resolving would lose) reads like a file. Only a regular file or a pipe
is read: a folder, a device (``/dev/zero``), a socket is refused in one line.
What is read is bounded: a file larger than the limit is refused before it is
read, a pipe as soon as it has given more than the limit. Standard library only.
"""

from __future__ import annotations

import io
import os
import stat
from typing import BinaryIO

from adatune.errors import ConfigError


def _mb(n: int) -> str:
    return f"{n / 2**20:g} MB"


class _Bounded(io.RawIOBase):
    """A raw stream that refuses (ConfigError) to give more than ``limit`` bytes."""

    def __init__(self, raw: BinaryIO, limit: int, what: str) -> None:
        super().__init__()
        self._raw, self._left, self._limit, self._what = raw, limit, limit, what

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # noqa: ANN001 - a writable buffer
        view = memoryview(buffer)
        n = self._raw.readinto(view[:max(1, min(len(view), self._left + 1))])
        if n:
            self._left -= n
            if self._left < 0:
                raise ConfigError(f"{self._what} is larger than the limit of "
                                  f"{_mb(self._limit)}")
        return n or 0

    def close(self) -> None:
        try:
            self._raw.close()
        finally:
            super().close()


def open_input(path: str | os.PathLike[str], what: str, limit: int, *,
               missing: str | None = None) -> BinaryIO:
    """``path`` open for reading, bounded to ``limit`` bytes (see the module doc).

    ``what`` names the file in messages (``schedule file s.csv``); ``missing``
    is the message for a file that is not there. Raises
    :class:`~adatune.errors.ConfigError`: a missing file, one that cannot be
    opened (a symbolic link loop, no permission), one that is not a regular file
    or a pipe, or a regular file larger than ``limit``.
    """
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError as exc:
        raise ConfigError(missing or f"cannot read the {what}: {exc.strerror}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read the {what}: {exc.strerror or exc}") from None
    try:
        found = os.fstat(fd)
        if stat.S_ISDIR(found.st_mode):
            raise ConfigError(f"{what} is a directory")
        if not (stat.S_ISREG(found.st_mode) or stat.S_ISFIFO(found.st_mode)):
            raise ConfigError(f"{what} is not a regular file or a pipe (adatune reads "
                              "nothing else)")
        if stat.S_ISREG(found.st_mode) and found.st_size > limit:
            raise ConfigError(f"{what} is {_mb(found.st_size)}, larger than the limit of "
                              f"{_mb(limit)}")
        raw = io.FileIO(fd, "rb", closefd=True)
    except BaseException:
        os.close(fd)
        raise
    return io.BufferedReader(_Bounded(raw, limit, what), buffer_size=1 << 16)


def read_text(path: str | os.PathLike[str], what: str, limit: int) -> str:
    """The whole of a small text file (UTF-8, a byte-order mark dropped), bounded."""
    with open_input(path, what, limit) as f:
        data = f.read()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ConfigError(f"{what} is not UTF-8 text") from None


__all__ = ["open_input", "read_text"]
