"""benchmarks/robustness.py: the machinery, on a two-epoch task (not its numbers)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "robustness.py"


@pytest.fixture(scope="module")
def R():
    spec = importlib.util.spec_from_file_location("robustness_bench", _PATH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


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
