"""``fast_double_backward``: the same values, gradients and HVPs as torch's own formulas."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import adatune
from adatune.methods.tuners._double_backward import _BatchNormBackward, _ConvBackward


def _grad_and_hvp(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, fast: bool):
    params = [p for p in model.parameters() if p.requires_grad]
    gen = torch.Generator().manual_seed(1)
    z = [torch.randn(p.shape, generator=gen, dtype=p.dtype) for p in params]
    if fast:
        with adatune.fast_double_backward():
            out = model(x)
    else:
        out = model(x)
    loss = nn.functional.cross_entropy(out, y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    hvps = torch.autograd.grad(grads, params, grad_outputs=z)
    return out.detach(), [g.detach() for g in grads], list(hvps)


def _assert_same(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                 nodes: tuple[str, ...] = ()) -> None:
    model = model.double()
    reference, fast = copy.deepcopy(model), copy.deepcopy(model)
    out0, g0, h0 = _grad_and_hvp(reference, x, y, fast=False)
    out1, g1, h1 = _grad_and_hvp(fast, x, y, fast=True)
    torch.testing.assert_close(out1, out0, rtol=1e-13, atol=1e-13)
    scale = max(h.abs().max().item() for h in h0)
    assert scale > 0
    for a, b in zip(g1, g0):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-13)
    for a, b in zip(h1, h0):  # relative to the HVP's scale: some entries are ~0 by symmetry
        assert (a - b).abs().max().item() <= 1e-12 * scale
    for (name, a), (_, b) in zip(fast.state_dict().items(), reference.state_dict().items()):
        assert torch.equal(a, b), name  # running statistics updated exactly once, alike


def _data(shape: tuple[int, ...], classes: int = 5, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=gen, dtype=torch.float64),
            torch.randint(0, classes, (shape[0],), generator=gen))


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("affine", [False, True])
def test_conv_batchnorm_network_matches_torch(bias: bool, affine: bool) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=bias), nn.BatchNorm2d(8, affine=affine), nn.ReLU(),
        nn.Conv2d(8, 6, 3, stride=2, padding=1), nn.BatchNorm2d(6), nn.Tanh(),
        nn.Conv2d(6, 6, 3, padding=2, dilation=2, groups=3, bias=bias),
        nn.BatchNorm2d(6, track_running_stats=False), nn.Softplus(),
        nn.Flatten(), nn.Linear(6 * 4 * 4, 5),
    )
    _assert_same(model, *_data((7, 3, 8, 8)))


def test_residual_network_and_first_layer_without_input_grad() -> None:
    torch.manual_seed(1)

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(4, 4, 3, padding=1, bias=False)
            self.bn = nn.BatchNorm2d(4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.relu(x + self.bn(self.conv(torch.relu(x))))

    model = nn.Sequential(nn.BatchNorm2d(3), nn.Conv2d(3, 4, 3, padding=1), Block(), Block(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 5))
    _assert_same(model, *_data((6, 3, 6, 6)))


def test_conv1d_conv3d_and_batchnorm1d_match_torch() -> None:
    torch.manual_seed(2)
    seq = nn.Sequential(nn.Conv1d(2, 4, 3, stride=2, padding=1), nn.BatchNorm1d(4), nn.ReLU(),
                        nn.Flatten(), nn.Linear(16, 6), nn.BatchNorm1d(6), nn.Tanh(),
                        nn.Linear(6, 5))
    _assert_same(seq, *_data((5, 2, 8)))
    vol = nn.Sequential(nn.Conv3d(2, 3, 3, padding=1), nn.BatchNorm3d(3), nn.Tanh(),
                        nn.Flatten(), nn.Linear(3 * 27, 5))
    _assert_same(vol, *_data((4, 2, 3, 3, 3)))


@pytest.fixture
def one_thread():
    """Tiny tensors gain nothing from threads; on a loaded machine they only wait for them."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def test_gradgradcheck_against_finite_differences(one_thread) -> None:
    # Independent of torch's formulas: second derivatives by finite differences. The
    # shapes are the smallest that still exercise every term (a padded convolution with
    # bias, several channels and batch-norm statistics over batch and space): the check
    # costs about (inputs + outputs) x inputs evaluations.
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, 2, 4, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, 2, 3, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, generator=gen, dtype=torch.float64, requires_grad=True)
    gamma = torch.rand(3, generator=gen, dtype=torch.float64).add_(0.5).requires_grad_()
    beta = torch.randn(3, generator=gen, dtype=torch.float64, requires_grad=True)

    def f(x, w, b, gamma, beta):  # noqa: ANN001, ANN202
        with adatune.fast_double_backward():
            h = nn.functional.conv2d(x, w, b, stride=1, padding=1)
            return nn.functional.batch_norm(h, None, None, gamma, beta, training=True)

    assert torch.autograd.gradcheck(f, (x, w, b, gamma, beta))
    assert torch.autograd.gradgradcheck(f, (x, w, b, gamma, beta))


