"""The one way a run is opened in the store and trained, whoever built its parts.

Two entry points build a run's parts: :mod:`adatune.running.engine` from a
:class:`~adatune.running.config.TrainConfig` (the command line, find-alpha,
sweeps) and :func:`adatune.fit` from the caller's own objects. Both then call
:func:`train_run`, which does everything else the same way for both: it makes
the :class:`~adatune.running.loop.Loop`, opens the store on rank 0 (when given
a path or URL), names the run's checkpoint folder, records a new run (or takes
an interrupted one back from its ``last`` checkpoint) and trains it.
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from adatune.errors import CheckpointError, ConfigError, RunBusy
from adatune.running import signals
from adatune.running.distributed import LazyStore
from adatune.running.folder import RunLock, check_unused, checkpoint_root, run_dir
from adatune.running.loop import Loop, Parts
from adatune.running.preflight import check_status
from adatune.running.runtypes import Events, LoopConfig, RunResult
from adatune.store import STALE_AFTER_S, Store, open_store
from adatune.store.records import NewRun, RunRecord

__all__ = ["Resume", "train_run"]


@dataclass(frozen=True)
class Resume:
    """Continue run ``run_id`` from its ``last`` checkpoint.

    ``config`` and ``device``, when given, replace what the store recorded (a
    resume that trains longer, or moves the run).
    """

    run_id: int
    config: dict[str, Any] | None = None
    device: str | None = None


def train_run(store: Store | str, parts: Parts, settings: LoopConfig, config: dict[str, Any], *,
              new: NewRun | None = None, resume: Resume | None = None,
              events: Events | None = None, started: float | None = None) -> RunResult:
    """Open a run in ``store`` and train ``parts`` with ``settings``: a ``new`` one, or ``resume``.

    ``config`` is the run's recorded configuration: :meth:`Events.run_started`
    receives it, ``best.pt`` holds it, and its ``checkpoint_dir`` says where
    the run's folder (``run-ID``) goes. ``new`` is the record of a new run
    (its ``config`` and ``device`` are filled in here). ``store`` is an open
    :class:`~adatune.store.Store` (a :class:`~adatune.running.distributed.LazyStore`
    on ranks other than 0), or a path or URL that rank 0 opens and closes.
    ``started`` (a ``time.perf_counter()``) is when building the parts began.
    """
    if (new is None) == (resume is None):
        raise ValueError("train_run takes new= or resume=, not both")
    started = time.perf_counter() if started is None else started
    loop = Loop(parts, settings)
    root = checkpoint_root(config.get("checkpoint_dir"), store)
    owned = not isinstance(store, (Store, LazyStore)) and loop.ranks.is_main
    db: Any = open_store(store) if owned else store
    if not loop.ranks.is_main and not isinstance(store, LazyStore):
        db = LazyStore(store)  # opened only to mark the run failed if rank 0 dies
    try:
        if resume is not None:
            return _continue_run(db, resume, loop, run_dir(root, resume.run_id),
                                 events or Events(), config=config, started=started)
        signals.raise_if_stopping()  # SIGTERM came between runs (a sweep's, a search's)
        record = replace(new, config=config, device=str(parts.device))
        run_id, folder = loop.ranks.on_main(lambda: _start_run(db, record, root))
        return loop.run(db, run_id, folder, events or Events(), config=config,
                        setup_s=time.perf_counter() - started)
    finally:
        if owned:
            db.close()


def _start_run(store: Store, new: NewRun, root: Path) -> tuple[int, Path]:
    """Create the run and its checkpoint folder's path; no run is left if the folder is taken."""
    run_id = store.create_run(new)
    folder = run_dir(root, run_id)
    try:
        check_unused(folder, run_id, store.location)
    except ConfigError:
        store.delete_run(run_id)
        raise
    return run_id, folder


def _continue_run(store: Store, resume: Resume, loop: Loop, ckpt_dir: Path, events: Events, *,
                  config: dict[str, Any], started: float) -> RunResult:
    """Take the run, load ``last.pt`` (if any) into the loop's parts, reopen it and train on.

    Taking the run: the lock on its folder (no process here trains it), then a
    compare-and-set in the store (no process elsewhere reopened it since it was
    read), so two processes never both go on. Epochs the store lost (a kill
    between checkpoint and commit, a power cut) are written back from the
    checkpoint. Under several ranks, rank 0 reads the checkpoint for all and
    alone touches the store.
    """
    run_id, ranks = resume.run_id, loop.ranks
    lock = RunLock(ckpt_dir)
    taken: dict[str, RunRecord] = {}

    def take() -> tuple[int, bool]:  # rank 0 (only it holds the folder and reads the store)
        lock.acquire(run_id, store.location)
        seen = taken["seen"] = store.get_run(run_id, steps=False).run  # no process here has it
        check_status(seen, loop.config.epochs)
        if seen.status == "running" and lock.previous_host != socket.gethostname():
            host = lock.previous_host
            raise RunBusy(f"run {run_id} may still be running{f' on {host}' if host else ''} "
                          f"(its heartbeat is recent); it can be resumed once its heartbeat is "
                          f"{STALE_AFTER_S:.0f} s old, when `adatune runs list` shows it "
                          "interrupted")
        return seen.epochs, (ckpt_dir / "last.pt").exists()

    def reopen() -> None:
        store.reopen_run(run_id, seen=taken["seen"], config=resume.config, device=resume.device)
        for record, steps, best, lrs in loop.history.after(taken["seen"].epochs):
            # Lost by the store (killed between checkpoint and commit, or a power cut
            # that took back its last commits): the checkpoint has them.
            store.record_epoch(run_id, record, steps, best=best, lrs=lrs)

    try:
        seen_epochs, exists = ranks.on_main(take)
        last = ckpt_dir / "last.pt"
        state = loop.load(last) if exists else None  # on every rank, from rank 0's bytes
        if state is None and seen_epochs > 0:
            raise ConfigError(f"run {run_id} has no checkpoint at {last}; it cannot be resumed")
        if state is not None and state["epoch"] < seen_epochs:
            raise CheckpointError(f"cannot resume run {run_id}: its checkpoint {last} is at "
                                  f"epoch {state['epoch']} but the store has {seen_epochs} "
                                  "epochs (was the file replaced by an older one?)")
        ranks.on_main(reopen)
    except BaseException:
        lock.release()
        raise
    return loop.run(store, run_id, ckpt_dir, events, config=config, resumed=state is not None,
                    setup_s=time.perf_counter() - started, lock=lock)
