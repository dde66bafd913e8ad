"""Behaviour of the tuners beyond the oracle: published rules, state, guards, API."""

from __future__ import annotations

import io
import math

import pytest
import torch
from torch import nn

import adatune
from adatune.methods import hyper_update as rules
from adatune.methods.hyper_update import ADDITIVE, HYPER_UPDATES, SCALE_FREE

ce = nn.functional.cross_entropy


def _data(seed=0, steps=8, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    xs = torch.randn(steps, 16, 6, generator=g, dtype=dtype)
    ys = torch.randint(0, 3, (steps, 16), generator=g)
    xv = torch.randn(32, 6, generator=g, dtype=dtype)
    yv = torch.randint(0, 3, (32,), generator=g)
    return xs, ys, xv, yv


def _model(seed=0, dtype=torch.float64):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3)).to(dtype)


# ------------------------------------------------------------------ HD rules
def _flat(ts):
    return torch.cat([t.reshape(-1) for t in ts])


@pytest.mark.parametrize("kind", ["sgd", "momentum", "adam"])
def test_hd_follows_the_published_update_rule(kind):
    """Baydin et al. 2018: SGD-HD, SGDN-HD and Adam-HD, with torch's update semantics."""
    xs, ys, _, _ = _data()
    beta = 1e-2 if kind != "adam" else 1e-5
    # adatune
    model = _model()
    opt = {"sgd": lambda p: torch.optim.SGD(p, lr=0.05),
           "momentum": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9),
           "adam": lambda p: torch.optim.Adam(p, lr=0.01)}[kind](model.parameters())
    tuner = adatune.HD(opt, hyper_lr=beta, hyper_update="additive", online=True)
    lrs = []
    for t in range(len(xs)):
        tuner.step(ce(model(xs[t]), ys[t]))
        lrs.append(tuner.lr)
    # the published rule, by hand on a plain optimizer
    ref = _model()
    eta, prev_dir = (0.05 if kind != "adam" else 0.01), None
    buf, m, v = None, None, None
    ref_lrs = []
    b1, b2, eps = 0.9, 0.999, 1e-8
    for t in range(len(xs)):
        grads = torch.autograd.grad(ce(ref(xs[t]), ys[t]), list(ref.parameters()))
        g = _flat(grads)
        if prev_dir is not None:
            eta = eta + beta * float(g @ prev_dir)  # eta_t = eta_{t-1} - beta * g_t . dw_t/deta
        ref_lrs.append(eta)
        if kind == "sgd":
            direction = g
        elif kind == "momentum":
            buf = g.clone() if buf is None else 0.9 * buf + g
            direction = buf
        else:
            k = t + 1
            m = (1 - b1) * g if m is None else b1 * m + (1 - b1) * g
            v = (1 - b2) * g * g if v is None else b2 * v + (1 - b2) * g * g
            direction = (m / (1 - b1**k)) / (torch.sqrt(v / (1 - b2**k)) + eps)
        prev_dir = direction
        with torch.no_grad():
            offset = 0
            for p in ref.parameters():
                n = p.numel()
                p -= eta * direction[offset:offset + n].view_as(p)
                offset += n
    assert lrs == pytest.approx(ref_lrs, rel=1e-10)
    assert lrs[-1] != pytest.approx(lrs[0], rel=1e-6)  # the rule really moved the LR


