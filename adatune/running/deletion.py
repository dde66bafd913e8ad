"""Deleting runs: the run, its child runs, and their checkpoint folders.

``adatune runs delete`` calls :func:`delete_run`. A folder is removed only
when it is the deleted run's own (named ``run-ID``, not a link, its
``run.json`` naming that run of this store: what the store records of it is
not trusted) and holds nothing but the files a run writes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from adatune.errors import RunBusy
from adatune.running.folder import (
    MARKER_FILE,
    RUN_FILES,
    folder_in_use,
    owner_text,
    read_json,
    run_dir,
)
from adatune.store.protocols import RunCatalog
from adatune.store.records import RunRecord


@dataclass(frozen=True)
class FolderOutcome:
    """What became of one deleted run's checkpoint folder."""

    run_id: int
    folder: str
    state: str  # removed | kept | absent | left (other files in it) | failed
    note: str | None = None


def recorded_folder(run: RunRecord) -> Path | None:
    """A run's checkpoint folder as its record names it (None for runs that train nothing)."""
    folder = (run.summary or {}).get("checkpoint_dir")
    if folder:
        return Path(folder)
    root = (run.config or {}).get("checkpoint_dir")
    if root and run.kind in ("train", "baseline", "probe", "sweep"):
        return run_dir(root, run.id)
    return None


#: Temporary files a run writes beside its files (``.last.pt.XXXXXXXX.tmp``), left by a kill.
_RUN_NAMES = "|".join(re.escape(name) for name in RUN_FILES)
_RUN_TMP = re.compile(rf"\.(?:{_RUN_NAMES})\.[A-Za-z0-9_]{{8}}\.tmp")


def _refusal(run: RunRecord, folder: Path, store: str) -> str | None:
    """Why ``folder`` is not the run's own to remove (None: it is).

    The store's record of the folder is not trusted: a folder is the run's
    when it is named ``run-ID`` for the run, is a real folder (not a link), and
    its ``run.json`` says it holds that run of this store.
    """
    if folder.name != run_dir(".", run.id).name:
        return f"it is not run {run.id}'s folder (that is named {run_dir('.', run.id).name})"
    if folder.is_symlink():
        return "it is a symbolic link"
    marker = read_json(folder / MARKER_FILE)
    if not isinstance(marker, dict) or not isinstance(marker.get("run_id"), int):
        return f"it has no {MARKER_FILE} naming the run it holds"
    if marker.get("run_id") != run.id or marker.get("store") not in (None, store):
        return f"it belongs to run {marker.get('run_id')} of {marker.get('store')}"
    return None


def remove_folder(run: RunRecord, store: str) -> FolderOutcome:
    """Remove a deleted run's checkpoint folder: the files a run writes, then the folder.

    Only the run's own folder (see :func:`_refusal`) is touched, and in it only
    the regular files a run writes (:data:`~adatune.running.folder.RUN_FILES`
    and their temporary files); a folder that holds anything else is left, with
    it. Anything else is kept and said so.
    """
    folder = recorded_folder(run)
    if folder is None or not (folder.is_dir() or folder.is_symlink()):
        return FolderOutcome(run.id, str(folder or "-"), "absent")
    why = _refusal(run, folder, store)
    if why is not None:
        return FolderOutcome(run.id, str(folder), "kept", why)
    try:
        for entry in folder.iterdir():
            if (entry.name in RUN_FILES or _RUN_TMP.fullmatch(entry.name)) and (
                    entry.is_symlink() or entry.is_file()):
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

    runs: tuple[RunRecord, ...]
    folders: tuple[FolderOutcome, ...]
    kept: tuple[str, ...] = ()  # the folders left on purpose (keep_checkpoints)


def delete_run(store: RunCatalog, run_id: int, *, keep_checkpoints: bool = False) -> Deleted:
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
            raise RunBusy(f"run {run.id} is still running{owner_text(folder)}; stop it before "
                          "deleting it (nothing was deleted)")
    deleted = tuple(store.delete_run(run_id))
    folders = [recorded_folder(r) for r in deleted]
    if keep_checkpoints:
        kept = tuple(str(f) for f in folders if f is not None and f.is_dir())
        return Deleted(deleted, (), kept)
    return Deleted(deleted, tuple(remove_folder(r, store.location) for r in deleted))


__all__ = ["Deleted", "FolderOutcome", "delete_run", "recorded_folder", "remove_folder"]
