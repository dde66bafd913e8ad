"""The hypergradient oracle of docs/math.md ("How exact is tested").

On a small float64 model the tuners' hypergradient must equal
``sum_{s<=t} mu^(t-s) dE(w_{t+1})/d eta_s`` computed by unrolling the steps
with one LR leaf per step and backpropagating through them, for every
optimizer, with per-group weight decay, a changing LR, from the first step,
and for every update rule (the rule only decides how ``h`` moves the LR).
"""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn
from torch.func import functional_call

import adatune
from adatune.methods import horizon
from adatune.methods.hyper_update import ADDITIVE, HYPER_UPDATES
from tests._unroll import OptSpec, unrolled_step

OPTIMIZERS = {
    "sgd": OptSpec("sgd"),
    "momentum": OptSpec("sgd", momentum=0.9),
    "nesterov": OptSpec("sgd", momentum=0.9, nesterov=True),
    "dampened": OptSpec("sgd", momentum=0.8, dampening=0.3),
    "adam": OptSpec("adam", betas=(0.9, 0.99), eps=1e-6),
    "adamw": OptSpec("adamw", betas=(0.85, 0.98), eps=1e-6),
}
STEPS = 5


def _hyper_lr(rule: str, additive: float) -> float:
    """A hyper-LR that visibly moves the LR within STEPS steps under ``rule``."""
    return additive if rule == ADDITIVE else 0.05


def _problem(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3)).double()
    xs = torch.randn(STEPS + 1, 8, 5, generator=g, dtype=torch.float64)
    ys = torch.randint(0, 3, (STEPS + 1, 8), generator=g)
    xv = torch.randn(16, 5, generator=g, dtype=torch.float64)
    yv = torch.randint(0, 3, (16,), generator=g)
    return model, xs, ys, xv, yv


def _groups(model, spec: OptSpec, weight_decay: bool):
    base_lr = 0.05 if spec.kind == "sgd" else 0.01
    wd0, wd1 = (0.01, 0.003) if weight_decay else (0.0, 0.0)
    return [
        {"params": list(model[0].parameters()), "lr": base_lr, "weight_decay": wd0},
        {"params": list(model[2].parameters()), "lr": base_lr / 2, "weight_decay": wd1},
    ]


def _run_tuner(tuner_cls, spec, *, mu, weight_decay, hyper_lr, grad_clip=None, **kw):
    """Train with the tuner; return (model, LRs used per step, hypergradients, weights)."""
    model, xs, ys, xv, yv = _problem()
    init = [p.detach().clone() for p in model.parameters()]
    opt = spec.build(_groups(model, spec, weight_decay))
    extra = {} if tuner_cls is adatune.HD else {"mu": mu}
    kw.setdefault("online", True)
    tuner = tuner_cls(opt, hyper_lr=hyper_lr, grad_clip=grad_clip, **extra, **kw)
    ce = nn.functional.cross_entropy
    lrs, hgs, weights = [], [], []
    for t in range(STEPS):
        loss = ce(model(xs[t]), ys[t])
        if tuner_cls is adatune.HD:
            tuner.step(loss)
            lrs.append(tuner.lr)  # HD sets the LR before the update
        else:
            lrs.append(tuner.lr)
            tuner.step(loss, val_loss=lambda: ce(model(xv), yv))
        hgs.append(tuner.last_hypergradient)
        weights.append([p.detach().clone() for p in model.parameters()])
    return init, lrs, hgs, weights


def _oracle(spec, init, lrs, *, weight_decay, grad_clip=None, outer="validation"):
    """Unroll with one LR leaf per step; return per-step dE/d eta_s and the weights."""
    model, xs, ys, xv, yv = _problem()
    names = [n for n, _ in model.named_parameters()]
    ratios = [1.0, 1.0, 0.5, 0.5]  # per parameter: two params per group
    wd0, wd1 = (0.01, 0.003) if weight_decay else (0.0, 0.0)
    wds = [wd0, wd0, wd1, wd1]
    ce = nn.functional.cross_entropy

    def loss_at(ws, x, y):
        return ce(functional_call(model, dict(zip(names, ws)), (x,)), y)

    etas = [torch.tensor(lr, dtype=torch.float64, requires_grad=True) for lr in lrs]
    ws = [w.clone().requires_grad_(True) for w in init]
    state: dict = {}
    derivs, weights = [], []
    for t in range(STEPS):
        loss = loss_at(ws, xs[t], ys[t])
        grads = torch.autograd.grad(loss, ws, create_graph=True)
        ws = unrolled_step(spec, ws, grads, state, lrs=[r * etas[t] for r in ratios],
                           wds=wds, k=t + 1, grad_clip=grad_clip)
        weights.append([w.detach().clone() for w in ws])
        if outer == "validation":
            e = loss_at(ws, xv, yv)
        else:  # HD: the next training loss, including the L2 term of coupled decay
            e = loss_at(ws, xs[t + 1], ys[t + 1])
            if spec.kind != "adamw":
                e = e + sum(0.5 * wd * (w * w).sum() for wd, w in zip(wds, ws))
        d = torch.autograd.grad(e, etas[: t + 1], retain_graph=True)
        derivs.append([float(x) for x in d])
    return derivs, weights


