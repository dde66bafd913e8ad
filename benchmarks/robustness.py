"""Do the tuners' defaults carry across tasks, optimizers and initial LRs?

For every task and optimizer (SGD with momentum 0.9, Adam) the benchmark first
finds the best constant LR by a grid search (a factor sqrt(10) apart; the best
mean validation accuracy over the seeds picks it), then starts every method
from 0.1x, 1x and 10x that LR, over the same seeds. Every run goes through
:func:`adatune.fit`, the loop the ``adatune`` command runs: the validation
split is carved from the training set, validation batches run in eval mode,
the test accuracy is taken at the best-validation epoch, and the loop's
divergence rules apply (a non-finite loss or LR, or a training loss above 10x
its first value). The tuners are built from the CLI's defaults for the
optimizer and the update rule (:func:`adatune.running.build.build_tuner` of a
:class:`~adatune.running.config.TrainConfig`), with no per-task setting.

The tasks are small, so that the whole grid runs in minutes on two CPU cores:

- ``digits-lenet``: LeNet-5 on the embedded 8x8 digits (the CLI's data split);
- ``teacher-mlp``: a ReLU MLP learning a random tanh teacher's labels on
  Gaussian inputs (24 dimensions, 8 classes, 10% of training labels flipped);
- ``motif-conv1d``: a 1-D convolutional net finding which of 6 motifs is
  planted in a noisy 2-channel sequence (with a weaker distractor motif);
- ``shapes-cnn``: a small CNN telling 4 kinds of shapes apart in noisy
  12x12 images.

Generated data depends on the seed only through the training set (and the
network's initialisation); every seed is tested on the same test set.

A *method* is a small declarative :class:`Method` entry: a tuner name and its
update rule, or a baseline schedule, or (for LR-free optimizers) an optimizer
factory that replaces the task's optimizer. Add entries to :data:`METHODS`
(or pass ``--methods``) to compare more.

The *peers* (:mod:`adatune.methods.peers`, at their packages' defaults) are methods of
one optimizer family each: D-Adaptation SGD, DoG, Schedule-Free SGD and Mechanic
SGD in the SGD rows, Prodigy, D-Adaptation Adam, Schedule-Free AdamW and Mechanic
AdamW in the Adam rows. Those that take no LR (D-Adaptation, Prodigy, DoG: lr
1.0 is their authors' setting, a multiplier of the step size they estimate) run
once per task and seed, and that result is shown at every initial LR.
Schedule-Free takes an LR: it starts from the same 0.1x, 1x and 10x as the
others, and runs once more at its package's default LR
(``schedulefree-*-default``). Mechanic wraps the task's optimizer itself (SGD
with momentum 0.9; AdamW without weight decay, which is Adam) and learns the
scale of its LR: it starts from the same initial LRs as the tuners, which is
what it claims to be robust to.

    python benchmarks/robustness.py                       # everything (2 workers)
    python benchmarks/robustness.py --no-peers            # the tuners and schedules only
    python benchmarks/robustness.py --tasks teacher-mlp --optimizers adam --seeds 1
    python benchmarks/robustness.py --json results.json --markdown table.md
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import TensorDataset

import adatune
from adatune.data.datasets import load_splits
from adatune.data.models import build_model
from adatune.methods.hyper_update import DEFAULT_HYPER_UPDATE, HYPER_UPDATES
from adatune.methods.peers import PEERS, build_peer
from adatune.running.build import build_tuner
from adatune.running.config import TrainConfig
from adatune.store import open_store

FACTORS = (0.1, 1.0, 10.0)
SQRT10 = math.sqrt(10.0)
#: The constant-LR grid per optimizer: a factor sqrt(10) apart.
GRID = {"sgd": tuple(1e-3 * SQRT10 ** k for k in range(1, 7)),
        "adam": tuple(1e-5 * SQRT10 ** k for k in range(2, 8))}
OPTIMIZERS: dict[str, Callable[[Any, float], torch.optim.Optimizer]] = {
    "sgd": lambda params, lr: torch.optim.SGD(params, lr=lr, momentum=0.9),
    "adam": lambda params, lr: torch.optim.Adam(params, lr=lr),
    "adamw": lambda params, lr: torch.optim.AdamW(params, lr=lr),
}


def family(optimizer: str) -> str:
    """The optimizer family a method runs beside: "sgd", or "adam" for Adam and AdamW."""
    return "sgd" if optimizer == "sgd" else "adam"


TARGET_GAP = 1.0  # points of test accuracy below the best constant LR
TARGET_GAIN = 2.0  # points above the constant LR from the same 10x-off start
#: Points of mean test accuracy within which two methods count as tied in the scoreboard:
#: about the seed-to-seed spread (one digits test image is 0.28 points).
TIE_BAND = 1.0


# --------------------------------------------------------------------------- tasks


@dataclass(frozen=True)
class Task:
    name: str
    data: Callable[[int], tuple[Any, Any, Any]]  # seed -> train, val, test
    model: Callable[[], nn.Module]  # built right after torch.manual_seed(seed)
    epochs: int = 15
    batch_size: int = 64
    #: ``adatune.fit``'s loss: "cross_entropy" (judged by accuracy) or a callable (by loss)
    loss: Any = "cross_entropy"
    optimizers: tuple[str, ...] = ("sgd", "adam")  # the task optimizers it runs with

    @property
    def by_loss(self) -> bool:
        """Judged by its test loss (lower is better) instead of its accuracy."""
        return self.loss != "cross_entropy"


def _split(x: torch.Tensor, y: torch.Tensor, seed: int, fraction: float = 0.1):
    """Training and validation sets, the latter a seeded ``fraction`` of the data."""
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    n_val = round(fraction * len(y))
    val, train = perm[:n_val], perm[n_val:]
    return TensorDataset(x[train], y[train]), TensorDataset(x[val], y[val])


def _digits(seed: int):
    splits = load_splits("digits", seed=seed)  # exactly the command's split
    return splits.train, splits.val, splits.test


def _lenet() -> nn.Module:
    return build_model("lenet", load_splits("digits", seed=0).spec)


def _teacher_labels(x: torch.Tensor) -> torch.Tensor:
    g = torch.Generator().manual_seed(1000)  # the teacher is fixed: one task
    w1 = torch.randn(x.shape[1], 64, generator=g) / math.sqrt(x.shape[1])
    w2 = torch.randn(64, 8, generator=g) * 2 / math.sqrt(64)
    return (torch.tanh(2 * x @ w1) @ w2).argmax(1)


def _teacher(seed: int, d: int = 24, classes: int = 8):
    x_test = torch.randn(2000, d, generator=torch.Generator().manual_seed(1001))
    g = torch.Generator().manual_seed(2000 + seed)
    x = torch.randn(2500, d, generator=g)
    y = _teacher_labels(x)
    flip = torch.rand(len(y), generator=g) < 0.1
    y = torch.where(flip, torch.randint(0, classes, y.shape, generator=g), y)
    train, val = _split(x, y, seed)
    return train, val, TensorDataset(x_test, _teacher_labels(x_test))


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(24, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(),
                         nn.Linear(128, 8))


def _motifs(n: int, g: torch.Generator, length: int = 48, classes: int = 6, width: int = 6):
    motifs = torch.randn(classes, 2, width, generator=torch.Generator().manual_seed(3000))
    x = torch.randn(n, 2, length, generator=g)
    y = torch.randint(0, classes, (n,), generator=g)
    pos = torch.randint(0, length - width, (n,), generator=g)
    other = (y + torch.randint(1, classes, (n,), generator=g)) % classes
    pos_other = torch.randint(0, length - width, (n,), generator=g)
    window = torch.arange(width)
    rows = torch.arange(n)[:, None]
    # x[i, :, pos_i + j] += 1.2 * motif[y_i][:, j], and a 0.6 distractor of another class
    x.transpose(1, 2)[rows, pos[:, None] + window] += 1.2 * motifs[y].transpose(1, 2)
    x.transpose(1, 2)[rows, pos_other[:, None] + window] += 0.6 * motifs[other].transpose(1, 2)
    return x, y


def _motif_data(seed: int):
    x_test, y_test = _motifs(2000, torch.Generator().manual_seed(3001))
    x, y = _motifs(2000, torch.Generator().manual_seed(4000 + seed))
    return (*_split(x, y, seed), TensorDataset(x_test, y_test))


def _conv1d() -> nn.Module:
    return nn.Sequential(nn.Conv1d(2, 16, 5, padding=2), nn.ReLU(),
                         nn.Conv1d(16, 32, 5, padding=2), nn.ReLU(),
                         nn.AdaptiveMaxPool1d(1), nn.Flatten(), nn.Linear(32, 6))


def _shapes(n: int, g: torch.Generator, size: int = 12):
    """Noisy images of a horizontal bar, a vertical bar, a square outline or a plus."""
    y = torch.randint(0, 4, (n,), generator=g)
    half = torch.randint(2, 4, (n,), generator=g)  # the shape's half-size
    cy = torch.randint(3, size - 3, (n,), generator=g)
    cx = torch.randint(3, size - 3, (n,), generator=g)
    r = torch.arange(size)
    dy = (r[None, :, None] - cy[:, None, None]).expand(n, size, size)
    dx = (r[None, None, :] - cx[:, None, None]).expand(n, size, size)
    h = half[:, None, None]
    inside = (dy.abs() <= h) & (dx.abs() <= h)
    shapes = torch.stack([
        (dy == 0) & (dx.abs() <= h),                                   # horizontal bar
        (dx == 0) & (dy.abs() <= h),                                   # vertical bar
        inside & ((dy.abs() == h) | (dx.abs() == h)),                  # square outline
        ((dy == 0) & (dx.abs() <= h)) | ((dx == 0) & (dy.abs() <= h)),  # plus
    ], 1)
    img = shapes[torch.arange(n), y].float()
    img = img * (0.5 + torch.rand(n, 1, 1, generator=g))
    img = img + 0.6 * torch.randn(n, size, size, generator=g)
    return img[:, None], y


def _shapes_data(seed: int):
    x_test, y_test = _shapes(2000, torch.Generator().manual_seed(5001))
    x, y = _shapes(2000, torch.Generator().manual_seed(6000 + seed))
    return (*_split(x, y, seed), TensorDataset(x_test, y_test))


def _cnn() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(16 * 3 * 3, 4))


TASKS: dict[str, Task] = {t.name: t for t in (
    Task("digits-lenet", _digits, _lenet),
    Task("teacher-mlp", _teacher, _mlp),
    Task("motif-conv1d", _motif_data, _conv1d),
    Task("shapes-cnn", _shapes_data, _cnn),
)}


# ------------------------------------------------------------------------- methods


@dataclass(frozen=True)
class Method:
    """One way to train from an initial LR.

    ``tuner`` (``"marthe"``, ``"rtho"``, ``"hd"``) with ``hyper_update``, built
    with the CLI's defaults (``options`` overrides some: ``(("online", True),)``);
    otherwise ``schedule`` (a baseline name, or ``"cosine-run"``: one cosine
    annealing over the run's steps, to 0 at its end) on the task's optimizer.
    ``optimizer`` replaces the task's optimizer: a factory
    ``(params, lr, family) -> Optimizer`` (an LR-free optimizer may ignore
    ``lr``); with ``uses_initial_lr=False`` the method runs once per seed and
    its result stands in every initial-LR column. ``families``: the task
    optimizers (``"sgd"``, ``"adam"``) it runs beside; the factory must be
    picklable (a module-level function or a :func:`functools.partial` of one)
    to run in worker processes.
    """

    name: str
    tuner: str | None = None
    hyper_update: str | None = None
    schedule: str | None = "constant"
    optimizer: Callable[[Any, float, str], torch.optim.Optimizer] | None = None
    uses_initial_lr: bool = True
    cost: float = 1.0  # relative cost per run, to schedule the longest runs first
    families: tuple[str, ...] = ("sgd", "adam")
    options: tuple[tuple[str, Any], ...] = ()


BASELINES = (Method("constant"), Method("cosine", schedule="cosine"))
TUNERS = tuple(
    Method(f"{tuner}" if rule == DEFAULT_HYPER_UPDATE else f"{tuner}-{rule}", tuner=tuner,
           hyper_update=rule, schedule=None, cost=1.2 if tuner == "hd" else 4.0)
    for tuner in ("marthe", "rtho", "hd")
    for rule in sorted(HYPER_UPDATES, key=lambda r: r != DEFAULT_HYPER_UPDATE)  # default first
)


def _peer(name: str, initial_lr: bool, params: Any, lr: float, family: str) -> Any:
    """Peer ``name`` at its defaults (:func:`build_peer`'s: Mechanic's base optimizer is the
    task's, SGD with momentum 0.9 or AdamW without decay); with ``initial_lr``, at the run's
    LR."""
    return build_peer(name, params, **({"lr": lr} if initial_lr else {}))


def _peer_method(name: str, family: str, *, initial_lr: bool = False,
                 suffix: str = "") -> Method:
    return Method(name + suffix, schedule=None, families=(family,), uses_initial_lr=initial_lr,
                  optimizer=functools.partial(_peer, name, initial_lr))


#: The LR-free optimizers of adatune.methods.peers, each beside the task optimizer of its family.
PEER_METHODS: tuple[Method, ...] = (
    _peer_method("dadapt-sgd", "sgd"),
    _peer_method("dog", "sgd"),
    _peer_method("schedulefree-sgd", "sgd", initial_lr=True),
    _peer_method("schedulefree-sgd", "sgd", suffix="-default"),
    _peer_method("prodigy", "adam"),
    _peer_method("dadapt-adam", "adam"),
    _peer_method("schedulefree-adamw", "adam", initial_lr=True),
    _peer_method("schedulefree-adamw", "adam", suffix="-default"),
    _peer_method("mechanic-sgd", "sgd", initial_lr=True),
    _peer_method("mechanic-adam", "adam", initial_lr=True),
)
assert {m.name.removesuffix("-default") for m in PEER_METHODS} == set(PEERS)
METHODS: tuple[Method, ...] = TUNERS + BASELINES + PEER_METHODS


# ---------------------------------------------------------------------------- runs


@dataclass(frozen=True)
class Job:
    task: str
    optimizer: str
    method: str
    lr: float
    seed: int


@dataclass
class Outcome:
    job: Job
    status: str
    test_acc: float  # at the best-validation epoch (0 when no epoch completed)
    val_acc: float
    final_lr: float
    epochs: int
    seconds: float
    cpu_seconds: float  # this worker process's CPU time in the run (one thread)
    reason: str | None = None
    test_loss: float | None = None  # at the best-validation epoch
    val_loss: float | None = None  # the best epoch's
    peak_lr: float | None = None  # the largest epoch LR of the run


_WORKER: dict[str, Any] = {}


def _init_worker(root: str) -> None:
    torch.set_num_threads(1)
    path = Path(root) / f"worker-{os.getpid()}"
    path.mkdir(parents=True, exist_ok=True)
    if _WORKER.get("store") is not None:  # an earlier benchmark in this process
        _WORKER["store"].close()
    _WORKER.clear()
    _WORKER["dir"] = path
    _WORKER["store"] = open_store(path / "runs.db")


def task_data(task: str, seed: int) -> Any:
    """The (train, val, test) data of a task and seed, built once per worker process."""
    cache = _WORKER.setdefault("data", {})
    if (task, seed) not in cache:
        cache[task, seed] = TASKS[task].data(seed)
    return cache[task, seed]


def train_once(job: Job, methods: dict[str, Method]) -> Outcome:
    """One run of ``job`` through :func:`adatune.fit`, as the command would train it."""
    method, task = methods[job.method], TASKS[job.task]
    train, val, test = task_data(job.task, job.seed)
    torch.manual_seed(job.seed)
    model = task.model()
    cpu = time.process_time()
    if method.optimizer is not None:
        optimizer = method.optimizer(model.parameters(), job.lr, family(job.optimizer))
    else:
        optimizer = OPTIMIZERS[job.optimizer](model.parameters(), job.lr)
    tuner = schedule = None
    hvp_fraction = 1.0
    if method.tuner is not None:
        config = TrainConfig(method=method.tuner, optimizer=job.optimizer, lr=job.lr,
                             hyper_update=method.hyper_update or DEFAULT_HYPER_UPDATE,
                             **dict(method.options))
        tuner = build_tuner(config, optimizer, model)
        hvp_fraction = config.hvp_fraction
    elif method.schedule == "cosine-run":
        steps = task.epochs * -(-len(train) // task.batch_size)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    else:
        schedule = method.schedule
    workdir = _WORKER.get("dir") or Path(tempfile.mkdtemp(prefix="robustness-"))
    store = _WORKER.get("store") or open_store(workdir / "runs.db")
    started = time.perf_counter()
    result = adatune.fit(model, train, val, test, optimizer=optimizer, tuner=tuner,
                         schedule=schedule, loss=task.loss, hvp_fraction=hvp_fraction,
                         schedule_interval="step" if method.schedule == "cosine-run" else "epoch",
                         epochs=task.epochs, batch_size=task.batch_size,
                         seed=job.seed, store=store, checkpoint_dir=str(workdir / "ckpt"),
                         name=f"{job.method} {job.task} {job.optimizer} lr={job.lr:.3g} "
                              f"seed={job.seed}")
    seconds = time.perf_counter() - started
    cpu = time.process_time() - cpu
    for leftover in (workdir / "ckpt" / f"run-{result.run_id}").glob("*"):
        leftover.unlink()
    lr = result.epochs[-1].lr if result.epochs else job.lr
    return Outcome(job=job, status=result.status, test_acc=result.test_acc or 0.0,
                   val_acc=result.best_val_acc or 0.0, final_lr=float(lr),
                   epochs=len(result.epochs), seconds=seconds, cpu_seconds=cpu,
                   reason=result.reason, test_loss=result.test_loss,
                   val_loss=result.best_val_loss,
                   peak_lr=max((float(e.lr) for e in result.epochs), default=job.lr))


def _run(payload: tuple[Job, dict[str, Method]]) -> Outcome:
    return train_once(*payload)


def run_all(jobs: Sequence[Job], methods: dict[str, Method], workers: int,
            root: str) -> dict[Job, Outcome]:
    """Every job once (duplicates merged), the costliest first, over ``workers`` processes."""
    unique = sorted(set(jobs), key=lambda j: (-methods[j.method].cost, j.task, j.seed, j.lr,
                                              j.optimizer, j.method))
    if workers <= 1:
        _init_worker(root)
        return {j: train_once(j, methods) for j in unique}
    with ProcessPoolExecutor(workers, initializer=_init_worker, initargs=(root,)) as pool:
        outcomes = pool.map(_run, [(j, methods) for j in unique])
        return {o.job: o for o in outcomes}


# ------------------------------------------------------------------------- analysis


@dataclass
class Cell:
    """One method on one task, optimizer and initial LR, over the seeds."""

    accs: list[float]
    divergences: int
    lr_ratio: float  # median over the seeds of final LR / best constant LR
    cpu: float = 0.0  # median over the seeds of one run's CPU seconds

    @property
    def mean(self) -> float:
        return statistics.fmean(self.accs)


@dataclass
class Results:
    best_lr: dict[tuple[str, str], float]
    grid: dict[tuple[str, str], list[tuple[float, float, float, int]]]  # lr, val, test, div
    cells: dict[tuple[str, str, str, float], Cell]  # method, task, optimizer, factor
    seconds: float
    workers: int
    seeds: tuple[int, ...]
    settings: dict[str, Any] = field(default_factory=dict)
    cpu_seconds: float | None = None  # summed over the runs: the machine's load leaves it be
    load: tuple[float, float] | None = None  # 1-minute load average at the start and end


def _cell(outcomes: Sequence[Outcome], best: float) -> Cell:
    ratio = statistics.median(o.final_lr / best for o in outcomes)
    return Cell(accs=[100 * o.test_acc for o in outcomes],
                divergences=sum(o.status == "diverged" for o in outcomes), lr_ratio=ratio,
                cpu=statistics.median(o.cpu_seconds for o in outcomes))


def benchmark(tasks: Sequence[str], optimizers: Sequence[str], methods: Sequence[Method],
              seeds: Sequence[int], workers: int, log: Callable[[str], None]) -> Results:
    by_name = {m.name: m for m in (*methods, *BASELINES)}
    started = time.perf_counter()
    load_start = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="adatune-robustness-") as root:
        grid_jobs = [Job(t, o, "constant", lr, s) for t in tasks for o in optimizers
                     for lr in GRID[o] for s in seeds]
        log(f"grid search: {len(grid_jobs)} constant-LR runs")
        done = run_all(grid_jobs, by_name, workers, root)
        best_lr, grid = {}, {}
        for t in tasks:
            for o in optimizers:
                rows = []
                for lr in GRID[o]:
                    runs = [done[Job(t, o, "constant", lr, s)] for s in seeds]
                    rows.append((lr, statistics.fmean(r.val_acc for r in runs),
                                 statistics.fmean(r.test_acc for r in runs),
                                 sum(r.status == "diverged" for r in runs)))
                grid[t, o] = rows
                best_lr[t, o] = max(rows, key=lambda r: r[1])[0]
                log(f"  {t} / {o}: best constant LR {best_lr[t, o]:.3g} "
                    "(val " + ", ".join(f"{lr:.3g}: {100 * v:.1f}" for lr, v, _, _ in rows) + ")")
        jobs = []
        for t in tasks:
            for o in optimizers:
                for m in by_name.values():
                    if family(o) not in m.families:
                        continue
                    factors = FACTORS if m.uses_initial_lr else (1.0,)
                    for f in factors:
                        jobs += [Job(t, o, m.name, _lr(best_lr[t, o], f, o), s) for s in seeds]
        fresh = [j for j in set(jobs) if j not in done]
        log(f"methods: {len(fresh)} runs ({len(set(jobs)) - len(fresh)} reused from the grid)")
        done.update(run_all(fresh, by_name, workers, root))
    cells = {}
    for t in tasks:
        for o in optimizers:
            for m in by_name.values():
                if family(o) not in m.families:
                    continue
                for f in FACTORS:
                    lr = _lr(best_lr[t, o], f if m.uses_initial_lr else 1.0, o)
                    runs = [done[Job(t, o, m.name, lr, s)] for s in seeds]
                    cells[m.name, t, o, f] = _cell(runs, best_lr[t, o])
    return Results(best_lr=best_lr, grid=grid, cells=cells,
                   seconds=time.perf_counter() - started, workers=workers, seeds=tuple(seeds),
                   cpu_seconds=sum(o.cpu_seconds for o in done.values()),
                   load=(load_start, os.getloadavg()[0]))


def _lr(best: float, factor: float, optimizer: str) -> float:
    """``best * factor``, snapped to the grid's value when it is one (no float drift)."""
    value = best * factor
    for lr in GRID[optimizer]:
        if math.isclose(lr, value, rel_tol=1e-9):
            return lr
    return value


# -------------------------------------------------------------------------- tables


def _fmt_cell(c: Cell) -> str:
    span = f"{min(c.accs):.1f}–{max(c.accs):.1f}"
    div = f", **{c.divergences} div**" if c.divergences else ""
    return f"{c.mean:.1f} ({span}){div}, ×{c.lr_ratio:.2g}"


def markdown(res: Results, methods: Sequence[str]) -> str:
    """Per task and optimizer: methods x initial LR (test accuracy %, divergences, LR ratio)."""
    out = []
    tasks = sorted({t for _, t, _, _ in res.cells}, key=list(TASKS).index)
    opts = [o for o in OPTIMIZERS if any(o == k[2] for k in res.cells)]
    for t in tasks:
        for o in opts:
            best = res.best_lr[t, o]
            ref = res.cells["constant", t, o, 1.0].mean
            out.append(f"\n**{t}, {o}** (best constant LR {best:.3g}: {ref:.1f}%)\n")
            out.append("| method | 0.1x | 1x | 10x |")
            out.append("|---|---|---|---|")
            for m in methods:
                if (m, t, o, 1.0) in res.cells:
                    row = [_fmt_cell(res.cells[m, t, o, f]) for f in FACTORS]
                    out.append(f"| {m} | " + " | ".join(row) + " |")
    return "\n".join(out)


def targets(res: Results, method: str) -> list[str]:
    """The issue's targets for ``method``, cell by cell: what passed and what did not."""
    lines = []
    for (m, t, o, f), c in sorted(res.cells.items()):
        if m != method:
            continue
        ref = res.cells["constant", t, o, 1.0].mean
        same = res.cells["constant", t, o, f].mean
        problems = []
        if c.mean < ref - TARGET_GAP:
            problems.append(f"{c.mean - ref:+.1f} vs best constant")
        if c.divergences:
            problems.append(f"{c.divergences} divergences")
        if f != 1.0 and c.mean < same + TARGET_GAIN:
            problems.append(f"{c.mean - same:+.1f} vs constant at {f:g}x")
        lines.append(f"{m} {t} {o} {f:g}x: " + ("ok" if not problems else "; ".join(problems)))
    return lines


def target_table(res: Results, methods: Sequence[str]) -> str:
    """The targets counted per method: how many cells (and runs) meet each.

    *Headroom*: the 10x-off cells where the constant LR from that start is at
    least ``TARGET_GAIN`` below the best constant's, so that ``TARGET_GAIN``
    points over it are possible without beating the best constant LR.
    """
    out = [f"| method | within {TARGET_GAP:g} point of the best constant | diverged runs | "
           f"+{TARGET_GAIN:g} over the constant LR from the same 10x-off start | "
           "the same, cells with headroom |", "|---|---:|---:|---:|---:|"]
    for m in methods:
        cells = [(k, c) for k, c in res.cells.items() if k[0] == m]
        if not cells:
            continue
        near = sum(c.mean >= res.cells["constant", t, o, 1.0].mean - TARGET_GAP
                   for (_, t, o, _), c in cells)
        runs = sum(len(c.accs) for _, c in cells)
        off = [(c.mean - res.cells["constant", t, o, f].mean,
                res.cells["constant", t, o, 1.0].mean - res.cells["constant", t, o, f].mean)
               for (_, t, o, f), c in cells if f != 1.0]
        gain = sum(d >= TARGET_GAIN for d, _ in off)
        room = [(d, r) for d, r in off if r >= TARGET_GAIN]
        out.append(f"| {m} | {near} / {len(cells)} | {sum(c.divergences for _, c in cells)} / "
                   f"{runs} | {gain} / {len(off)} | "
                   f"{sum(d >= TARGET_GAIN for d, _ in room)} / {len(room)} |")
    return "\n".join(out)


def summary(res: Results, methods: Sequence[str]) -> str:
    """Methods x (task, optimizer, initial LR): mean test accuracy minus the best constant's."""
    keys = sorted({(t, o) for _, t, o, _ in res.cells}, key=lambda k: (list(TASKS).index(k[0]),
                                                                       k[1]))
    head = "| method | " + " | ".join(f"{t} {o} {f:g}x" for t, o in keys for f in FACTORS) + " |"
    out = [head, "|---|" + "---|" * (len(keys) * len(FACTORS))]
    for m in methods:
        row = []
        for t, o in keys:
            ref = res.cells["constant", t, o, 1.0].mean
            for f in FACTORS:
                c = res.cells.get((m, t, o, f))
                if c is None:
                    row.append("")
                    continue
                row.append(f"{c.mean - ref:+.1f}" + (f" ({c.divergences}d)" if c.divergences
                                                      else ""))
        out.append(f"| {m} | " + " | ".join(row) + " |")
    return "\n".join(out)


Column = tuple[str, Sequence[str]]  # a header, and the methods it shows (the first present)


def by_start(res: Results, columns: Sequence[str | Column]) -> str:
    """One row per task, optimizer and initial LR; mean test accuracy per column.

    A column is a method's name, or ``(header, names)``: the first of ``names``
    that ran beside the row's optimizer (e.g. a peer of each family). ``(Nd)``:
    N of the seeds diverged. The row names the best constant LR's accuracy,
    the reference of the targets.
    """
    cols = [(c, (c,)) if isinstance(c, str) else c for c in columns]
    keys = sorted({(t, o) for _, t, o, _ in res.cells}, key=lambda k: (list(TASKS).index(k[0]),
                                                                       k[1]))
    out = ["| task | optimizer | start | best constant | "
           + " | ".join(h for h, _ in cols) + " |",
           "|---|---|---|---:|" + "---:|" * len(cols)]
    for t, o in keys:
        ref = res.cells["constant", t, o, 1.0].mean
        for f in FACTORS:
            row = []
            for _, names in cols:
                c = next((res.cells[m, t, o, f] for m in names if (m, t, o, f) in res.cells),
                         None)
                row.append("" if c is None else f"{c.mean:.1f}"
                           + (f" ({c.divergences}d)" if c.divergences else ""))
            out.append(f"| {t} | {o} | {f:g}x | {ref:.1f} | " + " | ".join(row) + " |")
    return "\n".join(out)


#: The README's columns: the default tuners, additive MARTHE, the schedules and the peers
#: (a peer of each family in one column).
COMPACT: tuple[str | Column, ...] = (
    "marthe", "rtho", "hd", "marthe-additive", "constant", "cosine",
    ("D-Adapt SGD / Adam", ("dadapt-sgd", "dadapt-adam")),
    ("DoG / Prodigy", ("dog", "prodigy")),
    ("Schedule-Free SGD / AdamW", ("schedulefree-sgd", "schedulefree-adamw")),
    ("Schedule-Free, package LR", ("schedulefree-sgd-default", "schedulefree-adamw-default")),
    ("Mechanic SGD / AdamW", ("mechanic-sgd", "mechanic-adam")),
)


def compact_columns(names: Sequence[str]) -> list[str | Column]:
    """:data:`COMPACT`, restricted to the methods that ran."""
    out: list[str | Column] = []
    for c in COMPACT:
        if isinstance(c, str):
            if c in names:
                out.append(c)
        elif any(m in names for m in c[1]):
            out.append(c)
    return out


def scoreboard(res: Results, tuners: Sequence[str], others: Sequence[str],
               band: float = TIE_BAND) -> str:
    """Wins, ties and losses of each tuner against each other method, cell by cell.

    A cell is a task, optimizer and initial LR where both ran; the tuner wins
    when its mean test accuracy is more than ``band`` points above the other's,
    loses when more than ``band`` below. A divergence counts in the mean (its
    accuracy is the best epoch's before it, often chance).
    """
    out = [f"| tuner | against | wins | ties (within {band:g} point) | losses | mean difference |",
           "|---|---|---:|---:|---:|---:|"]
    for tuner in tuners:
        for other in others:
            diffs = [c.mean - res.cells[other, t, o, f].mean
                     for (m, t, o, f), c in res.cells.items()
                     if m == tuner and (other, t, o, f) in res.cells]
            if not diffs or other == tuner:
                continue
            wins = sum(d > band for d in diffs)
            losses = sum(d < -band for d in diffs)
            out.append(f"| {tuner} | {other} | {wins} | {len(diffs) - wins - losses} | "
                       f"{losses} | {statistics.fmean(diffs):+.1f} |")
    return "\n".join(out)


def _to_json(res: Results) -> dict[str, Any]:
    return {
        "seconds": res.seconds, "workers": res.workers, "seeds": list(res.seeds),
        "cpu_seconds": res.cpu_seconds, "load": res.load,
        "best_lr": {f"{t}/{o}": lr for (t, o), lr in res.best_lr.items()},
        "grid": {f"{t}/{o}": rows for (t, o), rows in res.grid.items()},
        "cells": [{"method": m, "task": t, "optimizer": o, "factor": f, **asdict(c),
                   "mean": c.mean} for (m, t, o, f), c in res.cells.items()],
    }


def _from_json(data: dict[str, Any]) -> Results:
    def split(key: str) -> tuple[str, str]:
        t, o = key.split("/")
        return t, o

    cells = {(c["method"], c["task"], c["optimizer"], c["factor"]):
             Cell(accs=c["accs"], divergences=c["divergences"], lr_ratio=c["lr_ratio"],
                  cpu=c.get("cpu", 0.0))
             for c in data["cells"]}
    return Results(best_lr={split(k): v for k, v in data["best_lr"].items()},
                   grid={split(k): [tuple(r) for r in v] for k, v in data["grid"].items()},
                   cells=cells, seconds=data["seconds"], workers=data["workers"],
                   seeds=tuple(data["seeds"]), cpu_seconds=data.get("cpu_seconds"),
                   load=tuple(data["load"]) if data.get("load") else None)


def costs(res: Results, methods: Sequence[str]) -> str:
    """CPU seconds per run, and the ratio to the constant LR's run in the same cell.

    CPU time (one thread per run) is what machine load moves least; a diverged
    run stops early and counts as it ran. Medians over the cells a method ran in.
    """
    out = ["| method | CPU s per run (median) | × constant LR (median over cells) |",
           "|---|---:|---:|"]
    for m in methods:
        mine = [(c.cpu, res.cells["constant", t, o, f].cpu)
                for (name, t, o, f), c in res.cells.items() if name == m]
        mine = [(a, b) for a, b in mine if a > 0 and b > 0]
        if not mine:
            continue
        ratio = statistics.median(a / b for a, b in mine)
        out.append(f"| {m} | {statistics.median(a for a, _ in mine):.1f} | {ratio:.2f} |")
    return "\n".join(out)


def timing(res: Results) -> str:
    """How long the benchmark took, and the CPU time its runs used (load leaves that be)."""
    text = f"{res.seconds / 60:.1f} min with {res.workers} worker processes"
    if res.cpu_seconds is not None:
        text += (f"; the runs used {res.cpu_seconds / 60:.1f} CPU-minutes (one thread each: "
                 f"about {res.cpu_seconds / 60 / res.workers:.1f} min on {res.workers} idle "
                 "cores)")
    if res.load is not None:
        text += (f"; 1-minute load average {res.load[0]:.1f} at the start, "
                 f"{res.load[1]:.1f} at the end")
    return text


def report(res: Results, names: Sequence[str]) -> str:
    """Every table and the targets, as the benchmark prints them."""
    shown = [n for n in names if n != "constant"] + ["constant"]
    tuners = [n for n in names if any(n == m.name for m in TUNERS)]
    parts = [markdown(res, shown),
             "\nmean test accuracy minus the best constant LR's (points; d = divergences):\n",
             summary(res, shown),
             "\nmean test accuracy by start (%; d = divergences):\n",
             by_start(res, shown),
             "\nthe same, compact:\n",
             by_start(res, compact_columns(shown)),
             "\nwins, ties and losses:\n",
             scoreboard(res, tuners, [n for n in shown if n not in tuners]),
             "\ncost:\n",
             costs(res, shown),
             "\ntargets, counted:\n",
             target_table(res, shown),
             "\ntargets:"]
    parts += [line for m in ("marthe", "rtho", "hd") if m in names for line in targets(res, m)]
    parts.append("\n" + timing(res))
    return "\n".join(parts)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", default=",".join(TASKS))
    parser.add_argument("--optimizers", default=",".join(OPTIMIZERS))
    parser.add_argument("--methods", default=None,
                        help="comma-separated names from METHODS (constant always runs; "
                             "default: all)")
    parser.add_argument("--no-peers", action="store_true",
                        help="leave the LR-free peers out of the default methods")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--markdown", help="write the tables here")
    parser.add_argument("--report", metavar="JSON",
                        help="print the tables of a --json file instead of running")
    args = parser.parse_args(argv)
    if args.report:
        res = _from_json(json.loads(Path(args.report).read_text()))
        print(report(res, sorted({m for m, _, _, _ in res.cells},
                                 key=lambda m: [x.name for x in METHODS].index(m)
                                 if m in [x.name for x in METHODS] else 99)))
        return 0
    registry = {m.name: m for m in METHODS}
    tasks = args.tasks.split(",")
    if args.methods is None:
        peers = {m.name for m in PEER_METHODS}
        args.methods = ",".join(m.name for m in METHODS
                                if not (args.no_peers and m.name in peers))
    names = [n for n in args.methods.split(",") if n]
    unknown = [x for x in tasks if x not in TASKS] + [n for n in names if n not in registry]
    if unknown:
        parser.error(f"unknown task or method: {', '.join(unknown)}")
    methods = [registry[n] for n in names]
    res = benchmark(tasks, args.optimizers.split(","), methods, range(args.seeds),
                    args.workers, lambda line: print(line, flush=True))
    if args.json:  # first: the tables can be printed again from it with --report
        Path(args.json).write_text(json.dumps(_to_json(res), indent=1))
    text = report(res, [m.name for m in methods])
    print(text)
    if args.markdown:
        Path(args.markdown).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
