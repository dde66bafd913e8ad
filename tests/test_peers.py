"""The peers (Prodigy, D-Adaptation, Schedule-Free, DoG, Mechanic): built from their packages,
run by the loop, recorded with their effective LR, Schedule-Free judged on its averaged weights,
Mechanic's state checkpointed as plain containers."""

from __future__ import annotations

import inspect
import json
import math
import os
import shlex
import signal
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import adatune
from adatune.errors import ConfigError
from adatune.methods.peers import (
    PEER_NAMES,
    PEERS,
    build_peer,
    optimizer_view,
    peer_class,
    peer_name,
)
from adatune.running.build import build_parts
from adatune.running.config import DEFAULT_MOMENTUM, TrainConfig
from adatune.running.runtypes import Events
from adatune.store import open_store
from tests._cli import cli
from tests._wait import epoch_reached, spawn_cli

METRICS = ("epoch", "lr", "lr_mean", "mu", "hyper_lr", "train_loss", "train_acc", "val_loss",
           "val_acc", "test_loss", "test_acc")
NOT_FOR_PEERS = ("hyper_update", "hyper_lr", "mu", "alpha", "first_order", "hvp", "step_size",
                 "lr_decay", "t_0", "t_mult", "nesterov")


def _epochs(store, run_id: int) -> list[dict]:
    with open_store(store) as db:
        detail = db.get_run(run_id)
    return [{k: getattr(e, k) for k in METRICS} for e in detail.epochs]


def _only_run(store="adatune.db"):
    with open_store(store) as db:
        [run] = db.list_runs()
        return db.get_run(run.id)


# ------------------------------------------------------------- the packages
WRAPPERS = tuple(n for n in PEER_NAMES if PEERS[n].wraps)  # Mechanic over SGD and AdamW
NOT_WRAPPERS = tuple(n for n in PEER_NAMES if not PEERS[n].wraps)


@pytest.mark.parametrize("name", PEER_NAMES)
def test_each_peer_spec_holds_its_packages_own_defaults(name):
    spec = PEERS[name]
    params = inspect.signature(peer_class(name).__init__).parameters
    if spec.wraps:  # the base optimizer's constructor: the LR is the one its README uses
        import importlib.metadata

        readme = importlib.metadata.metadata(spec.package).get_payload()
        assert f"mechanize(torch.optim.SGD)(model.parameters(), lr={spec.lr})" in readme
        if "momentum" in spec.settings:  # adatune's SGD's
            assert spec.momentum == DEFAULT_MOMENTUM
    else:
        assert params["lr"].default == spec.lr
        if "momentum" in spec.settings:
            assert params["momentum"].default == spec.momentum
    assert set(spec.settings) <= set(params)  # every setting is a constructor argument
    assert TrainConfig(method=name).lr == spec.lr
    model, _, _ = _linear()
    group = build_peer(name, model.parameters()).param_groups[0]  # a run's defaults
    assert group["lr"] == spec.lr and group["weight_decay"] == 0
    if "momentum" in spec.settings:
        assert group["momentum"] == spec.momentum == TrainConfig(method=name).momentum


@pytest.mark.parametrize("name", WRAPPERS)
def test_a_mechanic_peer_is_the_package_over_its_base_optimizer(name):
    import mechanic_pytorch

    spec = PEERS[name]
    base = getattr(torch.optim, spec.wraps)
    model, _, _ = _linear()
    opt = build_peer(name, model.parameters(), lr=0.5)
    assert isinstance(opt, mechanic_pytorch.Mechanic) and isinstance(opt, base)
    assert peer_class(name) is peer_class(name) is type(opt)  # one class per process
    # one the user mechanized is recognised too (mechanize makes a new class per call)...
    mine = mechanic_pytorch.mechanize(base)(model.parameters(), lr=0.5)
    assert type(mine) is not type(opt) and peer_name(mine) == name
    assert optimizer_view(mine).adaptive
    # ...but only over the peer's own base class (AdamW is a subclass of Adam in torch)
    other = mechanic_pytorch.mechanize(torch.optim.Adam)(model.parameters())
    assert peer_name(other) is None and optimizer_view(other).adaptive
    assert peer_name(base(model.parameters())) is None


def _linear(seed: int = 0):
    torch.manual_seed(seed)
    model = nn.Linear(5, 3).double()
    x = torch.randn(32, 5, dtype=torch.float64)
    y = torch.randint(0, 3, (32,))
    return model, x, y


