"""Records -> plot-ready information (the data step of every figure).

Pure functions over :class:`~adatune.store.records.RunDetail` sequences that
return NamedTuples; no plotly, no I/O. ``figures.py`` turns each ``*Info``
into a figure, ``html.py`` assembles the page, and the tests check the numbers
here without plotting anything.

Conventions
-----------
* Non-finite values (NaN, inf: diverged runs) and ``None`` become ``None``
  ("no value"): they never enter a mean, a min or a max, and plotted series
  show a gap there.
* A figure's series is *constant* when all its finite values are equal (to
  1e-9 relative): every ``*Info`` with curves or traces carries that value in
  ``constant`` (else ``None``), so that the figure can draw a tight axis and
  say so in one line instead of a flat line on a default axis.
* Runs are *compared* per group: runs of one method, dataset, network and
  optimizer whose recorded configurations agree on everything that changes
  the result (every recorded field but those in :data:`NOT_RESULT_FIELDS`:
  the seed, which the group varies over, the device, folders, logging; a
  nested setting such as ``tuner.alpha`` counts as a field). A group's label
  is the method, the dataset / network / optimizer when the compared runs
  differ in those, and ``field=value`` for each configuration field in which
  the runs of that method differ (a field one run records and another does
  not shows as ``field=–``). ``probe`` and ``find-alpha`` runs are not
  compared (they are short trials and search parents); they appear in the
  find-alpha section only.
* Every legend names the runs behind a line (:func:`run_ids_text`), and every
  hover names its run or runs.
* The learning rate and the hyper-LR get a log axis by default when every
  value is positive and they span more than :data:`LOG_SPAN` (the hyper-LR
  whenever it is positive): a schedule that warms up to 0.6 must not flatten
  the others at 0.05.
* Per-epoch bands align runs by epoch number: at epoch ``e`` the mean, min and
  max are over the runs of the group that have a finite value at ``e``, and
  ``n`` says how many did.
* Incumbent (MARTHE paper, Fig. 3): at each epoch of a run, the test accuracy
  of the epoch with the best validation accuracy so far (the first epoch
  reaching the maximum; a non-finite validation accuracy never becomes best),
  placed at the cumulative wall-clock seconds ``elapsed_s``. It is a step
  function of time. Seeds are combined on a common time grid: the union of the
  runs' epoch times, starting when every contributing run has its first value
  (the latest first-epoch time) and ending at the group's last time. A run's
  value at ``t`` is its last incumbent at or before ``t``; after its last
  epoch a run keeps its final incumbent (its best model stays found). Grids
  longer than ``max_points`` keep evenly spaced grid times (first and last
  always), evaluated exactly.
* Sweeps (``adatune sweep``, runs of kind ``sweep``): per method and study,
  the runs of each seed are laid end to end in trial order, as one search
  would run them: a run starts when the previous one of that seed ended
  (after the longer of its last ``elapsed_s`` and its wall-clock duration
  ``ended_at - started_at``, which also counts a run that diverged in its
  first epoch). The incumbent is then the test accuracy of the best
  validation epoch over every run so far, and seeds are combined as above.
  The best configuration of a group is the trial whose runs all completed,
  over as many seeds as the group's fullest trial, with the highest mean best
  validation accuracy (the sweep's objective; ties: the earlier trial).
* Replays (``adatune baseline --lr-scheduler replay``): one figure per
  source, the source run's traced LR next to each replay's. The x axis is the
  position in the source schedule, as a fraction of it: the source's step
  ``i`` of ``N`` sits at ``i / N``; a replay's traced step sits at the point
  of the schedule it replayed (step ``t`` at ``t / N``, or with ``--stretch``
  at ``t / M`` for a replay of ``M`` steps; a per-epoch schedule counts in
  epochs), so a faithful replay lies on its source (times ``--scale``).
* find-alpha probes carry the CLI's verdict (``adatune find-alpha``): a probe
  run that completed is *stable*; ``diverged``, ``interrupted`` and ``failed``
  keep their names.
"""

from __future__ import annotations

import bisect
import json
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

from adatune.store.records import EpochRecord, RunDetail, RunRecord

# Runs the per-method seed comparison leaves out: find-alpha probes and searches
# (their own section), and sweep trials, which mix many configurations of one
# method (the sweep section shows them as the paper does).
NOT_COMPARED_KINDS = ("probe", "find-alpha", "sweep")
GROUP_FIELDS = ("dataset", "network", "optimizer")
#: Recorded configuration fields that do not change a run's result: they never split a group.
NOT_RESULT_FIELDS = frozenset({
    "seed", "device", "data_dir", "download", "checkpoint_dir", "log_every", "workers",
    "extra", "entry", "method", *GROUP_FIELDS,
})
#: The configuration fields named first in a group's label, when they differ.
LABEL_ORDER = ("hyper_update", "alpha", "mu", "hyper_lr", "lr", "epochs")
#: Positive values spanning more than this factor are drawn on a log axis by default.
LOG_SPAN = 10.0
#: Fields on a log axis by default whenever every value is positive (their changes are
#: relative, and they span decades).
LOG_FIELDS = ("hyper_lr",)
EPOCH_METRICS = ("val_acc", "test_acc", "train_loss", "val_loss", "test_loss", "train_acc")
EPOCH_TRACE_FIELDS = ("lr", "lr_mean", "mu", "hyper_lr")
STEP_TRACE_FIELDS = ("lr", "mu", "hyper_lr", "hypergradient", "train_loss")

