"""The tuners under mixed precision: bf16 autocast, and fp16 with a GradScaler (CPU)."""

from __future__ import annotations

import contextlib

import pytest
import torch
from torch import nn

import adatune

ce = nn.functional.cross_entropy


def _task(seed=0):
    """A learnable 5-class task (labels from a fixed linear map) and a small tanh MLP."""
    torch.manual_seed(seed)
    w = torch.randn(20, 5)
    x, xv = torch.randn(256, 20), torch.randn(256, 20)
    model = nn.Sequential(nn.Linear(20, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(),
                          nn.Linear(64, 5))
    return model, (x, (x @ w).argmax(1)), (xv, (xv @ w).argmax(1))


def _autocast(dtype):
    return contextlib.nullcontext() if dtype is None else torch.autocast("cpu", dtype=dtype)


def _hypergradients(dtype, hvp="exact", *, steps=8, scaler=None):
    """The hypergradients of 8 MARTHE steps with the LR held (a negligible hyper-LR)."""
    model, (x, y), (xv, yv) = _task()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    tuner = adatune.MARTHE(opt, online=True, hvp=hvp, model=model, hyper_lr=1e-12,
                           hyper_update="additive")
    out = []
    for _ in range(steps):
        with _autocast(dtype):
            tuner.step(lambda: ce(model(x), y), val_loss=lambda: ce(model(xv), yv),
                       scaler=scaler)
        if scaler is not None:
            scaler.update()
        out.append(tuner.last_hypergradient)
        states = [v for t in tuner._tangents.values() for v in t.values()]
        assert states and all(v.dtype == torch.float32 for v in states)
        assert isinstance(tuner.lr, float)
    return out


def _worst(got, ref):
    return max(abs(g - r) / abs(r) for g, r in zip(got, ref))


@pytest.mark.parametrize("hvp, tol", [
    # measured (torch 2.14, CPU): largest relative difference over the 8 steps 5.6e-4
    # (exact) and 0.028 (finite difference, whose step must be large enough to survive
    # bf16's casts: its truncation error grows with it). Tolerances 5e-3 and 0.08: a
    # margin of about 9x and 3x.
    ("exact", 5e-3), ("finite-difference", 0.08)])
def test_bf16_hypergradient_agrees_with_float32(hvp, tol):
    ref = _hypergradients(None, "exact")
    got = _hypergradients(torch.bfloat16, hvp)
    assert _worst(got, ref) < tol


def test_a_scaler_is_exact_in_float32():
    """Scaling by a power of two and back is exact: a scaler alone changes nothing."""
    ref = _hypergradients(None)
    got = _hypergradients(None, scaler=torch.amp.GradScaler("cpu"))
    assert _worst(got, ref) < 1e-6


def test_fp16_with_a_scaler_agrees_with_float32():
    # measured: 3.9e-5 (fp16 keeps 11 bits, and the loss scale keeps small gradients);
    # tolerance 1e-3
    ref = _hypergradients(None)
    got = _hypergradients(torch.float16, scaler=torch.amp.GradScaler("cpu"))
    assert _worst(got, ref) < 1e-3


def _train(dtype, steps=60):
    model, (x, y), (xv, yv) = _task(seed=1)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    tuner = adatune.MARTHE(opt, total_steps=steps)
    for i in range(steps):
        xb, yb = x[i % 4 * 64:(i % 4 + 1) * 64], y[i % 4 * 64:(i % 4 + 1) * 64]
        with _autocast(dtype):
            tuner.step(lambda xb=xb, yb=yb: ce(model(xb), yb),
                       val_loss=lambda: ce(model(xv), yv))
    with torch.no_grad():
        return float(ce(model(xv), yv))


def test_bf16_training_is_no_worse():
    fp32, bf16 = _train(None), _train(torch.bfloat16)
    # measured: validation loss 0.31650 (bf16) against 0.31637 (float32), +0.04%;
    # tolerance: 2% of the float32 loss
    assert bf16 <= fp32 * 1.02


def test_an_overflowed_step_changes_nothing():
    """An inf in the scaled gradients: no weight, optimizer, tangent or LR change."""
    model, (x, y), (xv, yv) = _task()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    tuner = adatune.MARTHE(opt, total_steps=20)
    scaler = torch.amp.GradScaler("cpu")

    def step(blow_up=False):
        def loss():
            out = ce(model(x), y)
            return out * float("inf") if blow_up else out
        with torch.autocast("cpu", dtype=torch.float16):
            tuner.step(loss, val_loss=lambda: ce(model(xv), yv), scaler=scaler)
        scaler.update()

    for _ in range(3):
        step()
    weights = [p.detach().clone() for p in model.parameters()]
    buffers = [opt.state[p]["momentum_buffer"].clone() for p in model.parameters()]
    tangents = [v.clone() for t in tuner._tangents.values() for v in t.values()]
    lr, scale, count, h = tuner.lr, tuner.scale, tuner.state["step"], tuner.last_hypergradient
    loss_scale = scaler.get_scale()
    step(blow_up=True)
    assert tuner.overflow_count == 1 and tuner.nonfinite_count == 0
    assert (tuner.lr, tuner.scale, tuner.state["step"], tuner.last_hypergradient) == \
        (lr, scale, count, h)
    assert all(torch.equal(a, p) for a, p in zip(weights, model.parameters()))
    assert all(torch.equal(a, opt.state[p]["momentum_buffer"])
               for a, p in zip(buffers, model.parameters()))
    assert all(torch.equal(a, b) for a, b in
               zip(tangents, [v for t in tuner._tangents.values() for v in t.values()]))
    assert scaler.get_scale() == loss_scale / 2  # the scaler saw the overflow
    step()  # and training goes on
    assert tuner.state["step"] == count + 1


# ------------------------------------------------------------------ the run's precision
def test_train_and_baseline_record_their_precision(workdir, capsys):
    from adatune.store import open_store
    from tests._cli import cli

    for command in (("train", "--tuner", "marthe"), ("baseline", "--lr-scheduler", "cosine")):
        code, out, _ = cli(capsys, *command, "--precision", "bf16", "--epochs", "1")
        assert code == 0, out
    code, out, _ = cli(capsys, "train", "--tuner", "hd", "--precision", "fp16", "--epochs", "1")
    assert code == 0, out
    with open_store("adatune.db") as db:
        runs = sorted(db.list_runs(), key=lambda r: r.id)
        configs = [db.get_run(r.id).run.config for r in runs]
    assert [c["precision"] for c in configs] == ["bf16", "bf16", "fp16"]
    assert all(r.status == "completed" and r.best_val_acc > 0.5 for r in runs)


def test_old_runs_read_as_fp32():
    from adatune.running.config import TrainConfig

    stored = TrainConfig().to_dict()
    del stored["precision"]
    assert TrainConfig.from_dict(stored).precision == "fp32"


def test_a_resumed_fp16_run_keeps_its_loss_scale(workdir, capsys):
    from adatune.running import checkpoint
    from tests._cli import cli

    code, out, _ = cli(capsys, "train", "--tuner", "hd", "--precision", "fp16", "--epochs", "1",
                       "--checkpoint-dir", "ckpt")
    assert code == 0, out
    last = workdir / "ckpt" / "run-1" / "last.pt"
    state = dict(checkpoint.load(last))
    assert state["scaler"]["scale"] == 65536.0  # torch's initial scale: no overflow yet
    # a scale the run could not reach by itself in one more epoch (it halves on an overflow
    # and doubles after 2000 clean steps): seen after the resume only if it was restored
    state["scaler"] = {**state["scaler"], "scale": 1024.0}
    checkpoint.save(state, last, kind="last")
    code, out, _ = cli(capsys, "train", "--resume", "1", "--epochs", "2")
    assert code == 0, out
    resumed = checkpoint.load(last)
    assert resumed["epoch"] == 2 and 256.0 <= resumed["scaler"]["scale"] <= 1024.0