# -------------------------------------------------------- auto-mu and alpha
def test_auto_mu_and_alpha_follow_the_design_rules_on_a_scalar_problem():
    """L = a w^2 / 2, E = b (w - c)^2 / 2, plain SGD: every quantity by hand."""
    a, b, c = 1.5, 2.0, -0.5  # <grad E, g> > 0 all along, so mu becomes non-zero
    w0, eta, beta, alpha = 1.0, 0.1, 0.05, 0.5
    w = nn.Parameter(torch.tensor([w0], dtype=torch.float64))
    opt = torch.optim.SGD([w], lr=eta)
    tuner = adatune.MARTHE(opt, hyper_lr=beta, mu="auto", alpha=alpha, hyper_update="additive",
                           online=True)
    assert tuner.mu == 0.0

    ww, z, mu, cc = w0, 0.0, 0.0, 0.0
    seen_mu = []
    for _ in range(6):
        # expected, from docs/math.md (what a tuner computes)
        g = a * ww
        z = mu * (z - eta * a * z) - g
        ww = ww - eta * g
        ge = b * (ww - c)
        h = ge * z
        eta = max(eta - beta * h, 0.0)
        beta = max(beta + alpha * h * eta, 0.0)
        q = eta / (ge * g)
        zq = min(max(q, 0.0), 1.0) if math.isfinite(q) else 0.0
        cc = cc * (1.0 if mu > 0 else 0.0) + mu
        mu = zq ** (1.0 / (cc + 1.0))
        # adatune
        tuner.step(0.5 * a * (w * w).sum(), val_loss=lambda: 0.5 * b * ((w - c) ** 2).sum())
        assert tuner.last_hypergradient == pytest.approx(h, rel=1e-12)
        assert tuner.lr == pytest.approx(eta, rel=1e-12)
        assert tuner.hyper_lr == pytest.approx(beta, rel=1e-12)
        assert tuner.mu == pytest.approx(mu, rel=1e-12)
        assert float(w.detach()) == pytest.approx(ww, rel=1e-12)
        seen_mu.append(tuner.mu)
    assert any(0 < m < 1 for m in seen_mu)  # the rule was exercised, not stuck at 0


def test_negative_mu_means_auto_as_in_the_original():
    w = nn.Parameter(torch.ones(1))
    tuner = adatune.MARTHE(torch.optim.SGD([w], lr=0.1), hyper_lr=1e-3, mu=-1, online=True)
    assert tuner.auto_mu and tuner.mu == 0.0


def test_alpha_zero_keeps_the_hyper_lr_fixed():
    xs, ys, xv, yv = _data()
    model = _model()
    tuner = adatune.MARTHE(torch.optim.SGD(model.parameters(), lr=0.05), hyper_lr=1e-2, mu=0.9,
                           online=True)
    for t in range(4):
        tuner.step(ce(model(xs[t]), ys[t]), val_loss=lambda: ce(model(xv), yv))
    assert tuner.hyper_lr == 1e-2


# ------------------------------------------------------------- state round trip
@pytest.mark.parametrize("rule", HYPER_UPDATES)
@pytest.mark.parametrize("opt_name", ["momentum", "adamw"])
@pytest.mark.parametrize("mu", [0.9, "auto"])
def test_state_dict_round_trip_continues_identically(opt_name, mu, rule):
    xs, ys, xv, yv = _data(steps=10)

    def fresh():
        model = _model()
        if opt_name == "momentum":
            opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3)
        else:
            opt = torch.optim.AdamW(model.parameters(), lr=0.01, weight_decay=1e-2)
        if rule == ADDITIVE:
            hyper, alpha = (1e-2 if opt_name == "momentum" else 1e-4), 1e-3
        else:
            hyper, alpha = 0.05, 0.1
        return model, adatune.MARTHE(opt, hyper_lr=hyper, mu=mu, alpha=alpha, hyper_update=rule,
                                     online=True)

    def run(model, tuner, steps):
        out = []
        for t in steps:
            tuner.step(ce(model(xs[t]), ys[t]), val_loss=lambda: ce(model(xv), yv))
            out.append((tuner.lr, tuner.last_hypergradient, tuner.mu, tuner.hyper_lr))
        return out

    model, tuner = fresh()
    straight = run(model, tuner, range(10))

    model, tuner = fresh()
    first = run(model, tuner, range(4))
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "tuner": tuner.state_dict()}, buf)
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)
    model2, tuner2 = fresh()
    model2.load_state_dict(saved["model"])
    tuner2.load_state_dict(saved["tuner"])
    resumed = run(model2, tuner2, range(4, 10))
    assert first + resumed == straight