# How each package moves the weights in one step, by its source, in the setting given: the
# step size is measured from that movement (never read from the same variable the view reads).
def _moved(name, opt, before, z_before):
    out = []
    for p, (w0, g) in zip(opt.param_groups[0]["params"], before):
        state = opt.state[p]
        if name in ("dog", "dadapt-sgd"):  # x' = x - eta g (DAdaptSGD: momentum 0)
            out.append(-(p.detach() - w0) / g)
        elif name == "dadapt-adam":  # beta1 = 0: x' = x - dlr g / (sqrt(v') + eps)
            denom = state["exp_avg_sq"].sqrt() + opt.param_groups[0]["eps"]
            out.append(-(p.detach() - w0) * denom / g)
        elif name == "prodigy":  # beta1 = 0: x' = x - dlr d' g / (sqrt(v') + d' eps)
            d = opt.param_groups[0]["d"]
            denom = state["exp_avg_sq"].sqrt() + d * opt.param_groups[0]["eps"]
            out.append(-(p.detach() - w0) * denom / (d * g))
        else:  # Schedule-Free: z' = z - lr g (AdamW: g normalised in place in p.grad)
            z0 = z_before.get(p, w0)
            grad = p.grad if name == "schedulefree-adamw" else g
            out.append(-(state["z"] - z0) / grad)
    return torch.cat([m.flatten() for m in out])


_SETTINGS = {"dadapt-adam": {"betas": (0.0, 0.999)}, "prodigy": {"betas": (0.0, 0.999)},
             "schedulefree-sgd": {"warmup_steps": 5}, "schedulefree-adamw": {"warmup_steps": 5}}


@pytest.mark.parametrize("name", NOT_WRAPPERS)
def test_the_view_reports_the_step_size_each_package_applied(name):
    model, x, y = _linear()
    cls = peer_class(name)
    opt = cls(model.parameters(), **_SETTINGS.get(name, {}))
    view = optimizer_view(opt)
    assert view.adaptive
    view.train()
    reported = []
    for _ in range(8):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        before = [(p.detach().clone(), p.grad.detach().clone()) for p in model.parameters()]
        z_before = {p: opt.state[p]["z"].clone() for p in model.parameters()
                    if "z" in opt.state[p]}
        view.before_step()
        opt.step()
        lr = view.after_step()
        measured = _moved(name, opt, before, z_before)
        measured = measured[torch.isfinite(measured)]
        assert measured.numel() > 0
        assert measured.tolist() == pytest.approx([lr] * measured.numel(), rel=1e-6)
        assert view.lr() == lr
        reported.append(lr)
    if name.startswith("schedulefree"):  # the documented linear warm-up to its lr
        base = PEERS[name].lr
        assert reported == pytest.approx([base * min(1, (k + 1) / 5) for k in range(8)])
    else:
        assert len(set(reported)) > 2  # the step size adapts


def _flat(tensors) -> torch.Tensor:
    return torch.cat([t.detach().flatten() for t in tensors])


@pytest.mark.parametrize("name", WRAPPERS)
def test_the_view_reports_the_step_size_mechanic_applied(name):
    """Mechanic moves x to ref + s' (delta + u): the offset travelled so far, rescaled, plus
    the base update u = -lr * direction scaled by s'. Both coefficients are solved for from
    the weights it moved (fresh batches keep the two directions apart); the one on the
    direction is the step size, and the view reports it."""
    torch.manual_seed(0)
    model = nn.Linear(5, 3).double()
    # SGD without momentum: the direction is the gradient; AdamW with beta1 = 0 and no
    # weight decay: g / (sqrt(v / (1 - beta2^t)) + eps)
    settings = {"momentum": 0.0} if PEERS[name].wraps == "SGD" else {"betas": (0.0, 0.999)}
    opt = peer_class(name)(model.parameters(), lr=0.1, weight_decay=0.0, **settings)
    view = optimizer_view(opt)
    assert view.adaptive and not view.switches and view.lr() == 0.0  # no step yet
    ref = previous = _flat(model.parameters())
    reported = []
    for _ in range(12):
        x, y = torch.randn(32, 5, dtype=torch.float64), torch.randint(0, 3, (32,))
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        grad = _flat(p.grad for p in model.parameters())
        view.before_step()
        opt.step()
        lr = view.after_step()
        if "betas" in settings:
            group = opt.param_groups[0]
            states = [opt.state[p] for p in model.parameters()]
            v = _flat(st["exp_avg_sq"] for st in states)
            correction = 1 - group["betas"][1] ** float(states[0]["step"])
            direction = grad / ((v / correction).sqrt() + group["eps"])
        else:
            direction = grad
        moved = _flat(model.parameters()) - ref
        basis = torch.stack([previous - ref, -direction], 1)
        kept, step = torch.linalg.lstsq(basis, moved[:, None]).solution.flatten().tolist()
        assert (basis @ torch.tensor([kept, step], dtype=basis.dtype)).tolist() \
            == pytest.approx(moved.tolist(), rel=1e-9, abs=1e-15)
        assert step == pytest.approx(lr, rel=1e-6)
        assert view.lr() == lr
        reported.append(lr)
        previous = _flat(model.parameters())
    assert reported[0] > 0 and reported[-1] > 10 * reported[0]  # s grows from s_init


