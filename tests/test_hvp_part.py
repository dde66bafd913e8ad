"""The Hessian-vector product on part of the batch: ``step(..., hvp_loss=closure)``.

Where the loss is a mean over examples, the batch's Hessian is the mean of its
halves', and the tangent step is linear in the HVP: the tangents after a step
whose HVP came from one half, then from the other, average to the tangent of
the step with the whole batch's HVP. Checked in float64 for SGD with momentum
and Adam, for the exact and the finite-difference HVP.
"""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import adatune
from adatune.bench.config import BenchConfig, split_label
from adatune.errors import ConfigError
from adatune.store import open_store
from tests._cli import cli
from tests.test_store_safety import one_error_line

ce = nn.functional.cross_entropy


def _batches(steps: int, n: int = 16):
    g = torch.Generator().manual_seed(0)
    xs = torch.randn(steps, n, 6, generator=g, dtype=torch.float64)
    ys = torch.randint(0, 3, (steps, n), generator=g)
    xv = torch.randn(32, 6, generator=g, dtype=torch.float64)
    yv = torch.randint(0, 3, (32,), generator=g)
    return xs, ys, xv, yv


def _fresh(optimizer: str, hvp: str, batch_norm: bool = False, **kw):
    torch.manual_seed(0)
    layers = [nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3)]
    if batch_norm:
        layers.insert(1, nn.BatchNorm1d(8))
    model = nn.Sequential(*layers).double()
    if optimizer == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    else:
        opt = torch.optim.Adam(model.parameters(), lr=0.01)
    options = {"online": True, "hyper_lr": 0.05, **kw}
    return model, adatune.MARTHE(opt, hvp=hvp, model=model, **options)


def _after(optimizer: str, hvp: str, part: slice | None, steps: int = 4):
    """Weights and tangents after ``steps`` steps, the last with the HVP of ``part``."""
    xs, ys, xv, yv = _batches(steps)
    model, tuner = _fresh(optimizer, hvp)
    for t in range(steps):
        def loss(t=t):
            return ce(model(xs[t]), ys[t])

        def half(t=t):
            return ce(model(xs[t][part]), ys[t][part])

        last = t == steps - 1 and part is not None
        tuner.step(loss, val_loss=lambda: ce(model(xv), yv), hvp_loss=half if last else None)
    weights = [p.detach().clone() for p in model.parameters()]
    tangents = [tuner._tangents[p]["z"].clone() for p in model.parameters()]
    return weights, tangents


@pytest.mark.parametrize("hvp", ["exact", "finite-difference"])
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_the_halves_hvps_average_to_the_whole_batchs(optimizer, hvp):
    w_full, z_full = _after(optimizer, hvp, None)
    w_a, z_a = _after(optimizer, hvp, slice(0, 8))
    w_b, z_b = _after(optimizer, hvp, slice(8, 16))
    # the HVP moves the tangent, never the weights
    assert all(torch.equal(p, q) for p, q in zip(w_full, w_a))
    assert all(torch.equal(p, q) for p, q in zip(w_full, w_b))
    # each half's tangent differs from the whole batch's: the test can tell them apart
    assert any(not torch.allclose(a, f, rtol=1e-6, atol=0) for a, f in zip(z_a, z_full))
    tol = 1e-11 if hvp == "exact" else 1e-6  # the finite difference's own rounding
    for a, b, f in zip(z_a, z_b, z_full):
        torch.testing.assert_close((a + b) / 2, f, rtol=tol, atol=tol * f.abs().max())


@pytest.mark.parametrize("hvp", ["exact", "finite-difference"])
def test_the_whole_batch_as_hvp_loss_is_the_default_step(hvp):
    _, z_full = _after("sgd", hvp, None)
    _, z_same = _after("sgd", hvp, slice(0, 16))
    for a, b in zip(z_same, z_full):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


def _steps(model, tuner, steps: int, part=None) -> None:
    """``steps`` steps on the batches of _batches; ``part(t, model)``: step t's hvp_loss."""
    xs, ys, xv, yv = _batches(steps)
    for t in range(steps):
        tuner.step(lambda t=t: ce(model(xs[t]), ys[t]), val_loss=lambda: ce(model(xv), yv),
                   hvp_loss=None if part is None else (lambda t=t: part(t, model)))


def _first_half(t: int, model) -> torch.Tensor:
    xs, ys, _, _ = _batches(t + 1)
    return ce(model(xs[t][:8]), ys[t][:8])


@pytest.mark.parametrize("hvp", ["exact", "finite-difference"])
def test_batch_norm_statistics_stay_those_of_the_training_forward(hvp):
    runs = []
    for part in (None, _first_half):
        # hyper-LR 0: the LR, hence the weights, the same in both runs
        model, tuner = _fresh("sgd", hvp, batch_norm=True, hyper_lr=0.0)
        _steps(model, tuner, 3, part)
        runs.append([b.clone() for b in model.buffers()])
    assert all(torch.equal(a, b) for a, b in zip(*runs))


@pytest.mark.parametrize("options,expected", [
    ({"hyper_every": 3}, [2, 5]), ({"first_order": True}, []),
    ({}, [1, 2, 3, 4, 5, 6]),  # step 0: the tangent is still 0
])
def test_it_is_called_only_on_steps_that_take_the_hvp(options, expected):
    model, tuner = _fresh("sgd", "exact", **options)
    calls = []

    def part(t, model):
        calls.append(t)
        return _first_half(t, model)

    _steps(model, tuner, 7, part)
    assert calls == expected


