"""hvp="finite-difference" against the exact double-backward HVP."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import adatune

ce = nn.functional.cross_entropy


class _Net(nn.Module):
    """Small conv net with batch norm and dropout: the FD step must replay both."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.drop = nn.Dropout(0.3)
        self.fc = nn.Linear(4 * 6 * 6, 3)

    def forward(self, x):
        h = torch.tanh(self.bn(self.conv(x)))
        return self.fc(self.drop(h.flatten(1)))


def _run(mode, dtype, *, steps=6, mu=0.9, opt="sgd"):
    torch.manual_seed(0)
    model = _Net().to(dtype)
    g = torch.Generator().manual_seed(1)
    xs = torch.randn(steps, 16, 1, 6, 6, generator=g, dtype=dtype)
    ys = torch.randint(0, 3, (steps, 16), generator=g)
    xv = torch.randn(32, 1, 6, 6, generator=g, dtype=dtype)
    yv = torch.randint(0, 3, (32,), generator=g)
    if opt == "sgd":
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3)
        hyper = 1e-3
    else:
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-2, weight_decay=1e-3)
        hyper = 1e-6
    tuner = adatune.MARTHE(optimizer, hyper_lr=hyper, mu=mu, hvp=mode, model=model, online=True)
    torch.manual_seed(2)  # the dropout stream
    hgs, stats = [], []

    def val():
        model.eval()
        try:
            return ce(model(xv), yv)
        finally:
            model.train()

    for t in range(steps):
        tuner.step(lambda t=t: ce(model(xs[t]), ys[t]), val_loss=val)
        hgs.append(tuner.last_hypergradient)
        stats.append(model.bn.running_mean.clone())
    return hgs, stats, torch.get_rng_state()


@pytest.mark.parametrize("opt", ["sgd", "adam"])
@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-5), (torch.float32, 1e-2)])
def test_finite_difference_hypergradient_matches_exact(dtype, tol, opt):
    exact, exact_stats, exact_rng = _run("exact", dtype, opt=opt)
    fd, fd_stats, fd_rng = _run("finite-difference", dtype, opt=opt)
    assert exact[1:] and all(math.isfinite(h) for h in fd)
    for h_fd, h_ex in zip(fd, exact):
        assert h_fd == pytest.approx(h_ex, rel=tol, abs=tol * 1e-3 * max(map(abs, exact)))
    # The second evaluation replayed the dropout mask and left batch-norm statistics
    # and the random stream exactly as a single evaluation does.
    for a, b in zip(fd_stats, exact_stats):
        torch.testing.assert_close(a, b, rtol=tol, atol=tol * 1e-3)
    assert torch.equal(fd_rng, exact_rng)


def test_finite_difference_needs_a_closure_and_a_model():
    w = nn.Parameter(torch.ones(3))
    with pytest.raises(ValueError, match="model"):
        adatune.MARTHE(torch.optim.SGD([w], lr=0.1), hyper_lr=1e-3, hvp="finite-difference",
                       online=True)
    lin = nn.Linear(3, 1)
    tuner = adatune.MARTHE(torch.optim.SGD(lin.parameters(), lr=0.1), hyper_lr=1e-3,
                           hvp="finite-difference", model=lin, online=True)
    x = torch.randn(4, 3)
    tuner.step(lambda: lin(x).pow(2).mean(), val_loss=lambda: lin(x).mean())
    with pytest.raises(ValueError, match="closure"):
        tuner.step(lin(x).pow(2).mean(), val_loss=lambda: lin(x).mean())