def _weighted(derivs_t, mu):
    t = len(derivs_t) - 1
    terms = [mu ** (t - s) * d for s, d in enumerate(derivs_t)]
    return sum(terms), sum(abs(x) for x in terms)


@pytest.mark.parametrize("weight_decay", [False, True], ids=["no-wd", "wd"])
@pytest.mark.parametrize("mu", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("opt_name", list(OPTIMIZERS))
@pytest.mark.parametrize("rule", HYPER_UPDATES)
def test_marthe_matches_unrolled_autodiff(opt_name, mu, weight_decay, rule):
    spec = OPTIMIZERS[opt_name]
    hyper_lr = _hyper_lr(rule, 1e-2 if spec.kind == "sgd" else 1e-4)
    init, lrs, hgs, weights = _run_tuner(adatune.MARTHE, spec, mu=mu,
                                         weight_decay=weight_decay, hyper_lr=hyper_lr,
                                         hyper_update=rule)
    # The LR really changed along the way (the oracle must use the LRs actually used).
    assert max(abs(lr / lrs[0] - 1) for lr in lrs) > 1e-4
    derivs, ref_weights = _oracle(spec, init, lrs, weight_decay=weight_decay)
    for t in range(STEPS):
        # The oracle's update is torch's update: same weights at every step.
        for w, r in zip(weights[t], ref_weights[t]):
            torch.testing.assert_close(w, r, rtol=1e-12, atol=1e-14)
        expected, scale = _weighted(derivs[t], mu)
        assert hgs[t] == pytest.approx(expected, rel=1e-9, abs=1e-12 * scale), (t, hgs, derivs)


@pytest.mark.parametrize("rule", HYPER_UPDATES)
@pytest.mark.parametrize("opt_name", ["sgd", "momentum", "adam", "adamw"])
def test_rtho_is_marthe_with_mu_one(opt_name, rule):
    spec = OPTIMIZERS[opt_name]
    model, xs, ys, xv, yv = _problem()
    opt = spec.build(_groups(model, spec, True))
    tuner = adatune.RTHO(opt, hyper_lr=_hyper_lr(rule, 1e-3), hyper_update=rule, online=True)
    assert tuner.mu == 1.0
    init = [p.detach().clone() for p in model.parameters()]
    lrs, hgs = [], []
    ce = nn.functional.cross_entropy
    for t in range(STEPS):
        lrs.append(tuner.lr)
        tuner.step(ce(model(xs[t]), ys[t]), val_loss=lambda: ce(model(xv), yv))
        hgs.append(tuner.last_hypergradient)
    derivs, _ = _oracle(spec, init, lrs, weight_decay=True)
    for t in range(STEPS):
        expected, scale = _weighted(derivs[t], 1.0)
        assert hgs[t] == pytest.approx(expected, rel=1e-9, abs=1e-12 * scale)


@pytest.mark.parametrize("rule", HYPER_UPDATES)
@pytest.mark.parametrize("opt_name", list(OPTIMIZERS))
@pytest.mark.parametrize("mu", [0.0, 0.7])
def test_gradient_clipping_is_differentiated_exactly(opt_name, mu, rule):
    spec = OPTIMIZERS[opt_name]
    clip_at = 0.05  # small enough that every step clips
    init, lrs, hgs, weights = _run_tuner(adatune.MARTHE, spec, mu=mu, weight_decay=True,
                                         hyper_lr=_hyper_lr(rule, 1e-3),
                                         grad_clip=clip_at, hyper_update=rule)
    derivs, ref_weights = _oracle(spec, init, lrs, weight_decay=True, grad_clip=clip_at)
    for t in range(STEPS):
        for w, r in zip(weights[t], ref_weights[t]):
            torch.testing.assert_close(w, r, rtol=1e-12, atol=1e-14)
        expected, scale = _weighted(derivs[t], mu)
        assert hgs[t] == pytest.approx(expected, rel=1e-9, abs=1e-12 * scale)


@pytest.mark.parametrize("rule", HYPER_UPDATES)
@pytest.mark.parametrize("grad_clip", [None, 0.05], ids=["", "clipped"])
@pytest.mark.parametrize("weight_decay", [False, True], ids=["no-wd", "wd"])
@pytest.mark.parametrize("opt_name", list(OPTIMIZERS))
def test_hd_is_the_exact_one_step_derivative(opt_name, weight_decay, grad_clip, rule):
    """HD: h_t = dL_t(w_t)/d eta_{t-1}, through the optimizer's real (clipped) update."""
    spec = OPTIMIZERS[opt_name]
    hyper_lr = _hyper_lr(rule, 1e-2 if spec.kind == "sgd" else 1e-5)
    init, lrs, hgs, weights = _run_tuner(adatune.HD, spec, mu=0.0, grad_clip=grad_clip,
                                         weight_decay=weight_decay, hyper_lr=hyper_lr,
                                         hyper_update=rule)
    assert hgs[0] is None  # no previous update to differentiate at the first step
    assert max(abs(lr / lrs[0] - 1) for lr in lrs) > 1e-5
    derivs, ref_weights = _oracle(spec, init, lrs, weight_decay=weight_decay,
                                  outer="training", grad_clip=grad_clip)
    for t in range(1, STEPS):
        for w, r in zip(weights[t], ref_weights[t]):
            torch.testing.assert_close(w, r, rtol=1e-12, atol=1e-14)
        # derivs[t-1] differentiates L_t(w_t) w.r.t. eta_{t-1}: its last entry.
        expected = derivs[t - 1][-1]
        assert hgs[t] == pytest.approx(expected, rel=1e-9, abs=1e-15), t


@pytest.mark.parametrize("extra", [{}, {"first_order": True}, {"grad_clip": 0.05}],
                         ids=["exact", "first-order", "clipped"])
def test_foreach_and_loop_paths_agree(extra):
    for opt_name, mu in itertools.product(OPTIMIZERS, [0.0, 0.6]):
        spec = OPTIMIZERS[opt_name]
        runs = [_run_tuner(adatune.MARTHE, spec, mu=mu, weight_decay=True, hyper_lr=1e-3,
                           foreach=fe, **extra) for fe in (True, False)]
        (_, lr_a, hg_a, w_a), (_, lr_b, hg_b, w_b) = runs
        assert hg_a == pytest.approx(hg_b, rel=1e-12), opt_name
        assert lr_a == pytest.approx(lr_b, rel=1e-12)


@pytest.mark.parametrize("rule", HYPER_UPDATES)
@pytest.mark.parametrize("opt_name", ["momentum", "adam"])
def test_conv_batchnorm_network_through_the_fused_double_backward(opt_name, rule):
    # step(closure) records the convolutions and batch norms under
    # fast_double_backward, whose double-backward formulas are our own: the
    # hypergradient must still be the unrolled one.
    spec, mu, wd, n_steps = OPTIMIZERS[opt_name], 0.5, 1e-3, 4
    g = torch.Generator().manual_seed(7)
    torch.manual_seed(7)
    model = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1, bias=False), nn.BatchNorm2d(3),
                          nn.Tanh(), nn.Conv2d(3, 3, 3, stride=2), nn.BatchNorm2d(3),
                          nn.Tanh(), nn.Flatten(), nn.Linear(12, 3)).double()
    xs = torch.randn(n_steps, 6, 2, 6, 6, generator=g, dtype=torch.float64)
    ys = torch.randint(0, 3, (n_steps, 6), generator=g)
    xv = torch.randn(8, 2, 6, 6, generator=g, dtype=torch.float64)
    yv = torch.randint(0, 3, (8,), generator=g)
    ce = nn.functional.cross_entropy
    names = [n for n, _ in model.named_parameters()]
    init = [p.detach().clone() for p in model.parameters()]
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    lr = 0.05 if spec.kind == "sgd" else 0.01
    opt = spec.build([{"params": list(model.parameters()), "lr": lr, "weight_decay": wd}])
    tuner = adatune.MARTHE(opt, hyper_lr=_hyper_lr(rule, 1e-2 if spec.kind == "sgd" else 1e-4),
                           mu=mu, hyper_update=rule, online=True)
    lrs, hgs = [], []
    for t in range(n_steps):
        lrs.append(tuner.lr)
        tuner.step(lambda t=t: ce(model(xs[t]), ys[t]), val_loss=lambda: ce(model(xv), yv))
        hgs.append(tuner.last_hypergradient)
    assert max(abs(x / lrs[0] - 1) for x in lrs) > 1e-4

    def loss_at(ws, x, y):
        return ce(functional_call(model, ({**dict(zip(names, ws)), **buffers}), (x,)), y)

    etas = [torch.tensor(x, dtype=torch.float64, requires_grad=True) for x in lrs]
    ws, state = [w.clone().requires_grad_(True) for w in init], {}
    for t in range(n_steps):
        grads = torch.autograd.grad(loss_at(ws, xs[t], ys[t]), ws, create_graph=True)
        ws = unrolled_step(spec, ws, grads, state, lrs=[etas[t]] * len(ws),
                           wds=[wd] * len(ws), k=t + 1)
        derivs = torch.autograd.grad(loss_at(ws, xv, yv), etas[: t + 1], retain_graph=True)
        expected, scale = _weighted([float(d) for d in derivs], mu)
        assert hgs[t] == pytest.approx(expected, rel=1e-9, abs=1e-12 * scale), (t, hgs)
    for w, p in zip(ws, model.parameters()):
        torch.testing.assert_close(w.detach(), p.detach(), rtol=1e-12, atol=1e-14)


