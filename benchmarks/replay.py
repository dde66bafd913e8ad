"""Tune once, reuse cheaply: MARTHE's learned schedule replayed on other seeds.

On each task of ``benchmarks/robustness.py`` (SGD with momentum 0.9, its
epochs and batch size), every run through :func:`adatune.fit`, the loop the
``adatune`` command runs (validation split from the training data, test
accuracy at the best-validation epoch):

1. the best constant LR and the best cosine schedule (warm restarts, the
   command's ``t_0 = 2``, ``t_mult = 2``): each LR of ``robustness.GRID["sgd"]``
   on seeds 1-3, the best mean validation accuracy picks it;
2. MARTHE with the command's defaults (the scale-free rule, its default
   hyper-LR, ``mu``, ``alpha``) from the best constant LR, on seed 0; the store
   records the LR it used at every step;
3. that schedule replayed with :class:`adatune.ReplayLR` on seeds 1-3: plain
   SGD steps, no hypergradient (each replay's recorded LRs are checked to be
   the source's, value for value);
4. MARTHE itself on seeds 1-3, from the same initial LR.

Timing: the runs of 3 and 4 and the best constant and cosine runs of 1 on
seeds 1-3 (run again, so that all four kinds share one process pool and the
same stretch of machine load; their accuracies must equal the grid's) are
interleaved over the workers. Each worker uses one torch thread; a run's time
is :func:`adatune.fit` from start to end, in wall-clock seconds and in CPU
seconds of its process (the latter moves far less with machine load).

It prints a Markdown table: test accuracy (mean and min-max over seeds 1-3),
the median wall-clock and CPU seconds per run, and each as a multiple of
MARTHE's.

    python benchmarks/replay.py                          # every task, 2 workers
    python benchmarks/replay.py --tasks teacher-mlp --workers 1
    python benchmarks/replay.py --json replay.json --markdown replay.md
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import robustness  # noqa: E402 - the tasks live beside this file

import adatune  # noqa: E402
from adatune.methods.schedule_file import schedule_from_run  # noqa: E402
from adatune.running.build import build_tuner  # noqa: E402
from adatune.running.config import TrainConfig  # noqa: E402

SOURCE_SEED = 0
REPLAY_SEEDS = (1, 2, 3)
OPTIMIZER = "sgd"
BASELINES = ("constant", "cosine")
#: The table's rows: (method, label).
ROWS = (("constant", "constant (best LR)"), ("cosine", "cosine (best LR)"),
        ("marthe", "MARTHE"), ("replay", "MARTHE seed 0's schedule, replayed"))


@dataclass(frozen=True)
class Job:
    task: str
    method: str  # constant, cosine, marthe, replay
    lr: float
    seed: int


@dataclass
class Outcome:
    job: Job
    status: str
    test_acc: float  # at the best-validation epoch
    val_acc: float
    seconds: float  # wall-clock, adatune.fit from start to end
    cpu_seconds: float  # CPU time of the worker process over the same span
    steps: int  # training steps recorded with an LR
    lrs: tuple[float, ...] | None = None  # MARTHE's LR of every step, from the store


# The workers are set up as the robustness benchmark's (one torch thread, a store each).
_WORKER = robustness._WORKER
_init_worker = robustness._init_worker


def train_one(job: Job, lrs: Sequence[float] | None = None) -> Outcome:
    """One run of ``job`` through :func:`adatune.fit` (``lrs``: the schedule a replay replays)."""
    task = robustness.TASKS[job.task]
    train, val, test = robustness.task_data(job.task, job.seed)
    torch.manual_seed(job.seed)
    model = task.model()
    optimizer = robustness.OPTIMIZERS[OPTIMIZER](model.parameters(), job.lr)
    tuner = schedule = None
    interval = "epoch"
    if job.method == "marthe":
        tuner = build_tuner(TrainConfig(method="marthe", optimizer=OPTIMIZER, lr=job.lr),
                            optimizer, model)
    elif job.method == "replay":
        schedule, interval = adatune.ReplayLR(optimizer, lrs), "step"
    else:
        schedule = job.method
    store, workdir = _WORKER["store"], _WORKER["dir"]
    started, cpu_started = time.perf_counter(), time.process_time()
    result = adatune.fit(model, train, val, test, optimizer=optimizer, tuner=tuner,
                         schedule=schedule, schedule_interval=interval, epochs=task.epochs,
                         batch_size=task.batch_size, seed=job.seed, store=store,
                         checkpoint_dir=str(workdir / "ckpt"),
                         name=f"{job.method} {job.task} lr={job.lr:.3g} seed={job.seed}")
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    for leftover in (workdir / "ckpt" / f"run-{result.run_id}").glob("*"):
        leftover.unlink()
    recorded = [v for g in store.get_step_lrs(result.run_id) for v in g.lrs]
    if job.method == "replay" and result.status == "completed" and recorded != list(lrs):
        raise AssertionError(f"{job}: the replay did not run at the recorded LRs "
                             f"({len(recorded)} steps against {len(lrs)})")
    kept = None
    if job.method == "marthe" and result.epochs:
        kept = tuple(schedule_from_run(store, result.run_id).lrs)
    return Outcome(job=job, status=result.status, test_acc=result.test_acc or 0.0,
                   val_acc=result.best_val_acc or 0.0, seconds=seconds,
                   cpu_seconds=cpu_seconds, steps=len(recorded), lrs=kept)


def _run(payload: tuple[Job, Sequence[float] | None]) -> Outcome:
    return train_one(*payload)


def run_all(payloads: Sequence[tuple[Job, Sequence[float] | None]], workers: int,
            root: str) -> dict[Job, Outcome]:
    """Every job once, in the order given, over ``workers`` processes."""
    if workers <= 1:
        _init_worker(root)
        return {p[0]: train_one(*p) for p in payloads}
    with ProcessPoolExecutor(workers, initializer=_init_worker, initargs=(root,)) as pool:
        return {o.job: o for o in pool.map(_run, payloads)}


@dataclass
class Row:
    method: str
    label: str
    lr: float  # the initial LR (the best constant LR for MARTHE and its replay)
    accs: list[float]  # test accuracy in %, seeds 1-3
    seconds: float  # median wall-clock seconds per run
    cpu_seconds: float  # median CPU seconds per run
    diverged: int


@dataclass
class TaskResult:
    task: str
    rows: list[Row]
    source_acc: float  # MARTHE on seed 0, test accuracy in %
    source_steps: int
    grid: dict[str, list[tuple[float, float]]]  # method -> (LR, mean val acc %) on seeds 1-3


def benchmark(tasks: Sequence[str], workers: int, log: Callable[[str], None],
              grid: Sequence[float] | None = None) -> tuple[list[TaskResult], dict[str, Any]]:
    """The four methods on ``tasks`` (see the module doc); the results and the run's facts."""
    started = time.perf_counter()
    grid = tuple(grid or robustness.GRID[OPTIMIZER])
    mismatches: list[str] = []
    with tempfile.TemporaryDirectory(prefix="adatune-replay-") as root:
        # 1. the grid, for the best constant and cosine LRs
        jobs = [Job(t, m, lr, s) for t in tasks for m in BASELINES for lr in grid
                for s in REPLAY_SEEDS]
        log(f"grid: {len(jobs)} constant and cosine runs")
        searched = run_all([(j, None) for j in jobs], workers, root)
        best: dict[tuple[str, str], float] = {}
        mean_val = {(t, m, lr): 100 * statistics.fmean(
            searched[Job(t, m, lr, s)].val_acc for s in REPLAY_SEEDS)
            for t in tasks for m in BASELINES for lr in grid}
        for t in tasks:
            for m in BASELINES:
                best[t, m] = max(grid, key=lambda lr, t=t, m=m: mean_val[t, m, lr])
            log(f"  {t}: best constant LR {best[t, 'constant']:.3g}, best cosine LR "
                f"{best[t, 'cosine']:.3g}")
        # 2. MARTHE on seed 0: the schedule to replay
        sources = [Job(t, "marthe", best[t, "constant"], SOURCE_SEED) for t in tasks]
        log(f"MARTHE on seed {SOURCE_SEED}: {len(sources)} runs")
        done = run_all([(j, None) for j in sources], workers, root)
        schedules = {}
        for j in sources:
            if done[j].lrs is None:
                raise SystemExit(f"{j.task}: MARTHE on seed {SOURCE_SEED} finished no epoch "
                                 f"({done[j].status}); there is no schedule to replay")
            schedules[j.task] = done[j].lrs
        # 3. the four methods on seeds 1-3, interleaved in one pool
        timed = []
        for t in tasks:
            for s in REPLAY_SEEDS:
                for m, _ in ROWS:
                    lr = best[t, "constant" if m in ("marthe", "replay") else m]
                    timed.append((Job(t, m, lr, s), schedules[t] if m == "replay" else None))
        log(f"timed: {len(timed)} runs (MARTHE, its replay, the best constant and cosine)")
        done.update(run_all(timed, workers, root))
    for job, _ in timed:
        if job.method in BASELINES:
            first, again = searched[job], done[job]
            if (first.test_acc, first.val_acc) != (again.test_acc, again.val_acc):
                mismatches.append(f"{job}: grid {first.test_acc}/{first.val_acc}, timed "
                                  f"{again.test_acc}/{again.val_acc}")
    for line in mismatches:
        log(f"warning: a baseline run did not repeat exactly: {line}")
    results = []
    for t in tasks:
        rows = []
        for method, label in ROWS:
            lr = best[t, "constant" if method in ("marthe", "replay") else method]
            runs = [done[Job(t, method, lr, s)] for s in REPLAY_SEEDS]
            rows.append(Row(method, label, lr, [100 * r.test_acc for r in runs],
                            statistics.median(r.seconds for r in runs),
                            statistics.median(r.cpu_seconds for r in runs),
                            sum(r.status == "diverged" for r in runs)))
        source = done[Job(t, "marthe", best[t, "constant"], SOURCE_SEED)]
        results.append(TaskResult(
            t, rows, 100 * source.test_acc, source.steps,
            {m: [(lr, mean_val[t, m, lr]) for lr in grid] for m in BASELINES}))
    facts = {"seconds": time.perf_counter() - started, "workers": workers,
             "runs": len(jobs) + len(sources) + len(timed), "not_repeated": mismatches}
    return results, facts


