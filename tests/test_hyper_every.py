"""``hyper_every=k``: the HVP and the validation gradient on one tuned step in k.

Every tuned step advances the tangent with its first-order terms; the steps whose
``state["step"] % k == k - 1`` add the HVP of the cycle's tangents (weighted by mu), call
``val_loss`` and move the LR with k times the hyper-LR (docs/math.md, "Every k steps").
"""

from __future__ import annotations

import io
import json

import pytest
import torch
from torch import nn

import adatune
from adatune.bench.config import BenchConfig, split_label
from adatune.methods.hyper_update import MAX_HYPER_LR
from adatune.methods.tuners import HypergradientTuner
from adatune.store import open_store
from tests._cli import cli
from tests.test_store_safety import one_error_line

ce = nn.functional.cross_entropy


def _data(steps: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    xs = torch.randn(steps, 16, 6, generator=g)
    ys = torch.randint(0, 3, (steps, 16), generator=g)
    xv = torch.randn(32, 6, generator=g)
    yv = torch.randint(0, 3, (32,), generator=g)
    return xs, ys, xv, yv


def _fresh(hvp: str = "exact", **kw):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    return model, adatune.MARTHE(opt, hvp=hvp, model=model, **kw)


def _run(model, tuner, data, steps, val_calls=None):
    xs, ys, xv, yv = data

    def val_loss():
        if val_calls is not None:
            val_calls.append(tuner.state["step"])
        return ce(model(xv), yv)

    out = []
    for t in steps:
        tuner.step(lambda t=t: ce(model(xs[t]), ys[t]), val_loss=val_loss)
        out.append((tuner.lr, tuner.last_hypergradient,
                    [p.detach().clone() for p in model.parameters()]))
    return out


def _same(a, b) -> bool:
    return all(x[:2] == y[:2] and all(torch.equal(p, q) for p, q in zip(x[2], y[2]))
               for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("hvp", ["exact", "finite-difference"])
def test_every_one_is_the_default_tuner_bit_for_bit(hvp):
    data = _data(8)
    default = _run(*_fresh(hvp, total_steps=8, warmup=0.5), data, range(8))
    every_one = _run(*_fresh(hvp, total_steps=8, warmup=0.5, hyper_every=1), data, range(8))
    assert _same(default, every_one)
    assert len({lr for lr, *_ in default}) > 2  # the LR moved: the comparison means something


@pytest.mark.parametrize("hvp, private", [("exact", "_exact_hvp"),
                                          ("finite-difference", "_fd_hvp")])
def test_every_three_takes_the_hvp_and_the_validation_gradient_on_every_third_step(
        monkeypatch, hvp, private):
    hvp_steps = []
    original = getattr(HypergradientTuner, private)

    def counted(self, *args, **kwargs):
        hvp_steps.append(self.state["step"])
        return original(self, *args, **kwargs)

    monkeypatch.setattr(HypergradientTuner, private, counted)
    model, tuner = _fresh(hvp, online=True, hyper_lr=0.05, hyper_every=3)
    val_steps: list[int] = []
    lr0 = tuner.lr
    out = _run(model, tuner, _data(9), range(9), val_steps)
    assert val_steps == [2, 5, 8]
    assert hvp_steps == [2, 5, 8]  # the tangent is live from step 1
    lrs = [lr for lr, *_ in out]
    assert lrs[:2] == [lr0, lr0] and lrs[2] != lr0  # the LR moves on the updates only
    assert lrs[3:5] == [lrs[2]] * 2 and lrs[5] != lrs[2]
    assert out[0][1] is None and out[1][1] is None and out[2][1] is not None


def test_the_update_takes_k_times_the_hyper_lr_within_the_rule_range():
    torch.manual_seed(0)
    w = nn.Parameter(torch.randn(4))
    opt = torch.optim.SGD([w], lr=0.1)
    tuner = adatune.RTHO(opt, hyper_lr=1e-3, hyper_update="additive", online=True,
                         hyper_every=4)
    for _ in range(3):
        tuner.step((w * w).sum(), val_loss=lambda: ((w - 1) ** 2).sum())
    lr = tuner.lr
    tuner.step((w * w).sum(), val_loss=lambda: ((w - 1) ** 2).sum())  # the 4th: an update
    assert tuner.lr == pytest.approx(lr - 4 * 1e-3 * tuner.last_hypergradient, rel=1e-12)
    assert tuner.hyper_lr == 1e-3  # the per-step hyper-LR is what the tuner keeps
    _, capped = _fresh(online=True, hyper_lr=0.4, hyper_every=4)
    assert capped._update_hyper_lr() == MAX_HYPER_LR  # scale-free: never over its largest


def _quadratic(steps: int, n: int = 6):
    """A quadratic training loss (constant Hessian, a new linear term every step)."""
    g = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    hessian = q @ torch.diag(torch.linspace(0.5, 2.0, n, dtype=torch.float64)) @ q.T
    bs = torch.randn(steps, n, generator=g, dtype=torch.float64)
    target = torch.randn(n, generator=g, dtype=torch.float64)
    w0 = torch.randn(n, generator=g, dtype=torch.float64)
    return hessian, bs, target, w0


def _quadratic_hypergradient(lr: float, steps: int, **kw) -> float:
    hessian, bs, target, w0 = _quadratic(steps)
    w = nn.Parameter(w0.clone())
    # hyper_lr 0: the LR stays, as the unrolled oracle's single eta
    tuner = adatune.RTHO(torch.optim.SGD([w], lr=lr), hyper_lr=0.0, hyper_update="additive",
                         online=True, **kw)
    for t in range(steps):
        tuner.step(0.5 * w @ hessian @ w - bs[t] @ w,
                   val_loss=lambda: 0.5 * ((w - target) ** 2).sum())
    return tuner.last_hypergradient


def _unrolled_hypergradient(lr: float, steps: int) -> float:
    """dE(w_T)/d eta by autograd through an explicit SGD loop."""
    hessian, bs, target, w0 = _quadratic(steps)
    eta = torch.tensor(lr, dtype=torch.float64, requires_grad=True)
    w = w0.clone()
    for t in range(steps):
        w = w - eta * (hessian @ w - bs[t])
    [d] = torch.autograd.grad(0.5 * ((w - target) ** 2).sum(), eta)
    return float(d)


def test_on_a_quadratic_every_k_tends_to_the_exact_hypergradient_as_the_lr_shrinks():
    steps, k = 9, 3  # updates after steps 2, 5 and 8: the last is compared
    errors, first_order = [], []
    for lr in (0.04, 0.02, 0.01, 0.005):
        exact = _unrolled_hypergradient(lr, steps)
        assert _quadratic_hypergradient(lr, steps) == pytest.approx(exact, rel=1e-12)

        def rel(h, exact=exact):
            return abs(h - exact) / abs(exact)

        errors.append(rel(_quadratic_hypergradient(lr, steps, hyper_every=k)))
        first_order.append(rel(_quadratic_hypergradient(lr, steps, first_order=True)))
    # measured: 0.023, 0.0046, 0.0010, 0.00025: second order in the LR (the HVP of the
    # cycle's weighted tangent sum; k times the last tangent's was first order: 0.104 ... 0.009)
    assert errors[0] < 0.05
    for big, small in zip(errors, errors[1:]):
        assert 3.0 < big / small < 6.0, errors
    # far better than no curvature (first_order=True: 0.42 ... 0.036, first order)
    assert all(e < 0.1 * f for e, f in zip(errors, first_order)), (errors, first_order)


@pytest.mark.parametrize("stop", [4, 5])  # mid-cycle, and just after an update
def test_a_checkpoint_taken_mid_cycle_resumes_bit_identically(stop):
    data = _data(12)
    options = {"total_steps": 12, "warmup": 0.5, "mu": "auto", "hyper_every": 3}
    straight = _run(*_fresh(**options), data, range(12))
    model, tuner = _fresh(**options)
    first = _run(model, tuner, data, range(stop))
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "tuner": tuner.state_dict()}, buf)
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)
    options["hyper_every"] = 1  # the checkpoint's cycle is adopted, as its horizon is
    model2, tuner2 = _fresh(**options)
    model2.load_state_dict(saved["model"])
    tuner2.load_state_dict(saved["tuner"])
    assert tuner2.hyper_every == 3
    assert _same(first + _run(model2, tuner2, data, range(stop, 12)), straight)