# --------------------------------------------------------------- bad arguments
@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"hyper_lr": -1.0}, "hyper_lr"),
        ({"hyper_lr": float("nan")}, "hyper_lr"),
        ({"hyper_lr": 1e-3, "mu": 1.5}, "mu"),
        ({"hyper_lr": 1e-3, "mu": "fast"}, "mu"),
        ({"hyper_lr": 1e-3, "mu": float("nan")}, "mu"),
        ({"hyper_lr": 1e-3, "alpha": -0.1}, "alpha"),
        ({"hyper_lr": 1e-3, "alpha": float("inf")}, "alpha"),
        ({"hyper_lr": 1e-3, "grad_clip": 0.0}, "grad_clip"),
        ({"hyper_lr": 1e-3, "hvp": "magic"}, "hvp"),
        ({"hyper_update": "multiplicative"}, "hyper_update"),
        ({"hyper_update": None}, "hyper_update"),
        ({"hyper_lr": 2.0}, "hyper_lr"),  # the scale-free rule's hyper-LR is at most 1
        ({"hyper_lr": 1e-3, "alpha": 1.5}, "alpha"),
        ({"hyper_update": "additive"}, "hyper_lr"),  # the additive rule has no default
        ({"hyper_update": "additive", "hyper_lr": -1e-3}, "hyper_lr"),
    ],
)
def test_bad_constructor_arguments_raise_value_error_naming_them(kwargs, name):
    w = nn.Parameter(torch.ones(2))
    with pytest.raises(ValueError, match=f"Invalid {name}"):
        adatune.MARTHE(torch.optim.SGD([w], lr=0.1), **kwargs, online=True)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda w: torch.optim.RMSprop([w], lr=0.1), "Invalid optimizer"),
        (lambda w: torch.optim.Adam([w], lr=0.1, amsgrad=True), "amsgrad"),
        (lambda w: torch.optim.SGD([w], lr=0.1, maximize=True), "maximize"),
        (lambda w: torch.optim.SGD([w], lr=0.0), "Invalid lr"),
    ],
)
def test_unsupported_optimizers_are_rejected(make, match):
    w = nn.Parameter(torch.ones(2))
    with pytest.raises(ValueError, match=match):
        adatune.MARTHE(make(w), hyper_lr=1e-3, online=True)


def test_rtho_fixes_mu_and_marthe_needs_a_validation_closure():
    w = nn.Parameter(torch.ones(2))
    with pytest.raises(ValueError, match="mu"):
        adatune.RTHO(torch.optim.SGD([w], lr=0.1), hyper_lr=1e-3, mu=0.5, online=True)
    tuner = adatune.MARTHE(torch.optim.SGD([w], lr=0.1), hyper_lr=1e-3, online=True)
    with pytest.raises(ValueError, match="val_loss"):
        tuner.step((w * w).sum())


# ------------------------------------------------- no double backward when unused
@pytest.mark.parametrize("kwargs", [{"mu": 0.0}, {"mu": 0.9, "first_order": True}])
def test_mu_zero_and_first_order_build_no_double_backward_graph(monkeypatch, kwargs):
    calls = []
    real_grad = torch.autograd.grad

    def spy(*args, **kw):
        calls.append(kw.get("create_graph", False))
        return real_grad(*args, **kw)

    monkeypatch.setattr(torch.autograd, "grad", spy)
    xs, ys, xv, yv = _data()
    model = _model()
    tuner = adatune.MARTHE(torch.optim.SGD(model.parameters(), lr=0.05), hyper_lr=1e-3, **kwargs,
                           online=True)
    for t in range(3):
        tuner.step(ce(model(xs[t]), ys[t]), val_loss=lambda: ce(model(xv), yv))
    assert calls and not any(calls)
    # ... while exact MARTHE does use one (after the first step, where Z = 0).
    calls.clear()
    tuner = adatune.MARTHE(torch.optim.SGD(model.parameters(), lr=0.05), hyper_lr=1e-3, mu=0.9,
                           online=True)
    for t in range(3):
        tuner.step(ce(model(xs[t]), ys[t]), val_loss=lambda: ce(model(xv), yv))
    assert calls.count(True) == 2