def test_mechanic_state_round_trips_through_a_plain_checkpoint_bit_for_bit(tmp_path):
    """torch's state_dict() keeps Mechanic's per-parameter entries keyed by the parameters;
    the view keys them by index, so weights_only=True reads the file, and the restored
    optimizer continues exactly as the one that never stopped."""
    def build(seed=0):
        torch.manual_seed(seed)
        model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3))
        return model, build_peer("mechanic-sgd", model.parameters(), lr=0.3)

    def steps(model, opt, view, batches):
        for x, y in batches:
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            view.before_step()
            opt.step()
            view.after_step()

    torch.manual_seed(1)
    batches = [(torch.randn(16, 5), torch.randint(0, 3, (16,))) for _ in range(10)]
    model, opt = build()
    view = optimizer_view(opt)
    steps(model, opt, view, batches[:4])
    torch.save({"optim": view.optimizer_state(), "model": model.state_dict(),
                "view": view.state()}, tmp_path / "last.pt")
    saved = torch.load(tmp_path / "last.pt", weights_only=True)
    own = saved["optim"]["state"]["_mechanic"]
    assert {k for k in own if not isinstance(k, str)} == {0, 1, 2, 3}  # by parameter index
    assert "_mechanic" in opt.state and all(  # the live state is left as it was
        isinstance(k, str) or any(k is p for p in model.parameters())
        for k in opt.state["_mechanic"])
    steps(model, opt, view, batches[4:])

    model2, opt2 = build(seed=5)  # other initial weights: all of them must come back
    view2 = optimizer_view(opt2)
    model2.load_state_dict(saved["model"])
    view2.load_optimizer_state(saved["optim"])
    view2.load(saved["view"])
    assert view2.lr() == saved["view"]["last_lr"] > 0
    steps(model2, opt2, view2, batches[4:])
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), model2.parameters()))
    assert torch.equal(opt.state["_mechanic"]["s"], opt2.state["_mechanic"]["s"])
    assert view2.lr() == view.lr()
    bad = {**saved["optim"], "state": {**saved["optim"]["state"], "_mechanic": {**own, 9: {}}}}
    with pytest.raises(ValueError, match="parameters this optimizer does not have"):
        optimizer_view(build()[1]).load_optimizer_state(bad)


def test_a_torch_optimizer_keeps_its_lr_and_has_no_mode_switch():
    model, _, _ = _linear()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    view = optimizer_view(opt)
    assert not view.adaptive and not view.switches
    view.before_step()
    opt.param_groups[0]["lr"] = 0.05  # a schedule moves it after the step
    assert (view.after_step(), view.lr()) == (0.1, 0.05)
    weights = [p.detach().clone() for p in model.parameters()]
    view.eval()
    view.train()
    assert all(torch.equal(a, b) for a, b in zip(weights, model.parameters()))


def test_build_peer_passes_only_its_settings_and_prints_nothing(capfd):
    model, _, _ = _linear()
    opt = build_peer("prodigy", model.parameters(), lr=0.5, weight_decay=0.01)
    assert (opt.param_groups[0]["lr"], opt.param_groups[0]["weight_decay"]) == (0.5, 0.01)
    assert capfd.readouterr().out == ""  # Prodigy announces decoupled decay on stdout
    with pytest.raises(ConfigError, match="does not take momentum"):
        build_peer("prodigy", model.parameters(), momentum=0.9)