def markdown(results: Sequence[TaskResult]) -> str:
    lines = ["| task | method | LR | test acc % (mean, min–max, seeds 1–3) | wall s per run "
             "| CPU s per run | CPU × MARTHE's |", "|---|---|---:|---|---:|---:|---:|"]
    for res in results:
        marthe = next(r for r in res.rows if r.method == "marthe")
        for r in res.rows:
            div = f", **{r.diverged} diverged**" if r.diverged else ""
            acc = f"{statistics.fmean(r.accs):.1f} ({min(r.accs):.1f}–{max(r.accs):.1f}){div}"
            lines.append(f"| {res.task} | {r.label} | {r.lr:.3g} | {acc} | {r.seconds:.1f} "
                         f"| {r.cpu_seconds:.2f} | {r.cpu_seconds / marthe.cpu_seconds:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=list(robustness.TASKS),
                        choices=list(robustness.TASKS))
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--json", help="write the results to this JSON file")
    parser.add_argument("--markdown", help="write the table to this Markdown file")
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error(f"--workers {args.workers}: at least 1")

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    results, facts = benchmark(args.tasks, args.workers, log)
    table = markdown(results)
    for res in results:
        log(f"{res.task}: MARTHE on seed {SOURCE_SEED} reached {res.source_acc:.1f}% test "
            f"accuracy; its schedule has {res.source_steps} steps")
    log(f"total {facts['seconds'] / 60:.1f} min, {facts['runs']} runs, "
        f"{args.workers} workers")
    print(table, end="")
    if args.markdown:
        Path(args.markdown).write_text(table)
    if args.json:
        Path(args.json).write_text(json.dumps(
            {**facts, "tasks": [asdict(r) for r in results]}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