# ---------------------------------------------------------------------- guards
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
@pytest.mark.parametrize("rule", HYPER_UPDATES)
def test_non_finite_hypergradient_leaves_the_lr_and_is_counted(rule, bad):
    xs, ys, xv, yv = _data()
    model = _model()
    tuner = adatune.MARTHE(torch.optim.SGD(model.parameters(), lr=0.05), hyper_lr=1e-2, mu=0.9,
                           hyper_update=rule, online=True)
    tuner.step(ce(model(xs[0]), ys[0]), val_loss=lambda: ce(model(xv), yv))
    # the hypergradient's moving averages (the training loss's go on: it is finite)
    averages = [k for k in rules.initial_state() if k.startswith("hyper_")]
    before, rule_state = tuner.lr, {k: tuner.state[k] for k in averages}
    tuner.step(ce(model(xs[1]), ys[1]), val_loss=lambda: ce(model(xv), yv) * bad)
    assert not math.isfinite(tuner.last_hypergradient)
    assert tuner.lr == before and tuner.nonfinite_count == 1
    assert all(g["lr"] == before for g in tuner.param_groups)
    assert {k: tuner.state[k] for k in averages} == rule_state
    tuner.step(ce(model(xs[2]), ys[2]), val_loss=lambda: ce(model(xv), yv))
    assert math.isfinite(tuner.last_hypergradient) and tuner.nonfinite_count == 1


def test_additive_lr_never_goes_below_zero():
    xs, ys, xv, yv = _data()
    model = _model()
    tuner = adatune.MARTHE(torch.optim.SGD(model.parameters(), lr=0.05), hyper_lr=1e6, mu=0.5,
                           hyper_update="additive", online=True)
    # Validation loss = minus the training loss on the same batch: h ~ +|g|^2 > 0, and
    # the huge hyper-LR pushes the LR through zero.
    for t in range(4):
        tuner.step(ce(model(xs[t]), ys[t]), val_loss=lambda t=t: -ce(model(xs[t]), ys[t]))
        assert tuner.lr >= 0.0
    assert tuner.lr == 0.0


def test_scale_free_rule_skips_a_hypergradient_too_large_to_square():
    """h = 1e200 is finite, but (eta h)^2 is not: the moving averages would be ruined."""
    xs, ys, xv, yv = _data()
    model = _model()
    tuner = adatune.MARTHE(torch.optim.SGD(model.parameters(), lr=0.05), mu=0.9, online=True)
    tuner.step(ce(model(xs[0]), ys[0]), val_loss=lambda: ce(model(xv), yv))
    averages = [k for k in rules.initial_state() if k.startswith("hyper_")]
    before, rule_state = tuner.lr, {k: tuner.state[k] for k in averages}
    tuner.step(ce(model(xs[1]), ys[1]), val_loss=lambda: ce(model(xv), yv) * 1e200)
    assert math.isfinite(tuner.last_hypergradient)
    assert tuner.lr == before and tuner.nonfinite_count == 1
    assert {k: tuner.state[k] for k in averages} == rule_state


def _scale_free_by_hand(state, h, beta, alpha, loss):
    """The scale-free rule as documented (adatune/hyper_update.py), written out again.

    ``loss`` is this step's training loss: it gates the back-off of the next steps.
    """
    x = state["lr"] * h
    state["k"] += 1
    k = state["k"]
    state["m"] = rules.B1 * state["m"] + (1 - rules.B1) * x
    state["v"] = rules.B2 * state["v"] + (1 - rules.B2) * x * x
    m_hat, v_hat = state["m"] / (1 - rules.B1**k), state["v"] / (1 - rules.B2**k)
    n = max(-1.0, min(1.0, m_hat / math.sqrt(v_hat)))
    r = max(-1.0, min(1.0, x / math.sqrt(v_hat)))
    down = rules.DOWN if state["alarm"] else 1 + (rules.DOWN - 1) * n**2
    step = beta * n * (down if n > 0 else 1.0)
    state["lr"] *= math.exp(-step)
    if n > 0:
        state["backoffs"].append(state["alarm"])
    beta = min(beta * math.exp(alpha * r * state["r"]), rules.MAX_HYPER_LR)
    state["r"] = r
    # the training loss: rising (fast average above the slow one), or not yet below
    # STALL times its first value, sets the alarm
    state["j"] += 1
    j = state["j"]
    state["first"] = loss if j == 1 else state["first"]
    state["fast"] = rules.LOSS_FAST * state["fast"] + (1 - rules.LOSS_FAST) * loss
    state["slow"] = rules.LOSS_SLOW * state["slow"] + (1 - rules.LOSS_SLOW) * loss
    f_hat = state["fast"] / (1 - rules.LOSS_FAST**j)
    s_hat = state["slow"] / (1 - rules.LOSS_SLOW**j)
    state["alarm"] = f_hat > s_hat or f_hat > rules.STALL * state["first"]
    return beta