# ------------------------------------------------------------ the command
@pytest.mark.parametrize("name", PEER_NAMES)
def test_each_peer_runs_two_epochs_through_the_cli_with_its_effective_lr(workdir, capsys, name):
    code, out, err = cli(capsys, "baseline", "--method", name, "--epochs", "2",
                         "--log-every", "1")
    assert code == 0, (out, err)
    [compare] = [line for line in out.splitlines() if "# compare: MARTHE" in line]
    if PEERS[name].wraps:  # Mechanic: MARTHE over the optimizer it wraps
        assert f"--optimizer {PEERS[name].wraps.lower()} " in compare
    else:
        assert "--optimizer" not in compare
    detail = _only_run()
    run = detail.run
    assert (run.kind, run.method, run.optimizer, run.status, run.epochs) == (
        "baseline", name, name, "completed", 2)
    # only what applies: no tuner or schedule fields, no optimizer settings it does not take
    assert not set(NOT_FOR_PEERS) & set(run.config)
    assert ("momentum" in run.config) == ("momentum" in PEERS[name].settings)
    assert ("warmup_steps" in run.config) == name.startswith("schedulefree")
    assert run.config["lr"] == PEERS[name].lr
    assert all(e.mu is None and e.hyper_lr is None for e in detail.epochs)
    lrs = [s.lr for s in detail.steps]
    assert [s.step for s in detail.steps] == list(range(len(lrs)))  # every step (log_every 1)
    for e in detail.epochs:  # per epoch: the mean and the last step's effective LR
        epoch_lrs = [s.lr for s in detail.steps if s.epoch == e.epoch]
        assert e.lr_mean == pytest.approx(math.fsum(epoch_lrs) / len(epoch_lrs), rel=1e-12)
        assert e.lr == epoch_lrs[-1]
    if name.startswith("schedulefree"):
        assert set(lrs) == {PEERS[name].lr}  # no warm-up by default: its lr throughout
    else:
        assert lrs[0] < lrs[-1] and len(set(lrs)) > 2  # grows from a tiny first estimate
    assert run.best_val_acc is not None and run.test_acc is not None
    ckpt = workdir / "adatune-runs" / f"run-{run.id}"
    for path in ("best.pt", "last.pt"):  # loadable as plain tensors and containers
        torch.load(ckpt / path, weights_only=True)
    code, out, _ = cli(capsys, "runs", "show", str(run.id), "--json")
    command = json.loads(out)["command"]
    assert command.startswith(f"adatune baseline --method {name} ")
    assert "--optimizer" not in command and "--hyper-lr" not in command


def test_the_report_names_a_peer_once_beside_a_tuner(workdir, capsys):
    from adatune.report.info import _get_groups

    assert cli(capsys, "baseline", "--method", "dog", "--epochs", "1")[0] == 0
    assert cli(capsys, "train", "--tuner", "hd", "--epochs", "1")[0] == 0
    with open_store("adatune.db") as db:
        details = [db.get_run(r.id) for r in db.list_runs()]
    assert [g.label for g in _get_groups(details)] == ["dog", "hd"]  # dog is its optimizer
    code, _, err = cli(capsys, "report", "html", "-o", "r.html")
    assert code == 0, err


def test_schedule_free_warm_up_is_recorded_as_it_ramps(workdir, capsys):
    code, out, err = cli(capsys, "baseline", "--method", "schedulefree-adamw", "--epochs", "2",
                         "--log-every", "1", "--warmup-steps", "40", "--lr", "0.004")
    assert code == 0, err
    detail = _only_run()
    assert detail.run.config["warmup_steps"] == 40
    lrs = [s.lr for s in detail.steps]
    assert lrs == pytest.approx([0.004 * min(1.0, (k + 1) / 40) for k in range(len(lrs))])
    assert detail.epochs[0].lr_mean < detail.epochs[1].lr_mean


@pytest.mark.slow
def test_the_reproduce_command_of_a_peer_run_reproduces_it(workdir, capsys):
    assert cli(capsys, "baseline", "--method", "dadapt-sgd", "--momentum", "0.9",
               "--epochs", "1")[0] == 0
    code, out, _ = cli(capsys, "runs", "show", "1", "--json")
    command = shlex.split(json.loads(out)["command"])
    assert "--momentum" in command
    assert cli(capsys, *command[1:])[0] == 0
    assert _epochs("adatune.db", 1) == _epochs("adatune.db", 2)


