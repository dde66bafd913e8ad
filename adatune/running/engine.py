"""Runs from a configuration: :func:`train` starts one, :func:`resume` continues one.

The command line, ``find-alpha`` and ``sweep`` come here with a
:class:`~adatune.running.config.TrainConfig`. Both functions build the run's
parts from it (:mod:`adatune.running.build`) and hand them to
:func:`adatune.running.assembly.train_run`, the same function
:func:`adatune.fit` calls with the caller's own parts.

Under ``torch.distributed`` every rank calls the same function: each builds
its parts once the ranks agree on the configuration
(:func:`adatune.running.distributed.agree`), and rank 0 alone reads and writes
the store (:func:`adatune.running.distributed.on_main`); the other ranks may
pass a :class:`~adatune.running.distributed.LazyStore`.
"""

from __future__ import annotations

import os
import time
from typing import Any

from adatune._version import __version__
from adatune.running import distributed
from adatune.running.assembly import Resume, train_run
from adatune.running.build import build_parts, loop_config
from adatune.running.config import REPLAY, TrainConfig
from adatune.running.folder import checkpoint_root
from adatune.running.preflight import check_resume
from adatune.running.runtypes import DivergenceRules, Events, RunResult
from adatune.store import Store
from adatune.store.records import NewRun, RunRecord

__all__ = ["resume", "train"]


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
    config = config.replace(checkpoint_dir=str(checkpoint_root(config.checkpoint_dir, store)))
    if config.from_file is not None:  # a resume may run from another folder; not resolved:
        config = config.replace(from_file=os.path.abspath(config.from_file))  # a pipe stays one
    replay = distributed.on_main(lambda: _replayed(config, store))  # rank 0 has the store
    parts = distributed.agree(_fingerprint(config, entry="train", name=name,
                                           experiment=experiment, kind=kind),
                              lambda: build_parts(config, replay), batch_size=config.batch_size,
                              check=_data)
    if replay is not None:  # what the report and `runs show` say about the source
        from adatune.methods.replay import replay_note

        steps = -(-len(parts.train) // config.batch_size)
        config = config.replace(extra={**config.extra, "replay": replay_note(
            replay, epochs=config.epochs, steps_per_epoch=steps)})
    new = NewRun(kind=kind or config.kind, method=config.method, optimizer=config.optimizer,
                 network=config.network_label, dataset=config.dataset_label, seed=config.seed,
                 config={}, name=name, experiment=experiment, parent_id=parent_id)
    return train_run(store, parts, loop_config(config, rules), config.to_dict(), new=new,
                     events=events, started=started)


def resume(store: Store, run_id: int, *, epochs: int | None = None, device: str | None = None,
           rules: DivergenceRules | None = None, events: Events | None = None) -> RunResult:
    """Continue an interrupted or failed run from its ``last`` checkpoint.

    The user's own model, data and loss (import paths) are imported again.
    ``epochs`` sets a new total (to train a run, a completed one too, for
    longer) and ``device`` moves it; both are recorded in the run's config,
    with the epoch they were applied at, under ``extra["resumed"]``. Nothing
    else of a run changes on resume. Of two processes resuming one run at
    once, one goes on and the other gets :class:`~adatune.errors.RunBusy`.
    """
    run = distributed.on_main(lambda: check_resume(store, run_id, epochs=epochs))  # rank 0
    started = time.perf_counter()
    config = TrainConfig.from_dict(run.config)
    changed = _resumed_config(run, config, epochs=epochs, device=device)
    replay = distributed.on_main(lambda: _replayed(changed, store))
    parts = distributed.agree({"entry": "resume", "run_id": run_id, "epochs": epochs,
                               "device": device},
                              lambda: build_parts(changed, replay), batch_size=changed.batch_size,
                              check=_data)
    again = Resume(run_id, config=None if changed is config else changed.to_dict(),
                   device=None if device is None else str(parts.device))
    return train_run(store, parts, loop_config(changed, rules), changed.to_dict(), resume=again,
                     events=events, started=started)


def _replayed(config: TrainConfig, store: Store):
    """The schedule a replay run replays (None for other methods), read and checked."""
    if config.method != REPLAY:
        return None
    from adatune.methods.replay import read_schedule

    return read_schedule(store, from_run=config.from_run, from_file=config.from_file)


def _data(parts) -> dict:  # noqa: ANN001 - the loop's Parts
    """What every rank's data must agree in (lengths and a few examples)."""
    return distributed.data_fingerprint(train=parts.train, val=parts.val, test=parts.test)


def _fingerprint(config: TrainConfig, **more: object) -> dict:
    """What every rank of a distributed run must have been given alike (paths may differ)."""
    values = {k: v for k, v in config.to_dict().items() if k not in ("checkpoint_dir", "data_dir")}
    return {**values, **more, "adatune": __version__}


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
