"""How long does logging one epoch cost? Times ``Store.record_epoch``.

Alone (the default): each call writes one epoch row, ~20 sampled step rows
and the LR of each of the epoch's ``--lrs`` steps (realistic values) in one
transaction to an SQLite file, as the training loop does at the end of every
epoch. Prints the median and a few quantiles over many calls made in one
process, and the median of the same calls without the per-step LRs (the calls
alternate, so noise hits both alike).

``--in-training``: the number that matters. Trains the default task
(``adatune train`` with its defaults: MARTHE on digits) for a few seeds with a
real SQLite store, times every ``record_epoch`` call and every epoch inside
``adatune.running.engine.train`` (wall-clock and CPU seconds), and prints the median
call as a share of the median epoch. Caches are cold there (the model's
tensors have just streamed through), so a call costs more than alone. Every
other epoch's call drops the per-step LRs (``lrs=None``), so the cost they add
is measured in the same process, under the same load.

    python benchmarks/store_logging.py               # temp file, 300 epochs
    python benchmarks/store_logging.py --epochs 1000 --steps 20 --store /tmp/b.db
    python benchmarks/store_logging.py --in-training --seeds 6
    python benchmarks/store_logging.py --in-training --seeds 6 --tuner constant
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import tempfile
import time
from pathlib import Path

from adatune.store import EpochRecord, NewRun, StepRecord, open_store


def _epoch(epoch: int, rng: random.Random) -> EpochRecord:
    lr = 0.05 * math.exp(-0.01 * epoch) * (1 + 0.1 * rng.random())
    return EpochRecord(
        epoch=epoch,
        lr=lr,
        lr_mean=lr * (1 + 0.01 * rng.random()),
        mu=0.99 + 0.009 * rng.random(),
        hyper_lr=1e-4 * (1 + rng.random()),
        train_loss=2.3 * math.exp(-0.05 * epoch) + 0.01 * rng.random(),
        train_acc=min(1.0, 0.1 + 0.02 * epoch),
        val_loss=2.3 * math.exp(-0.04 * epoch) + 0.02 * rng.random(),
        val_acc=min(1.0, 0.1 + 0.018 * epoch),
        test_loss=2.3 * math.exp(-0.04 * epoch) + 0.02 * rng.random(),
        test_acc=min(1.0, 0.1 + 0.017 * epoch),
        elapsed_s=0.8 * epoch + rng.random(),
        nonfinite_hypergradients=0,
    )


def _steps(epoch: int, n: int, steps_per_epoch: int, rng: random.Random) -> list[StepRecord]:
    every = max(1, steps_per_epoch // n)
    first = (epoch - 1) * steps_per_epoch
    return [
        StepRecord(
            step=first + i * every,
            epoch=epoch,
            lr=0.05 * (1 + 0.1 * rng.random()),
            mu=0.995,
            hyper_lr=1e-4,
            hypergradient=rng.gauss(0.0, 1e-3),
            train_loss=2.3 * rng.random(),
        )
        for i in range(n)
    ]


def in_training(seeds: int, store_path: str, checkpoint_dir: str, method: str) -> None:
    """Time record_epoch and the epochs around it on the default task.

    Wall-clock and CPU time both: on a loaded machine the wall-clock epoch
    stretches with the other processes, while CPU seconds (this process's, all
    threads) still say what the work costs.
    """
    from adatune.running.config import TrainConfig
    from adatune.running.engine import train
    from adatune.running.loop import Loop

    calls: list[tuple[float, float]] = []
    bare: list[float] = []
    epochs: list[tuple[float, float]] = []
    epoch_fn = Loop._epoch

    def timed_epoch(self, *args: object, **kwargs: object):
        wall, cpu = time.perf_counter(), time.process_time()
        out = epoch_fn(self, *args, **kwargs)
        epochs.append((time.perf_counter() - wall, time.process_time() - cpu))
        return out

    Loop._epoch = timed_epoch  # type: ignore[method-assign]
    try:
        with open_store(store_path) as store:
            record_epoch = store.record_epoch

            def timed(*args: object, **kwargs: object) -> None:
                if len(epochs) % 2:  # the store keeps no LR array for this epoch
                    wall = time.perf_counter()
                    record_epoch(*args, **{**kwargs, "lrs": None})
                    bare.append(time.perf_counter() - wall)
                    return
                wall, cpu = time.perf_counter(), time.process_time()
                record_epoch(*args, **kwargs)
                calls.append((time.perf_counter() - wall, time.process_time() - cpu))

            store.record_epoch = timed  # type: ignore[method-assign]
            for seed in range(seeds):
                train(TrainConfig(method=method, seed=seed, checkpoint_dir=checkpoint_dir), store)
    finally:
        Loop._epoch = epoch_fn  # type: ignore[method-assign]
    call_wall, call_cpu = (statistics.median(c[i] for c in calls) for i in (0, 1))
    epoch_wall, epoch_cpu = (statistics.median(e[i] for e in epochs) for i in (0, 1))
    print(
        f"default task, {method} ({seeds} seeds, {len(epochs)} epochs, {len(calls)} with "
        "per-step LRs): median epoch "
        f"{epoch_wall * 1e3:.1f} ms wall / {epoch_cpu * 1e3:.1f} ms CPU, median record_epoch "
        f"{call_wall * 1e3:.2f} ms wall / {call_cpu * 1e3:.2f} ms CPU = "
        f"{100 * call_wall / epoch_wall:.2f}% of an epoch's wall-clock time, "
        f"{100 * call_cpu / epoch_cpu:.2f}% of its CPU time; without the per-step LRs "
        f"{statistics.median(bare) * 1e3:.2f} ms wall"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=300, help="timed record_epoch calls")
    parser.add_argument("--steps", type=int, default=20, help="step rows per epoch")
    parser.add_argument("--store", default=None, help="store file (default: a temp file)")
    parser.add_argument("--in-training", action="store_true",
                        help="time the calls inside training runs of the default task")
    parser.add_argument("--lrs", type=int, default=400, help="per-step LRs per epoch (alone)")
    parser.add_argument("--seeds", type=int, default=4, help="runs for --in-training")
    parser.add_argument("--tuner", default="marthe",
                        help="method of the --in-training runs (a tuner or a baseline)")
    args = parser.parse_args()
    if args.in_training:
        with tempfile.TemporaryDirectory() as tmp:
            in_training(args.seeds, args.store or str(Path(tmp) / "bench.db"),
                        str(Path(tmp) / "checkpoints"), args.tuner)
        return

    rng = random.Random(0)
    with tempfile.TemporaryDirectory() as tmp:
        path = args.store or str(Path(tmp) / "bench.db")
        with open_store(path) as store:
            run_id = store.create_run(
                NewRun(
                    kind="train",
                    method="marthe",
                    optimizer="sgd",
                    network="mlp",
                    dataset="digits",
                    seed=0,
                    config={"epochs": args.epochs, "batch_size": 64, "lr": 0.05},
                    device="cpu",
                )
            )
            bare_id = store.create_run(
                NewRun(kind="train", method="marthe", optimizer="sgd", network="mlp",
                       dataset="digits", seed=1, config={}, device="cpu"))
            times, bare = [], []
            for epoch in range(1, args.epochs + 1):
                record = _epoch(epoch, rng)
                steps = _steps(epoch, args.steps, args.lrs, rng)
                lrs = [0.05 * (1 + 0.1 * rng.random()) for _ in range(args.lrs)]
                start = time.perf_counter()
                store.record_epoch(run_id, record, steps, lrs=lrs)
                times.append(time.perf_counter() - start)
                start = time.perf_counter()
                store.record_epoch(bare_id, record, steps)
                bare.append(time.perf_counter() - start)
            store.finish_run(run_id, "completed")
            store.finish_run(bare_id, "completed")
    times_ms = sorted(t * 1e3 for t in times)
    q = statistics.quantiles(times_ms, n=20)
    print(
        f"record_epoch (1 epoch + {args.steps} steps + {args.lrs} per-step LRs, SQLite file, "
        f"{args.epochs} calls): median {statistics.median(times_ms):.2f} ms, p5 {q[0]:.2f} ms, "
        f"p95 {q[-1]:.2f} ms, max {times_ms[-1]:.2f} ms; without the per-step LRs "
        f"{statistics.median(bare) * 1e3:.2f} ms"
    )


if __name__ == "__main__":
    main()