def test_schedule_free_is_judged_on_its_averaged_weights(workdir, capsys):
    """The reported validation scores are a fresh evaluation of best.pt; those weights are
    Schedule-Free's x (the optimizer was in eval mode), not the y it takes gradients at."""
    code, _, err = cli(capsys, "baseline", "--method", "schedulefree-sgd", "--epochs", "2",
                       "--lr", "0.5", "--seed", "2")
    assert code == 0, err
    detail = _only_run()
    run = detail.run
    ckpt = workdir / "adatune-runs" / f"run-{run.id}"
    best = torch.load(ckpt / "best.pt", weights_only=True)
    last = torch.load(ckpt / "last.pt", weights_only=True)
    parts = build_parts(TrainConfig.from_dict(run.config))  # a fresh model and the same split
    x = torch.stack([parts.val[i][0] for i in range(len(parts.val))])
    y = torch.stack([torch.as_tensor(parts.val[i][1]) for i in range(len(parts.val))])

    def scores(state):
        parts.model.load_state_dict(state)
        parts.model.eval()
        with torch.no_grad():
            out = parts.model(x)
        return (float(nn.functional.cross_entropy(out, y)),
                int((out.argmax(1) == y).sum()) / len(y))

    val_loss, val_acc = scores(best["model"])
    record = next(e for e in detail.epochs if e.epoch == run.best_epoch)
    assert val_acc == record.val_acc == run.best_val_acc
    assert val_loss == pytest.approx(record.val_loss, rel=1e-6)
    # last.pt was written in eval mode; switching to train mode moves the weights to y
    group = last["optim"]["param_groups"][0]
    assert group["train_mode"] is False
    opt = build_peer("schedulefree-sgd", parts.model.parameters(), lr=0.5)
    parts.model.load_state_dict(last["model"])
    opt.load_state_dict(last["optim"])
    opt.train()
    y_state = {k: v.clone() for k, v in parts.model.state_dict().items()}
    assert not all(torch.equal(y_state[k], last["model"][k]) for k in y_state)
    y_loss, _ = scores(y_state)
    final = detail.epochs[-1]
    assert scores(last["model"])[0] == pytest.approx(final.val_loss, rel=1e-6)
    assert y_loss != pytest.approx(final.val_loss, rel=1e-6)


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize("args, says", [
    (["baseline", "--method", "adagrad"], "unknown method 'adagrad'"),
    (["baseline", "--method", "marthe"], "adatune train --tuner marthe"),
    (["baseline", "--method", "prodigy", "--lr-scheduler", "cosine"], "not both"),
    (["baseline", "--method", "prodigy", "--optimizer", "adam"], "its own optimizer"),
    (["baseline", "--method", "prodigy", "--momentum", "0.9"], "momentum does not apply"),
    (["baseline", "--method", "dog", "--nesterov"], "nesterov does not apply"),
    (["baseline", "--method", "schedulefree-sgd", "--momentum", "0"], "invalid momentum"),
    (["baseline", "--method", "mechanic-adam", "--momentum", "0.9"], "momentum does not apply"),
    (["baseline", "--method", "mechanic-sgd", "--momentum", "1"], "invalid momentum"),
    (["baseline", "--method", "mechanic-sgd", "--lr", "0"], "invalid lr"),
    (["baseline", "--method", "mechanic-adam", "--warmup-steps", "5"], "warmup_steps applies"),
    (["baseline", "--lr-scheduler", "cosine", "--warmup-steps", "10"], "for the peer"),
    (["baseline", "--method", "schedulefree-sgd", "--warmup-steps", "-1"], "warmup_steps"),
    (["train", "--optimizer", "prodigy"], "prodigy is a method"),
    (["sweep", "--method", "sgd-free"], "unknown method"),
])
def test_bad_peer_input_exits_2_with_one_line_and_writes_no_run(workdir, capsys, args, says):
    code, out, err = cli(capsys, *args)
    assert code == 2, (out, err)
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("adatune: error:"), err
    assert says in lines[0]
    if Path("adatune.db").exists():
        with open_store("adatune.db") as db:
            assert db.list_runs() == []


