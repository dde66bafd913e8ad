"""benchmarks/robustness.py: the machinery, on a two-epoch task (not its numbers)."""

from __future__ import annotations

import json
import pickle

import pytest
import torch

from tests._benchmarks import load


@pytest.fixture(scope="module")
def R():
    yield from load("robustness.py", "robustness_bench")


@pytest.mark.slow
def test_every_method_runs_from_every_start_through_fit(R, monkeypatch):
    base = R.TASKS["teacher-mlp"]
    monkeypatch.setitem(R.TASKS, "tiny", R.Task("tiny", base.data, base.model, epochs=2))
    # an LR-free peer plugs in as one entry: its own optimizer, run once per seed
    fixed = R.Method("fixed-sgd", optimizer=lambda params, lr, family: torch.optim.SGD(
        params, lr=0.01), uses_initial_lr=False)
    methods = [m for m in R.METHODS if m.name in ("marthe", "hd-additive", "cosine")] + [fixed]
    lines: list[str] = []
    res = R.benchmark(["tiny"], ["adam"], methods, seeds=[0, 1], workers=1, log=lines.append)
    best = res.best_lr["tiny", "adam"]
    assert best in R.GRID["adam"] and any("best constant LR" in line for line in lines)
    names = ("marthe", "hd-additive", "cosine", "constant", "fixed-sgd")
    for name in names:
        for f in R.FACTORS:
            cell = res.cells[name, "tiny", "adam", f]
            assert len(cell.accs) == 2 and all(0 <= a <= 100 for a in cell.accs)
    # the constant LR from 1x is the grid's best LR: the same runs, the same numbers
    [row] = [r for r in res.grid["tiny", "adam"] if r[0] == best]
    assert res.cells["constant", "tiny", "adam", 1.0].mean == pytest.approx(100 * row[2])
    assert res.cells["constant", "tiny", "adam", 0.1].lr_ratio == pytest.approx(0.1)
    # the LR-free entry ignores the initial LR: one result in every column
    assert len({tuple(res.cells["fixed-sgd", "tiny", "adam", f].accs) for f in R.FACTORS}) == 1
    text = R.markdown(res, list(names))
    assert "**tiny, adam**" in text and "| marthe |" in text and "| fixed-sgd |" in text
    assert "| marthe |" in R.summary(res, list(names))
    assert len(R.targets(res, "marthe")) == len(R.FACTORS)
    json.dumps(R._to_json(res))


def test_unknown_task_or_method_is_refused(R, capsys):
    with pytest.raises(SystemExit) as exc:
        R.main(["--tasks", "imagenet"])
    assert exc.value.code == 2 and "unknown task or method: imagenet" in capsys.readouterr().err


def test_mechanic_wraps_the_task_optimizer_from_the_run_s_initial_lr(R):
    import mechanic_pytorch

    entries = {m.name: m for m in R.PEER_METHODS}
    model = torch.nn.Linear(3, 2)
    for name, family, base in (("mechanic-sgd", "sgd", torch.optim.SGD),
                               ("mechanic-adam", "adam", torch.optim.AdamW)):
        method = entries[name]
        assert method.uses_initial_lr and method.families == (family,)
        assert pickle.loads(pickle.dumps(method)).name == name
        opt = method.optimizer(model.parameters(), 0.03, family)
        assert isinstance(opt, mechanic_pytorch.Mechanic) and isinstance(opt, base)
        group = opt.param_groups[0]
        task = R.OPTIMIZERS[family](torch.nn.Linear(3, 2).parameters(), 0.03).param_groups[0]
        assert group["lr"] == 0.03 and group["weight_decay"] == task["weight_decay"] == 0
        assert group.get("momentum") == task.get("momentum")  # SGD's 0.9; Adam has none
    assert ("Mechanic SGD / AdamW", ("mechanic-sgd", "mechanic-adam")) in R.COMPACT


@pytest.mark.slow
def test_the_peers_run_beside_their_own_family_only(R, monkeypatch):
    base = R.TASKS["teacher-mlp"]
    monkeypatch.setitem(R.TASKS, "tiny", R.Task("tiny", base.data, base.model, epochs=2))
    # every peer entry can travel to a worker process
    for m in R.PEER_METHODS:
        assert pickle.loads(pickle.dumps(m)).name == m.name
    names = ("dog", "schedulefree-adamw", "schedulefree-adamw-default", "marthe")
    methods = [m for m in R.METHODS if m.name in names]
    res = R.benchmark(["tiny"], ["sgd", "adam"], methods, seeds=[0], workers=1,
                      log=lambda line: None)
    assert ("dog", "tiny", "sgd", 1.0) in res.cells
    assert ("dog", "tiny", "adam", 1.0) not in res.cells
    assert ("schedulefree-adamw", "tiny", "sgd", 1.0) not in res.cells
    # DoG takes no LR: one run in every column; Schedule-Free starts from each initial LR
    # (its recorded effective LR scales with it), and once more from its package's LR
    assert len({tuple(res.cells["dog", "tiny", "sgd", f].accs) for f in R.FACTORS}) == 1
    sf = {f: res.cells["schedulefree-adamw", "tiny", "adam", f].lr_ratio for f in R.FACTORS}
    for f in R.FACTORS:
        assert sf[f] == pytest.approx(f * sf[1.0])
    pkg = res.cells["schedulefree-adamw-default", "tiny", "adam", 0.1].lr_ratio
    assert pkg == pytest.approx(sf[1.0] * R.PEERS["schedulefree-adamw"].lr
                                / res.best_lr["tiny", "adam"])
    # the compact table puts a peer of each family in one column
    table = R.by_start(res, R.compact_columns([*names, "constant"]))
    assert "| DoG / Prodigy |" in table.splitlines()[0]
    rows = {tuple(line.split(" | ")[1:3]): line for line in table.splitlines()[2:]}
    assert rows["sgd", "1x"].count("|") == rows["adam", "1x"].count("|")
    board = R.scoreboard(res, ["marthe"], ["dog", "constant"])
    sgd_cells = len(R.FACTORS)
    [dog] = [line for line in board.splitlines() if "| marthe | dog |" in line]
    assert sum(int(x) for x in dog.split("|")[3:6]) == sgd_cells
    [const] = [line for line in board.splitlines() if "| marthe | constant |" in line]
    assert sum(int(x) for x in const.split("|")[3:6]) == 2 * sgd_cells
    # every run's CPU time is measured: the constant LR is the cost table's unit
    assert all(c.cpu > 0 for c in res.cells.values())
    cost = R.costs(res, ["marthe", "dog", "constant"])
    assert "| constant | " in cost and cost.rstrip().endswith("| 1.00 |")
    assert R._from_json(json.loads(json.dumps(R._to_json(res)))).cells == res.cells
    # the targets, counted: the constant LR never beats itself from the same start
    counted = R.target_table(res, ["marthe", "constant"]).splitlines()
    [const_row] = [line for line in counted if line.startswith("| constant |")]
    assert const_row.split(" | ")[3] == f"0 / {2 * (len(R.FACTORS) - 1)}"  # sgd, adam