def test_hd_and_a_non_closure_are_refused():
    model, tuner = _fresh("sgd", "exact")
    x, y = torch.randn(4, 6, dtype=torch.float64), torch.zeros(4, dtype=torch.long)
    with pytest.raises(ValueError, match="Invalid hvp_loss"):
        tuner.step(lambda: ce(model(x), y), val_loss=lambda: ce(model(x), y),
                   hvp_loss=ce(model(x), y))
    hd = adatune.HD(tuner.optimizer, online=True, hyper_lr=1e-3)
    with pytest.raises(ValueError, match="takes no hvp_loss"):
        hd.step(lambda: ce(model(x), y), hvp_loss=lambda: ce(model(x), y))


# ----------------------------------------------------------- the loop and the command
class _Sizes(nn.Module):
    """A classifier that notes the size of every batch it sees in training."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))
        self.sizes: list[int] = []

    def forward(self, x):
        if self.training:
            self.sizes.append(x.shape[0])
        return self.net(x)


def _data(n: int):
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 6, generator=g), torch.randint(0, 3, (n,), generator=g)


@pytest.mark.parametrize("fraction,extra", [(0.25, [4]), (1.0, [])])
def test_fit_takes_the_hvp_on_the_batchs_leading_fraction(tmp_path, fraction, extra):
    torch.manual_seed(0)
    model = _Sizes()
    result = adatune.fit(model, _data(64), _data(32), tuner="marthe", epochs=1, batch_size=16,
                         hvp_fraction=fraction, store=str(tmp_path / "runs.db"))
    assert result.status == "completed"
    # 4 steps of 16; steps 2 to 4 take the HVP (step 1's tangent is still 0)
    assert model.sizes == [16] + [16, *extra] * 3
    with open_store(str(tmp_path / "runs.db")) as db:
        assert db.get_run(result.run_id).run.config["hvp_fraction"] == fraction


@pytest.mark.parametrize("kw", [{"tuner": "hd"}, {"tuner": None, "schedule": "cosine"}])
def test_fit_refuses_a_fraction_without_an_hvp(tmp_path, kw):
    with pytest.raises(ConfigError, match="hvp_fraction applies to marthe and rtho"):
        adatune.fit(_Sizes(), _data(32), _data(16), epochs=1, hvp_fraction=0.5,
                    store=str(tmp_path / "runs.db"), **kw)


@pytest.mark.parametrize("args, fragment", [
    (("--hvp-fraction", "0"), "invalid hvp_fraction: 0"),
    (("--hvp-fraction", "1.5"), "invalid hvp_fraction: 1.5"),
    (("--hvp-fraction", "x"), "--hvp-fraction"),
    (("--hvp-fraction", "0.5", "--tuner", "hd"), "hvp_fraction applies to marthe and rtho"),
])
def test_bad_hvp_fraction_is_one_line_and_exit_code_2(workdir, capsys, args, fragment):
    one_error_line(*cli(capsys, "train", "--epochs", "1", *args)[::2], fragment)
    assert not (workdir / "adatune.db").exists()  # no run written


def test_train_records_hvp_fraction_with_the_run(workdir, capsys):
    code, _, err = cli(capsys, "train", "--epochs", "1", "--hvp-fraction", "0.25")
    assert code == 0, err
    with open_store("adatune.db") as db:
        [run] = db.list_runs()
    assert run.config["hvp_fraction"] == 0.25 and run.status == "completed"
    code, out, _ = cli(capsys, "runs", "show", str(run.id), "--json")
    assert "--hvp-fraction 0.25" in json.loads(out)["command"]


def test_bench_labels_each_hvp_fraction_and_refuses_bad_ones(capsys):
    config = BenchConfig(methods=("marthe",), hvp=("exact",), hvp_fraction=(1.0, 0.25))
    assert config.labels() == ["plain", "marthe", "marthe[part 0.25]"]
    assert split_label("marthe[finite-difference, every 4, part 0.25]") == (
        "marthe", "finite-difference", 4, 0.25)
    one_error_line(*cli(capsys, "bench", "--hvp-fraction", "0.5,x")[::2], "hvp_fraction")
    one_error_line(*cli(capsys, "bench", "--hvp-fraction", "0")[::2], "hvp_fraction")


def test_bench_times_the_hvp_on_part_of_the_batch(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    sizes = []
    monkeypatch.setattr(torch.nn.Linear, "forward", lambda self, x: (
        sizes.append(x.shape[0]), torch.nn.functional.linear(x, self.weight, self.bias))[1])
    code, out, err = cli(capsys, "bench", "--network", "mlp", "--batch-size", "8", "--steps",
                         "2", "--warmup", "0", "--methods", "plain,marthe", "--hvp", "exact",
                         "--hvp-fraction", "0.25", "--no-memory", "--json")
    assert code == 0, err
    assert [r["method"] for r in json.loads(out)["results"]] == ["plain", "marthe[part 0.25]"]
    assert set(sizes) == {8, 2}  # the batch, and its quarter for the HVP