@pytest.mark.parametrize("command", [["baseline", "--method"], ["sweep", "--trials", "1",
                                                                 "--method"]])
@pytest.mark.parametrize("name", ["prodigy", "dog", "mechanic-sgd"])
def test_a_peer_without_its_package_is_one_line_and_no_run(workdir, capsys, monkeypatch,
                                                           command, name):
    spec = PEERS[name]
    monkeypatch.setitem(sys.modules, spec.module, None)  # as if it were not installed
    code, out, err = cli(capsys, *command, name, "--epochs", "1")
    assert code == 2, (out, err)
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("adatune: error:"), err
    assert f"pip install {spec.package}" in lines[0]
    with open_store("adatune.db") as db:
        assert db.list_runs() == []


# ------------------------------------------------------------------- sweeps
@pytest.mark.slow
def test_a_peer_sweeps_its_default_space(workdir, capsys):
    code, out, err = cli(capsys, "sweep", "--method", "schedulefree-sgd", "--trials", "2",
                         "--seeds", "1", "--epochs", "1", "--sampler", "random")
    assert code == 0, err
    assert "lr: log-uniform [0.1, 10]" in err and "warmup_steps" in err
    with open_store("adatune.db") as db:
        runs = db.list_runs()
    assert len(runs) == 2 and {r.method for r in runs} == {"schedulefree-sgd"}
    assert all(r.kind == "sweep" and r.optimizer == "schedulefree-sgd" for r in runs)
    sampled = [r.config["extra"]["sweep"]["params"] for r in runs]
    assert all({"lr", "warmup_steps", "momentum"} == set(p) for p in sampled)
    assert [r.config["lr"] for r in runs] == [p["lr"] for p in sampled]


# ------------------------------------------------------------- adatune.fit
class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(32, 16), nn.Tanh(), nn.Linear(16, 3))

    def forward(self, x):
        return self.body(x)


def _fit_data(seed: int = 0):
    from tests.userpkg.data import sequences

    torch.manual_seed(seed)
    return _Net(), sequences(seed)


def test_fit_takes_a_peer_built_by_the_user(workdir, store_url):
    """Its name, its effective LR, no tuner by default; a strict-JSON config (PostgreSQL)."""
    import prodigyopt

    model, (train, val, test) = _fit_data()
    opt = prodigyopt.Prodigy(model.parameters(), lr=1.0)
    result = adatune.fit(model, train, val, test, optimizer=opt, epochs=2, store=store_url,
                         log_every=1)
    assert result.status == "completed"
    with open_store(store_url) as db:
        detail = db.get_run(result.run_id)
    run = detail.run
    assert (run.kind, run.method, run.optimizer) == ("baseline", "prodigy", "prodigy")
    assert run.config["tuner"] is None and run.config["lr"] == 1.0
    assert run.config["optimizer_settings"]["growth_rate"] == "inf"
    lrs = [s.lr for s in detail.steps]
    assert lrs[0] == pytest.approx(1e-6) and lrs[-1] > 10 * lrs[0]  # d * lr, from d0 up
    assert detail.epochs[-1].lr == lrs[-1] <= opt.param_groups[0]["d"]  # d never shrinks


def test_fit_switches_schedule_free_and_leaves_the_averaged_weights_in_the_model(workdir):
    import schedulefree

    model, (train, val, test) = _fit_data(1)
    opt = schedulefree.AdamWScheduleFree(model.parameters(), lr=0.01, warmup_steps=10)
    result = adatune.fit(model, train, val, test, optimizer=opt, epochs=2, store="runs.db")
    assert result.status == "completed"
    with open_store("runs.db") as db:
        run = db.get_run(result.run_id).run
    assert (run.method, run.optimizer) == ("schedulefree-adamw", "schedulefree-adamw")
    assert opt.param_groups[0]["train_mode"] is False  # left in eval mode: x in the model
    last = torch.load(Path(result.checkpoint_dir) / "last.pt", weights_only=True)
    assert all(torch.equal(v, last["model"][k]) for k, v in model.state_dict().items())
    x, y = val
    with torch.no_grad():
        out = model.eval()(x)
    assert float(nn.functional.cross_entropy(out, y)) == pytest.approx(
        result.epochs[-1].val_loss, rel=1e-6)


@pytest.mark.parametrize("base, name", [(torch.optim.AdamW, "mechanic-adam"),
                                        (torch.optim.Adam, "mechanizedadam")])