#: A horizon whose warm-up outlasts the test: the ramp gives every step another LR.
HORIZON = {"online": False, "total_steps": 4 * STEPS, "warmup": 0.5, "anneal": "cosine"}


def _shapes():
    return [horizon.factor(t, HORIZON["total_steps"], HORIZON["warmup"], HORIZON["anneal"])
            for t in range(STEPS)]


@pytest.mark.parametrize("rule", HYPER_UPDATES)
@pytest.mark.parametrize("mu", [0.0, 0.9, 1.0])
@pytest.mark.parametrize("opt_name", ["sgd", "momentum", "nesterov", "adam", "adamw"])
def test_with_a_horizon_the_hypergradient_is_the_derivative_by_the_scale(opt_name, mu, rule):
    """The LR of step s is scale * shape(s): h_t = sum_s mu^(t-s) shape(s) dE(w_{t+1})/d eta_s."""
    spec = OPTIMIZERS[opt_name]
    hyper_lr = _hyper_lr(rule, 1e-2 if spec.kind == "sgd" else 1e-4)
    init, lrs, hgs, weights = _run_tuner(adatune.MARTHE, spec, mu=mu, weight_decay=True,
                                         hyper_lr=hyper_lr, hyper_update=rule, **HORIZON)
    shapes = _shapes()
    assert len(set(shapes)) == STEPS  # the ramp: a new LR at every step
    derivs, ref_weights = _oracle(spec, init, lrs, weight_decay=True)
    for t in range(STEPS):
        for w, r in zip(weights[t], ref_weights[t]):
            torch.testing.assert_close(w, r, rtol=1e-12, atol=1e-14)
        terms = [mu ** (t - s) * shapes[s] * d for s, d in enumerate(derivs[t])]
        expected, size = sum(terms), sum(abs(x) for x in terms)
        assert hgs[t] == pytest.approx(expected, rel=1e-9, abs=1e-12 * size), (t, hgs, derivs)


@pytest.mark.parametrize("rule", HYPER_UPDATES)
@pytest.mark.parametrize("opt_name", ["sgd", "momentum", "adam", "adamw"])
def test_hd_with_a_horizon_differentiates_by_the_scale(opt_name, rule):
    """HD: h_t = shape(t-1) dL_t(w_t)/d eta_{t-1} (the last step's LR is scale * shape)."""
    spec = OPTIMIZERS[opt_name]
    hyper_lr = _hyper_lr(rule, 1e-2 if spec.kind == "sgd" else 1e-5)
    init, lrs, hgs, weights = _run_tuner(adatune.HD, spec, mu=0.0, weight_decay=True,
                                         hyper_lr=hyper_lr, hyper_update=rule, **HORIZON)
    shapes = _shapes()
    derivs, ref_weights = _oracle(spec, init, lrs, weight_decay=True, outer="training")
    assert hgs[0] is None
    for t in range(1, STEPS):
        for w, r in zip(weights[t], ref_weights[t]):
            torch.testing.assert_close(w, r, rtol=1e-12, atol=1e-14)
        expected = shapes[t - 1] * derivs[t - 1][-1]
        assert hgs[t] == pytest.approx(expected, rel=1e-9, abs=1e-15), t
