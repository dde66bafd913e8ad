"""Runs from a configuration: build the parts (:mod:`adatune.running.build`), then run the loop.

The loop itself is :mod:`adatune.running.loop`. :func:`train` starts a run from a
:class:`~adatune.running.config.TrainConfig` and :func:`resume` continues one from its
``last`` checkpoint; the CLI, ``find-alpha`` and ``sweep`` go through these.
Library users with their own model and data call :func:`adatune.fit`, which
runs the same loop.

Under ``torch.distributed`` every rank calls the same function: each builds
its parts once the ranks agree on the configuration
(:func:`adatune.running.distributed.agree`), and rank 0 alone reads and writes the
store (:func:`adatune.running.distributed.on_main`); the other ranks may pass a
:class:`~adatune.running.distributed.LazyStore`.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Any

from adatune.errors import CheckpointError, ConfigError, RunBusy
from adatune.running import distributed, signals
from adatune.running.build import build_parts, loop_config, replay_steps
from adatune.running.config import REPLAY, TrainConfig
from adatune.running.folder import RunLock, check_unused, run_dir
from adatune.running.loop import (
    DivergenceRules,
    Events,
    Loop,
    LoopConfig,
    Parts,
    RunResult,
    resolve_device,
)
from adatune.running.preflight import check_resume, check_status, run_folder
from adatune.running.runtypes import DEFAULT_CHECKPOINT_DIR
from adatune.store import STALE_AFTER_S, Store
from adatune.store.records import NewRun, RunRecord

__all__ = [
    "DEFAULT_CHECKPOINT_DIR",
    "replay_source",
    "DivergenceRules",
    "Events",
    "LoopConfig",
    "Parts",
    "RunResult",
    "resolve_device",
    "resume",
    "train",
]


def train(
    config: TrainConfig,
    store: Store,
    *,
    name: str | None = None,
    experiment: str | None = None,
    kind: str | None = None,
    parent_id: int | None = None,
    rules: DivergenceRules | None = None,
    events: Events | None = None,
) -> RunResult:
    """Train one run to completion (or divergence, or Ctrl-C), recording it in ``store``.

    Everything that can fail on user input (device, data, model, loss, tuner
    arguments) is checked before the run is written.
    """
    started = time.perf_counter()
    ckpt_root = Path(config.checkpoint_dir or DEFAULT_CHECKPOINT_DIR).resolve()
    config = config.replace(checkpoint_dir=str(ckpt_root))
    if config.from_file is not None:  # a resume may run from another folder
        config = config.replace(from_file=str(Path(config.from_file).resolve()))
    replay = distributed.on_main(lambda: replay_source(config, store))  # rank 0 has the store
    parts = distributed.agree(_fingerprint(config, entry="train", name=name,
                                           experiment=experiment, kind=kind),
                              lambda: build_parts(config, replay), batch_size=config.batch_size)
    loop = Loop(parts, loop_config(config, rules))
    if replay is not None:  # what the report and `runs show` say about the source
        config = config.replace(extra={**config.extra, "replay": {
            "source": replay.source, "interval": replay.interval, "source_points": len(replay),
            "points": replay_steps(config, replay, loop.steps_per_epoch),
            "steps_per_epoch": loop.steps_per_epoch}})
    signals.raise_if_stopping()  # SIGTERM came between runs (a sweep's, a search's)
    run_id, folder = distributed.on_main(lambda: start_run(store, NewRun(
        kind=kind or config.kind, method=config.method, optimizer=config.optimizer,
        network=config.network_label, dataset=config.dataset_label, seed=config.seed,
        config=config.to_dict(),
        name=name, experiment=experiment, parent_id=parent_id, device=str(parts.device),
    ), ckpt_root))
    return loop.run(store, run_id, folder, events or Events(),
                    announce=config, meta=config.to_dict(),
                    setup_s=time.perf_counter() - started)


def start_run(store: Store, new: NewRun, checkpoint_root: Path) -> tuple[int, Path]:
    """Create the run and its checkpoint folder's path; no run is left if the folder is taken."""
    run_id = store.create_run(new)
    folder = run_dir(checkpoint_root, run_id)
    try:
        check_unused(folder, run_id, store.location)
    except ConfigError:
        store.delete_run(run_id)
        raise
    return run_id, folder


