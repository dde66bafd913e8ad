"""Checkpoints: written whole and durably, read without ever running code from them.

A run's folder, ``<checkpoint_dir>/run-ID/``, holds:

* ``last.pt``: the full state (model, optimizer, tuner or schedule, RNG streams,
  the loop's progress, and every epoch and sampled step the run recorded). It
  is written at the end of every epoch, and mid-epoch on SIGTERM or SIGUSR1
  (then with the epoch's progress under ``partial``).
* ``best.pt``: the weights of the best validation epoch, and the run's config.
* ``run.json``: which run of which store the folder belongs to, and the host
  that last trained it.
* ``owner.lock``: locked while a process trains the run (``owner.json``
  names that process).

Format: plain tensors, numbers, strings, lists and dicts, so :func:`load`
reads a file with ``torch.load(weights_only=True)``: a file that holds anything
else (a pickled object that would run code) is refused without running it.
Every problem reading a file is one :class:`CheckpointError`,
``cannot read checkpoint PATH: ...``.

:func:`save` writes a temporary file beside the target, flushes it to disk and
renames it over the target: a reader (or a run killed, or a power cut) sees the
old file or the new one, never a torn one. ``last.pt`` is on disk before the
epoch is committed to the store; since it carries every epoch's records,
``--resume`` restores any epoch a power cut took back from an SQLite store in
``synchronous=NORMAL`` mode.

torch is imported only by the functions that need it (the command line's light
commands import this module).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import socket
import uuid
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from adatune._durable import fsync_path
from adatune.errors import CheckpointError, ConfigError, RunBusy
from adatune.store.records import EpochRecord, StepRecord

FORMAT = "adatune-checkpoint"
VERSION = 2
KINDS = ("last", "best")
RUN_DIR_PREFIX = "run-"
OWNER_FILE = "owner.json"
LOCK_FILE = "owner.lock"
MARKER_FILE = "run.json"
#: What a run folder may hold; ``runs delete`` removes these and nothing else.
RUN_FILES = ("last.pt", "best.pt", OWNER_FILE, LOCK_FILE, MARKER_FILE)

# Keys (and their kinds) a checkpoint of each kind must have.
_NUMBER = (int, float)
_LAST_KEYS: dict[str, tuple[type, ...]] = {
    "epoch": (int,), "step": (int,), "elapsed": _NUMBER, "model": (dict,), "optim": (dict,),
    "rng": (dict,),
}
_BEST_KEYS: dict[str, tuple[type, ...]] = {"epoch": (int,), "model": (dict,)}


def run_dir(checkpoint_dir: str | os.PathLike[str], run_id: int) -> Path:
    """Where run ``run_id``'s checkpoints live under ``checkpoint_dir``."""
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
    before = _read_json(folder / MARKER_FILE)
    whose = (f" (run {before.get('run_id')} of {before.get('store')})"
             if isinstance(before, dict) and before.get("store") else "")
    raise ConfigError(f"checkpoint folder {folder} already holds an earlier run's files{whose}, "
                      f"and new run {run_id} of {store} would overwrite them: give another "
                      "--checkpoint-dir (one per store), or delete the folder")


# --------------------------------------------------------------------------- files


