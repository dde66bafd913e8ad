"""Checkpoints: written whole and durably, read without ever running code from them.

A run's folder, ``<checkpoint_dir>/run-ID/`` (:mod:`adatune.running.folder`), holds:

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

:func:`save` writes a temporary file beside the target (an unpredictable name,
created exclusively), flushes it to disk and renames it over the target; a
file system that refuses it (a full disk) is one line, ``cannot write checkpoint
PATH: no space left on FOLDER``: a reader (or a run killed, or a power cut) sees the
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
import errno
import math
import os
import re
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from adatune._durable import fsync_path, temporary_beside
from adatune.errors import CheckpointError
from adatune.store.records import EpochRecord, StepRecord

FORMAT = "adatune-checkpoint"
VERSION = 2
KINDS = ("last", "best")

# Keys (and their kinds) a checkpoint of each kind must have.
_NUMBER = (int, float)
_LAST_KEYS: dict[str, tuple[type, ...]] = {
    "epoch": (int,), "step": (int,), "elapsed": _NUMBER, "model": (dict,), "optim": (dict,),
    "rng": (dict,),
}
_BEST_KEYS: dict[str, tuple[type, ...]] = {"epoch": (int,), "model": (dict,)}


# --------------------------------------------------------------------------- files


def save(obj: Mapping[str, Any], path: str | os.PathLike[str], *, kind: str) -> None:
    """Write a checkpoint atomically and durably (see the module doc)."""
    import torch

    if kind not in KINDS:
        raise ValueError(f"Invalid checkpoint kind: {kind!r} (expected one of {KINDS})")
    path = Path(path)
    try:
        with temporary_beside(path) as (f, tmp):  # removed again on any error
            torch.save({**obj, "format": FORMAT, "version": VERSION, "kind": kind}, f)
            f.flush()
            os.fsync(f.fileno())
            os.replace(tmp, path)
    except Exception as exc:
        reason = _write_failure(exc, path)
        if reason is None:
            raise
        raise CheckpointError(f"cannot write checkpoint {path}: {reason}") from None
    fsync_path(path.parent)


def _write_failure(exc: BaseException, path: Path) -> str | None:
    """Why the file system refused a checkpoint, in a few words; None if it did not.

    torch reports a short write as ``unexpected pos N vs M``; the system's error
    (a full disk, say) is the exception it happened in.
    """
    seen: set[int] = set()
    found: BaseException | None = exc
    while found is not None and id(found) not in seen:
        seen.add(id(found))
        if isinstance(found, OSError):
            if found.errno == errno.ENOSPC:
                return f"no space left on {path.parent}"
            if found.errno == getattr(errno, "EDQUOT", None):
                return f"disk quota exceeded on {path.parent}"
            return found.strerror or " ".join(str(found).split())
        found = found.__cause__ or found.__context__
    return None


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


def _whole(value: Any, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _real(value: Any, *, finite: bool = False, optional: bool = True) -> bool:
    if value is None:
        return optional
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return not finite or math.isfinite(value)


def check_progress(state: Mapping[str, Any], path: str | os.PathLike[str], *, epochs: int,
                   steps_per_epoch: int) -> None:
    """Check every field of a ``last`` checkpoint's progress against the run it resumes.

    The run trains ``epochs`` epochs of ``steps_per_epoch`` steps. The epoch,
    the step (``epoch * steps_per_epoch``, plus the steps of an epoch in
    progress), times, the best epoch so far, the count of epochs without
    improvement and every recorded epoch and step must fit it: a file that was
    tampered with (or belongs to another run) is refused in one line,
    :class:`CheckpointError`, before anything of it is used or written to the
    store. The weights and the optimizer's state are checked as they are loaded
    (:func:`restoring`).
    """
    def bad(what: str) -> CheckpointError:
        return CheckpointError(f"cannot read checkpoint {path}: it does not fit this run "
                               f"({what})")

    epoch, step = state.get("epoch"), state.get("step")
    if not _whole(epoch, 0, epochs):
        raise bad(f"its epoch {_shown(epoch)} is not a whole number from 0 to {epochs}")
    partial = state.get("partial")
    if partial is not None and not isinstance(partial, dict):
        raise bad("its 'partial' is not a table")
    done = 0
    if partial:
        done = partial.get("batches", 0)
        if epoch >= epochs or not _whole(done, 0, steps_per_epoch):
            raise bad(f"an epoch in progress after epoch {epoch} of {epochs}, at step "
                      f"{_shown(done)} of {steps_per_epoch}")
        for key in ("loss_sum", "lr_sum", "lr_max", "seconds", "cpu_seconds"):
            if not _real(partial.get(key)):
                raise bad(f"its epoch in progress has {key} {_shown(partial.get(key))}")
        for key in ("seen", "n_steps", "nonfinite_before"):
            if not (partial.get(key) is None or _whole(partial.get(key), 0, 2**62)):
                raise bad(f"its epoch in progress has {key} {_shown(partial.get(key))}")
    if step != epoch * steps_per_epoch + done:
        raise bad(f"its step {_shown(step)} is not where epoch {epoch}"
                  f"{f' and {done} steps' if done else ''} of {steps_per_epoch} steps end")
    for key in ("elapsed", "cpu"):
        if not _real(state.get(key), finite=True, optional=key == "cpu") or \
                (state.get(key) or 0) < 0:
            raise bad(f"its {key} {_shown(state.get(key))} is not a time in seconds")
    for key in ("initial_loss", "best_val_acc", "best_val_loss", "test_at_best",
                "test_loss_at_best"):
        if not _real(state.get(key)):
            raise bad(f"its {key} {_shown(state.get(key))} is not a number")
    best = state.get("best_epoch")
    if best is not None and not _whole(best, 1, epoch):
        raise bad(f"its best epoch {_shown(best)} is not one of its {epoch} epochs")
    if not (state.get("bad_epochs") is None or _whole(state.get("bad_epochs"), 0, epoch)):
        raise bad(f"its count of epochs without improvement {_shown(state.get('bad_epochs'))} "
                  f"is not from 0 to {epoch}")
    try:
        history = History.from_state(state)
        previous = 0
        for e in history.epochs:
            record = EpochRecord(**e)
            if not _whole(record.epoch, previous + 1, epoch) or not all(
                    _real(getattr(record, f)) for f in _EPOCH_NUMBERS) or not _whole(
                    record.nonfinite_hypergradients, 0, 2**62):
                raise bad(f"its recorded epoch {_shown(record.epoch)} (after {previous}, up to "
                          f"{epoch}) or that epoch's numbers")
            previous = record.epoch
        last = -1
        for s in history.steps:
            record = StepRecord(**s)
            if not _whole(record.step, last + 1, max(step - 1, 0)) or \
                    not _whole(record.epoch, 1, epochs):
                raise bad(f"a recorded step {_shown(record.step)} of epoch "
                          f"{_shown(record.epoch)} does not fit step {step}")
            last = record.step
        if len(history.best) != len(history.epochs) or not all(
                b is None or isinstance(b, bool) for b in history.best):
            raise bad("its record of the best epochs does not match its epochs")
        for lrs in history.lrs:
            if lrs is not None and (not isinstance(lrs, list) or len(lrs) > steps_per_epoch
                                    or not all(_real(v, optional=False) for v in lrs)):
                raise bad("a recorded epoch's learning rates are not one number per step")
    except TypeError as exc:  # a record with fields it should not have, or lacking some
        raise bad(f"its history: {' '.join(str(exc).split())[:200]}") from None


_EPOCH_NUMBERS = ("lr", "lr_mean", "mu", "hyper_lr", "train_loss", "train_acc", "val_loss",
                  "val_acc", "test_loss", "test_acc", "elapsed_s")


def _shown(value: Any) -> str:
    """A value as an error line quotes it: at most 40 characters."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10**30:
        return f"a {len(str(abs(value)))}-digit number"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


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


__all__ = ["FORMAT", "KINDS", "VERSION", "History", "check_progress", "load", "read_bytes",
           "restoring", "save"]