def test_scale_free_rule_follows_its_formula_on_a_scalar_problem():
    """L = a w^2 / 2, E = b (w - c)^2 / 2, plain SGD, mu = 0.5: h and the rule by hand."""
    a, b, c, mu = 1.5, 2.0, 0.3, 0.5
    w0, eta, beta, alpha = 1.0, 0.05, 0.2, 0.3
    w = nn.Parameter(torch.tensor([w0], dtype=torch.float64))
    tuner = adatune.MARTHE(torch.optim.SGD([w], lr=eta), hyper_lr=beta, mu=mu, alpha=alpha,
                           online=True)
    assert tuner.hyper_update == SCALE_FREE  # the default rule
    ww, z = w0, 0.0
    ref = {"lr": eta, "m": 0.0, "v": 0.0, "k": 0, "r": 0.0, "j": 0, "fast": 0.0,
           "slow": 0.0, "first": None, "alarm": True, "backoffs": []}
    moves = []
    for _ in range(40):
        lr = ref["lr"]
        loss = 0.5 * a * ww**2
        g = a * ww
        z = mu * (z - lr * a * z) - g
        ww = ww - lr * g
        h = b * (ww - c) * z
        beta = _scale_free_by_hand(ref, h, beta, alpha, loss)
        tuner.step(0.5 * a * (w * w).sum(), val_loss=lambda: 0.5 * b * ((w - c) ** 2).sum())
        assert tuner.last_hypergradient == pytest.approx(h, rel=1e-12)
        assert tuner.lr == pytest.approx(ref["lr"], rel=1e-12)
        assert tuner.hyper_lr == pytest.approx(beta, rel=1e-12)
        moves.append(math.log(ref["lr"] / lr))
    # both branches of the rule ran: the LR went up (w far from c) and down (w past c)
    assert max(moves) > 0 > min(moves)
    # and the back-off ran both ways: fast while the loss had not yet fallen, by the
    # evidence once it had
    assert True in ref["backoffs"] and False in ref["backoffs"], ref["backoffs"]


