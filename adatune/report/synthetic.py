"""Synthetic run details for report benchmarks and tests (no training).

The numbers look like training curves but mean nothing. :func:`record_details`
writes them into a store, for benchmarks and tests of the commands that read it.
"""

from __future__ import annotations

import datetime as dt
import math
import random
from collections import defaultdict
from collections.abc import Iterable
from typing import TYPE_CHECKING

from adatune.store.records import EpochRecord, NewRun, RunDetail, RunRecord, StepRecord

if TYPE_CHECKING:
    from adatune.store import Store

TUNERS = ("marthe", "rtho", "hd")
METHODS = ("marthe", "rtho", "hd", "constant", "staircase", "exponential", "cosine")


def synthetic_details(
    runs: int,
    epochs: int,
    *,
    methods: tuple[str, ...] = METHODS,
    steps_per_epoch: int = 0,
    seed: int = 0,
    first_id: int = 1,
) -> list[RunDetail]:
    """``runs`` runs (methods round-robin, seeds counting up) of ``epochs`` epochs.

    With ``steps_per_epoch`` > 0 every tuner run also has that many step
    records per epoch.
    """
    rng = random.Random(seed)
    start = dt.datetime(2025, 1, 1, tzinfo=dt.timezone.utc)
    out = []
    for k in range(runs):
        method = methods[k % len(methods)]
        tuner = method in TUNERS
        run_seed = k // len(methods)
        lr0 = 0.05 * (1 + 0.2 * rng.random())
        ceiling = 0.9 + 0.05 * rng.random()
        epoch_s = 2.0 + rng.random()
        eps, steps = [], []
        lr = lr0
        best_val, best_epoch, test_at_best = -1.0, None, None
        for e in range(1, epochs + 1):
            if tuner:
                lr = max(lr * (1 + 0.05 * rng.gauss(0, 1)), 0.0)
            elif method == "cosine":
                lr = lr0 * 0.5 * (1 + math.cos(math.pi * e / epochs))
            elif method == "exponential":
                lr = lr0 * 0.97**e
            elif method == "staircase":
                lr = lr0 * 0.1 ** (e // max(1, epochs // 3))
            acc = ceiling * (1 - math.exp(-e / (0.15 * epochs + 1)))
            val = min(1.0, max(0.0, acc + 0.01 * rng.gauss(0, 1)))
            test = min(1.0, max(0.0, acc - 0.01 + 0.01 * rng.gauss(0, 1)))
            if val > best_val:
                best_val, best_epoch, test_at_best = val, e, test
            for s in range(steps_per_epoch if tuner else 0):
                step = (e - 1) * steps_per_epoch + s
                steps.append(
                    StepRecord(
                        step=step,
                        epoch=e,
                        lr=lr * (1 + 0.01 * rng.gauss(0, 1)),
                        mu=0.99,
                        hyper_lr=1e-4,
                        hypergradient=rng.gauss(0, 1e-3),
                        train_loss=2.3 * (1 - acc) + 0.05 * rng.random(),
                    )
                )
            eps.append(
                EpochRecord(
                    epoch=e,
                    lr=lr,
                    lr_mean=lr,
                    mu=0.99 if tuner else None,
                    hyper_lr=1e-4 * (1 + 0.01 * e) if tuner else None,
                    train_loss=2.3 * (1 - acc) + 0.02,
                    train_acc=min(1.0, acc + 0.02),
                    val_loss=2.3 * (1 - val) + 0.05,
                    val_acc=val,
                    test_loss=2.3 * (1 - test),
                    test_acc=test,
                    elapsed_s=epoch_s * e,
                )
            )
        run = RunRecord(
            id=first_id + k,
            name=f"{method}-s{run_seed}",
            experiment="synthetic",
            kind="train" if tuner else "baseline",
            method=method,
            optimizer="sgd",
            network="mlp",
            dataset="digits",
            seed=run_seed,
            config={
                "method": method,
                "lr": 0.05,  # one configuration per method: the seeds' runs differ
                "epochs": epochs,
                "seed": run_seed,
                "batch_size": 128,
                "weight_decay": 5e-4,
            },
            status="completed",
            started_at=start,
            ended_at=start + dt.timedelta(seconds=epoch_s * epochs),
            heartbeat_at=None,
            epochs=epochs,
            best_val_acc=best_val,
            best_epoch=best_epoch,
            test_acc=test_at_best,
            error=None,
            adatune_version="0",
            torch_version="0",
            device="cpu",
            host="synthetic",
        )
        out.append(RunDetail(run, tuple(eps), tuple(steps)))
    return out


def record_details(store: Store, details: Iterable[RunDetail]) -> list[int]:
    """Write ``details`` into ``store`` as finished runs, epoch by epoch; their new ids.

    The store numbers the runs itself (the records' ids are not kept).
    """
    ids = []
    for detail in details:
        run = detail.run
        run_id = store.create_run(NewRun(
            kind=run.kind, method=run.method, optimizer=run.optimizer, network=run.network,
            dataset=run.dataset, seed=run.seed, config=run.config, name=run.name,
            experiment=run.experiment, device=run.device))
        steps: dict[int, list[StepRecord]] = defaultdict(list)
        for step in detail.steps:
            steps[step.epoch].append(step)
        for epoch in detail.epochs:
            store.record_epoch(run_id, epoch, steps.get(epoch.epoch, ()))
        store.finish_run(run_id, run.status, error=run.error, summary=run.summary)
        ids.append(run_id)
    return ids
