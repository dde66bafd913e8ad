"""Networks: names, compatibility, shapes, sizes, double backward."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import functional_call

from adatune.data import batching as B
from adatune.data import datasets as D
from adatune.data import models as M
from adatune.errors import ConfigError

DIGITS = D.dataset_spec("digits")
MNIST = D.dataset_spec("mnist")
CIFAR10 = D.dataset_spec("cifar10")
CIFAR100 = D.dataset_spec("cifar100")


@pytest.mark.parametrize(
    ("alias", "canonical"),
    [
        ("vgg", "vgg11"),
        ("resnet", "resnet18"),
        ("lenet", "lenet"),
        ("mlp", "mlp"),
        ("wide_resnet", "wrn28_10"),
        ("densenet", "densenet_bc100"),
        ("vgg11", "vgg11"),
        ("resnet18", "resnet18"),
        ("wrn28_10", "wrn28_10"),
        ("densenet_bc100", "densenet_bc100"),
        ("ResNet-18", "resnet18"),
        ("WRN-28-10", "wrn28_10"),
        ("lenet5", "lenet"),
    ],
)
def test_canonical_network_accepts_aliases(alias, canonical):
    assert M.canonical_network(alias) == canonical


def test_unknown_network_lists_choices():
    with pytest.raises(ConfigError, match=r"unknown network 'alexnet' \(choose from: mlp, lenet"):
        M.canonical_network("alexnet")
    with pytest.raises(ConfigError, match="unknown network"):
        M.build_model("alexnet", DIGITS)


@pytest.mark.parametrize("dataset", ["digits", "mnist", "fashion_mnist"])
def test_vgg_rejects_small_inputs_naming_the_reason(dataset):
    spec = D.dataset_spec(dataset)
    c, h, w = spec.input_shape
    reason = f"vgg11 needs inputs of at least 32x32; {dataset} is {c}x{h}x{w}"
    with pytest.raises(ConfigError, match=reason):
        M.check_compatible("vgg", spec)
    with pytest.raises(ConfigError, match=reason):
        M.build_model("vgg11", spec)


@pytest.mark.parametrize(("network", "size"), [("lenet", 4), ("densenet_bc100", 4)])
def test_minimum_input_sizes(network, size):
    ok = D.DataSpec("tiny", (1, size, size), 3)
    M.check_compatible(network, ok)
    small = D.DataSpec("tiny", (1, size - 1, size), 3)
    with pytest.raises(ConfigError, match=f"{network} needs inputs of at least {size}x{size}"):
        M.check_compatible(network, small)


def test_every_builtin_dataset_works_with_every_network_but_vgg_on_small_images():
    for network in M.NETWORK_NAMES:
        for dataset in D.DATASET_NAMES:
            spec = D.dataset_spec(dataset)
            if network == "vgg11" and spec.input_shape[1] < 32:
                continue
            M.check_compatible(network, spec)


def _out(model: nn.Module, spec: D.DataSpec, batch: int = 2) -> torch.Tensor:
    return model(torch.randn(batch, *spec.input_shape))


@pytest.mark.parametrize(
    ("network", "spec"),
    [
        ("mlp", DIGITS),
        ("mlp", CIFAR100),
        ("lenet", DIGITS),
        ("lenet", MNIST),
        ("lenet", CIFAR10),
        ("resnet18", DIGITS),
        ("densenet_bc100", MNIST),
    ],
)
def test_output_shapes(network, spec):
    torch.manual_seed(0)
    model = M.build_model(network, spec)
    assert _out(model, spec).shape == (2, spec.num_classes)


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    ("network", "spec", "millions"),
    [
        ("vgg11", CIFAR10, 9.23),
        ("resnet18", CIFAR10, 11.17),
        ("resnet18", CIFAR100, 11.22),
        ("wrn28_10", CIFAR10, 36.48),
        pytest.param("densenet_bc100", CIFAR10, 0.77, marks=pytest.mark.slow),
        ("mlp", DIGITS, 0.085),
        ("lenet", CIFAR10, 0.062),
    ],
)
def test_parameter_counts_and_cifar_outputs(network, spec, millions):
    torch.manual_seed(0)
    model = M.build_model(network, spec)
    assert _count(model) / 1e6 == pytest.approx(millions, rel=0.01)
    if network != "wrn28_10":  # its output is checked below on small inputs
        assert _out(model, spec).shape == (2, spec.num_classes)


def test_wrn28_10_output_shape_on_small_inputs():
    torch.manual_seed(0)
    model = M.build_model("wrn28_10", DIGITS)
    assert _out(model, DIGITS).shape == (2, 10)


def test_mlp_default_architecture():
    model = M.build_model("mlp", DIGITS)
    linear = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linear] == [(64, 256), (256, 256), (256, 10)]


def test_no_inplace_activations_anywhere():
    for network in M.NETWORK_NAMES:
        spec = DIGITS if network != "vgg11" else CIFAR10
        model = M.build_model(network, spec)
        inplace = [n for n, m in model.named_modules() if getattr(m, "inplace", False)]
        assert not inplace, f"{network}: in-place modules {inplace}"


def _hvp_matches_forward_over_reverse(model: nn.Module, spec: D.DataSpec, batch: int = 3):
    """Hessian-vector product by double backward (create_graph=True), as the tuners take it,
    equals the forward-mode derivative of the gradient along v, and a central difference."""
    model = model.double().train()
    names = [n for n, _ in model.named_parameters()]
    params = [p for _, p in model.named_parameters()]
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, *spec.input_shape, generator=gen, dtype=torch.float64)
    y = torch.randint(0, spec.num_classes, (batch,), generator=gen)
    v = [torch.randn(p.shape, generator=gen, dtype=torch.float64) for p in params]

    g = torch.autograd.grad(nn.functional.cross_entropy(model(x), y), params, create_graph=True)
    hv = torch.autograd.grad(sum((gi * vi).sum() for gi, vi in zip(g, v)), params)
    hv = torch.cat([h.flatten() for h in hv])

    def grad_at(*ps):
        def loss(*qs):
            # fresh buffers: batch norm updates its running statistics in place
            state = {n: b.clone() for n, b in model.named_buffers()}
            state.update(zip(names, qs))
            out = functional_call(model, state, (x,))
            return nn.functional.cross_entropy(out, y)

        return torch.func.grad(loss, argnums=tuple(range(len(ps))))(*ps)

    detached = tuple(p.detach() for p in params)
    _, jv = torch.func.jvp(grad_at, detached, tuple(v))
    jv = torch.cat([j.flatten() for j in jv])
    eps = 1e-7
    plus = grad_at(*(p + eps * vi for p, vi in zip(detached, v)))
    minus = grad_at(*(p - eps * vi for p, vi in zip(detached, v)))
    fd = torch.cat([((a - b) / (2 * eps)).flatten() for a, b in zip(plus, minus)])

    assert torch.isfinite(hv).all() and hv.norm() > 0
    assert torch.allclose(hv, jv, rtol=1e-9, atol=1e-12 * float(jv.abs().max()))
    # finite differences cross a ReLU / max-pool kink now and then: compare in norm
    assert (hv - fd).norm() <= 1e-4 * fd.norm()


@pytest.mark.parametrize(
    ("make", "spec"),
    [
        (lambda: M.build_model("mlp", DIGITS), DIGITS),
        (lambda: M.build_model("lenet", DIGITS), DIGITS),
        (lambda: M.build_model("lenet", MNIST), MNIST),
        (lambda: M.VGG([8, "M", 16, "M", 16, "M", 16, "M", 16, "M"], 3, 10), CIFAR10),
        (lambda: M.ResNetCifar((1, 1, 1, 1), 1, 10), DIGITS),
        (lambda: M.WideResNet(10, 1, 1, 10, dropout=0.0), DIGITS),
        (lambda: M.DenseNetBC(10, 4, 1, 10), DIGITS),
        (lambda: M.TransformerBlock((1, 8, 8), 10, dim=16, heads=2), DIGITS),
    ],
    ids=["mlp", "lenet-digits", "lenet-mnist", "vgg", "resnet", "wrn", "densenet",
         "transformer"],
)
def test_double_backward_hessian_vector_product(make, spec):
    torch.manual_seed(0)
    _hvp_matches_forward_over_reverse(make(), spec)


@pytest.mark.slow
def test_double_backward_through_full_size_resnet18():
    torch.manual_seed(0)
    model = M.build_model("resnet18", DIGITS)
    x, y = torch.randn(2, 1, 8, 8), torch.tensor([1, 2])
    params = list(model.parameters())
    g = torch.autograd.grad(nn.functional.cross_entropy(model(x), y), params, create_graph=True)
    hv = torch.autograd.grad(sum((gi * gi.detach()).sum() for gi in g), params)
    assert all(torch.isfinite(h).all() for h in hv)


def test_default_mlp_learns_digits():
    torch.manual_seed(0)
    splits = D.load_splits("digits", seed=0)
    model = M.build_model("mlp", splits.spec)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    gen = torch.Generator().manual_seed(0)
    train = B.batches(splits.train, 32, shuffle=True, generator=gen)
    for _ in range(5):
        for x, y in train:
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
    with torch.no_grad():
        x, y = splits.test.tensors
        accuracy = (model(x).argmax(1) == y).float().mean().item()
    assert accuracy > 0.9