def resume(store: Store, run_id: int, *, epochs: int | None = None, device: str | None = None,
           rules: DivergenceRules | None = None, events: Events | None = None) -> RunResult:
    """Continue an interrupted or failed run from its ``last`` checkpoint.

    The user's own model, data and loss (import paths) are imported again.
    ``epochs`` sets a new total (to train a run, a completed one too, for
    longer) and ``device`` moves it; both are recorded in the run's config,
    with the epoch they were applied at, under ``extra["resumed"]``. Nothing
    else of a run changes on resume. Of two processes resuming one run at
    once, one goes on and the other gets :class:`RunBusy`.
    """
    run = distributed.on_main(lambda: check_resume(store, run_id, epochs=epochs))  # rank 0
    started = time.perf_counter()
    config = TrainConfig.from_dict(run.config)
    ckpt_dir = run_folder(config.checkpoint_dir, run_id)
    changed = _resumed_config(run, config, epochs=epochs, device=device)
    replay = distributed.on_main(lambda: replay_source(changed, store))
    parts = distributed.agree({"entry": "resume", "run_id": run_id, "epochs": epochs,
                               "device": device},
                              lambda: build_parts(changed, replay), batch_size=changed.batch_size)
    loop = Loop(parts, loop_config(changed, rules))
    return continue_run(store, run_id, loop, ckpt_dir, events or Events(), announce=changed,
                        meta=changed.to_dict(), started=started,
                        record_config=None if changed is config else changed.to_dict(),
                        device=None if device is None else str(loop.device))


def _fingerprint(config: TrainConfig, **more: object) -> dict:
    """What every rank of a distributed run must have been given alike (paths may differ)."""
    from adatune import __version__

    values = {k: v for k, v in config.to_dict().items() if k not in ("checkpoint_dir", "data_dir")}
    return {**values, **more, "adatune": __version__}


def replay_source(config: TrainConfig, store: Store):
    """The schedule a replay run replays (None for other methods), read and checked.

    From ``config.from_run`` in ``store`` (its every-step LRs) or from the file
    ``config.from_file``; errors are one line, before anything is written.
    """
    if config.method != REPLAY:
        return None
    from adatune.methods.schedule_file import NoStepLRs, schedule_from_file, schedule_from_run

    if config.from_file is not None:
        return schedule_from_file(config.from_file)
    try:
        return schedule_from_run(store, config.from_run)
    except NoStepLRs as exc:
        raise ConfigError(f"{exc}: replay its per-epoch mean instead: `adatune schedule export "
                          f"{exc.run_id} --per-epoch -o schedule.csv`, then --from-file "
                          "schedule.csv") from None


def _resumed_config(run: RunRecord, config: TrainConfig, *, epochs: int | None,
                    device: str | None) -> TrainConfig:
    """``config`` with the options applied on resume, and a note of them in ``extra``."""
    changes: dict[str, Any] = {}
    if epochs is not None and epochs != config.epochs:  # checked by check_resume
        changes["epochs"] = epochs
    if device is not None and device != config.device:
        changes["device"] = device
    if not changes:
        return config
    note = {"at_epoch": run.epochs, **{k: [getattr(config, k), v] for k, v in changes.items()}}
    extra = {**config.extra, "resumed": [*config.extra.get("resumed", []), note]}
    return config.replace(**changes, extra=extra)  # validates the new values


def continue_run(store: Store, run_id: int, loop: Loop, ckpt_dir: Path, events: Events, *,
                 announce: object, meta: dict, started: float | None = None,
                 record_config: dict | None = None, device: str | None = None) -> RunResult:
    """Take the run, load ``last.pt`` (if any) into the loop's parts, reopen it and train on.

    Taking the run: the lock on its folder (no process here trains it), then a
    compare-and-set in the store (no process elsewhere reopened it since it was
    read), so two processes never both go on. Epochs the store lost (a kill
    between checkpoint and commit, a power cut) are written back from the
    checkpoint. ``record_config`` and ``device`` replace the recorded ones.
    ``started`` (a ``time.perf_counter()``) is when building the parts began.
    Under several ranks, rank 0 reads the checkpoint for all and alone touches the store.
    """
    ranks = loop.ranks
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
        store.reopen_run(run_id, seen=taken["seen"], config=record_config, device=device)
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
    setup_s = None if started is None else time.perf_counter() - started
    return loop.run(store, run_id, ckpt_dir, events, announce=announce, meta=meta,
                    resumed=state is not None, setup_s=setup_s, lock=lock)
