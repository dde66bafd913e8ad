"""A run's checkpoint folder, ``<checkpoint_dir>/run-ID/``: its name, its files, its lock.

Without a ``checkpoint_dir`` a store's runs go to a folder of that store's own
(:func:`default_checkpoint_dir`): two stores never share one, and a run records
the folder it used, so where a store's default lies never moves a run's files.

The folder holds ``last.pt`` and ``best.pt`` (:mod:`adatune.running.checkpoint`),
``run.json`` (which run of which store the folder belongs to, and the host
that last trained it) and ``owner.lock``, locked while a process trains the
run (``owner.json`` names that process). :class:`RunLock` takes the folder
for one process; :func:`folder_in_use` asks whether a live process has it.

Nothing here imports torch (the command line's light commands use it).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
from pathlib import Path
from typing import Any

from adatune._durable import temporary_beside
from adatune.errors import ConfigError, RunBusy
from adatune.running.runtypes import CHECKPOINT_SUFFIX

RUN_DIR_PREFIX = "run-"
OWNER_FILE = "owner.json"
LOCK_FILE = "owner.lock"
MARKER_FILE = "run.json"
#: What a run folder may hold; ``runs delete`` removes these and nothing else.
RUN_FILES = ("last.pt", "best.pt", OWNER_FILE, LOCK_FILE, MARKER_FILE)


def checkpoint_root(checkpoint_dir: str | os.PathLike[str] | None, store: Any = None) -> Path:
    """The absolute folder that holds the runs' folders: ``checkpoint_dir``, or ``store``'s own.

    ``store`` is a path or URL, an open store, or None for the default store
    (see :func:`default_checkpoint_dir`).
    """
    if not checkpoint_dir:
        return default_checkpoint_dir(store)
    path = Path(checkpoint_dir)
    try:
        return path.resolve()
    except (OSError, RuntimeError) as exc:  # a symbolic link loop
        reason = getattr(exc, "strerror", None) or exc
        raise ConfigError(f"invalid checkpoint_dir: {path} ({reason})") from None


def default_checkpoint_dir(store: Any = None) -> Path:
    """Where ``store``'s runs keep their checkpoints unless given a ``checkpoint_dir``.

    Beside a file store, the store's name with ``-runs``: ``./adatune.db`` has
    ``./adatune-runs/``, ``~/exp/sweeps.db`` has ``~/exp/sweeps-runs/``. Any
    other store (a database server, an in-memory SQLite) has a folder in the
    current directory keyed by its identity: its kind, host, port and database,
    never its user or password (``adatune-runs-adatune-1a2b3c4d/`` for the
    database ``adatune``). ``store`` is a path or URL, an open store, or None
    (the default store, ``./adatune.db``).
    """
    from adatune.store import DEFAULT_STORE
    from adatune.store.connection import resolve_url, sqlite_path

    while hasattr(store, "spec"):  # a LazyStore: the store it stands for
        store = store.spec
    url = store.url if hasattr(store, "url") else resolve_url(store or DEFAULT_STORE)
    path = sqlite_path(url)
    if path is not None:
        return path.with_name(path.stem + CHECKPOINT_SUFFIX).resolve()
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    identity = f"{parsed.get_backend_name()}://{parsed.host or ''}:{parsed.port or ''}/" \
               f"{parsed.database or ''}"
    key = hashlib.sha256(identity.encode()).hexdigest()[:8]
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", Path(parsed.database or "memory").name)[:40]
    return Path(f"adatune{CHECKPOINT_SUFFIX}-{name.strip('.-') or 'db'}-{key}").resolve()


def run_dir(checkpoint_dir: str | os.PathLike[str], run_id: int) -> Path:
    """Where run ``run_id``'s checkpoints live under ``checkpoint_dir``: ``run-ID``."""
    return Path(checkpoint_dir) / f"{RUN_DIR_PREFIX}{run_id}"


