"""Do no harm: the default tuners on real data and longer runs, from 0.01x to 10x.

A user who hands a tuner a learning rate that is already good must not get a
worse run back; one who hands it a bad one should get close to what tuning a
schedule by hand gets. Short generated tasks cannot show short-horizon bias
(Wu, Ren, Liao & Grosse, ICLR 2018): it appears once the loss nears its noise
floor, on longer runs. This benchmark adds two real tasks to the generated
ones of :mod:`robustness` (whose machinery it shares: every run goes through
:func:`adatune.fit`, the loop the command runs):

- ``mnist1d-cnn``: MNIST-1D (Greydanus & Kobak, ICML 2024), generated offline
  by the ``mnist1d`` package with its standard arguments (4000 training and
  1000 test examples; 500 of the training examples are the validation split),
  with the paper's three-layer 1-D CNN, batch 100, 58 epochs (2030 steps),
  SGD with momentum 0.9 and Adam; judged by test accuracy at the best
  validation epoch.
- ``chars-transformer``: a character-level Transformer language model (2
  layers, width 64, 4 heads, context 32; attention written out so that its
  double backward exists) on the ``.py`` files of this Python's standard
  library (ASCII; 8000 training, 300 validation and 600 test windows),
  AdamW, batch 32, 4 epochs (1000 steps); judged by test loss in nats per
  character at the best validation epoch.
- the generated tasks of :mod:`robustness` (300 to 540 steps).

For every task and optimizer, a grid of constant LRs (a factor sqrt(10)
apart) finds the best constant LR (the best mean validation result over the
seeds); every method then starts from 0.01x, 0.1x, 1x and 10x that LR, over
the same seeds. References:

- the best constant LR;
- ``cosine`` at the best LR: one cosine annealing over the run (what a person
  who tunes gets);
- the *compute-matched grid*: the best (by validation) of ``k`` constant-LR
  runs spread evenly (in log) over the same 0.01x to 10x range, where ``k`` is
  what one run of the default tuner costs in constant-LR runs (its median CPU
  time over the constant LR's, rounded, at least 1): the user's alternative to
  paying for the tuner.

The targets (issue "do no harm"), for the library's default tuners with
nothing set per task:

- *do no harm*: from the best constant LR, no worse than it (0.5 points of
  accuracy, 0.01 nats);
- *recover*: from every start, within 1 point (0.02 nats) of the best
  constant LR, with no divergence where the best constant LR does not diverge;
- *anneal* (stretch): from every start, within 0.5 points (0.01 nats) of
  cosine at the best LR;
- *worth its cost*: at or above the compute-matched grid.

    python benchmarks/noharm.py                        # everything (2 workers)
    python benchmarks/noharm.py --tasks mnist1d-cnn --seeds 1
    python benchmarks/noharm.py --json noharm.json --markdown noharm.md
    python benchmarks/noharm.py --report noharm.json   # the tables again

The ``mnist1d`` package is a benchmark extra (``pip install 'adatune[bench]'``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import sysconfig
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parent))
import robustness as R  # noqa: E402 - the shared machinery lives beside this file

FACTORS = (0.01, 0.1, 1.0, 10.0)
SQRT10 = math.sqrt(10.0)
#: Tolerances of the targets: (accuracy points, nats).
HARM = (0.5, 0.01)
RECOVER = (1.0, 0.02)
ANNEAL = (0.5, 0.01)


# --------------------------------------------------------------------------- tasks


def _mnist1d(seed: int):
    """MNIST-1D's standard set (train 4000, test 1000); 500 seeded validation examples."""
    from mnist1d.data import get_dataset_args, make_dataset

    data = make_dataset(get_dataset_args())
    x = torch.as_tensor(data["x"], dtype=torch.float32)
    y = torch.as_tensor(data["y"], dtype=torch.long)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    val, train = perm[:500], perm[500:]
    test = TensorDataset(torch.as_tensor(data["x_test"], dtype=torch.float32),
                         torch.as_tensor(data["y_test"], dtype=torch.long))
    return TensorDataset(x[train], y[train]), TensorDataset(x[val], y[val]), test


class CNN1D(nn.Module):
    """The MNIST-1D paper's CNN: three stride-2 convolutions of 25 channels, a linear head."""

    def __init__(self, channels: int = 25, classes: int = 10) -> None:
        super().__init__()
        self.convs = nn.ModuleList([nn.Conv1d(1, channels, 5, stride=2, padding=1),
                                    nn.Conv1d(channels, channels, 3, stride=2, padding=1),
                                    nn.Conv1d(channels, channels, 3, stride=2, padding=1)])
        self.head = nn.Linear(channels * 5, classes)  # 40 -> 19 -> 10 -> 5 positions

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(x.shape[0], 1, -1)
        for conv in self.convs:
            x = torch.relu(conv(x))
        return self.head(x.flatten(1))


