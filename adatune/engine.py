"""Runs from a configuration: build the parts (:mod:`adatune.build`), then run the loop.

The loop itself is :mod:`adatune.loop`. :func:`train` starts a run from a
:class:`~adatune.config.TrainConfig` and :func:`resume` continues one from its
``last`` checkpoint; the CLI, ``find-alpha`` and ``sweep`` go through these.
Library users with their own model and data call :func:`adatune.fit`, which
runs the same loop.
"""

from __future__ import annotations

import time
from pathlib import Path

from adatune.build import build_parts, loop_config, replay_steps
from adatune.config import REPLAY, TrainConfig
from adatune.errors import ConfigError
from adatune.loop import (
    DivergenceRules,
    Events,
    Loop,
    LoopConfig,
    Parts,
    RunResult,
    owner_alive,
    resolve_device,
)
from adatune.store import Store
from adatune.store.records import EpochRecord, NewRun, StepRecord

DEFAULT_CHECKPOINT_DIR = "adatune-runs"

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
    replay = replay_source(config, store)
    parts = build_parts(config, replay)
    loop = Loop(parts, loop_config(config, rules))
    if replay is not None:  # what the report and `runs show` say about the source
        config = config.replace(extra={**config.extra, "replay": {
            "source": replay.source, "interval": replay.interval, "source_points": len(replay),
            "points": replay_steps(config, replay, loop.steps_per_epoch),
            "steps_per_epoch": loop.steps_per_epoch}})
    run_id = store.create_run(NewRun(
        kind=kind or config.kind, method=config.method, optimizer=config.optimizer,
        network=config.network_label, dataset=config.dataset_label, seed=config.seed,
        config=config.to_dict(),
        name=name, experiment=experiment, parent_id=parent_id, device=str(parts.device),
    ))
    return loop.run(store, run_id, ckpt_root / f"run-{run_id}", events or Events(),
                    announce=config, meta=config.to_dict(),
                    setup_s=time.perf_counter() - started)


def resume(store: Store, run_id: int, *, rules: DivergenceRules | None = None,
           events: Events | None = None) -> RunResult:
    """Continue an interrupted or failed run from its ``last`` checkpoint.

    The user's own model, data and loss (import paths) are imported again.
    """
    run = store.get_run(run_id, steps=False).run
    if run.config.get("entry") == "fit":
        raise ConfigError(f"run {run_id} was started from Python with adatune.fit; resume it "
                          f"there with adatune.fit(..., resume={run_id})")
    started = time.perf_counter()
    config = TrainConfig.from_dict(run.config)
    ckpt_dir = Path(config.checkpoint_dir or DEFAULT_CHECKPOINT_DIR) / f"run-{run_id}"
    check_resumable(store, run_id, ckpt_dir)
    loop = Loop(build_parts(config, replay_source(config, store)), loop_config(config, rules))
    return continue_run(store, run_id, loop, ckpt_dir, events or Events(), announce=config,
                        meta=config.to_dict(), started=started)


def replay_source(config: TrainConfig, store: Store):
    """The schedule a replay run replays (None for other methods), read and checked.

    From ``config.from_run`` in ``store`` (its every-step LRs) or from the file
    ``config.from_file``; errors are one line, before anything is written.
    """
    if config.method != REPLAY:
        return None
    from adatune.replay import NoStepLRs, schedule_from_file, schedule_from_run

    if config.from_file is not None:
        return schedule_from_file(config.from_file)
    try:
        return schedule_from_run(store, config.from_run)
    except NoStepLRs as exc:
        raise ConfigError(f"{exc}: replay its per-epoch mean instead: `adatune schedule export "
                          f"{exc.run_id} --per-epoch -o schedule.csv`, then --from-file "
                          "schedule.csv") from None


def check_resumable(store: Store, run_id: int, ckpt_dir: Path) -> None:
    """Refuse a run that is alive, diverged or completed, or has epochs but no checkpoint."""
    run = store.get_run(run_id, steps=False).run
    if run.status == "running" and owner_alive(ckpt_dir):
        raise ConfigError(f"run {run_id} is still running (its process is alive)")
    if run.status == "diverged":
        raise ConfigError(f"run {run_id} diverged ({run.error}); start a new run instead")
    if run.status == "completed":
        raise ConfigError(f"run {run_id} already completed ({run.epochs} epochs)")
    if run.epochs > 0 and not (ckpt_dir / "last.pt").exists():
        raise ConfigError(f"run {run_id} has no checkpoint at {ckpt_dir / 'last.pt'}; it "
                          "cannot be resumed")


def continue_run(store: Store, run_id: int, loop: Loop, ckpt_dir: Path, events: Events, *,
                 announce: object, meta: dict, started: float | None = None) -> RunResult:
    """Load ``last.pt`` (if any) into the loop's parts, reopen the run and train on.

    ``started`` (a ``time.perf_counter()``) is when building the parts began.
    """
    last = ckpt_dir / "last.pt"
    state = loop.load(last) if last.exists() else None
    store.reopen_run(run_id)
    if state is not None and store.get_run(run_id, steps=False).run.epochs < state["epoch"]:
        # Killed after the checkpoint, before the epoch's commit: record it now.
        pending = state["pending"]
        store.record_epoch(run_id, EpochRecord(**pending["epoch"]),
                           [StepRecord(**s) for s in pending["steps"]], best=pending.get("best"),
                           lrs=pending.get("lrs"))
    setup_s = None if started is None else time.perf_counter() - started
    return loop.run(store, run_id, ckpt_dir, events, announce=announce, meta=meta,
                    resumed=state is not None, setup_s=setup_s)