def check_unused(folder: Path, run_id: int, store: str) -> None:
    """Refuse to start new run ``run_id`` of ``store`` in a folder an earlier run left.

    Run ids count up per store, so a second store (or one deleted and made again)
    gives its runs the ids of the first's, and their folders under one
    ``--checkpoint-dir`` would meet: the new run would overwrite what the
    earlier one finished.
    """
    if not any((folder / name).exists() for name in ("last.pt", "best.pt", MARKER_FILE)):
        return
    before = read_json(folder / MARKER_FILE)
    whose = (f" (run {before.get('run_id')} of {before.get('store')})"
             if isinstance(before, dict) and before.get("store") else "")
    raise ConfigError(f"checkpoint folder {folder} already holds an earlier run's files{whose}, "
                      f"and new run {run_id} of {store} would overwrite them: give another "
                      "checkpoint_dir= (one per store), or delete the folder")


class RunLock:
    """The process training a run: holds ``owner.lock`` locked while it does.

    The lock is the operating system's (``flock``), so it goes with the process
    however that ends, SIGKILL included; ``owner.json`` names the process for
    messages, and ``run.json`` ties the folder to its run and store. Where
    ``flock`` does not exist (Windows), ``owner.json`` and the process id
    decide, as :func:`adatune._process.process_may_be_alive` does.
    """

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder)
        self._fd: int | None = None
        self.held = False
        #: The host named by the folder's owner.json before this process took it.
        self.previous_host: str | None = None

    def acquire(self, run_id: int, store: str) -> RunLock:
        """Take the folder (creating it), or raise RunBusy naming the process that has it."""
        self.folder.mkdir(parents=True, exist_ok=True)
        if not _take_lock(self):
            raise RunBusy(f"run {run_id} is still running{owner_text(self.folder)}; "
                          "stop it first (or wait for it)")
        for earlier in (OWNER_FILE, MARKER_FILE):  # owner.json goes when a run ends
            before = read_json(self.folder / earlier)
            if isinstance(before, dict) and before.get("host"):
                self.previous_host = before["host"]
                break
        marker = {"run_id": run_id, "store": store, "host": socket.gethostname()}
        write_json(self.folder / MARKER_FILE, marker)
        write_json(self.folder / OWNER_FILE, {"host": socket.gethostname(), "pid": os.getpid(),
                                              "run_id": run_id})
        self.held = True
        return self

    def release(self) -> None:
        if not self.held:
            return
        (self.folder / OWNER_FILE).unlink(missing_ok=True)
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the lock
            self._fd = None
        self.held = False


def _take_lock(lock: RunLock) -> bool:
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        return not folder_in_use(lock.folder)
    fd = os.open(lock.folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return False
    lock._fd = fd
    return True


def folder_in_use(folder: str | os.PathLike[str]) -> bool:
    """Whether a live process holds the run folder (see :class:`RunLock`)."""
    from adatune._process import process_may_be_alive

    folder = Path(folder)
    lock_path = folder / LOCK_FILE
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        fcntl = None
    if fcntl is not None and lock_path.exists():
        fd = os.open(lock_path, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return True
        finally:
            os.close(fd)
        return False
    owner = read_json(folder / OWNER_FILE)  # a folder of an older adatune: no lock file
    return owner is not None and process_may_be_alive(owner)




def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def write_json(path: Path, value: Any) -> None:
    with temporary_beside(path) as (f, tmp):  # a new file, never one planted there
        f.write(json.dumps(value).encode())
        f.close()
        os.replace(tmp, path)


def owner_text(folder: Path) -> str:
    """`` (pid P on HOST)``: the process that holds ``folder``, for messages ('' if unknown)."""
    owner = read_json(folder / OWNER_FILE)
    if not isinstance(owner, dict):
        return ""
    return f" (pid {owner.get('pid')} on {owner.get('host')})"


__all__ = ["MARKER_FILE", "RUN_FILES", "RunLock", "check_unused", "checkpoint_root",
           "default_checkpoint_dir", "folder_in_use", "owner_text", "read_json", "run_dir"]
