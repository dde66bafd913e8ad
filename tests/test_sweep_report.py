"""The sweep view of the report: its data step with hand-computed numbers, figure and HTML.

One study of the constant schedule, two seeds, three trials; runs laid end to
end per seed (see adatune.report.info, "Sweeps"):

seed 0: trial 0 run 1 (epochs at 5 s and 10 s, ended after 12 s -> takes 12 s)
        trial 1 run 3 (epochs at 4 s and 8 s, ended after 8 s)
        trial 2 run 5 (still running, one epoch at 7 s)
        incumbent: (5, .40) (10, .55) (16, .55: val .55 < .60) (20, .65) (27, .70)
seed 1: trial 0 run 2 (epochs at 5 s and 10 s, ended after 10 s)
        trial 1 run 4 (diverged in its first epoch: no epoch, ended after 3 s)
        trial 2 run 6 (one epoch at 6 s, ended after 7 s)
        incumbent: (5, .45) (10, .50) (10 + 3 + 6 = 19, .60)
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json

import plotly.io as pio
import pytest

from adatune.report import figures as F
from adatune.report import info as ri
from adatune.report import render_html
from adatune.store.records import EpochRecord, RunDetail, RunRecord

T0 = dt.datetime(2025, 1, 1, tzinfo=dt.timezone.utc)
EVIL = "<b>study</b>"


def record(run_id, seed, trial, *, method="constant", study="s", status="completed",
           ended_s=None, kind="sweep", params=None) -> RunRecord:
    extra = {} if trial is None else {"sweep": {"study": study, "trial": trial,
                                                "seed_index": seed,
                                                "params": params or {"lr": 0.01 * (trial + 1)}}}
    return RunRecord(
        id=run_id, name=f"{study}/trial-{trial}", experiment=study, kind=kind, method=method,
        optimizer="sgd", network="mlp", dataset="digits", seed=seed,
        config={"seed": seed, "extra": extra}, status=status, started_at=T0,
        ended_at=None if ended_s is None else T0 + dt.timedelta(seconds=ended_s),
        heartbeat_at=None, epochs=0, best_val_acc=None, best_epoch=None, test_acc=None,
        error=None, adatune_version="0", torch_version="0", device="cpu", host="h")


def eps(*rows) -> tuple[EpochRecord, ...]:
    """rows: (elapsed_s, val_acc, test_acc)."""
    return tuple(
        EpochRecord(epoch=i + 1, lr=0.1, lr_mean=0.1, mu=None, hyper_lr=None, train_loss=1.0,
                    train_acc=0.5, val_loss=1.0, val_acc=v, test_loss=1.0, test_acc=t,
                    elapsed_s=s)
        for i, (s, v, t) in enumerate(rows)
    )


def sweep_runs(study="s", method="constant", first_id=1) -> list[RunDetail]:
    i = first_id - 1
    return [
        RunDetail(record(i + 1, 0, 0, study=study, method=method, ended_s=12),
                  eps((5, 0.50, 0.40), (10, 0.60, 0.55))),
        RunDetail(record(i + 2, 1, 0, study=study, method=method, ended_s=10),
                  eps((5, 0.52, 0.45), (10, 0.58, 0.50))),
        RunDetail(record(i + 3, 0, 1, study=study, method=method, ended_s=8),
                  eps((4, 0.55, 0.90), (8, 0.70, 0.65))),
        RunDetail(record(i + 4, 1, 1, study=study, method=method, status="diverged",
                         ended_s=3)),
        RunDetail(record(i + 5, 0, 2, study=study, method=method, status="running"),
                  eps((7, 0.71, 0.70))),
        RunDetail(record(i + 6, 1, 2, study=study, method=method, ended_s=7),
                  eps((6, 0.66, 0.60))),
    ]


def test_sweep_incumbent_against_the_sweeps_time():
    details = sweep_runs()[::-1]  # the order of the selection does not matter
    assert ri._sweep_steps([details[5], details[3], details[1]]) == [
        (5, 0.40), (10, 0.55), (16, 0.55), (20, 0.65), (27, 0.70)]
    info = ri._get_sweep_info(details)
    (curve,) = info.curves
    assert curve.label == "constant" and curve.runs == 2
    assert curve.x == (5, 10, 16, 19, 20, 27)
    assert curve.mean == pytest.approx((0.425, 0.525, 0.525, 0.575, 0.625, 0.65))
    assert curve.lo == pytest.approx((0.40, 0.50, 0.50, 0.55, 0.60, 0.60))
    assert curve.hi == pytest.approx((0.45, 0.55, 0.55, 0.60, 0.65, 0.70))
    assert curve.n == (2,) * 6
    # trials run in any order over workers: the trial number orders them, not the run id
    renumbered = [RunDetail(dataclasses.replace(d.run, id=100 - d.run.id), d.epochs)
                  for d in details]
    assert [c._replace(run_ids=()) for c in ri._get_sweep_info(renumbered).curves] == [
        c._replace(run_ids=()) for c in info.curves]
    assert curve.run_ids == (1, 2, 3, 4, 5, 6)  # the legend names them


def test_sweep_best_configuration_and_counts():
    (group,) = ri._get_sweep_info(sweep_runs()).groups
    assert (group.label, group.method, group.study) == ("constant", "constant", "s")
    assert (group.trials, group.runs, group.diverged, group.seeds) == (3, 6, 1, (0, 1))
    best = group.best
    # trial 1 has a diverged seed and trial 2 a running one: only trial 0 qualifies
    assert (best.trial, best.seeds, best.run_ids) == (0, (0, 1), (1, 2))
    assert best.val_acc == pytest.approx((0.60 + 0.58) / 2)
    assert best.test_acc == pytest.approx((0.55 + 0.50) / 2)
    assert best.params == {"lr": 0.01}


def test_a_better_complete_trial_wins_and_seeds_must_be_complete():
    runs = sweep_runs()
    runs[3] = RunDetail(record(4, 1, 1, ended_s=9), eps((4, 0.68, 0.61)))  # trial 1 now ok
    best = ri._get_sweep_info(runs).groups[0].best
    assert best.trial == 1 and best.val_acc == pytest.approx((0.70 + 0.68) / 2)
    assert best.test_acc == pytest.approx((0.65 + 0.61) / 2)
    # a trial that ran on fewer seeds than the others is not comparable
    best = ri._get_sweep_info([r for r in runs if r.run.id != 4]).groups[0].best
    assert best.trial == 0


def test_sweep_groups_per_method_and_study_and_ignore_other_runs():
    other = [RunDetail(record(99, 0, None, kind="train", method="constant"),
                       eps((1, 0.9, 0.9)))]
    details = (sweep_runs("a", "marthe") + sweep_runs("b", "marthe", 11)
               + sweep_runs("c", "cosine", 21) + other)
    info = ri._get_sweep_info(details)
    assert [g.label for g in info.groups] == ["cosine", "marthe · a", "marthe · b"]
    assert [c.label for c in info.curves] == ["cosine", "marthe · a", "marthe · b"]
    assert all(g.runs == 6 for g in info.groups)
    assert ri._get_sweep_info(other) == ri.SweepInfo((), ())


def test_sweep_figure_and_html_section():
    details = sweep_runs(EVIL)
    fig = F._get_sweep_plot(ri._get_sweep_info(details))
    assert len(fig.data) == 3 and fig.data[2].line.shape == "hv"
    json.loads(pio.to_json(fig))
    page = render_html(details, compress_plotlyjs=False)
    assert 'id="fig-sweep"' in page and 'id="sweep-table"' in page
    table = page[page.index('id="sweep-table"'):]
    table = table[: table.index("</table>")]
    assert "&lt;b&gt;study&lt;/b&gt;" in table and EVIL not in table
    assert "<td>lr=0.01</td>" in table and "<td>#1, #2</td>" in table
    assert "<td>59.00</td>" in table  # mean best validation accuracy of trial 0
    plain = [RunDetail(record(1, 0, None, kind="train"), eps((1, 0.5, 0.5)))]
    assert 'id="fig-sweep"' not in render_html(plain, compress_plotlyjs=False)
