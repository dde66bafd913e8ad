"""Report data step (info), figure smoke tests, HTML page and size.

The info tests build RunDetail lists by hand with numbers chosen so that the
expected means, bands and incumbent curves are known exactly.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re

import plotly.io as pio
import pytest

from adatune.report import figures as F
from adatune.report import info as ri
from adatune.report import render_html, summary_json, summary_rich, summary_table, write_html
from adatune.report.synthetic import synthetic_details
from adatune.store.records import EpochRecord, RunDetail, RunRecord, StepRecord

NAN = float("nan")
T0 = dt.datetime(2025, 1, 1, tzinfo=dt.timezone.utc)
EVIL = "<script>alert(1)</script>"


def run(
    run_id: int,
    method: str,
    seed: int = 0,
    *,
    kind: str = "train",
    name: str | None = None,
    status: str = "completed",
    dataset: str = "digits",
    network: str = "mlp",
    optimizer: str = "sgd",
    config: dict | None = None,
    parent_id: int | None = None,
    summary: dict | None = None,
    error: str | None = None,
    epochs: int = 0,
    best_val_acc: float | None = None,
    best_epoch: int | None = None,
    test_acc: float | None = None,
    ended_s: float | None = None,
) -> RunRecord:
    return RunRecord(
        id=run_id,
        name=name,
        experiment="exp",
        kind=kind,
        method=method,
        optimizer=optimizer,
        network=network,
        dataset=dataset,
        seed=seed,
        config=config or {"seed": seed},
        status=status,
        started_at=T0,
        ended_at=None if ended_s is None else T0 + dt.timedelta(seconds=ended_s),
        heartbeat_at=None,
        epochs=epochs,
        best_val_acc=best_val_acc,
        best_epoch=best_epoch,
        test_acc=test_acc,
        error=error,
        adatune_version="0",
        torch_version="0",
        device="cpu",
        host="h",
        parent_id=parent_id,
        summary=summary or {},
    )


def epochs(val, test, elapsed, *, loss=None, lr=None, mu=None, hyper_lr=None):
    n = len(val)
    loss = loss or [1.0] * n
    lr = lr or [0.1] * n
    return tuple(
        EpochRecord(
            epoch=i + 1,
            lr=lr[i],
            lr_mean=lr[i],
            mu=None if mu is None else mu[i],
            hyper_lr=None if hyper_lr is None else hyper_lr[i],
            train_loss=loss[i],
            train_acc=0.5,
            val_loss=1.0,
            val_acc=val[i],
            test_loss=1.0,
            test_acc=test[i],
            elapsed_s=elapsed[i],
        )
        for i in range(n)
    )


def detail(rec: RunRecord, eps=(), steps=()) -> RunDetail:
    return RunDetail(rec, tuple(eps), tuple(steps))


@pytest.fixture
def store_like() -> list[RunDetail]:
    """Two methods x two seeds, a baseline with a diverged seed, and a find-alpha search."""
    return [
        detail(
            run(1, "marthe", 0, name=EVIL),
            epochs(
                [0.5, 0.7, 0.6],
                [0.40, 0.65, 0.9],
                [10, 20, 30],
                loss=[2.0, 1.0, 0.5],
                mu=[0.9, 0.95, 0.99],
                hyper_lr=[1e-3, 2e-3, 3e-3],
            ),
            [StepRecord(s, 1 + s // 4, 0.1 + 0.01 * s, 0.9, 1e-3, 0.0, 1.0) for s in range(12)],
        ),
        detail(
            run(2, "marthe", 1),
            epochs(
                [0.6, 0.6, 0.8],
                [0.50, 0.55, 0.7],
                [15, 25, 35],
                loss=[4.0, 3.0, 1.5],
                mu=[0.9, 0.9, 0.9],
                hyper_lr=[1e-3, 1e-3, 1e-3],
            ),
        ),
        detail(
            run(3, "constant", 0, kind="baseline"),
            epochs([0.3, 0.4], [0.2, 0.3], [5, 10], loss=[1.0, 2.0]),
        ),
        detail(
            run(4, "constant", 1, kind="baseline", status="diverged", error="loss is nan"),
            epochs([0.1, NAN], [0.05, None], [6, 12], loss=[3.0, math.inf]),
        ),
        detail(run(10, "marthe", kind="find-alpha", summary={"alpha": 1e-5, "search": "alpha"})),
        detail(
            run(
                13,
                "marthe",
                kind="probe",
                parent_id=10,
                config={"alpha": 1e-4},
                status="diverged",
                error="hypergradient is nan",
                epochs=1,
            )
        ),
        detail(
            run(
                11,
                "marthe",
                kind="probe",
                parent_id=10,
                config={"alpha": 1e-6},
                best_val_acc=0.4,
                epochs=1,
            )
        ),
        detail(
            run(
                12,
                "marthe",
                kind="probe",
                parent_id=10,
                config={"alpha": 1e-5},
                best_val_acc=0.5,
                epochs=1,
            )
        ),
    ]


# --------------------------------------------------------------------------- grouping


def test_groups_are_methods_and_exclude_probes_and_searches(store_like):
    groups = ri._get_groups(store_like)
    assert [g.label for g in groups] == ["constant", "marthe"]
    assert [[d.run.id for d in g.runs] for g in groups] == [[3, 4], [1, 2]]


def test_group_label_names_the_fields_that_vary():
    details = [
        detail(run(1, "hd", dataset="digits")),
        detail(run(2, "hd", dataset="cifar10")),
        detail(run(3, "hd", dataset="cifar10", seed=1)),
    ]
    groups = ri._get_groups(details)
    assert [(g.label, len(g.runs)) for g in groups] == [("hd · cifar10", 2), ("hd · digits", 1)]


def _tuned(run_id, seed=0, **config):
    """A MARTHE run with a recorded configuration, as the command records one."""
    base = {"method": "marthe", "seed": seed, "lr": 0.05, "epochs": 15, "alpha": 0.0,
            "mu": 0.99, "hyper_update": "scale-free", "device": "auto",
            "checkpoint_dir": f"/runs/{run_id}", "log_every": 10, "extra": {}}
    return detail(run(run_id, "marthe", seed, config={**base, **config}),
                  epochs([0.5, 0.6], [0.4, 0.5], [1, 2], lr=[0.05, 0.06]))


def test_groups_split_by_the_configuration_that_changes_the_result():
    # the first hour: 2 to 15 epochs, alpha 0 or 1, two update rules, pooled as one "marthe"
    details = [
        _tuned(1), _tuned(2, seed=1),  # the same configuration, two seeds: one group
        _tuned(3, alpha=1.0), _tuned(4, epochs=2),
        _tuned(5, hyper_update="additive"),
        _tuned(6, seed=2, device="cuda", log_every=1, extra={"resumed": [{"at_epoch": 1}]}),
        detail(run(7, "constant", kind="baseline", config={"method": "constant", "lr": 0.05})),
        detail(run(8, "constant", 1, kind="baseline", config={"method": "constant", "lr": 0.05,
                                                               "seed": 1})),
    ]
    groups = ri._get_groups(details)
    by_runs = {tuple(d.run.id for d in g.runs): g for g in groups}
    assert set(by_runs) == {(1, 2, 6), (3,), (4,), (5,), (7, 8)}
    assert by_runs[(7, 8)].label == "constant" and by_runs[(7, 8)].config == ()
    # the label names each field that differs among the method's groups, and only those
    assert by_runs[(1, 2, 6)].label == "marthe · hyper_update=scale-free · alpha=0 · epochs=15"
    assert by_runs[(3,)].label == "marthe · hyper_update=scale-free · alpha=1 · epochs=15"
    assert by_runs[(4,)].label == "marthe · hyper_update=scale-free · alpha=0 · epochs=2"
    assert by_runs[(5,)].config == (("hyper_update", "additive"), ("alpha", "0"),
                                    ("epochs", "15"))
    assert by_runs[(1, 2, 6)].legend.endswith("(#1, #2, #6)")
    # the summary keeps them apart too: no mean over runs that are not comparable
    summary = ri._get_summary_info(details)
    assert sorted(g.runs for g in summary.groups) == [1, 1, 1, 2, 3]
    assert {g.label: g.run_ids for g in summary.groups}[by_runs[(3,)].label] == (3,)


def test_any_recorded_field_that_differs_splits_a_group():
    # a field no list names (a tuner option added later, a nested setting of adatune.fit)
    details = [_tuned(1, new_option="a"), _tuned(2, new_option="b"), _tuned(3),
               _tuned(4, tuner={"alpha": 0.1, "mu": 0.9}), _tuned(5, tuner={"alpha": 0.2,
                                                                             "mu": 0.9})]
    labels = {tuple(d.run.id for d in g.runs): g.label for g in ri._get_groups(details)}
    assert labels[(1,)] == "marthe · new_option=a · tuner.alpha=– · tuner.mu=–"
    assert labels[(3,)] == "marthe · new_option=– · tuner.alpha=– · tuner.mu=–"  # not recorded
    assert labels[(5,)] == "marthe · new_option=– · tuner.alpha=0.2 · tuner.mu=0.9"


def test_run_ids_text_is_short_and_exact():
    assert ri.run_ids_text([3]) == "#3"
    assert ri.run_ids_text([4, 3]) == "#3, #4"
    assert ri.run_ids_text([1, 2, 3, 7, 9, 10, 11]) == "#1–#3, #7, #9–#11"
    assert ri.run_ids_text(range(1, 40, 2)) == "#1, #3, #5, #7, …, #39 (20 runs)"
    assert ri.legend_name("marthe", [1, 2]) == "marthe (#1, #2)"


def test_every_legend_and_hover_names_its_runs():
    details = [_tuned(1), _tuned(2, seed=1), _tuned(3, alpha=1.0)]
    val = F._get_epoch_curves_plot(ri._get_epoch_curves_info(details, "val_acc"))
    names = {t.name for t in val.data if t.showlegend is not False}
    assert names == {"marthe · alpha=0 (#1, #2)", "marthe · alpha=1 (#3)"}
    assert all("%{fullData.name}" in t.hovertemplate for t in val.data if t.hovertemplate)
    inc = F._get_incumbent_plot(ri._get_incumbent_info(details))
    assert {t.name for t in inc.data} == names
    lr = F._get_run_traces_plot(ri._get_run_traces_info(details, "lr"))
    assert {t.name for t in lr.data} == names
    assert [t.meta[0] for t in lr.data] == ["#1 (seed 0)", "#2 (seed 1)", "#3 (seed 0)"]
    assert all("%{meta[0]}" in t.hovertemplate for t in lr.data)


def test_the_lr_is_on_a_log_axis_when_it_spans_more_than_ten_times():
    warm_up = detail(run(9, "schedulefree-sgd", kind="baseline"),
                     epochs([0.5, 0.6], [0.4, 0.5], [1, 2], lr=[0.1, 0.45]))
    details = [_tuned(1), warm_up]  # 0.05 .. 0.45: not 10x
    assert not ri._get_run_traces_info(details, "lr").log_scale
    warm_up = detail(warm_up.run, epochs([0.5, 0.6], [0.4, 0.5], [1, 2], lr=[0.004, 0.63]))
    info = ri._get_run_traces_info([_tuned(1), warm_up], "lr")
    assert info.log_scale  # 0.004 .. 0.63
    fig = F._get_run_traces_plot(info)
    assert fig.layout.yaxis.type == "log" and fig.layout.updatemenus[0].active == 1
    # two decades: ticks at 1, 2 and 5 of each, written out (0.005, 0.01), not "5" and "10^-2"
    assert (fig.layout.yaxis.dtick, fig.layout.yaxis.tickformat) == ("D2", "~g")
    with_zero = detail(warm_up.run, epochs([0.5, 0.6], [0.4, 0.5], [1, 2], lr=[0.0, 0.63]))
    assert not ri._get_run_traces_info([with_zero], "lr").log_scale  # log cannot show 0


def test_find_alpha_axis_holds_every_probe_and_the_recommended_value():
    # the first hour: one hyper-LR probe at the left edge, the line at the right, and a tick
    # reading 0.15000000000000007772
    search = ri.SearchInfo(5, "#5 (seed 0)", "hyper-lr", 0.15000000000000002, "completed", (
        ri.Probe(6, "#6 (seed 0)", 0.15000000000000002, "completed", 0.9, 1, None, "stable"),))
    fig = F._get_find_alpha_plot(search)
    lo, hi = fig.layout.xaxis.range  # log10 units on a log axis
    assert fig.layout.xaxis.type == "log"
    assert lo < math.log10(0.15) < hi and math.isclose(math.log10(0.15) - lo, hi -
                                                        math.log10(0.15))
    assert list(fig.layout.xaxis.ticktext) == ["0.15"]
    assert fig.layout.shapes[0].x0 == pytest.approx(0.15)
    assert fig.data[0].name == "stable (#6)"


# --------------------------------------------------------------------------- epoch bands


def test_epoch_band_mean_min_max_over_seeds(store_like):
    info = ri._get_epoch_curves_info(store_like, "val_acc")
    marthe = {c.label: c for c in info.curves}["marthe"]
    assert marthe.x == (1, 2, 3)
    assert marthe.mean == pytest.approx((0.55, 0.65, 0.7))
    assert marthe.lo == (0.5, 0.6, 0.6)
    assert marthe.hi == (0.6, 0.7, 0.8)
    assert marthe.n == (2, 2, 2)
    assert marthe.runs == 2


def test_epoch_band_drops_non_finite_values_and_counts_them(store_like):
    constant = {c.label: c for c in ri._get_epoch_curves_info(store_like, "train_loss").curves}[
        "constant"
    ]
    assert constant.x == (1, 2)
    assert constant.mean == pytest.approx((2.0, 2.0))  # epoch 2: only the finite 2.0
    assert constant.n == (2, 1)
    val = {c.label: c for c in ri._get_epoch_curves_info(store_like, "val_acc").curves}["constant"]
    assert val.n == (2, 1) and val.mean == pytest.approx((0.2, 0.4))


def test_epoch_band_skips_groups_without_values_and_bad_metric(store_like):
    only_nan = [detail(run(1, "hd"), epochs([NAN], [None], [1.0]))]
    assert ri._get_epoch_curves_info(only_nan, "val_acc").curves == ()
    with pytest.raises(ValueError, match="Invalid metric"):
        ri._get_epoch_curves_info(store_like, "lr")


# --------------------------------------------------------------------------- incumbent


def test_incumbent_of_one_run_follows_best_validation(store_like):
    # val 0.5, 0.7, 0.6 -> best at epochs 1, 2, 2 -> test 0.40, 0.65, 0.65
    assert ri._incumbent_steps(store_like[0]) == [(10, 0.40), (20, 0.65), (30, 0.65)]
    # a tie keeps the earlier epoch: val 0.6, 0.6, 0.8 -> test 0.50, 0.50, 0.7
    assert ri._incumbent_steps(store_like[1]) == [(15, 0.50), (25, 0.50), (35, 0.7)]
    # a NaN validation accuracy never becomes best
    assert ri._incumbent_steps(store_like[3]) == [(6, 0.05), (12, 0.05)]


def test_incumbent_band_on_a_common_step_grid(store_like):
    curves = {c.label: c for c in ri._get_incumbent_info(store_like).curves}
    marthe = curves["marthe"]
    # starts when both seeds have a value (t=15), union of their epoch times after that;
    # run 1 ends at t=30 and keeps 0.65 afterwards
    assert marthe.x == (15, 20, 25, 30, 35)
    run1 = (0.40, 0.65, 0.65, 0.65, 0.65)
    run2 = (0.50, 0.50, 0.50, 0.50, 0.70)
    assert marthe.mean == pytest.approx(tuple((a + b) / 2 for a, b in zip(run1, run2)))
    assert marthe.lo == tuple(min(a, b) for a, b in zip(run1, run2))
    assert marthe.hi == tuple(max(a, b) for a, b in zip(run1, run2))
    assert marthe.n == (2,) * 5
    constant = curves["constant"]
    assert constant.x == (6, 10, 12)
    assert constant.mean == pytest.approx((0.125, 0.175, 0.175))
    assert constant.lo == (0.05, 0.05, 0.05) and constant.hi == (0.2, 0.3, 0.3)


def test_incumbent_grid_is_downsampled_exactly():
    details = [
        detail(
            run(k, "hd", k),
            epochs(
                [e / 100 for e in range(1, 61)],
                [e / 200 for e in range(1, 61)],
                [e + 0.1 * k for e in range(1, 61)],
            ),
        )
        for k in range(1, 4)
    ]
    full = ri._get_incumbent_info(details).curves[0]
    small = ri._get_incumbent_info(details, max_points=20).curves[0]
    assert len(full.x) == 178  # 3 x 60 epoch times from the latest start (1.3)
    assert len(small.x) == 20
    assert small.x[0] == full.x[0] and small.x[-1] == full.x[-1]
    lookup = dict(zip(full.x, full.mean))
    for x, m in zip(small.x, small.mean):
        assert m == pytest.approx(lookup[x])


def test_incumbent_ignores_runs_without_any_value():
    details = [
        detail(run(1, "hd"), epochs([0.5], [0.4], [1.0])),
        detail(run(2, "hd", 1), epochs([NAN, NAN], [0.3, 0.3], [1.0, 2.0])),
    ]
    curve = ri._get_incumbent_info(details).curves[0]
    assert curve.runs == 1 and curve.x == (1.0,) and curve.mean == (0.4,)


# --------------------------------------------------------------------------- per-run traces


def test_run_traces_per_epoch_and_step(store_like):
    lr = ri._get_run_traces_info(store_like, "lr")
    assert [t.run_id for t in lr.traces] == [3, 4, 1, 2]
    assert lr.groups == ("constant", "marthe")
    mu = ri._get_run_traces_info(store_like, "mu")
    assert [t.run_id for t in mu.traces] == [1, 2]  # baselines have no mu
    assert mu.traces[0].y == (0.9, 0.95, 0.99)
    assert mu.traces[0].label == f"#1 {EVIL} (seed 0)"
    steps = ri._get_run_traces_info(store_like, "lr", axis="step")
    assert [t.run_id for t in steps.traces] == [1]
    assert steps.traces[0].x == tuple(range(12))
    with pytest.raises(ValueError, match="Invalid axis"):
        ri._get_run_traces_info(store_like, "lr", axis="time")


def test_downsample_keeps_extremes_gaps_and_bound():
    xs = list(range(1000))
    ys = [math.sin(x / 30) for x in xs]
    ys[500] = 5.0  # a spike
    ys[700] = None  # a gap (divergence)
    x2, y2 = ri._downsample(xs, ys, 100)
    assert len(x2) <= 100
    assert x2[0] == 0 and x2[-1] == 999
    assert 5.0 in y2 and None in y2
    assert list(x2) == sorted(x2)
    assert min(v for v in y2 if v is not None) == min(v for v in ys if v is not None)
    assert ri._downsample(xs[:10], ys[:10], 100) == (tuple(xs[:10]), tuple(ys[:10]))


# --------------------------------------------------------------------------- find-alpha


def test_find_alpha_search_with_probes(store_like):
    (search,) = ri._get_find_alpha_info(store_like).searches
    assert search.search_id == 10 and search.parameter == "alpha" and search.chosen == 1e-5
    assert [(p.run_id, p.value, p.status) for p in search.probes] == [
        (11, 1e-6, "completed"),
        (12, 1e-5, "completed"),
        (13, 1e-4, "diverged"),
    ]
    assert search.probes[2].error == "hypergradient is nan"
    assert search.probes[1].best_val_acc == 0.5


def test_find_alpha_over_hyper_lr_and_orphan_probes():
    details = [
        detail(run(1, "hd", kind="find-alpha", summary={"search": "hyper-lr", "alpha": 0.01})),
        detail(run(2, "hd", kind="probe", parent_id=1, config={"hyper_lr": 0.01, "alpha": 0})),
        detail(run(5, "hd", kind="probe", parent_id=4, config={"alpha": 0.1})),
    ]
    a, b = ri._get_find_alpha_info(details).searches
    assert (a.parameter, a.chosen, a.probes[0].value) == ("hyper-lr", 0.01, 0.01)
    assert (b.search_id, b.label, b.status, b.chosen) == (4, "search #4", None, None)


# --------------------------------------------------------------------------- summary


def test_summary_per_method(store_like):
    info = summary_table(store_like)
    constant, marthe = info.groups
    assert marthe.runs == 2 and marthe.status_counts == (("completed", 2),)
    assert marthe.best_val_acc.mean == pytest.approx(0.75)
    assert marthe.best_val_acc.std == pytest.approx(math.sqrt(2 * 0.05**2))  # sample std
    assert marthe.test_acc_at_best.mean == pytest.approx((0.65 + 0.7) / 2)
    assert marthe.time_s.mean == pytest.approx(32.5)
    assert (marthe.epochs_min, marthe.epochs_max) == (3, 3)
    assert constant.status_counts == (("completed", 1), ("diverged", 1))
    assert constant.best_val_acc == ri.Stat(pytest.approx(0.25), pytest.approx(math.sqrt(0.045)), 2)
    row = marthe.run_rows[0]
    assert (row.best_epoch, row.test_acc_at_best, row.config) == (2, 0.65, {"seed": 0})


def test_summary_without_epochs_uses_run_fields():
    details = [
        detail(
            run(1, "hd", best_val_acc=0.9, best_epoch=7, test_acc=0.85, epochs=10, ended_s=120.0)
        ),
        detail(run(2, "hd", 1, status="failed")),
    ]
    (g,) = summary_table(details).groups
    assert g.best_val_acc == ri.Stat(0.9, 0.0, 1)
    assert g.run_rows[0].best_epoch == 7 and g.run_rows[0].time_s == 120.0
    assert g.time_s.n == 1 and (g.epochs_min, g.epochs_max) == (0, 10)
    data = summary_json(summary_table(details))
    assert data[0]["best_val_acc"] == {"mean": 0.9, "std": 0.0, "n": 1}
    assert data[0]["status"] == {"completed": 1, "failed": 1}
    assert json.loads(json.dumps(data, allow_nan=False)) == data


def test_summary_rich_shows_names_as_text(store_like):
    from rich.console import Console

    console = Console(record=True, width=200)
    details = [detail(run(1, "[bold]m[/bold]"), epochs([0.5], [0.4], [1.0]))]
    console.print(summary_rich(summary_table(details)))
    text = console.export_text()
    assert "[bold]m[/bold]" in text and "50.00" in text


# --------------------------------------------------------------------------- figures


def _fig_json(fig) -> dict:
    text = pio.to_json(fig)
    assert "NaN" not in text and "Infinity" not in text
    return json.loads(text)


def test_figures_trace_counts_and_escaped_names(store_like):
    val = F._get_epoch_curves_plot(ri._get_epoch_curves_info(store_like, "val_acc"))
    assert len(val.data) == 6  # 2 groups x (band low, band high, mean)
    assert [t.fill for t in val.data[:2]] == [None, "tonexty"]
    inc = F._get_incumbent_plot(ri._get_incumbent_info(store_like))
    assert len(inc.data) == 6 and inc.data[2].line.shape == "hv"
    lr = F._get_run_traces_plot(ri._get_run_traces_info(store_like, "lr"))
    assert len(lr.data) == 4
    assert [t.showlegend for t in lr.data] == [True, False, True, False]
    data = _fig_json(lr)["data"]
    assert data[2]["meta"] == ["#1 &lt;script&gt;alert(1)&lt;/script&gt; (seed 0)"]
    assert EVIL not in json.dumps(_fig_json(lr))
    mu = F._get_run_traces_plot(ri._get_run_traces_info(store_like, "mu"))
    assert [b["label"] for b in mu.layout.updatemenus[0].buttons] == ["linear", "log"]
    (search,) = ri._get_find_alpha_info(store_like).searches
    fa = F._get_find_alpha_plot(search)
    assert [t.name for t in fa.data] == ["stable (#11, #12)", "diverged (#13)"]
    assert fa.layout.xaxis.type == "log" and len(fa.layout.shapes) == 1
    for fig in (val, inc, lr, mu, fa):
        _fig_json(fig)


def test_constant_series_are_detected(store_like):
    lr = ri._get_run_traces_info(store_like, "lr")
    assert lr.constant == 0.1 and lr.positive  # every run of store_like keeps lr 0.1
    mu = ri._get_run_traces_info(store_like, "mu")
    assert mu.constant is None and mu.positive
    assert ri._get_epoch_curves_info(store_like, "val_acc").constant is None
    assert ri._get_incumbent_info(store_like).constant is None
    # gaps (diverged epochs) do not break a constant; a rounding difference does not either
    assert ri._constant([1e-4, None, 1e-4 * (1 + 1e-12), 1e-4]) == 1e-4
    assert ri._constant([1e-4, 1e-4 * (1 + 1e-6)]) is None
    assert ri._constant([None, None]) is None and ri._constant([]) is None
    flat = [
        detail(run(1, "hd"), epochs([0.5, 0.5], [0.4, 0.4], [1, 2], hyper_lr=[1e-4, 1e-4])),
        detail(run(2, "hd", 1), epochs([0.5, NAN], [0.4, 0.4], [1, 2], hyper_lr=[1e-4, 1e-4])),
    ]
    assert ri._get_run_traces_info(flat, "hyper_lr").constant == 1e-4
    assert ri._get_epoch_curves_info(flat, "val_acc").constant == 0.5
    assert ri._get_incumbent_info(flat).constant == 0.4
    with_zero = [detail(run(1, "hd"), epochs([0.5, 0.6], [0.4, 0.4], [1, 2], hyper_lr=[1e-4, 0]))]
    assert not ri._get_run_traces_info(with_zero, "hyper_lr").positive


def _assert_tight_axis(fig, value):
    y = fig.layout.yaxis
    lo, hi = y.range
    assert y.type == "linear" and y.autorange is False
    assert lo < value < hi and hi - lo <= 0.2 * abs(value)
    assert tuple(y.tickvals) == (value,)
    assert fig.layout.height == F.CONSTANT_HEIGHT and not fig.layout.updatemenus


def test_constant_series_get_a_short_panel_with_a_tight_axis(store_like):
    # the first hour: a constant hyper-LR 1e-4 sat at "0" on -1..1, mu 0.99 at "1" on 0..2
    flat = [
        detail(
            run(k, "marthe", k),
            epochs([0.5, 0.6], [0.4, 0.5], [1, 2], mu=[0.99, 0.99], hyper_lr=[1e-4, 1e-4]),
        )
        for k in (1, 2)
    ]
    for field, value in (("hyper_lr", 1e-4), ("mu", 0.99), ("lr", 0.1)):
        fig = F._get_run_traces_plot(ri._get_run_traces_info(flat, field))
        _assert_tight_axis(fig, value)
        _fig_json(fig)
    band = F._get_epoch_curves_plot(ri._get_epoch_curves_info(flat, "val_loss"))
    _assert_tight_axis(band, 1.0)
    page = render_html(flat, compress_plotlyjs=False)
    assert "Hyper-LR (beta) is constant: 0.0001 at every epoch of every run shown." in page
    assert "Mu is constant: 0.99 at every epoch of every run shown." in page
    assert F.constant_note("x", 0.5, percent=True) == (
        "X is constant: 50.00% at every epoch of every run shown."
    )
    varied = render_html(store_like[:2], compress_plotlyjs=False)  # mu and hyper-LR vary
    assert "Mu is constant" not in varied and "Hyper-LR (beta) is constant" not in varied
    assert "Learning rate is constant: 0.1" in varied  # store_like keeps lr = 0.1


def test_hyper_lr_is_on_a_log_axis_by_default_when_positive(store_like):
    fig = F._get_run_traces_plot(ri._get_run_traces_info(store_like, "hyper_lr"))
    assert fig.layout.yaxis.type == "log" and fig.layout.updatemenus[0].active == 1
    with_zero = [
        detail(run(1, "hd"), epochs([0.5, 0.6], [0.4, 0.4], [1, 2], hyper_lr=[1e-4, 0.0]))
    ]
    fig = F._get_run_traces_plot(ri._get_run_traces_info(with_zero, "hyper_lr"))
    assert fig.layout.yaxis.type in (None, "linear") and fig.layout.updatemenus[0].active == 0
    mu = F._get_run_traces_plot(ri._get_run_traces_info(store_like, "mu"))
    assert mu.layout.yaxis.type in (None, "linear") and mu.layout.updatemenus[0].active == 0


def test_scale_buttons_sit_under_the_title_away_from_the_modebar(store_like):
    fig = F._get_run_traces_plot(ri._get_run_traces_info(store_like, "mu"))
    (menu,) = fig.layout.updatemenus
    # top left of the plot area; Plotly's modebar takes the top right corner
    assert (menu.x, menu.xanchor, menu.y, menu.yanchor) == (0.0, "left", 1.0, "bottom")
    assert (fig.layout.title.xanchor, fig.layout.title.yref) == ("left", "container")


def test_titles_promise_a_band_only_when_one_is_drawn(store_like):
    val = F._get_epoch_curves_plot(ri._get_epoch_curves_info(store_like, "val_acc"))
    assert val.layout.title.text == "Validation accuracy per epoch (mean and min–max over 2 runs)"
    one = store_like[:1] + store_like[2:3]  # one marthe run, one constant run
    val = F._get_epoch_curves_plot(ri._get_epoch_curves_info(one, "val_acc"))
    assert val.layout.title.text == "Validation accuracy per epoch"
    assert len(val.data) == 2 and all(t.fill is None for t in val.data)  # lines, no bands
    assert "min" not in val.data[0].hovertemplate
    inc = F._get_incumbent_plot(ri._get_incumbent_info(one))
    assert inc.layout.title.text == "Incumbent: test accuracy of the best-validation model so far"
    mixed = store_like[:3]  # marthe over 2 runs, constant over 1
    loss = F._get_epoch_curves_plot(ri._get_epoch_curves_info(mixed, "train_loss"))
    assert loss.layout.title.text.endswith("(mean and min–max over 1–2 runs)")
    assert len(loss.data) == 1 + 3


def test_find_alpha_speaks_the_clis_words(store_like):
    (search,) = ri._get_find_alpha_info(store_like).searches
    assert [(p.status, p.verdict) for p in search.probes] == [
        ("completed", "stable"),
        ("completed", "stable"),
        ("diverged", "diverged"),
    ]
    assert ri.probe_verdict("interrupted") == "interrupted"
    fig = F._get_find_alpha_plot(search)
    assert "(recommended alpha: 1e-05)" in fig.layout.title.text
    assert "completed" not in json.dumps(_fig_json(fig))
    section = render_html(store_like, compress_plotlyjs=False)
    section = section[section.index('<section id="find-alpha">') :]
    assert "recommended alpha: 1e-05" in section and "<td>stable</td>" in section
    assert "<td>completed</td>" not in section and "chosen" not in section


def test_plotly_text_escapes_tags_but_not_quotes():
    assert F.plotly_text('<b>"a" & b</b>') == '&lt;b&gt;"a" &amp; b&lt;/b&gt;'


# --------------------------------------------------------------------------- html


def test_html_escapes_user_text_and_embeds_plotly_once(store_like):
    page = render_html(store_like, title="t <i>x</i>")
    assert EVIL not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<title>t &lt;i&gt;x&lt;/i&gt;</title>" in page
    assert page.count('id="adatune-plotlyjs-gz"') == 1
    assert "plotly.js v" not in page  # compressed: not in clear text
    figure_ids = re.findall(r'class="adatune-figure" id="([^"]+)"', page)
    assert figure_ids == [
        "fig-val-acc",
        "fig-test-acc",
        "fig-train-loss",
        "fig-val-loss",
        "fig-test-loss",
        "fig-incumbent",
        "fig-lr-epoch",
        "fig-lr-step",
        "fig-mu",
        "fig-hyper-lr",
        "fig-find-alpha-10",
    ]
    # no external resources: no src/href to a network location
    assert not re.search(r'(src|href)\s*=\s*["\']?(https?:)?//', page)
    assert "default-src 'none'" in page
    # config JSON is escaped inside <details>
    assert "&quot;seed&quot;: 0" in page


def test_html_plain_plotlyjs_once(store_like, tmp_path):
    path = write_html(store_like[:1], tmp_path / "r.html", compress_plotlyjs=False)
    page = path.read_text(encoding="utf-8")
    assert page.count("plotly.js v") == 1
    assert 'id="adatune-plotlyjs-gz"' not in page


def test_html_refuses_an_empty_selection(tmp_path):
    with pytest.raises(ValueError, match="no runs"):
        write_html([], tmp_path / "r.html")
    assert not (tmp_path / "r.html").exists()


@pytest.mark.slow
def test_large_report_size(tmp_path):
    """200 runs x 200 epochs, all tuners with step traces: the file stays under 5 MB."""
    details = synthetic_details(200, 200, methods=("marthe", "rtho", "hd"), steps_per_epoch=20)
    path = write_html(details, tmp_path / "big.html")
    size = path.stat().st_size
    assert size < 5_000_000, size
    page = path.read_text(encoding="utf-8")
    spec = re.search(r'id="spec-fig-lr-step">(.*?)</script>', page, re.S).group(1)
    traces = json.loads(spec)["data"]
    assert len(traces) == 200
    assert max(len(t["x"]) for t in traces) <= 200  # 4000 steps per run, downsampled