def test_a_checkpoint_saved_before_the_option_loads_as_every_step():
    model, tuner = _fresh(online=True)
    _run(model, tuner, _data(2), range(2))
    state = tuner.state_dict()
    del state["tuner"]["hyper_every"]
    _, other = _fresh(online=True, hyper_every=4)
    other.load_state_dict(state)
    assert other.hyper_every == 1


@pytest.mark.parametrize("bad", [0, -2, 1.5, 2.0, True, "3", None])
def test_hyper_every_must_be_a_whole_number_of_at_least_one(bad):
    with pytest.raises(ValueError, match="hyper_every"):
        _fresh(online=True, hyper_every=bad)


def test_hd_and_the_low_level_api_refuse_it():
    model, tuner = _fresh(online=True, hyper_every=2)
    with pytest.raises(ValueError, match="HD takes no HVP"):
        adatune.HD(tuner.optimizer, online=True, hyper_every=2)
    adatune.HD(tuner.optimizer, online=True, hyper_every=1)
    grads = [torch.zeros_like(p) for p in model.parameters()]
    with pytest.raises(ValueError, match="hyper_every=2"):
        tuner.compute_hg(model, grads)
    with pytest.raises(ValueError, match="hyper_every=2"):
        tuner.hyper_step(grads)


def test_a_scaler_changes_nothing_with_every_k_in_float32():
    """fp32 with a GradScaler (a power of two, exactly undone): the same as without."""
    data = _data(7)
    plain = _run(*_fresh(online=True, hyper_lr=0.05, hyper_every=3), data, range(7))
    model, tuner = _fresh(online=True, hyper_lr=0.05, hyper_every=3)
    scaler = torch.amp.GradScaler("cpu")
    xs, ys, xv, yv = data
    for t in range(7):
        tuner.step(lambda t=t: ce(model(xs[t]), ys[t]), val_loss=lambda: ce(model(xv), yv),
                   scaler=scaler)
        scaler.update()
        assert tuner.lr == pytest.approx(plain[t][0], rel=1e-6)
    assert tuner.overflow_count == 0


