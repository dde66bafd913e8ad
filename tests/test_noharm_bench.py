"""benchmarks/noharm.py: the machinery, on two-epoch tasks (not its numbers)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from tests._benchmarks import load


@pytest.fixture(scope="module")
def N():
    yield from load("noharm.py", "noharm_bench")


def test_the_language_model_has_a_double_backward_and_its_data_are_windows(N):
    train, val, test = N._chars(0, n_train=64, n_val=8, n_test=8)
    x, y = train.tensors
    assert x.shape == (64, N.CONTEXT) and torch.equal(x[:, 1:], y[:, :-1])
    assert int(x.max()) < 128 and len(val) == 8 and len(test) == 8
    # the fixed test windows do not depend on the seed; the training draw does
    assert torch.equal(N._chars(1, 64, 8, 8)[2].tensors[0], test.tensors[0])
    assert not torch.equal(N._chars(1, 64, 8, 8)[0].tensors[0], x)
    model = N.CharTransformer()
    loss = N.next_char_loss(model(x[:4]), y[:4])
    assert math.isclose(float(loss.detach()), math.log(128), rel_tol=0.1)  # uniform at init
    grads = torch.autograd.grad(loss, list(model.parameters()), create_graph=True)
    hvp = torch.autograd.grad(grads, list(model.parameters()),
                              grad_outputs=[torch.ones_like(g) for g in grads])
    assert all(torch.isfinite(h).all() for h in hvp)


def test_the_mnist1d_network_maps_40_samples_to_10_classes(N):
    assert N.CNN1D()(torch.randn(3, 40)).shape == (3, 10)


def test_the_compute_matched_grid_spreads_its_runs_over_the_starts(N):
    assert N.matched_lrs(1.0, 1) == pytest.approx([10 ** -0.5])
    lrs = N.matched_lrs(2.0, 3)
    assert lrs == sorted(lrs) and 0.02 < lrs[0] and lrs[-1] < 20
    ratios = [b / a for a, b in zip(lrs, lrs[1:])]
    assert ratios == pytest.approx([10.0, 10.0])


def test_every_reference_and_target_from_every_start(N, monkeypatch):
    R = N.R
    base = R.TASKS["teacher-mlp"]
    monkeypatch.setitem(N.TASKS, "tiny", R.Task("tiny", base.data, base.model, epochs=2,
                                                optimizers=("adam",)))
    monkeypatch.setitem(R.TASKS, "tiny", N.TASKS["tiny"])
    monkeypatch.setitem(N.GRIDS, ("tiny", "adam"), N._grid(10 ** -3.5, 5))
    methods = [m for m in N.METHODS if m.name in ("marthe", "constant", "cosine")]
    lines: list[str] = []
    res = N.benchmark(["tiny"], methods, seeds=[0, 1], workers=1, log=lines.append)
    best = res.best_lr["tiny", "adam"]
    assert best in N.grid("tiny", "adam") and any("best constant LR" in x for x in lines)
    for name in ("marthe", "constant", "cosine"):
        for f in N.FACTORS:
            cell = res.cells[name, "tiny", "adam", f]
            assert len(cell.scores) == 2 and all(0 <= a <= 100 for a in cell.scores)
            assert cell.cpu > 0
    # the constant LR's peak is its LR: the start over the best constant LR
    assert res.cells["constant", "tiny", "adam", 0.01].peak == pytest.approx(0.01)
    k, lrs, grid_cell = res.matched["tiny", "adam"]
    assert k >= 1 and len(lrs) == k and len(grid_cell.scores) == 2
    got = N.targets(res, "marthe")
    assert len(got["do no harm"]) == 1 and len(got["recover"]) == len(N.FACTORS)
    # the constant LR from the best start is the reference of "do no harm": a tie, met
    [(label, delta, ok)] = N.targets(res, "constant")["do no harm"]
    assert label == "tiny adam 1x" and delta == 0 and ok
    text = N.report(res)
    assert "| tiny | adam | 0.01x |" in text and "compute-matched grid" in text
    assert N.from_json(json.loads(json.dumps(N.to_json(res)))).cells == res.cells


def test_a_task_judged_by_loss_counts_lower_as_better(N):
    res = N.Results(best_lr={}, by_loss={"lm": True, "img": False}, cells={}, matched={},
                    seconds=0, cpu_seconds=0, workers=1, seeds=(0,), load=(0, 0))
    assert N.gain(res, "lm", 1.9, 2.0) == pytest.approx(0.1)
    assert N.gain(res, "img", 91.0, 90.0) == pytest.approx(1.0)


def test_unknown_task_or_method_is_refused(N, capsys):
    with pytest.raises(SystemExit) as exc:
        N.main(["--tasks", "imagenet"])
    assert exc.value.code == 2 and "unknown task or method: imagenet" in capsys.readouterr().err
