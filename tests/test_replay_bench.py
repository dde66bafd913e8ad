"""benchmarks/replay.py: the machinery, on a two-epoch task and a two-LR grid (not its numbers)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

_BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def R():
    spec = importlib.util.spec_from_file_location("replay_bench", _BENCH / "replay.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


@pytest.mark.slow
def test_the_schedule_of_seed_0_is_replayed_on_the_other_seeds(R, monkeypatch, tmp_path):
    base = R.robustness.TASKS["teacher-mlp"]
    monkeypatch.setitem(R.robustness.TASKS, "tiny",
                        R.robustness.Task("tiny", base.data, base.model, epochs=2))
    lines: list[str] = []
    grid = R.robustness.GRID["sgd"][1:3]
    results, facts = R.benchmark(["tiny"], 1, lines.append, grid=grid)
    [res] = results
    assert [r.method for r in res.rows] == ["constant", "cosine", "marthe", "replay"]
    by = {r.method: r for r in res.rows}
    best = max(grid, key=lambda lr: dict(res.grid["constant"])[lr])
    assert by["constant"].lr == best == by["marthe"].lr == by["replay"].lr
    assert by["cosine"].lr == max(grid, key=lambda lr: dict(res.grid["cosine"])[lr])
    for r in res.rows:
        assert len(r.accs) == 3 and all(0 <= a <= 100 for a in r.accs)
        assert r.seconds > 0 and r.cpu_seconds > 0
    # every replay ran at seed 0's recorded LRs (checked inside train_one), one per step
    steps_per_epoch = -(-len(base.data(0)[0]) // base.batch_size)
    assert res.source_steps == 2 * steps_per_epoch
    # 2 x 2 x 3 grid runs, 1 source, 4 x 3 timed runs; the timed baselines repeated exactly
    assert facts["runs"] == 12 + 1 + 12 and facts["not_repeated"] == []
    text = R.markdown(results)
    assert "| tiny | MARTHE seed 0's schedule, replayed |" in text and text.count("| tiny |") == 4
    json.dumps([R.asdict(r) for r in results])


def test_a_replay_that_does_not_follow_its_schedule_is_caught(R, monkeypatch, tmp_path):
    base = R.robustness.TASKS["teacher-mlp"]
    monkeypatch.setitem(R.robustness.TASKS, "tiny",
                        R.robustness.Task("tiny", base.data, base.model, epochs=1))
    R._init_worker(str(tmp_path))
    source = R.train_one(R.Job("tiny", "marthe", 0.1, 0))
    assert source.status == "completed" and len(source.lrs) == source.steps
    R.train_one(R.Job("tiny", "replay", 0.1, 1), source.lrs)  # follows it: no complaint
    with pytest.raises(AssertionError, match="did not run at the recorded LRs"):
        R.train_one(R.Job("tiny", "replay", 0.1, 1), [*source.lrs, 0.5])  # one step too many
