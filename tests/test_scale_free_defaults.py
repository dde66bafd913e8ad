"""The online tuners' rule, from a learning rate 10x off, on a generated task.

``adatune.MARTHE(optimizer, online=True)``, and RTHO and HD likewise, with
nothing else: the papers' per-step tuners under the scale-free rule and its
default hyper-LR (the tuners with a horizon: tests/test_horizon.py). The
good range is the best constant LR of a grid on the same task (by the final
validation loss); started 10x below or above it, each tuner must end closer to
it than it started. Accuracy is not asserted:
this is about the LR moving the right way by itself, for SGD with momentum
and for Adam alike.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import adatune

ce = nn.functional.cross_entropy
STEPS, BATCH = 200, 32
OPTIMIZERS = {
    "sgd": lambda params, lr: torch.optim.SGD(params, lr=lr, momentum=0.9),
    "adam": lambda params, lr: torch.optim.Adam(params, lr=lr),
}
GRIDS = {"sgd": [10 ** (k / 2) for k in range(-6, 1)],
         "adam": [10 ** (k / 2) for k in range(-8, -1)]}


def _task():
    """A random two-layer teacher's labels on Gaussian inputs (fixed seeds)."""
    g = torch.Generator().manual_seed(11)
    w1, w2 = torch.randn(10, 16, generator=g), torch.randn(16, 4, generator=g)
    x = torch.randn(1200, 10, generator=g)
    y = (torch.tanh(x @ w1) @ w2).argmax(1)
    return (x[:1000], y[:1000]), (x[1000:], y[1000:])


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 4))


def _train(kind: str, lr: float, tuner_cls=None) -> tuple[float, float]:
    """(final validation loss, final LR) after STEPS steps from ``lr``."""
    (x, y), (xv, yv) = _task()
    model = _model()
    opt = OPTIMIZERS[kind](model.parameters(), lr)
    tuner = None if tuner_cls is None else tuner_cls(opt, online=True)
    g = torch.Generator().manual_seed(1)
    for _ in range(STEPS):
        idx = torch.randint(0, len(y), (BATCH,), generator=g)
        vidx = torch.randint(0, len(yv), (BATCH,), generator=g)
        loss = ce(model(x[idx]), y[idx])
        if tuner is None:
            opt.zero_grad()
            loss.backward()
            opt.step()
        elif tuner.outer == "training":
            tuner.step(loss)
        else:
            tuner.step(loss, val_loss=lambda v=vidx: ce(model(xv[v]), yv[v]))
    with torch.no_grad():
        val = float(ce(model(xv), yv))
    return (val if math.isfinite(val) else math.inf), opt.param_groups[0]["lr"]


@pytest.fixture(scope="module", params=list(OPTIMIZERS))
def good_lr(request):
    kind = request.param
    losses = {lr: _train(kind, lr)[0] for lr in GRIDS[kind]}
    best = min(losses, key=losses.get)
    assert best not in (GRIDS[kind][0], GRIDS[kind][-1])  # the grid brackets it
    return kind, best


@pytest.mark.parametrize("tuner_cls", [adatune.MARTHE, adatune.RTHO, adatune.HD])
@pytest.mark.parametrize("factor", [0.1, 10.0], ids=["10x-low", "10x-high"])
def test_default_tuner_moves_a_10x_off_lr_toward_the_good_range(good_lr, tuner_cls, factor):
    kind, best = good_lr
    start = best * factor
    _, final = _train(kind, start, tuner_cls)
    assert math.isfinite(final) and final > 0
    # it moved the right way, and ended closer to the best constant LR than it started
    assert (final > start) if factor < 1 else (final < start), (kind, best, start, final)
    assert abs(math.log(final / best)) < abs(math.log(start / best)), (kind, best, start, final)