def test_fit_takes_an_optimizer_the_user_mechanized(workdir, base, name):
    """Recognised whatever class mechanize made: no tuner, its effective LR recorded (a peer's
    name only over the peer's own base class)."""
    import mechanic_pytorch

    model, (train, val, test) = _fit_data(2)
    opt = mechanic_pytorch.mechanize(base)(model.parameters(), lr=1.0, weight_decay=0.0)
    result = adatune.fit(model, train, val, test, optimizer=opt, epochs=2, store="runs.db",
                         log_every=1)
    assert result.status == "completed"
    with open_store("runs.db") as db:
        detail = db.get_run(result.run_id)
    assert (detail.run.kind, detail.run.method, detail.run.optimizer) == ("baseline", name, name)
    assert detail.run.config["tuner"] is None
    lrs = [s.lr for s in detail.steps]
    assert min(lrs) > 0 and len(set(lrs)) > 2  # s moves every step
    assert lrs[-1] == float(torch.sum(opt.state["_mechanic"]["s"]))  # lr 1.0 times sum(s)


@pytest.mark.parametrize("tuner", [adatune.MARTHE, adatune.RTHO, adatune.HD])
@pytest.mark.parametrize("base", [torch.optim.SGD, torch.optim.AdamW])
def test_a_tuner_refuses_an_optimizer_the_user_mechanized(tuner, base):
    """Mechanic subclasses the optimizer it wraps, but rescales its updates: the tuner's
    tangent, written for torch's update, would be wrong, so the tuner refuses it."""
    import mechanic_pytorch

    opt = mechanic_pytorch.mechanize(base)(nn.Linear(3, 2).parameters(), lr=1.0)
    with pytest.raises(ValueError, match="sets its own step size"):
        tuner(opt, total_steps=10)


def test_fit_records_mechanic_scaling_the_lr_a_schedule_sets(workdir):
    """A schedule moves the base LR; the step's effective LR is the LR it began with, times s."""
    import mechanic_pytorch

    model, (train, val, test) = _fit_data(3)
    opt = mechanic_pytorch.mechanize(torch.optim.SGD)(model.parameters(), lr=1.0, momentum=0.9)
    schedule = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)  # per epoch
    result = adatune.fit(model, train, val, test, optimizer=opt, schedule=schedule, epochs=3,
                         store="runs.db", log_every=1)
    assert result.status == "completed"
    with open_store("runs.db") as db:
        run = db.get_run(result.run_id).run
    assert (run.method, run.optimizer) == ("steplr", "mechanic-sgd")
    assert opt.param_groups[0]["lr"] == 0.125  # stepped after the last epoch too
    scale = float(torch.sum(opt.state["_mechanic"]["s"]))
    assert result.epochs[-1].lr == 0.25 * scale  # the last epoch's steps began at 0.25


class _StopAt(Events):
    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def epoch_done(self, record) -> None:
        if record.epoch == self.epoch:
            raise KeyboardInterrupt


@pytest.mark.parametrize("name", ["schedulefree-sgd", "dog", "mechanic-sgd"])
def test_fit_resumes_a_peer_to_the_uninterrupted_result(workdir, name):
    def fit(**kw):
        model, (train, val, test) = _fit_data(4)
        opt = build_peer(name, model.parameters(), lr=0.5 if name == "schedulefree-sgd" else 1.0)
        return adatune.fit(model, train, val, test, optimizer=opt, epochs=3, batch_size=16,
                           seed=4, **kw)

    stopped = fit(store="a.db", events=_StopAt(1))
    assert stopped.status == "interrupted"
    resumed = fit(store="a.db", resume=stopped.run_id)
    assert resumed.status == "completed"
    straight = fit(store="b.db", checkpoint_dir="b-runs")  # a second store: its own folder
    assert _epochs("a.db", stopped.run_id) == _epochs("b.db", straight.run_id)


def test_fit_with_a_peer_and_a_tuner_is_refused(workdir):
    import dadaptation

    model, (train, val, test) = _fit_data()
    opt = dadaptation.DAdaptAdam(model.parameters())
    with pytest.raises(ConfigError, match="the tuners support"):
        adatune.fit(model, train, val, optimizer=opt, tuner="marthe", store="runs.db")