def save(obj: Mapping[str, Any], path: str | os.PathLike[str], *, kind: str) -> None:
    """Write a checkpoint atomically and durably (see the module doc)."""
    import torch

    if kind not in KINDS:
        raise ValueError(f"Invalid checkpoint kind: {kind!r} (expected one of {KINDS})")
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save({**obj, "format": FORMAT, "version": VERSION, "kind": kind}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_path(path.parent)


def _reason(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    found = re.search(r"Unsupported (?:global|operand)[^.]*", text)
    if "Weights only load failed" in text or found:
        what = found.group(0) if found else "an object that is not a tensor or plain data"
        return (f"it holds Python objects, not only tensors and plain data ({what}); adatune "
                "loads checkpoints with weights_only=True and never runs code from them")
    if isinstance(exc, FileNotFoundError):
        return "no such file"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return text


def read_bytes(path: str | os.PathLike[str]) -> bytes:
    """A checkpoint file's bytes (to :func:`load` elsewhere: another rank, say)."""
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: {_reason(exc)}") from None


def load(path: str | os.PathLike[str], *, kind: str = "last", map_location: Any = None,
         file: IO[bytes] | None = None) -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True`` and check it is a ``kind`` checkpoint.

    ``file``: read the checkpoint from this binary file object instead (the
    bytes of ``path`` as another process read them; ``path`` names it in
    messages). Raises :class:`CheckpointError` for a file that cannot be read,
    holds anything but tensors and plain data, or lacks the keys of its kind
    (a ``best.pt`` copied over ``last.pt``, say).
    """
    import torch

    path = Path(path)
    try:
        with warnings.catch_warnings():  # e.g. about pickle protocols: the error says it all
            warnings.simplefilter("ignore")
            state = torch.load(path if file is None else file, map_location=map_location,
                               weights_only=True)
    except Exception as exc:  # noqa: BLE001 - every way a file can be bad is a user problem
        raise CheckpointError(f"cannot read checkpoint {path}: {_reason(exc)}") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"cannot read checkpoint {path}: it holds a "
                              f"{type(state).__name__}, not an adatune checkpoint")
    found = state.get("kind")
    if found is not None and found != kind:
        raise CheckpointError(f"cannot read checkpoint {path}: it is a {found!r} checkpoint "
                              f"({found}.pt), not a {kind!r} one ({kind}.pt)")
    if state.get("format", FORMAT) != FORMAT or not isinstance(state.get("version", 1), int):
        raise CheckpointError(f"cannot read checkpoint {path}: not an adatune checkpoint")
    if state.get("version", 1) > VERSION:
        raise CheckpointError(f"cannot read checkpoint {path}: written by a newer adatune "
                              f"(format {state['version']}; this one reads up to {VERSION})")
    for key, types in (_LAST_KEYS if kind == "last" else _BEST_KEYS).items():
        if key not in state:
            hint = " (a best.pt holds only weights)" if kind == "last" and key == "optim" else ""
            raise CheckpointError(f"cannot read checkpoint {path}: it has no {key!r}{hint}")
        if isinstance(state[key], bool) or not isinstance(state[key], types):
            raise CheckpointError(f"cannot read checkpoint {path}: its {key!r} is a "
                                  f"{type(state[key]).__name__}")
    return state


@contextlib.contextmanager
def restoring(path: str | os.PathLike[str]) -> Iterator[None]:
    """Turn a state that does not fit the run (missing keys, wrong shapes) into one line."""
    try:
        yield
    except CheckpointError:
        raise
    except (KeyError, IndexError, TypeError, ValueError, RuntimeError, AttributeError) as exc:
        reason = " ".join(str(exc).split())[:300] or type(exc).__name__
        raise CheckpointError(f"cannot read checkpoint {path}: it does not fit this run "
                              f"({type(exc).__name__}: {reason})") from None


# ------------------------------------------------------------------------ history


@dataclass
class History:
    """Every epoch and sampled step of a run, as the checkpoint carries them.

    ``best[i]`` says whether epoch ``i`` was the run's best so far (the loop
    decides it; the store records it). ``lrs[i]`` is the LR of every step of
    epoch ``i`` (None where unknown: checkpoints written before they were
    recorded).
    """

    epochs: list[dict[str, Any]] = field(default_factory=list)
    steps: list[dict[str, Any]] = field(default_factory=list)
    best: list[bool | None] = field(default_factory=list)
    lrs: list[list[float] | None] = field(default_factory=list)

    def add(self, epoch: EpochRecord, steps: list[StepRecord], best: bool | None = None,
            lrs: Sequence[float] | None = None) -> None:
        self.epochs.append(dataclasses.asdict(epoch))
        self.steps.extend(dataclasses.asdict(s) for s in steps)
        self.best.append(best)
        self.lrs.append(None if lrs is None else [float(v) for v in lrs])

    def state(self) -> dict[str, Any]:
        return {"epochs": self.epochs, "steps": self.steps, "best": self.best, "lrs": self.lrs}

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> History:
        """From a checkpoint (its ``history``; older ones have the last epoch's ``pending``)."""
        if isinstance(state.get("history"), dict):
            history = state["history"]
            epochs = list(history.get("epochs", []))
            best = list(history.get("best", [None] * len(epochs)))
            lrs = list(history.get("lrs") or [])[:len(epochs)]
            lrs += [None] * (len(epochs) - len(lrs))
            return cls(epochs, list(history.get("steps", [])), best, lrs)
        pending = state.get("pending")
        if isinstance(pending, dict) and pending.get("epoch"):
            return cls([pending["epoch"]], list(pending.get("steps", [])),
                       [pending.get("best")], [pending.get("lrs")])
        return cls()

    def after(self, epoch: int) -> list[tuple[EpochRecord, list[StepRecord], bool | None,
                                              list[float] | None]]:
        """The epochs after ``epoch`` with their steps, best flags and step LRs (what a store
        lacks)."""
        out = []
        for e, best, lrs in zip(self.epochs, self.best, self.lrs):
            if e["epoch"] > epoch:
                steps = [StepRecord(**s) for s in self.steps if s["epoch"] == e["epoch"]]
                out.append((EpochRecord(**e), steps, best, lrs))
        return out


# --------------------------------------------------------------- mid-epoch state


class Passes:
    """Endless passes over ``make_pass()`` whose position can be saved and restored.

    Each pass draws its order from ``generator`` when it starts; the position is
    the generator's state at the start of the current pass and the number of
    items taken from it, so a restored iterator replays that pass's order and
    continues where the saved one stood.
    """

    def __init__(self, make_pass: Any, generator: Any,
                 position: Mapping[str, Any] | None = None) -> None:
        self._make, self._gen = make_pass, generator
        self._it: Iterator[Any] | None = None
        self._start: Any = None
        self._used = 0
        if position:
            generator.set_state(position["start"].cpu())
            self._open()
            for _ in range(int(position["used"])):
                next(self._it)
            self._used = int(position["used"])

    def _open(self) -> None:
        self._start = self._gen.get_state()
        self._it = iter(self._make())
        self._used = 0

    def __iter__(self) -> Passes:
        return self

    def __next__(self) -> Any:
        if self._it is None:
            self._open()
        for _ in range(2):
            try:
                item = next(self._it)
            except StopIteration:
                self._open()
                continue
            self._used += 1
            return item
        raise ValueError("Invalid dataset: a pass over it yields nothing (is it empty?)")

    def position(self) -> dict[str, Any] | None:
        """Where the iterator stands (None before its first item)."""
        return None if self._it is None else {"start": self._start, "used": self._used}


# ------------------------------------------------------------------- the folder


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
            raise RunBusy(f"run {run_id} is still running{_owner_text(self.folder)}; "
                          "stop it first (or wait for it)")
        for earlier in (OWNER_FILE, MARKER_FILE):  # owner.json goes when a run ends
            before = _read_json(self.folder / earlier)
            if isinstance(before, dict) and before.get("host"):
                self.previous_host = before["host"]
                break
        marker = {"run_id": run_id, "store": store, "host": socket.gethostname()}
        _write_json(self.folder / MARKER_FILE, marker)
        _write_json(self.folder / OWNER_FILE, {"host": socket.gethostname(), "pid": os.getpid(),
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
    owner = _read_json(folder / OWNER_FILE)  # a folder of an older adatune: no lock file
    return owner is not None and process_may_be_alive(owner)


def _owner_text(folder: Path) -> str:
    owner = _read_json(folder / OWNER_FILE)
    if not isinstance(owner, dict):
        return ""
    return f" (pid {owner.get('pid')} on {owner.get('host')})"


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _write_json(path: Path, value: Any) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.write_text(json.dumps(value))
    os.replace(tmp, path)


# --------------------------------------------------------------------- deleting


@dataclass(frozen=True)
class FolderOutcome:
    """What became of one deleted run's checkpoint folder."""

    run_id: int
    folder: str
    state: str  # removed | kept | absent | left (other files in it) | failed
    note: str | None = None


def recorded_folder(run: Any) -> Path | None:
    """A run's checkpoint folder as its record names it (None for runs that train nothing)."""
    folder = (run.summary or {}).get("checkpoint_dir")
    if folder:
        return Path(folder)
    root = (run.config or {}).get("checkpoint_dir")
    if root and run.kind in ("train", "baseline", "probe", "sweep"):
        return run_dir(root, run.id)
    return None


def remove_folder(run: Any, store: str) -> FolderOutcome:
    """Remove a deleted run's checkpoint folder: the files a run writes, then the folder.

    A folder another run or store claims (its ``run.json``) is kept; other
    files in it are left, and the folder with them.
    """
    folder = recorded_folder(run)
    if folder is None or not folder.is_dir():
        return FolderOutcome(run.id, str(folder or "-"), "absent")
    marker = _read_json(folder / MARKER_FILE)
    if isinstance(marker, dict) and (marker.get("run_id") != run.id
                                     or marker.get("store") not in (None, store)):
        return FolderOutcome(run.id, str(folder), "kept",
                             f"it belongs to run {marker.get('run_id')} of {marker.get('store')}")
    try:
        for entry in folder.iterdir():
            if entry.name in RUN_FILES or re.fullmatch(r"\..+\.tmp", entry.name):
                entry.unlink()
        folder.rmdir()
    except OSError as exc:
        left = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
        if left and not isinstance(exc, PermissionError):
            return FolderOutcome(run.id, str(folder), "left",
                                 f"it holds other files: {', '.join(left[:5])}")
        return FolderOutcome(run.id, str(folder), "failed", exc.strerror or str(exc))
    return FolderOutcome(run.id, str(folder), "removed")


@dataclass(frozen=True)
class Deleted:
    """What :func:`delete_run` deleted: the runs (the run, then its descendants) and folders."""

    runs: tuple[Any, ...]
    folders: tuple[FolderOutcome, ...]
    kept: tuple[str, ...] = ()  # the folders left on purpose (keep_checkpoints)


def delete_run(store: Any, run_id: int, *, keep_checkpoints: bool = False) -> Deleted:
    """Delete a run, its epochs, steps and child runs, and their checkpoint folders.

    A run whose folder a live process holds (it is training) is refused with
    :class:`RunBusy`, before anything is deleted. With ``keep_checkpoints``
    the folders stay, and :attr:`Deleted.kept` names them.
    """
    family = [store.get_run(run_id, steps=False).run]
    frontier = [run_id]
    while frontier:
        children = store.list_runs(parent_id=frontier[0])
        frontier = frontier[1:] + [c.id for c in children]
        family += children
    for run in family:
        folder = recorded_folder(run)
        if folder is not None and folder.is_dir() and folder_in_use(folder):
            raise RunBusy(f"run {run.id} is still running{_owner_text(folder)}; stop it before "
                          "deleting it (nothing was deleted)")
    deleted = tuple(store.delete_run(run_id))
    folders = [recorded_folder(r) for r in deleted]
    if keep_checkpoints:
        kept = tuple(str(f) for f in folders if f is not None and f.is_dir())
        return Deleted(deleted, (), kept)
    return Deleted(deleted, tuple(remove_folder(r, store.location) for r in deleted))


__all__ = [
    "FORMAT",
    "KINDS",
    "VERSION",
    "Deleted",
    "FolderOutcome",
    "History",
    "Passes",
    "delete_run",
    "RunLock",
    "folder_in_use",
    "load",
    "read_bytes",
    "recorded_folder",
    "remove_folder",
    "restoring",
    "run_dir",
    "save",
]