# ------------------------------------------------------------------ command line
@pytest.mark.parametrize("args, fragment", [
    (("--hyper-every", "0"), "invalid hyper_every: 0"),
    (("--hyper-every", "x"), "--hyper-every"),
    (("--hyper-every", "2", "--tuner", "hd"), "hyper_every applies to marthe and rtho"),
])
def test_bad_hyper_every_is_one_line_and_exit_code_2(workdir, capsys, args, fragment):
    one_error_line(*cli(capsys, "train", "--epochs", "1", *args)[::2], fragment)
    assert not (workdir / "adatune.db").exists()  # no run written


def test_train_records_hyper_every_with_the_run(workdir, capsys):
    code, _, err = cli(capsys, "train", "--epochs", "1", "--hyper-every", "3")
    assert code == 0, err
    with open_store("adatune.db") as db:
        [run] = db.list_runs()
    assert run.config["hyper_every"] == 3
    code, out, _ = cli(capsys, "runs", "show", str(run.id), "--json")
    assert "--hyper-every 3" in json.loads(out)["command"]


def test_bench_labels_each_hyper_every_and_refuses_bad_ones(capsys):
    config = BenchConfig(methods=("marthe",), hyper_every=(1, 4))
    assert config.labels() == ["plain", "marthe", "marthe[every 4]",
                               "marthe[finite-difference]",
                               "marthe[finite-difference, every 4]"]
    assert [split_label(x) for x in config.labels()[1:]] == [
        ("marthe", "exact", 1, 1.0), ("marthe", "exact", 4, 1.0),
        ("marthe", "finite-difference", 1, 1.0), ("marthe", "finite-difference", 4, 1.0)]
    one_error_line(*cli(capsys, "bench", "--hyper-every", "1,x")[::2], "hyper_every")
    one_error_line(*cli(capsys, "bench", "--hyper-every", "0")[::2], "hyper_every")


def test_bench_times_a_cycle_of_k_steps(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = cli(capsys, "bench", "--network", "mlp", "--batch-size", "8", "--steps",
                         "1", "--warmup", "0", "--methods", "plain,rtho", "--hvp", "exact",
                         "--hyper-every", "1,3", "--no-memory", "--json")
    assert code == 0, err
    data = json.loads(out)
    assert [r["method"] for r in data["results"]] == ["plain", "rtho", "rtho[every 3]"]