def test_the_back_off_is_fast_while_the_loss_rises_or_stalls_and_by_the_evidence_otherwise():
    """The gate, on the rule alone: the training loss sets the alarm, the alarm the back-off."""
    state = rules.initial_state()
    assert state["loss_alarm"] == 1.0  # before any loss: the fast back-off
    for loss in (1.0, 0.95, 0.9, 0.85):  # falling, but not yet below STALL x the first
        rules.note_loss(state, loss)
        assert state["loss_alarm"] == 1.0
    for loss in (0.7, 0.6, 0.5, *[0.45] * 40):  # below 0.8 x the first, then settled
        rules.note_loss(state, loss)
    assert state["loss_alarm"] == 0.0
    rules.note_loss(state, float("nan"))  # changes nothing
    assert state["loss_alarm"] == 0.0 and state["loss_steps"] == 47
    rules.note_loss(state, 0.9)  # a jump: rising
    assert state["loss_alarm"] == 1.0
    for _ in range(3):
        rules.note_loss(state, 0.3)
    assert state["loss_alarm"] == 0.0
    dead = rules.initial_state()  # a network that stays at its first loss (a dead one)
    for loss in (2.3, 2.31, 2.29, 2.3, 2.3, 2.3, 2.29, 2.3):
        rules.note_loss(dead, loss)
    assert dead["loss_alarm"] == 1.0

    def n_next(state, x):  # the rule's n after x, by hand
        k = state["hyper_steps"] + 1
        m = (rules.B1 * state["hyper_m"] + (1 - rules.B1) * x) / (1 - rules.B1**k)
        v = (rules.B2 * state["hyper_v"] + (1 - rules.B2) * x * x) / (1 - rules.B2**k)
        return max(-1.0, min(1.0, m / math.sqrt(v)))

    beta = 0.1
    after_one = {**rules.initial_state(), "hyper_m": 0.1, "hyper_v": 0.01, "hyper_steps": 1}
    n = n_next(after_one, -0.5)  # a "lower" of weak evidence: 0 < n < 1
    assert 0 < n < 0.5
    for alarm, factor in ((1.0, rules.DOWN), (0.0, 1 + (rules.DOWN - 1) * n * n)):
        lr = rules.scale_free_step(1.0, -0.5, dict(after_one, loss_alarm=alarm), hyper_lr=beta)
        assert lr == pytest.approx(math.exp(-beta * factor * n), rel=1e-12)
    for alarm in (1.0, 0.0):  # n = 1 is the largest evidence: DOWN times faster either way
        lr = rules.scale_free_step(1.0, 1.0, {**rules.initial_state(), "loss_alarm": alarm},
                                   hyper_lr=beta)
        assert lr == pytest.approx(math.exp(-beta * rules.DOWN), rel=1e-12)
        # raising (n = -1) does not depend on the alarm
        lr = rules.scale_free_step(1.0, -1.0, {**rules.initial_state(), "loss_alarm": alarm},
                                   hyper_lr=beta)
        assert lr == pytest.approx(math.exp(beta), rel=1e-12)


@pytest.mark.parametrize("tuner_cls", [adatune.MARTHE, adatune.RTHO])
def test_scale_free_rule_ignores_the_scale_of_the_hypergradient(tuner_cls):
    """Multiplying the validation loss by 1000 multiplies h by 1000 and changes nothing."""
    xs, ys, xv, yv = _data()

    def run(rule, scale):
        model = _model()
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        tuner = tuner_cls(opt, hyper_lr=1e-2 if rule == ADDITIVE else 0.05, hyper_update=rule,
                          online=True)
        lrs = []
        for t in range(len(xs)):
            tuner.step(ce(model(xs[t]), ys[t]), val_loss=lambda: scale * ce(model(xv), yv))
            lrs.append(tuner.lr)
        return lrs

    base = run(SCALE_FREE, 1.0)
    assert run(SCALE_FREE, 1000.0) == pytest.approx(base, rel=1e-9)
    assert max(abs(math.log(x / 0.05)) for x in base) > 1e-3  # the LR did move
    assert run(ADDITIVE, 1.0) != pytest.approx(run(ADDITIVE, 1000.0), rel=1e-3)


def test_scale_free_steps_are_bounded_and_the_lr_stays_positive():
    """A hypergradient of one sign, as large as it gets: the LR moves by a bounded factor."""
    xs, ys, _, _ = _data(steps=30)
    beta = rules.MAX_HYPER_LR
    model = _model()
    tuner = adatune.MARTHE(torch.optim.SGD(model.parameters(), lr=0.05), hyper_lr=beta, mu=0.5,
                           online=True)
    for t in range(len(xs)):
        before = tuner.lr
        # validation loss = minus the training loss of this batch: h > 0, "lower the LR"
        tuner.step(ce(model(xs[t]), ys[t]), val_loss=lambda t=t: -1e6 * ce(model(xs[t]), ys[t]))
        assert 0.0 < tuner.lr <= before
        assert tuner.lr >= before * math.exp(-rules.DOWN * beta) * (1 - 1e-12)
    assert tuner.lr < 0.05 * 1e-6  # it kept going down, and never reached 0