def _node_names(*roots: torch.Tensor) -> set[str]:
    seen, stack = set(), [r.grad_fn for r in roots]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        stack += [n for n, _ in node.next_functions]
    return {type(n).__name__ for n in seen}


def test_the_fast_nodes_are_used_and_inert_where_they_should_be() -> None:
    torch.manual_seed(4)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(),
                          nn.Linear(16, 5)).double()
    x, y = _data((4, 3, 4, 4))
    with adatune.fast_double_backward():
        out = model(x)
    assert {"_ConvBackward", "_BatchNormBackward"} <= _node_names(out)
    loss = nn.functional.cross_entropy(out, y)
    graph = torch.autograd.grad(loss, list(model.parameters()), create_graph=True)
    assert {_ConvBackward.__name__ + "Backward",
            _BatchNormBackward.__name__ + "Backward"} <= _node_names(*graph)
    model.eval()  # eval-mode batch norm and no-grad passes are left to torch
    with adatune.fast_double_backward():
        names = _node_names(model(x))
        with torch.no_grad():
            plain = model(x)
    assert "_ConvBackward" in names and "_BatchNormBackward" not in names
    assert "NativeBatchNormBackward0" in names
    assert plain.grad_fn is None
    model.train()
    with adatune.fast_double_backward(), torch.autocast("cpu", dtype=torch.bfloat16):
        names = _node_names(model.float()(x.float()))
    assert not {"_ConvBackward", "_BatchNormBackward"} & names


def test_tuner_closure_and_loss_tensor_give_the_same_hypergradient() -> None:
    # step(closure) builds the graph under fast_double_backward; step(loss) with
    # a loss computed outside it uses torch's formulas: same trajectory.
    torch.manual_seed(5)
    base = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6), nn.ReLU(),
                         nn.Flatten(), nn.Linear(6 * 16, 5)).double()
    batches = [_data((8, 3, 4, 4), seed=s) for s in range(4)]
    hypergradients, lrs = [], []
    for use_closure in (True, False):
        model = copy.deepcopy(base)
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3)
        tuner = adatune.MARTHE(opt, hyper_lr=1e-3, mu=0.9, online=True)
        trace = []
        for i in range(6):
            x, y = batches[i % 4]
            xv, yv = batches[(i + 1) % 4]

            def closure(x=x, y=y, model=model) -> torch.Tensor:  # noqa: ANN001
                return nn.functional.cross_entropy(model(x), y)

            def val_loss(xv=xv, yv=yv, model=model) -> torch.Tensor:  # noqa: ANN001
                return nn.functional.cross_entropy(model(xv), yv)

            tuner.step(closure if use_closure else closure(), val_loss=val_loss)
            trace.append(tuner.last_hypergradient)
        hypergradients.append(trace)
        lrs.append(tuner.lr)
    assert all(h is not None and h != 0 for h in hypergradients[0][1:])
    for a, b in zip(*hypergradients):
        assert a == pytest.approx(b, rel=1e-9, abs=1e-15)
    assert lrs[0] == pytest.approx(lrs[1], rel=1e-12)