CONTEXT = 32


def _corpus() -> torch.Tensor:
    """This Python's standard library ``.py`` files (top level, sorted), as ASCII codes."""
    root = Path(sysconfig.get_paths()["stdlib"])
    text = b"".join(p.read_bytes() for p in sorted(root.glob("*.py")))
    codes = torch.frombuffer(bytearray(text), dtype=torch.uint8).long()
    return torch.clamp(codes, max=127)  # every non-ASCII byte is one symbol, 127


def _chars(seed: int, n_train: int = 8000, n_val: int = 300, n_test: int = 600):
    """Windows of CONTEXT + 1 characters: a fixed test set, a seeded train/val draw."""
    codes = _corpus()
    width = CONTEXT + 1
    windows = codes[: len(codes) // width * width].view(-1, width)
    order = torch.randperm(len(windows), generator=torch.Generator().manual_seed(1234))
    test, rest = windows[order[:n_test]], windows[order[n_test:]]
    pick = torch.randperm(len(rest), generator=torch.Generator().manual_seed(seed))
    val, train = rest[pick[:n_val]], rest[pick[n_val:n_val + n_train]]
    return tuple(TensorDataset(w[:, :-1], w[:, 1:]) for w in (train, val, test))


class _Block(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.qkv, self.proj = nn.Linear(width, 3 * width), nn.Linear(width, width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(),
                                 nn.Linear(4 * width, width))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, t, 3, self.heads, d // self.heads) \
            .permute(2, 0, 3, 1, 4)
        # written out (not scaled_dot_product_attention): its double backward exists
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d // self.heads) + mask, -1)
        x = x + self.proj((att @ v).transpose(1, 2).reshape(b, t, d))
        return x + self.mlp(self.norm2(x))


class CharTransformer(nn.Module):
    """A 2-layer, width-64 causal Transformer over 128 symbols."""

    def __init__(self, vocab: int = 128, width: int = 64, layers: int = 2, heads: int = 4,
                 context: int = CONTEXT) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.position = nn.Parameter(torch.zeros(context, width))
        self.blocks = nn.ModuleList(_Block(width, heads) for _ in range(layers))
        self.norm, self.head = nn.LayerNorm(width), nn.Linear(width, vocab)
        self.register_buffer("mask", torch.triu(torch.full((context, context), -math.inf), 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = x.shape[1]
        h = self.embed(x) + self.position[:t]
        for block in self.blocks:
            h = block(h, self.mask[:t, :t])
        return self.head(self.norm(h))


def next_char_loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy per character, in nats."""
    return nn.functional.cross_entropy(output.reshape(-1, output.shape[-1]), target.reshape(-1))


REAL_TASKS: dict[str, R.Task] = {t.name: t for t in (
    R.Task("mnist1d-cnn", _mnist1d, CNN1D, epochs=58, batch_size=100),
    R.Task("chars-transformer", _chars, CharTransformer, epochs=4, batch_size=32,
           loss=next_char_loss, optimizers=("adamw",)),
)}
R.TASKS.update(REAL_TASKS)  # the workers (forked) find them where train_once looks
TASKS: dict[str, R.Task] = {**REAL_TASKS, **{n: t for n, t in R.TASKS.items()
                                             if n not in REAL_TASKS}}


def _grid(low: float, points: int = 7) -> tuple[float, ...]:
    return tuple(low * SQRT10 ** k for k in range(points))


#: The constant-LR grid of each task and optimizer (default: robustness.GRID's).
GRIDS: dict[tuple[str, str], tuple[float, ...]] = {
    ("mnist1d-cnn", "sgd"): _grid(10 ** -2.5),
    ("mnist1d-cnn", "adam"): _grid(10 ** -3.5),
    ("chars-transformer", "adamw"): _grid(10 ** -3.5),
}


def grid(task: str, optimizer: str) -> tuple[float, ...]:
    return GRIDS.get((task, optimizer)) or R.GRID[R.family(optimizer)]


# ------------------------------------------------------------------------- methods

TUNERS = tuple(R.Method(name, tuner=name, schedule=None, cost=1.2 if name == "hd" else 2.0)
               for name in ("marthe", "rtho", "hd"))
#: The default before the horizon: the papers' online tuner (and its scale-free rule).
ONLINE = R.Method("marthe-online", tuner="marthe", schedule=None, cost=4.0,
                  options=(("online", True),))
CONSTANT = R.Method("constant")
COSINE = R.Method("cosine", schedule="cosine-run")
METHODS: tuple[R.Method, ...] = (*TUNERS, ONLINE, CONSTANT, COSINE, *R.PEER_METHODS)
#: Measured on request (``--methods``), not in the default run: MARTHE with the costly
#: part of a tuned step (HVP, validation gradient) on one tuned step in 4, MARTHE with
#: the finite-difference HVP, and MARTHE with the HVP on a quarter of each batch (the
#: cheaper steps' quality).
VARIANTS: tuple[R.Method, ...] = (
    R.Method("marthe-every4", tuner="marthe", schedule=None, cost=1.5,
             options=(("hyper_every", 4),)),
    R.Method("marthe-part4", tuner="marthe", schedule=None, cost=1.8,
             options=(("hvp_fraction", 0.25),)),
    R.Method("marthe-fd", tuner="marthe", schedule=None, cost=2.5,
             options=(("hvp", "finite-difference"),)),
)
MATCHED = "compute-matched grid"


# ---------------------------------------------------------------------------- runs


@dataclass
class Cell:
    """One method on one task, optimizer and start, over the seeds."""

    scores: list[float]  # test accuracy (%) or test loss (nats), per seed
    divergences: int
    peak: float  # median over the seeds of the run's largest epoch LR / best constant LR
    cpu: float  # median CPU seconds of one run

    @property
    def mean(self) -> float:
        return statistics.fmean(self.scores)


@dataclass
class Results:
    best_lr: dict[tuple[str, str], float]
    by_loss: dict[str, bool]  # task -> judged by loss (nats) instead of accuracy (%)
    cells: dict[tuple[str, str, str, float], Cell]  # method, task, optimizer, factor
    matched: dict[tuple[str, str], tuple[int, list[float], Cell]]  # k, LRs, the best's cell
    seconds: float
    cpu_seconds: float
    workers: int
    seeds: tuple[int, ...]
    load: tuple[float, float]
    python: str = field(default_factory=lambda: sys.version.split()[0])


def _score(outcome: R.Outcome, by_loss: bool) -> float:
    if by_loss:
        return outcome.test_loss if outcome.test_loss is not None else math.inf
    return 100 * outcome.test_acc


def _val(outcome: R.Outcome, by_loss: bool) -> float:
    """Larger is better: the validation accuracy, or minus the validation loss."""
    if by_loss:
        loss = outcome.val_loss
        return -loss if loss is not None and math.isfinite(loss) else -math.inf
    return outcome.val_acc


def _cell(outcomes: Sequence[R.Outcome], best: float, by_loss: bool) -> Cell:
    return Cell(scores=[_score(o, by_loss) for o in outcomes],
                divergences=sum(o.status == "diverged" for o in outcomes),
                peak=statistics.median((o.peak_lr or 0.0) / best for o in outcomes),
                cpu=statistics.median(o.cpu_seconds for o in outcomes))


def _snap(value: float, lrs: Sequence[float]) -> float:
    for lr in lrs:
        if math.isclose(lr, value, rel_tol=1e-9):
            return lr
    return value


def matched_lrs(best: float, k: int) -> list[float]:
    """``k`` LRs evenly spread in log over [0.01x, 10x] the best: the midpoints of k bins."""
    return [best * 0.01 * 1000 ** ((i + 0.5) / k) for i in range(k)]


def benchmark(tasks: Sequence[str], methods: Sequence[R.Method], seeds: Sequence[int],
              workers: int, log: Callable[[str], None]) -> Results:
    by_name = {m.name: m for m in (*methods, CONSTANT)}
    started, load_start = time.perf_counter(), os.getloadavg()[0]
    pairs = [(t, o) for t in tasks for o in TASKS[t].optimizers]
    by_loss = {t: TASKS[t].by_loss for t in tasks}
    done: dict[R.Job, R.Outcome] = {}
    with tempfile.TemporaryDirectory(prefix="adatune-noharm-") as root:
        jobs = [R.Job(t, o, "constant", lr, s) for t, o in pairs for lr in grid(t, o)
                for s in seeds]
        log(f"grid: {len(jobs)} constant-LR runs")
        done.update(R.run_all(jobs, by_name, workers, root))
        best_lr = {}
        for t, o in pairs:
            means = {lr: statistics.fmean(_val(done[R.Job(t, o, "constant", lr, s)],
                                               by_loss[t]) for s in seeds)
                     for lr in grid(t, o)}
            best_lr[t, o] = max(means, key=means.get)
            log(f"  {t} / {o}: best constant LR {best_lr[t, o]:.3g}")

        def lr_at(t: str, o: str, f: float) -> float:
            return _snap(best_lr[t, o] * f, grid(t, o))

        jobs = []
        for t, o in pairs:
            for m in by_name.values():
                if R.family(o) not in m.families:
                    continue
                for f in (FACTORS if m.uses_initial_lr else (1.0,)):
                    jobs += [R.Job(t, o, m.name, lr_at(t, o, f), s) for s in seeds]
        fresh = [j for j in set(jobs) if j not in done]
        log(f"methods: {len(fresh)} runs")
        done.update(R.run_all(fresh, by_name, workers, root))
        cells = {}
        for t, o in pairs:
            for m in by_name.values():
                if R.family(o) not in m.families:
                    continue
                for f in FACTORS:
                    runs = [done[R.Job(t, o, m.name, lr_at(t, o, f if m.uses_initial_lr
                                                          else 1.0), s)] for s in seeds]
                    cells[m.name, t, o, f] = _cell(runs, best_lr[t, o], by_loss[t])
        # the compute-matched grid: as many constant runs as one default tuner run costs
        plan = {}
        for t, o in pairs:
            ratios = [cells["marthe", t, o, f].cpu / cells["constant", t, o, f].cpu
                      for f in FACTORS if ("marthe", t, o, f) in cells
                      and cells["constant", t, o, f].cpu > 0]
            k = max(1, round(statistics.median(ratios))) if ratios else 1
            plan[t, o] = (k, matched_lrs(best_lr[t, o], k))
        jobs = [R.Job(t, o, "constant", lr, s) for (t, o), (_, lrs) in plan.items()
                for lr in lrs for s in seeds]
        fresh = [j for j in set(jobs) if j not in done]
        log(f"compute-matched grids: {len(fresh)} runs")
        done.update(R.run_all(fresh, by_name, workers, root))
    matched = {}
    for (t, o), (k, lrs) in plan.items():
        runs = {lr: [done[R.Job(t, o, "constant", lr, s)] for s in seeds] for lr in lrs}
        # per seed, the user keeps the run with the best validation result
        chosen = [max((runs[lr][i] for lr in lrs), key=lambda r: _val(r, by_loss[t]))
                  for i in range(len(seeds))]
        matched[t, o] = (k, lrs, _cell(chosen, best_lr[t, o], by_loss[t]))
    return Results(best_lr=best_lr, by_loss=by_loss, cells=cells, matched=matched,
                   seconds=time.perf_counter() - started,
                   cpu_seconds=sum(o.cpu_seconds for o in done.values()), workers=workers,
                   seeds=tuple(seeds), load=(load_start, os.getloadavg()[0]))


# ------------------------------------------------------------------------ judging


def _sign(res: Results, task: str) -> float:
    """+1 where a larger score is better (accuracy), -1 where smaller is (loss)."""
    return -1.0 if res.by_loss[task] else 1.0


def _tol(res: Results, task: str, pair: tuple[float, float]) -> float:
    return pair[1] if res.by_loss[task] else pair[0]


def gain(res: Results, task: str, score: float, reference: float) -> float:
    """How much better ``score`` is than ``reference`` (points, or nats saved)."""
    return _sign(res, task) * (score - reference)


def targets(res: Results, method: str) -> dict[str, list[tuple[str, float, bool]]]:
    """Per target, each cell's (label, gain over the reference, met)."""
    out: dict[str, list[tuple[str, float, bool]]] = {
        "do no harm": [], "recover": [], "anneal": [], "worth its cost": []}
    for (m, t, o, f), c in sorted(res.cells.items()):
        if m != method:
            continue
        label = f"{t} {o} {f:g}x"
        best = res.cells["constant", t, o, 1.0]
        cosine = res.cells["cosine", t, o, 1.0]
        _, _, grid_cell = res.matched[t, o]
        d_best = gain(res, t, c.mean, best.mean)
        safe = c.divergences == 0 or best.divergences > 0
        if f == 1.0:
            out["do no harm"].append((label, d_best, d_best >= -_tol(res, t, HARM)))
        out["recover"].append((label, d_best, d_best >= -_tol(res, t, RECOVER) and safe))
        d_cos = gain(res, t, c.mean, cosine.mean)
        out["anneal"].append((label, d_cos, d_cos >= -_tol(res, t, ANNEAL)))
        d_grid = gain(res, t, c.mean, grid_cell.mean)
        out["worth its cost"].append((label, d_grid, d_grid >= 0))
    return out


def _fmt(res: Results, task: str, value: float) -> str:
    return f"{value:.3f}" if res.by_loss[task] else f"{value:.1f}"


def _fmt_cell(res: Results, task: str, c: Cell | None) -> str:
    if c is None:
        return ""
    return _fmt(res, task, c.mean) + (f" ({c.divergences}d)" if c.divergences else "")


def _pairs(res: Results) -> list[tuple[str, str]]:
    pairs = {(t, o) for _, t, o, _ in res.cells}
    return sorted(pairs, key=lambda p: (list(TASKS).index(p[0]) if p[0] in TASKS else 99,
                                        p[1]))


#: The compact table's columns: a header and the methods it shows (the first that ran).
COLUMNS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("MARTHE", ("marthe",)), ("RTHO", ("rtho",)), ("HD", ("hd",)),
    ("MARTHE online (old default)", ("marthe-online",)),
    ("Mechanic", ("mechanic-sgd", "mechanic-adam")),
    ("Prodigy / D-Adapt SGD", ("prodigy", "dadapt-sgd")),
    ("Schedule-Free", ("schedulefree-sgd", "schedulefree-adamw")),
    *((v.name, (v.name,)) for v in VARIANTS),  # when measured (--methods)
)


def compact(res: Results, tasks: Sequence[str] | None = None) -> str:
    """One row per task, optimizer and start: the references, then each method's mean."""
    cols = [(h, ms) for h, ms in COLUMNS if any(k[0] in ms for k in res.cells)]
    heads = ["task", "optimizer", "start", "best constant", "cosine at best",
             "compute-matched grid", *(h for h, _ in cols)]
    out = ["| " + " | ".join(heads) + " |", "|---|---|---|" + "---:|" * (len(heads) - 3)]
    for t, o in _pairs(res):
        if tasks is not None and t not in tasks:
            continue
        k, _, grid_cell = res.matched[t, o]
        for f in FACTORS:
            row = [_fmt_cell(res, t, next((res.cells[m, t, o, f] for m in ms
                                           if (m, t, o, f) in res.cells), None))
                   for _, ms in cols]
            best = _fmt_cell(res, t, res.cells["constant", t, o, 1.0])
            cosine = _fmt_cell(res, t, res.cells["cosine", t, o, 1.0])
            out.append("| " + " | ".join([t, o, f"{f:g}x", best, cosine,
                                          f"{_fmt_cell(res, t, grid_cell)} (k={k})", *row])
                       + " |")
    return "\n".join(out)


def from_start(res: Results, method: str) -> str:
    """``method`` against the same schedule-free baselines from the same start."""
    out = ["| task | optimizer | start | constant from there | cosine from there | "
           f"{method} | peak LR / best constant |", "|---|---|---|---:|---:|---:|---:|"]
    for t, o in _pairs(res):
        for f in FACTORS:
            c = res.cells.get((method, t, o, f))
            if c is None:
                continue
            const = _fmt_cell(res, t, res.cells["constant", t, o, f])
            cosine = _fmt_cell(res, t, res.cells["cosine", t, o, f])
            out.append(f"| {t} | {o} | {f:g}x | {const} | {cosine} | "
                       f"{_fmt_cell(res, t, c)} | {c.peak:.2g} |")
    return "\n".join(out)


def target_table(res: Results, methods: Sequence[str]) -> str:
    names = ("do no harm", "recover", "anneal", "worth its cost")
    out = ["| method | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for m in methods:
        got = targets(res, m)
        if not got["recover"]:
            continue
        out.append(f"| {m} | " + " | ".join(f"{sum(ok for *_, ok in got[n])} / {len(got[n])}"
                                           for n in names) + " |")
    return "\n".join(out)


def misses(res: Results, method: str) -> list[str]:
    lines = []
    for name, cells in targets(res, method).items():
        for label, delta, ok in cells:
            if not ok:
                task = label.split()[0]
                unit = " nats" if res.by_loss[task] else " points"
                lines.append(f"{method} misses {name} on {label}: {delta:+.3g}{unit}")
    return lines


def costs(res: Results, methods: Sequence[str]) -> str:
    out = ["| method | CPU s per run (median) | x constant LR (median over cells) |",
           "|---|---:|---:|"]
    for m in methods:
        mine = [(c.cpu, res.cells["constant", t, o, f].cpu)
                for (n, t, o, f), c in res.cells.items() if n == m and c.cpu > 0]
        if mine:
            out.append(f"| {m} | {statistics.median(a for a, _ in mine):.1f} | "
                       f"{statistics.median(a / b for a, b in mine if b > 0):.2f} |")
    return "\n".join(out)


def timing(res: Results) -> str:
    return (f"{res.seconds / 60:.1f} min with {res.workers} worker processes; the runs used "
            f"{res.cpu_seconds / 60:.1f} CPU-minutes; 1-minute load {res.load[0]:.1f} at the "
            f"start, {res.load[1]:.1f} at the end; Python {res.python}")


def report(res: Results) -> str:
    names = sorted({m for m, *_ in res.cells}, key=lambda m: [x.name for x in METHODS].index(m)
                   if m in [x.name for x in METHODS] else 99)
    tuners = [m for m in ("marthe", "rtho", "hd", "marthe-online", *(v.name for v in VARIANTS))
              if m in names]  # each with its cells from every start
    parts = ["mean test accuracy (%) or test loss (nats); (Nd): N seeds diverged\n",
             compact(res), "\ntargets, counted (cells met / cells):\n",
             target_table(res, [*tuners, *(n for n in names if n not in tuners)])]
    for m in tuners:
        parts += [f"\n{m} from each start:\n", from_start(res, m)]
    parts += ["\ncost:\n", costs(res, names), "\nmisses of the default tuners:"]
    parts += [line for m in ("marthe", "rtho", "hd") if m in names for line in misses(res, m)]
    parts.append("\n" + timing(res))
    return "\n".join(parts)


def to_json(res: Results) -> dict[str, Any]:
    return {"seconds": res.seconds, "cpu_seconds": res.cpu_seconds, "workers": res.workers,
            "seeds": list(res.seeds), "load": list(res.load), "python": res.python,
            "by_loss": res.by_loss,
            "best_lr": {f"{t}/{o}": lr for (t, o), lr in res.best_lr.items()},
            "cells": [{"method": m, "task": t, "optimizer": o, "factor": f, **asdict(c)}
                      for (m, t, o, f), c in res.cells.items()],
            "matched": [{"task": t, "optimizer": o, "k": k, "lrs": lrs, **asdict(c)}
                        for (t, o), (k, lrs, c) in res.matched.items()]}


def from_json(data: dict[str, Any]) -> Results:
    def cell(d: dict[str, Any]) -> Cell:
        return Cell(scores=d["scores"], divergences=d["divergences"], peak=d["peak"],
                    cpu=d["cpu"])

    return Results(
        best_lr={tuple(k.split("/")): v for k, v in data["best_lr"].items()},
        by_loss=data["by_loss"],
        cells={(c["method"], c["task"], c["optimizer"], c["factor"]): cell(c)
               for c in data["cells"]},
        matched={(m["task"], m["optimizer"]): (m["k"], m["lrs"], cell(m))
                 for m in data["matched"]},
        seconds=data["seconds"], cpu_seconds=data["cpu_seconds"], workers=data["workers"],
        seeds=tuple(data["seeds"]), load=tuple(data["load"]), python=data["python"])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", default=",".join(TASKS))
    parser.add_argument("--methods", default=None,
                        help="comma-separated names (constant and cosine always run; "
                             "default: all but the variants, e.g. marthe-every4)")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--markdown", help="write the tables here")
    parser.add_argument("--report", metavar="JSON", help="print the tables of a --json file")
    args = parser.parse_args(argv)
    if args.report:
        print(report(from_json(json.loads(Path(args.report).read_text()))))
        return 0
    registry = {m.name: m for m in (*METHODS, *VARIANTS)}
    tasks = args.tasks.split(",")
    names = args.methods.split(",") if args.methods else [m.name for m in METHODS]
    unknown = [t for t in tasks if t not in TASKS] + [n for n in names if n not in registry]
    if unknown:
        parser.error(f"unknown task or method: {', '.join(unknown)}")
    chosen = [registry[n] for n in dict.fromkeys([*names, "cosine"])]
    res = benchmark(tasks, chosen, range(args.seeds), args.workers,
                    lambda line: print(line, flush=True))
    if args.json:
        Path(args.json).write_text(json.dumps(to_json(res), indent=1))
    text = report(res)
    print(text)
    if args.markdown:
        Path(args.markdown).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