def test_rtho_upward_drift_is_bounded_per_step():
    """RTHO on a problem where a larger LR always looks better: h < 0 at every step.

    The validation loss is the training loss on the same (fixed) batch of a convex
    problem, from an LR far too small: RTHO's tangent keeps accumulating, and under
    the additive rule the LR runs away; the scale-free rule raises it by exp(beta) per
    step at most.
    """
    g = torch.Generator().manual_seed(3)
    x = torch.randn(64, 6, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (64,), generator=g)
    beta, steps = rules.SCALE_FREE_HYPER_LR["rtho"], 60

    def run(rule, hyper_lr):
        torch.manual_seed(0)
        model = nn.Linear(6, 3).double()
        tuner = adatune.RTHO(torch.optim.SGD(model.parameters(), lr=1e-4), hyper_lr=hyper_lr,
                             hyper_update=rule, online=True)
        lrs, hs = [1e-4], []
        for _ in range(steps):
            tuner.step(ce(model(x), y), val_loss=lambda: ce(model(x), y))
            lrs.append(tuner.lr)
            hs.append(tuner.last_hypergradient)
        return lrs, hs

    lrs, hs = run(SCALE_FREE, beta)
    assert all(h < 0 for h in hs)  # the drift case: every hypergradient says "raise"
    for before, after in zip(lrs, lrs[1:]):
        assert before < after <= before * math.exp(beta) * (1 + 1e-12)
    assert lrs[-1] <= 1e-4 * math.exp(steps * beta) * (1 + 1e-9)
    additive, _ = run(ADDITIVE, 1.0)
    assert additive[-1] > 1e-4 * math.exp(steps * beta)  # what the bound prevents


@pytest.mark.parametrize("tuner_cls", [adatune.MARTHE, adatune.RTHO, adatune.HD])
@pytest.mark.parametrize("make", [
    lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9),
    lambda p: torch.optim.Adam(p, lr=1e-2),
    lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=1e-2),
], ids=["sgd", "adam", "adamw"])
def test_default_constructors_need_only_the_optimizer(tuner_cls, make):
    xs, ys, xv, yv = _data()
    model = _model()
    tuner = tuner_cls(make(model.parameters()), online=True)
    name = tuner_cls.__name__.lower()
    assert tuner.hyper_update == SCALE_FREE
    assert tuner.hyper_lr == rules.SCALE_FREE_HYPER_LR[name]
    lr0 = tuner.lr
    for t in range(len(xs)):
        if tuner_cls is adatune.HD:
            tuner.step(ce(model(xs[t]), ys[t]))
        else:
            tuner.step(ce(model(xs[t]), ys[t]), val_loss=lambda: ce(model(xv), yv))
    assert math.isfinite(tuner.lr) and tuner.lr > 0 and tuner.lr != lr0


def test_loading_a_state_adopts_its_rule_and_old_states_read_as_additive():
    xs, ys, xv, yv = _data()
    model = _model()
    additive = adatune.MARTHE(torch.optim.SGD(model.parameters(), lr=0.05), hyper_lr=1e-3,
                              hyper_update="additive", online=True)
    additive.step(ce(model(xs[0]), ys[0]), val_loss=lambda: ce(model(xv), yv))
    saved = additive.state_dict()
    fresh = adatune.MARTHE(torch.optim.SGD(model.parameters(), lr=0.05), online=True)
    fresh.load_state_dict(saved)
    assert fresh.hyper_update == ADDITIVE and fresh.hyper_lr == 1e-3
    old = {**saved, "tuner": {k: v for k, v in saved["tuner"].items() if k != "hyper_update"}}
    fresh = adatune.MARTHE(torch.optim.SGD(model.parameters(), lr=0.05), online=True)
    fresh.load_state_dict(old)  # saved before the rule was a choice: the additive one
    assert fresh.hyper_update == ADDITIVE