# ----------------------------------------------------- kill and resume (CLI)
# One peer of each package. Schedule-Free warms up across the kill; DoG and D-Adaptation
# keep their distance estimates in the optimizer's state; Mechanic its scales, its wealth and
# each parameter's reference point (keyed by the parameters: saved by index).
@pytest.mark.slow
@pytest.mark.parametrize("extra", [
    ["--method", "prodigy"],
    ["--method", "dadapt-sgd"],
    ["--method", "schedulefree-sgd", "--lr", "0.5", "--warmup-steps", "120"],
    ["--method", "dog"],
    ["--method", "mechanic-adam"],
], ids=["prodigyopt", "dadaptation", "schedulefree", "dog-optimizer", "mechanic-pytorch"])
def test_a_peer_resumes_bit_identically_after_sigkill(workdir, extra):
    run = ["baseline", *extra, "--epochs", "3", "--batch-size", "16", "--seed", "3"]
    store = workdir / "killed.db"
    proc = spawn_cli(store, *run, hold_after=1)
    run_id = epoch_reached(store, 1, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    kept = _epochs(store, run_id)
    assert len(kept) == 1
    resumed = spawn_cli(store, "baseline", "--resume", str(run_id))
    assert resumed.wait() == 0, resumed.stderr.read().decode()
    straight = workdir / "straight.db"  # a second store: its own checkpoint folder
    assert spawn_cli(straight, *run, "--checkpoint-dir", str(workdir / "straight-runs")).wait() == 0
    assert _epochs(store, run_id)[: len(kept)] == kept
    assert _epochs(store, run_id) == _epochs(straight, 1)
    with open_store(store) as db:
        steps = [s.lr for s in db.get_run(run_id).steps]
    with open_store(straight) as db:
        assert steps == [s.lr for s in db.get_run(1).steps]


# ------------------------------------------------ SIGTERM in the middle of an epoch
class _SigtermAt(Events):
    """SIGTERM to this process right after step ``batch`` of ``epoch`` (-1: its last step)."""

    def __init__(self, epoch: int, batch: int) -> None:
        self.epoch, self.batch, self.done = epoch, batch, False

    def run_started(self, run_id, config, *, steps_per_epoch, start_epoch) -> None:
        if self.batch < 0:
            self.batch = steps_per_epoch

    def step_done(self, epoch, batch, loss, lr, mu) -> None:
        if not self.done and (epoch, batch) == (self.epoch, self.batch):
            self.done = True
            os.kill(os.getpid(), signal.SIGTERM)


def _trajectory(store, run_id: int):
    detail = store.get_run(run_id)
    return ([{k: getattr(e, k) for k in METRICS} for e in detail.epochs],
            [(s.step, s.epoch, s.lr, s.train_loss) for s in detail.steps])


# Mid-epoch checkpoints are written in the mode the run is in (Schedule-Free: train mode),
# so neither a resume nor a SIGUSR1 that goes on moves the weights through an extra switch.
# After an epoch's last step, D-Adaptation's state holds the next d: the view's own state says
# which d that step used.
@pytest.mark.parametrize("method, batch", [
    ("schedulefree-sgd", 7), pytest.param("prodigy", 7, marks=pytest.mark.slow),
    ("dadapt-sgd", -1), ("mechanic-sgd", 7)])
def test_a_peer_stopped_by_sigterm_mid_epoch_resumes_to_the_same_result(workdir, method,
                                                                         batch):
    from adatune.running import signals
    from adatune.running.engine import resume, train

    extra = {"warmup_steps": 30, "lr": 0.5} if method == "schedulefree-sgd" else {}
    cfg = TrainConfig(method=method, epochs=3, seed=3, log_every=1, checkpoint_dir="ckpt",
                      device="cpu", **extra)
    with open_store(workdir / "adatune.db") as store:
        with signals.handle_preemption():
            result = train(cfg, store, events=_SigtermAt(1, batch))
        assert result.status == "interrupted" and "SIGTERM in epoch 1" in result.reason
        state = torch.load(Path(result.checkpoint_dir) / "last.pt", weights_only=True)
        assert state["partial"]["batches"] > 0
        if method == "schedulefree-sgd":
            assert state["optim"]["param_groups"][0]["train_mode"] is True
        assert resume(store, result.run_id).status == "completed"
        straight = train(cfg, store)
        assert _trajectory(store, result.run_id) == _trajectory(store, straight.run_id)