DEFAULT_MAX_POINTS = 200  # per-epoch series and incumbent grids
DEFAULT_MAX_STEP_POINTS = 400  # per-step series


# --------------------------------------------------------------------------- helpers


def _clean(value: Any) -> float | None:
    """A finite float, or ``None`` for None / NaN / inf."""
    if value is None:
        return None
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _downsample(
    xs: Sequence[float], ys: Sequence[float | None], max_points: int
) -> tuple[tuple[float, ...], tuple[float | None, ...]]:
    """At most ``max_points`` points that keep the shape of ``ys``.

    Min-max decimation: the first and last points, then per bucket of
    consecutive points the smallest and the largest value (in x order), and
    the first gap (``None``) of the bucket so that divergence stays visible.
    """
    if max_points < 2:
        raise ValueError(f"Invalid max_points: {max_points}")
    n = len(xs)
    if n <= max_points:
        return tuple(xs), tuple(ys)
    has_gap = any(y is None for y in ys)
    per_bucket = 3 if has_gap else 2
    buckets = max(1, (max_points - 2) // per_bucket)
    inner = n - 2
    keep = {0, n - 1}
    for b in range(buckets):
        lo = 1 + (b * inner) // buckets
        hi = 1 + ((b + 1) * inner) // buckets
        finite = [i for i in range(lo, hi) if ys[i] is not None]
        if finite:
            keep.add(min(finite, key=ys.__getitem__))
            keep.add(max(finite, key=ys.__getitem__))
        if has_gap:
            gap = next((i for i in range(lo, hi) if ys[i] is None), None)
            if gap is not None:
                keep.add(gap)
    idx = sorted(keep)
    return tuple(xs[i] for i in idx), tuple(ys[i] for i in idx)


def _even_subset(values: Sequence[float], max_points: int) -> list[float]:
    """Evenly spaced elements of ``values`` (first and last always kept)."""
    n = len(values)
    if n <= max_points:
        return list(values)
    if max_points < 2:
        raise ValueError(f"Invalid max_points: {max_points}")
    idx = sorted({round(k * (n - 1) / (max_points - 1)) for k in range(max_points)})
    return [values[i] for i in idx]


def _constant(values: Iterable[float | None]) -> float | None:
    """The common value when every finite value is equal (1e-9 relative), else ``None``.

    ``None`` as well when there is no finite value at all.
    """
    first: float | None = None
    for v in values:
        if v is None:
            continue
        if first is None:
            first = v
        elif not math.isclose(v, first, rel_tol=1e-9, abs_tol=0.0):
            return None
    return first


def _curves_constant(curves: Sequence[BandCurve]) -> float | None:
    return _constant(v for c in curves for ys in (c.mean, c.lo, c.hi) for v in ys)


def _sorted_epochs(detail: RunDetail) -> list[EpochRecord]:
    """Epochs in order, one per epoch number (the last record wins)."""
    by_epoch = {e.epoch: e for e in detail.epochs}
    return [by_epoch[k] for k in sorted(by_epoch)]


def run_label(run: RunRecord) -> str:
    """``#12 name (seed 0)``: unique within a store, readable in a legend."""
    name = f" {run.name}" if run.name else ""
    return f"#{run.id}{name} (seed {run.seed})"


def run_ids_text(ids: Iterable[int], *, limit: int = 6) -> str:
    """``#1–#3, #7``: run ids in order, runs of consecutive ids as ranges.

    More than ``limit`` pieces are cut in the middle: ``#1, #3, #5, …, #40 (20 runs)``.
    """
    ordered = sorted(set(ids))
    pieces: list[str] = []
    start = prev = None
    for i in [*ordered, None]:
        if start is not None and (i is None or i != prev + 1):
            pieces.append(f"#{start}" if prev == start else
                          f"#{start}, #{prev}" if prev == start + 1 else f"#{start}–#{prev}")
            start = None
        if i is not None and start is None:
            start = i
        prev = i
    text = ", ".join(pieces)
    if len(pieces) > limit:
        text = ", ".join([*pieces[: limit - 2], "…", pieces[-1]]) + f" ({len(ordered)} runs)"
    return text


def legend_name(label: str, run_ids: Sequence[int]) -> str:
    """How a legend names a group's line: its label and its runs, ``marthe (#1, #4)``."""
    return f"{label} ({run_ids_text(run_ids)})" if run_ids else label


# --------------------------------------------------------------------------- grouping


class Group(NamedTuple):
    """Runs compared together: one method, dataset, network, optimizer and configuration."""

    label: str
    method: str
    dataset: str
    network: str
    optimizer: str
    runs: tuple[RunDetail, ...]
    #: The configuration fields that set this group apart from the method's other groups,
    #: with this group's values as the label shows them.
    config: tuple[tuple[str, str], ...] = ()

    @property
    def run_ids(self) -> tuple[int, ...]:
        return tuple(d.run.id for d in self.runs)

    @property
    def legend(self) -> str:
        """The label with the group's run ids: what a legend shows."""
        return legend_name(self.label, self.run_ids)


def _own_model(run: RunRecord) -> bool:
    """A run of the user's own model (``--model`` or ``adatune.fit``): labels name it."""
    return bool(run.config.get("model")) or run.config.get("entry") == "fit"


def _compared(details: Iterable[RunDetail]) -> list[RunDetail]:
    return [d for d in details if d.run.kind not in NOT_COMPARED_KINDS]


_MISSING = "–"  # how a label shows a field that a run did not record


def _shown(value: Any) -> str:
    """A configuration value as a label shows it: ``0.001``, ``true``, ``auto``."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:.4g}"
    if value is None:
        return "none"
    if isinstance(value, (int, str)):
        return str(value)
    return json.dumps(value, sort_keys=True, default=str)


def _result_fields(run: RunRecord) -> dict[str, str]:
    """The recorded configuration fields that change the result, flattened (``tuner.alpha``),
    each value as a label shows it."""
    out: dict[str, str] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict) and value:
            for key in sorted(value, key=str):
                walk(f"{prefix}.{key}" if prefix else str(key), value[key])
        elif prefix:
            out[prefix] = _shown(value)

    config = run.config if isinstance(run.config, dict) else {}
    walk("", {k: v for k, v in config.items() if k not in NOT_RESULT_FIELDS})
    return out


def _label_order(field: str) -> tuple[int, str]:
    return (LABEL_ORDER.index(field) if field in LABEL_ORDER else len(LABEL_ORDER), field)


def _get_groups(details: Sequence[RunDetail]) -> tuple[Group, ...]:
    """Group the compared runs (see the module doc); labels name only what differs."""
    compared = _compared(details)
    own_model = any(_own_model(d.run) for d in compared)  # then labels always name the model
    def value(run: RunRecord, f: str) -> str | None:
        # a peer is its own optimizer: it does not make the other runs' optimizer vary
        return None if f == "optimizer" and run.optimizer == run.method else getattr(run, f)

    varying = [f for f in GROUP_FIELDS
               if len({value(d.run, f) for d in compared} - {None}) > 1
               or (f == "network" and own_model)]
    buckets: dict[tuple[str, ...], list[RunDetail]] = {}
    for d in compared:
        key = (d.run.method, d.run.dataset, d.run.network, d.run.optimizer)
        buckets.setdefault(key, []).append(d)
    groups = []
    for key in sorted(buckets):
        method, dataset, network, optimizer = key
        values = dict(zip(GROUP_FIELDS, (dataset, network, optimizer), strict=True))
        # a peer is its own optimizer: "prodigy", not "prodigy · prodigy"
        head = [method, *(values[f] for f in varying
                          if not (f == "optimizer" and values[f] == method))]
        fields = {d.run.id: _result_fields(d.run) for d in buckets[key]}
        names = sorted({f for found in fields.values() for f in found}, key=_label_order)
        differing = [f for f in names
                     if len({found.get(f, _MISSING) for found in fields.values()}) > 1]
        subgroups: dict[tuple[str, ...], list[RunDetail]] = {}
        for d in buckets[key]:
            subgroups.setdefault(tuple(fields[d.run.id].get(f, _MISSING) for f in differing),
                                 []).append(d)
        for config_values in sorted(subgroups, key=_natural):
            config = tuple(zip(differing, config_values, strict=True))
            label = " · ".join([*head, *(f"{f}={v}" for f, v in config)])
            runs = tuple(sorted(subgroups[config_values], key=lambda d: (d.run.seed, d.run.id)))
            groups.append(Group(label, method, dataset, network, optimizer, runs, config))
    return tuple(groups)


def _natural(values: tuple[str, ...]) -> tuple[tuple[int, float, str], ...]:
    """Sort key: numbers by value (``alpha=0.001`` before ``alpha=0.01``), then text."""
    key = []
    for v in values:
        try:
            key.append((0, float(v), ""))
        except ValueError:
            key.append((1, 0.0, v))
    return tuple(key)


# --------------------------------------------------------------------------- bands


class BandCurve(NamedTuple):
    """Mean line and min-max band of one group over its runs (seeds)."""

    label: str
    x: tuple[float, ...]  # epochs (ints) or seconds
    mean: tuple[float, ...]
    lo: tuple[float, ...]
    hi: tuple[float, ...]
    n: tuple[int, ...]  # runs contributing at each x
    runs: int  # runs in the group that contribute at all
    run_ids: tuple[int, ...] = ()  # the runs of the group (its legend names them)

    @property
    def legend(self) -> str:
        return legend_name(self.label, self.run_ids)


class EpochCurvesInfo(NamedTuple):
    metric: str
    curves: tuple[BandCurve, ...]
    constant: float | None = None  # see the module doc


def _band_point(values: list[float]) -> tuple[float, float, float]:
    return math.fsum(values) / len(values), min(values), max(values)


def _get_epoch_curves_info(
    details: Sequence[RunDetail], metric: str, *, max_points: int = DEFAULT_MAX_POINTS
) -> EpochCurvesInfo:
    """Per group: mean / min / max of ``metric`` over runs, aligned by epoch."""
    if metric not in EPOCH_METRICS:
        raise ValueError(f"Invalid metric: {metric}")
    curves = []
    for group in _get_groups(details):
        per_epoch: dict[int, list[float]] = {}
        contributing = 0
        for d in group.runs:
            any_value = False
            for e in _sorted_epochs(d):
                v = _clean(getattr(e, metric))
                if v is not None:
                    per_epoch.setdefault(e.epoch, []).append(v)
                    any_value = True
            contributing += any_value
        if not per_epoch:
            continue
        epochs = _even_subset(sorted(per_epoch), max_points)
        points = [_band_point(per_epoch[k]) for k in epochs]
        curves.append(
            BandCurve(
                label=group.label,
                x=tuple(epochs),
                mean=tuple(p[0] for p in points),
                lo=tuple(p[1] for p in points),
                hi=tuple(p[2] for p in points),
                n=tuple(len(per_epoch[k]) for k in epochs),
                runs=contributing,
                run_ids=group.run_ids,
            )
        )
    return EpochCurvesInfo(metric, tuple(curves), _curves_constant(curves))


# --------------------------------------------------------------------------- incumbent


def _incumbent_steps(detail: RunDetail) -> list[tuple[float, float | None]]:
    """``(elapsed_s, incumbent test accuracy)`` at each epoch of one run.

    The value is ``None`` while no epoch has a finite validation accuracy, or
    when the best-validation epoch has no test accuracy.
    """
    return _sweep_steps([detail])


class IncumbentInfo(NamedTuple):
    curves: tuple[BandCurve, ...]
    constant: float | None = None  # see the module doc


def _get_incumbent_info(
    details: Sequence[RunDetail], *, max_points: int = DEFAULT_MAX_POINTS
) -> IncumbentInfo:
    """Best-so-far test accuracy against wall-clock seconds, per group (see module doc)."""
    curves = []
    for group in _get_groups(details):
        curve = _band_over_time(group.label, [_incumbent_steps(d) for d in group.runs],
                                max_points, group.run_ids)
        if curve is not None:
            curves.append(curve)
    return IncumbentInfo(tuple(curves), _curves_constant(curves))


def _band_over_time(
    label: str,
    series: Sequence[Sequence[tuple[float, float | None]]],
    max_points: int,
    run_ids: Sequence[int] = (),
) -> BandCurve | None:
    """Mean and min-max band of step functions of time (incumbent curves, see module doc).

    Each series starts at its first value; the grid is the union of their
    times from the latest start on; a series keeps its last value after it ends.
    """
    per_run = []
    for steps in series:
        first = next((i for i, (_, v) in enumerate(steps) if v is not None), None)
        if first is not None:
            per_run.append(list(steps[first:]))
    if not per_run:
        return None
    start = max(s[0][0] for s in per_run)
    grid = sorted({t for s in per_run for t, _ in s if t >= start} | {start})
    grid = _even_subset(grid, max_points)
    times = [[t for t, _ in s] for s in per_run]
    xs, means, los, his, ns = [], [], [], [], []
    for t in grid:
        values = []
        for s, ts in zip(per_run, times, strict=True):
            v = s[bisect.bisect_right(ts, t) - 1][1]
            if v is not None:
                values.append(v)
        if not values:
            continue
        mean, lo, hi = _band_point(values)
        xs.append(t)
        means.append(mean)
        los.append(lo)
        his.append(hi)
        ns.append(len(values))
    return BandCurve(
        label, tuple(xs), tuple(means), tuple(los), tuple(his), tuple(ns), len(per_run),
        tuple(run_ids),
    )


# --------------------------------------------------------------------------- per-run traces


class RunTrace(NamedTuple):
    run_id: int
    label: str  # run_label(run)
    group: str  # Group.label
    x: tuple[int, ...]  # epoch or step numbers
    y: tuple[float | None, ...]
    legend: str = ""  # Group.legend: the group's label and run ids


class RunTracesInfo(NamedTuple):
    field: str
    axis: str  # "epoch" or "step"
    groups: tuple[str, ...]  # every compared group, in order (stable colours)
    traces: tuple[RunTrace, ...]
    constant: float | None = None  # see the module doc
    positive: bool = False  # every finite value is > 0 (a log axis can show them all)
    log_scale: bool = False  # a log y axis by default (see the module doc)


def _log_scale(field: str, values: Sequence[float]) -> bool:
    """A log axis by default: every value positive, and spanning decades (see module doc)."""
    if not values or min(values) <= 0:
        return False
    return field in LOG_FIELDS or max(values) / min(values) > LOG_SPAN


def _get_run_traces_info(
    details: Sequence[RunDetail],
    field: str,
    *,
    axis: str = "epoch",
    max_points: int | None = None,
) -> RunTracesInfo:
    """One series per compared run: ``field`` per epoch or per traced step.

    Runs without a single finite value of ``field`` are left out (a baseline
    has no mu; a run without step records has no per-step trace).
    """
    if axis == "epoch":
        if field not in EPOCH_TRACE_FIELDS:
            raise ValueError(f"Invalid epoch field: {field}")
        limit = DEFAULT_MAX_POINTS if max_points is None else max_points
    elif axis == "step":
        if field not in STEP_TRACE_FIELDS:
            raise ValueError(f"Invalid step field: {field}")
        limit = DEFAULT_MAX_STEP_POINTS if max_points is None else max_points
    else:
        raise ValueError(f"Invalid axis: {axis}")
    groups = _get_groups(details)
    traces = []
    for group in groups:
        for d in group.runs:
            if axis == "epoch":
                records = _sorted_epochs(d)
                xs = [r.epoch for r in records]
            else:
                records = sorted({s.step: s for s in d.steps}.values(), key=lambda s: s.step)
                xs = [r.step for r in records]
            ys = [_clean(getattr(r, field)) for r in records]
            if all(y is None for y in ys):
                continue
            x, y = _downsample(xs, ys, limit)
            traces.append(RunTrace(d.run.id, run_label(d.run), group.label, x, y, group.legend))
    values = [v for t in traces for v in t.y if v is not None]
    constant = _constant(values)
    return RunTracesInfo(
        field,
        axis,
        tuple(g.label for g in groups),
        tuple(traces),
        constant,
        bool(values) and min(values) > 0,
        constant is None and _log_scale(field, values),
    )


# --------------------------------------------------------------------------- replays


class ReplayLine(NamedTuple):
    run_id: int
    label: str  # run_label(run), and for a replay its options (stretched, x scale)
    role: str  # "source" or "replay"
    x: tuple[float, ...]  # position in the source schedule, 0 to 1 (see the module doc)
    y: tuple[float | None, ...]


class ReplayGroup(NamedTuple):
    """A source schedule and the replays of it in the selection."""

    source_id: int | None  # the source run, when it is one
    source: str  # how the page names the source (run label or file path)
    lines: tuple[ReplayLine, ...]  # the source's first (when it is in the selection)
    log_scale: bool = False  # the LRs span decades (see the module doc)


class ReplayInfo(NamedTuple):
    groups: tuple[ReplayGroup, ...]


def replay_source_id(run: RunRecord) -> int | None:
    """The run a replay run replays (``--from-run``, or a file exported from a run)."""
    meta = _replay_meta(run)
    if meta is None:
        return None
    source = run.config.get("from_run")
    if source is None and isinstance(meta.get("source"), dict):
        source = meta["source"].get("run")
    return source if isinstance(source, int) and not isinstance(source, bool) else None


def _replay_meta(run: RunRecord) -> dict[str, Any] | None:
    extra = run.config.get("extra")
    meta = extra.get("replay") if run.method == "replay" and isinstance(extra, dict) else None
    return meta if isinstance(meta, dict) else None


def _replay_line(d: RunDetail, meta: dict[str, Any], max_points: int) -> ReplayLine | None:
    try:
        n = float(meta["source_points"])
        m = float(meta["points"])
        per_point = 1.0 if meta["interval"] == "step" else float(meta["steps_per_epoch"])
    except (KeyError, TypeError, ValueError):
        return None
    if not (n > 0 and m > 0 and per_point > 0):
        return None
    span = m if d.run.config.get("stretch") else n
    records = sorted({s.step: s for s in d.steps}.values(), key=lambda s: s.step)
    xs = [s.step / per_point / span for s in records]
    ys = [_clean(s.lr) for s in records]
    if all(y is None for y in ys):
        return None
    x, y = _downsample(xs, ys, max_points)
    options = []
    if d.run.config.get("stretch"):
        options.append("stretched")
    scale = d.run.config.get("scale")
    if isinstance(scale, (int, float)) and scale != 1:
        options.append(f"×{scale:g}")
    label = run_label(d.run) + (f" ({', '.join(options)})" if options else "")
    return ReplayLine(d.run.id, label, "replay", x, y)


def _source_line(d: RunDetail, meta: dict[str, Any], max_points: int) -> ReplayLine | None:
    try:
        n = float(meta["source_points"])
    except (KeyError, TypeError, ValueError):
        return None
    if n <= 0:
        return None
    if meta.get("interval") == "epoch":  # what was replayed: the epochs' mean LRs
        epochs = _sorted_epochs(d)
        xs = [(e.epoch - 1) / n for e in epochs]
        ys = [_clean(e.lr_mean) for e in epochs]
    else:
        records = sorted({s.step: s for s in d.steps}.values(), key=lambda s: s.step)
        xs = [s.step / n for s in records]
        ys = [_clean(s.lr) for s in records]
    if all(y is None for y in ys):
        return None
    x, y = _downsample(xs, ys, max_points)
    return ReplayLine(d.run.id, run_label(d.run), "source", x, y)


def _get_replay_info(
    details: Sequence[RunDetail], *, max_points: int = DEFAULT_MAX_STEP_POINTS
) -> ReplayInfo:
    """Per source schedule: its traced LR and that of each replay of it (see module doc)."""
    by_id = {d.run.id: d for d in details}
    buckets: dict[tuple[int, str], list[RunDetail]] = {}
    for d in details:
        meta = _replay_meta(d.run)
        if meta is None:
            continue
        source_id = replay_source_id(d.run)
        if source_id is not None:
            key = (0, f"{source_id:012d}")
        else:
            source = meta.get("source") if isinstance(meta.get("source"), dict) else {}
            key = (1, str(source.get("file") or d.run.config.get("from_file") or "?"))
        buckets.setdefault(key, []).append(d)
    groups = []
    for key in sorted(buckets):
        replays = sorted(buckets[key], key=lambda d: d.run.id)
        lines = []
        source_id = int(key[1]) if key[0] == 0 else None
        source = by_id.get(source_id) if source_id is not None else None
        if source is not None:
            line = _source_line(source, _replay_meta(replays[0].run) or {}, max_points)
            if line is not None:
                lines.append(line)
            name = run_label(source.run)
        else:
            name = f"run #{source_id}" if source_id is not None else f"file {key[1]}"
        for d in replays:
            line = _replay_line(d, _replay_meta(d.run) or {}, max_points)
            if line is not None:
                lines.append(line)
        if lines:
            values = [v for line in lines for v in line.y if v is not None]
            groups.append(ReplayGroup(source_id, name, tuple(lines), _log_scale("lr", values)))
    return ReplayInfo(tuple(groups))


# --------------------------------------------------------------------------- find-alpha


PROBE_VERDICTS = {"completed": "stable"}  # probe run status -> verdict (as adatune find-alpha)


def probe_verdict(status: str) -> str:
    """The find-alpha verdict on a probe run of ``status``: completed means stable."""
    return PROBE_VERDICTS.get(status, status)


class Probe(NamedTuple):
    run_id: int
    label: str
    value: float | None  # the probed alpha (or hyper-LR)
    status: str  # the probe run's status
    best_val_acc: float | None
    epochs: int
    error: str | None
    verdict: str = ""  # stable | diverged | interrupted | failed | running (probe_verdict)


class SearchInfo(NamedTuple):
    search_id: int
    label: str
    parameter: str  # "alpha" or "hyper-lr"
    chosen: float | None
    status: str | None  # None when the search run itself is not in the selection
    probes: tuple[Probe, ...]


class FindAlphaInfo(NamedTuple):
    searches: tuple[SearchInfo, ...]


def _probe_value(run: RunRecord, parameter: str) -> float | None:
    key = "hyper_lr" if parameter == "hyper-lr" else "alpha"
    return _clean(run.config.get(key))


def _get_find_alpha_info(details: Sequence[RunDetail]) -> FindAlphaInfo:
    """Each find-alpha search with its probes, ordered by the probed value.

    Probes whose search is not in the selection are shown under their
    ``parent_id``; the searched parameter is then guessed from the config.
    """
    searches = {d.run.id: d.run for d in details if d.run.kind == "find-alpha"}
    probes: dict[int, list[RunDetail]] = {sid: [] for sid in searches}
    for d in details:
        if d.run.kind == "probe" and d.run.parent_id is not None:
            probes.setdefault(d.run.parent_id, []).append(d)
    out = []
    for sid in sorted(probes):
        search = searches.get(sid)
        if search is not None:
            parameter = str(search.summary.get("search") or "alpha")
            chosen_key = "hyper_lr" if parameter == "hyper-lr" else "alpha"
            chosen = _clean(search.summary.get(chosen_key, search.summary.get("alpha")))
            label = run_label(search)
            status = search.status
        else:
            first = probes[sid][0].run
            parameter = "alpha" if "alpha" in first.config else "hyper-lr"
            chosen, label, status = None, f"search #{sid}", None
        rows = []
        for d in probes[sid]:
            r = d.run
            best = _clean(r.best_val_acc)
            if best is None:
                accs = [_clean(e.val_acc) for e in d.epochs]
                best = max((a for a in accs if a is not None), default=None)
            rows.append(
                Probe(
                    r.id,
                    run_label(r),
                    _probe_value(r, parameter),
                    r.status,
                    best,
                    max(r.epochs, len(d.epochs)),
                    r.error,
                    probe_verdict(r.status),
                )
            )
        rows.sort(key=lambda p: (p.value is None, p.value or 0.0, p.run_id))
        out.append(SearchInfo(sid, label, parameter, chosen, status, tuple(rows)))
    return FindAlphaInfo(tuple(out))


# --------------------------------------------------------------------------- sweeps

SWEEP_KIND = "sweep"


def _sweep_meta(run: RunRecord) -> tuple[str | None, int | None, dict[str, Any]]:
    """(study, trial number, sampled values) of a sweep run, from its config."""
    extra = run.config.get("extra")
    meta = extra.get("sweep") if isinstance(extra, dict) else None
    meta = meta if isinstance(meta, dict) else {}
    study = meta.get("study") if isinstance(meta.get("study"), str) else run.experiment
    trial = meta.get("trial")
    trial = trial if isinstance(trial, int) and not isinstance(trial, bool) else None
    params = meta.get("params") if isinstance(meta.get("params"), dict) else {}
    return study, trial, dict(params)


def _run_seconds(detail: RunDetail) -> float:
    """Time a run took: its last epoch's ``elapsed_s`` or its wall-clock duration if longer."""
    times = [t for t in (_clean(e.elapsed_s) for e in detail.epochs) if t is not None]
    spent = max(times, default=0.0)
    r = detail.run
    if r.ended_at is not None:
        spent = max(spent, (r.ended_at - r.started_at).total_seconds())
    return spent


def _sweep_steps(runs: Sequence[RunDetail]) -> list[tuple[float, float | None]]:
    """``(seconds since the search began, incumbent)`` at each epoch of runs laid end to end.

    With one run this is that run's own incumbent curve (:func:`_incumbent_steps`).
    """
    steps: list[tuple[float, float | None]] = []
    offset = 0.0
    best_val: float | None = None
    incumbent: float | None = None
    for d in runs:
        for e in _sorted_epochs(d):
            t = _clean(e.elapsed_s)
            v = _clean(e.val_acc)
            if v is not None and (best_val is None or v > best_val):
                best_val = v
                incumbent = _clean(e.test_acc)
            if t is not None:
                steps.append((offset + t, incumbent))
        offset += _run_seconds(d)
    return steps


class SweepBest(NamedTuple):
    """The best configuration found by a sweep (see module doc)."""

    trial: int
    val_acc: float  # mean over seeds of each run's best validation accuracy
    test_acc: float | None  # mean over seeds of the test accuracy at that epoch
    seeds: tuple[int, ...]
    params: dict[str, Any]  # the sampled values
    run_ids: tuple[int, ...]


class SweepGroup(NamedTuple):
    label: str
    method: str
    study: str | None
    trials: int  # trials with at least one run
    runs: int
    diverged: int  # runs
    seeds: tuple[int, ...]
    best: SweepBest | None


class SweepInfo(NamedTuple):
    curves: tuple[BandCurve, ...]  # one per group that has an incumbent
    groups: tuple[SweepGroup, ...]
    constant: float | None = None  # of the curves; see the module doc


def _sweep_best(runs: Sequence[RunDetail]) -> SweepBest | None:
    trials: dict[int, list[RunDetail]] = {}
    for d in runs:
        trial = _sweep_meta(d.run)[1]
        if trial is not None:
            trials.setdefault(trial, []).append(d)
    if not trials:
        return None
    full = max(len({d.run.seed for d in ds}) for ds in trials.values())
    best: SweepBest | None = None
    for trial in sorted(trials):
        ds = sorted(trials[trial], key=lambda d: (d.run.seed, d.run.id))
        if len({d.run.seed for d in ds}) < full or any(d.run.status != "completed" for d in ds):
            continue
        rows = [_run_summary(d) for d in ds]
        vals = [r.best_val_acc for r in rows]
        if any(v is None for v in vals):
            continue
        tests = [r.test_acc_at_best for r in rows if r.test_acc_at_best is not None]
        val = math.fsum(vals) / len(vals)
        if best is None or val > best.val_acc:
            best = SweepBest(
                trial=trial,
                val_acc=val,
                test_acc=math.fsum(tests) / len(tests) if tests else None,
                seeds=tuple(d.run.seed for d in ds),
                params=_sweep_meta(ds[0].run)[2],
                run_ids=tuple(d.run.id for d in ds),
            )
    return best


def _get_sweep_info(
    details: Sequence[RunDetail], *, max_points: int = DEFAULT_MAX_POINTS
) -> SweepInfo:
    """Per method and study of the sweep runs: the incumbent against the search's time.

    See the module doc (Sweeps) for how runs are laid end to end and combined.
    """
    buckets: dict[tuple[str, str], list[RunDetail]] = {}
    for d in details:
        if d.run.kind == SWEEP_KIND:
            study = _sweep_meta(d.run)[0]
            buckets.setdefault((d.run.method, study or ""), []).append(d)
    studies_per_method = Counter(method for method, _ in buckets)
    curves, groups = [], []
    for method, study in sorted(buckets):
        runs = buckets[(method, study)]
        label = method if studies_per_method[method] == 1 else f"{method} · {study or '–'}"

        def order(d: RunDetail) -> tuple[bool, int, int]:
            trial = _sweep_meta(d.run)[1]
            return (trial is None, trial if trial is not None else 0, d.run.id)

        seeds = sorted({d.run.seed for d in runs})
        per_seed = [sorted((d for d in runs if d.run.seed == s), key=order) for s in seeds]
        curve = _band_over_time(label, [_sweep_steps(rs) for rs in per_seed], max_points,
                                sorted(d.run.id for d in runs))
        if curve is not None:
            curves.append(curve)
        trials = {_sweep_meta(d.run)[1] for d in runs} - {None}
        groups.append(
            SweepGroup(
                label=label,
                method=method,
                study=study or None,
                trials=len(trials),
                runs=len(runs),
                diverged=sum(d.run.status == "diverged" for d in runs),
                seeds=tuple(seeds),
                best=_sweep_best(runs),
            )
        )
    return SweepInfo(tuple(curves), tuple(groups), _curves_constant(curves))


# --------------------------------------------------------------------------- summary


class Stat(NamedTuple):
    """Mean and sample standard deviation (n - 1; 0 for one value) of n finite values."""

    mean: float | None
    std: float | None
    n: int


def _stat(values: Iterable[float | None]) -> Stat:
    xs = [v for v in (_clean(v) for v in values) if v is not None]
    if not xs:
        return Stat(None, None, 0)
    mean = math.fsum(xs) / len(xs)
    if len(xs) == 1:
        return Stat(mean, 0.0, 1)
    var = math.fsum((x - mean) ** 2 for x in xs) / (len(xs) - 1)
    return Stat(mean, math.sqrt(var), len(xs))


class RunSummary(NamedTuple):
    run_id: int
    label: str
    name: str | None
    experiment: str | None
    kind: str
    seed: int
    status: str
    epochs: int
    best_val_acc: float | None
    best_epoch: int | None
    test_acc_at_best: float | None
    time_s: float | None
    nonfinite_hypergradients: int
    error: str | None
    config: dict[str, Any]
    best_val_loss: float | None = None  # at the best epoch
    test_loss_at_best: float | None = None
    cpu_s: float | None = None  # CPU seconds of the training process (all its threads)


class GroupSummary(NamedTuple):
    label: str
    method: str
    dataset: str
    network: str
    optimizer: str
    runs: int
    status_counts: tuple[tuple[str, int], ...]
    best_val_acc: Stat
    test_acc_at_best: Stat
    epochs_min: int
    epochs_max: int
    time_s: Stat  # per-run wall-clock seconds (training; sensitive to machine load)
    run_rows: tuple[RunSummary, ...]
    best_val_loss: Stat = Stat(None, None, 0)
    test_loss_at_best: Stat = Stat(None, None, 0)
    cpu_s: Stat = Stat(None, None, 0)  # per-run CPU seconds (less sensitive to load)
    config: tuple[tuple[str, str], ...] = ()  # Group.config: what sets the group apart

    @property
    def run_ids(self) -> tuple[int, ...]:
        return tuple(r.run_id for r in self.run_rows)

    @property
    def by_loss(self) -> bool:
        """No accuracies (regression, custom losses): the validation loss judged the runs."""
        return self.best_val_acc.n == 0 and self.best_val_loss.n > 0


class SummaryInfo(NamedTuple):
    groups: tuple[GroupSummary, ...]


def _run_summary(d: RunDetail) -> RunSummary:
    """Best validation epoch and the test scores there, from the epochs when present.

    The best epoch has the best validation accuracy, or, for runs without
    accuracies (regression, custom losses), the lowest validation loss.
    Without epoch records the run's own ``best_val_acc`` / ``best_epoch`` /
    ``test_acc`` fields are used.
    """
    r = d.run
    epochs = _sorted_epochs(d)
    by_acc = any(_clean(e.val_acc) is not None for e in epochs)
    best = None
    for e in epochs:
        score = _clean(e.val_acc) if by_acc else _clean(e.val_loss)
        if score is None:
            continue
        if best is None or (score > best[0] if by_acc else score < best[0]):
            best = (score, e)
    best_val, best_epoch, test_at_best, best_loss, test_loss = None, None, None, None, None
    if best is not None:
        e = best[1]
        best_val, best_epoch, test_at_best = _clean(e.val_acc), e.epoch, _clean(e.test_acc)
        best_loss, test_loss = _clean(e.val_loss), _clean(e.test_loss)
    if not epochs:
        best_val, best_epoch, test_at_best = (
            _clean(r.best_val_acc),
            r.best_epoch,
            _clean(r.test_acc),
        )
    time_s = _clean(epochs[-1].elapsed_s) if epochs else None
    if time_s is None and r.ended_at is not None:
        time_s = (r.ended_at - r.started_at).total_seconds()
    return RunSummary(
        run_id=r.id,
        label=run_label(r),
        name=r.name,
        experiment=r.experiment,
        kind=r.kind,
        seed=r.seed,
        status=r.status,
        epochs=max(r.epochs, len(epochs)),
        best_val_acc=best_val,
        best_epoch=best_epoch,
        test_acc_at_best=test_at_best,
        time_s=time_s,
        nonfinite_hypergradients=sum(e.nonfinite_hypergradients for e in epochs),
        error=r.error,
        config=dict(r.config),
        best_val_loss=best_loss,
        test_loss_at_best=test_loss,
        cpu_s=_clean(r.summary.get("cpu_s")),
    )


def _get_summary_info(details: Sequence[RunDetail]) -> SummaryInfo:
    """Per group: run count, statuses, best validation accuracy, test there, epochs, time."""
    out = []
    for group in _get_groups(details):
        rows = tuple(_run_summary(d) for d in group.runs)
        counts = Counter(r.status for r in rows)
        out.append(
            GroupSummary(
                label=group.label,
                method=group.method,
                dataset=group.dataset,
                network=group.network,
                optimizer=group.optimizer,
                runs=len(rows),
                status_counts=tuple(sorted(counts.items())),
                best_val_acc=_stat(r.best_val_acc for r in rows),
                test_acc_at_best=_stat(r.test_acc_at_best for r in rows),
                epochs_min=min(r.epochs for r in rows),
                epochs_max=max(r.epochs for r in rows),
                time_s=_stat(r.time_s for r in rows),
                run_rows=rows,
                best_val_loss=_stat(r.best_val_loss for r in rows),
                test_loss_at_best=_stat(r.test_loss_at_best for r in rows),
                cpu_s=_stat(r.cpu_s for r in rows),
                config=group.config,
            )
        )
    return SummaryInfo(tuple(out))