def test_parameters_without_gradient_are_handled():
    """An unused layer and a frozen one change nothing; the trajectory matches without them."""
    xs, ys, xv, yv = _data()

    def run(extra: bool):
        torch.manual_seed(0)
        model = _model()
        unused = nn.Linear(4, 4).double()
        frozen = nn.Parameter(torch.ones(3, dtype=torch.float64), requires_grad=False)
        params = list(model.parameters()) + (list(unused.parameters()) + [frozen] if extra else [])
        opt = torch.optim.SGD(params, lr=0.05, momentum=0.9, weight_decay=1e-3)
        tuner = adatune.MARTHE(opt, hyper_lr=1e-2, mu=0.9, online=True)
        out = []
        for t in range(5):
            tuner.step(ce(model(xs[t]), ys[t]), val_loss=lambda: ce(model(xv), yv))
            out.append(tuner.last_hypergradient)
        return out

    assert run(True) == pytest.approx(run(False), rel=1e-12)


def test_param_groups_keep_their_initial_ratio():
    xs, ys, xv, yv = _data()
    model = _model()
    opt = torch.optim.SGD([{"params": model[0].parameters(), "lr": 0.1},
                           {"params": model[2].parameters(), "lr": 0.05}], lr=0.1)
    tuner = adatune.MARTHE(opt, hyper_lr=1e-2, mu=0.9, online=True)
    for t in range(5):
        tuner.step(ce(model(xs[t]), ys[t]), val_loss=lambda: ce(model(xv), yv))
    assert tuner.lr != 0.1
    assert opt.param_groups[0]["lr"] == tuner.lr
    assert opt.param_groups[1]["lr"] == pytest.approx(0.5 * tuner.lr, rel=1e-15)


def test_float32_models_work():
    xs, ys, xv, yv = _data(dtype=torch.float32)
    model = _model(dtype=torch.float32)
    tuner = adatune.MARTHE(torch.optim.Adam(model.parameters(), lr=1e-2), hyper_lr=1e-5, mu=0.99,
                           online=True)
    for t in range(5):
        tuner.step(ce(model(xs[t]), ys[t]), val_loss=lambda: ce(model(xv), yv))
    assert isinstance(tuner.lr, float) and math.isfinite(tuner.last_hypergradient)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_cuda_parameters_need_no_device_argument():
    xs, ys, xv, yv = (t.cuda() for t in _data())
    model = _model().cuda()
    tuner = adatune.MARTHE(torch.optim.SGD(model.parameters(), lr=0.05), hyper_lr=1e-2, mu=0.9,
                           online=True)
    for t in range(3):
        tuner.step(ce(model(xs[t]), ys[t]), val_loss=lambda: ce(model(xv), yv))
    assert math.isfinite(tuner.last_hypergradient)


# ------------------------------------------------------------ the seed's low-level API
def test_seed_readme_low_level_pattern_matches_step():
    xs, ys, xv, yv = _data()

    def high():
        model = _model()
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3)
        tuner = adatune.MARTHE(opt, hyper_lr=1e-2, mu=0.95, online=True)
        out = []
        for t in range(5):
            tuner.step(ce(model(xs[t]), ys[t]), val_loss=lambda: ce(model(xv), yv))
            out.append((tuner.lr, tuner.last_hypergradient))
        return out

    def low():
        net = _model()
        optimizer = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3)
        hyper_optim = adatune.MARTHE(optimizer, hyper_lr=1e-2, mu=0.95, online=True)
        out = []
        for t in range(5):
            loss = ce(net(xs[t]), ys[t])
            # --- the seed README's lines, unchanged ---
            first_grad = torch.autograd.grad(loss, net.parameters(), create_graph=True,
                                             retain_graph=True)
            hyper_optim.compute_hg(net, first_grad)
            for params, gradients in zip(net.parameters(), first_grad):
                params.grad = gradients
            optimizer.step()
            val_grad = torch.autograd.grad(ce(net(xv), yv), net.parameters())
            h = hyper_optim.hyper_step(val_grad)
            out.append((hyper_optim.lr, h))
        return out

    flat = [x for pair in low() for x in pair]
    assert flat == pytest.approx([x for pair in high() for x in pair], rel=1e-12)
