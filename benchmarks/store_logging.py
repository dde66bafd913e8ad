"""How long does logging one epoch cost? Times ``Store.record_epoch``.

Each call writes one epoch row and ~20 sampled step rows (realistic values) in
one transaction to an SQLite file, as the training loop does at the end of
every epoch. Prints the median and a few quantiles over many calls made in
one process.

    python benchmarks/store_logging.py               # temp file, 300 epochs
    python benchmarks/store_logging.py --epochs 1000 --steps 20 --store /tmp/b.db
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=300, help="timed record_epoch calls")
    parser.add_argument("--steps", type=int, default=20, help="step rows per epoch")
    parser.add_argument("--store", default=None, help="store file (default: a temp file)")
    args = parser.parse_args()

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
            times = []
            for epoch in range(1, args.epochs + 1):
                record = _epoch(epoch, rng)
                steps = _steps(epoch, args.steps, 400, rng)
                start = time.perf_counter()
                store.record_epoch(run_id, record, steps)
                times.append(time.perf_counter() - start)
            store.finish_run(run_id, "completed")
    times_ms = sorted(t * 1e3 for t in times)
    q = statistics.quantiles(times_ms, n=20)
    print(
        f"record_epoch (1 epoch + {args.steps} steps, SQLite file, {args.epochs} calls): "
        f"median {statistics.median(times_ms):.2f} ms, p5 {q[0]:.2f} ms, "
        f"p95 {q[-1]:.2f} ms, max {times_ms[-1]:.2f} ms"
    )


if __name__ == "__main__":
    main()
