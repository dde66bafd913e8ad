"""Networks, built for a dataset's input shape and class count.

Canonical names (:data:`NETWORK_NAMES`) and what they build:

- ``mlp``: flatten, two hidden layers of 256 ReLU units, linear classifier.
- ``lenet``: LeNet-5 (conv5x5/6 - maxpool - conv5x5/16 - maxpool - fc120 -
  fc84 - classifier, ReLU). Inputs smaller than 32 pixels get a zero padding of
  2 on the first convolution (the usual MNIST arrangement), and on the second
  too when its input would be smaller than 10 pixels (8x8 ``digits``:
  8 -> 8 -> 4 -> 4 -> 2). Needs inputs of at least 4x4.
- ``vgg11``: VGG-11 configuration "A" of torchvision with batch norm, CIFAR
  style (global average pool, one linear classifier). Five 2x2 max-pools:
  needs inputs of at least 32x32.
- ``resnet18``: torchvision's ResNet with ``BasicBlock`` [2, 2, 2, 2] and a
  CIFAR stem (3x3 convolution, stride 1, no max-pool).
- ``wrn28_10``: Wide ResNet 28-10 (pre-activation wide basic blocks,
  Zagoruyko & Komodakis 2016).
- ``densenet_bc100``: DenseNet-BC, depth 100, growth rate 12, compression 0.5,
  CIFAR stem (Huang et al. 2017). Two 2x2 average-pool transitions: needs
  inputs of at least 4x4.
- ``transformer``: one pre-norm Transformer block over image patches (4x4
  patches when the height and width divide by 4, else single pixels; a linear
  embedding of width 128 with learned positions, 4 attention heads, an MLP of
  width 512 with GELU, mean pooling, a linear classifier). Its attention is
  written out (matmuls and a softmax), so that its double backward exists.

Every network supports double backward (Hessian-vector products): no in-place
activations (torchvision blocks are switched to out-of-place).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models import ResNet
from torchvision.models.resnet import BasicBlock
from torchvision.models.vgg import cfgs as _VGG_CONFIGS

from adatune.catalog import NETWORK_NAMES, DataSpec, canonical_network, check_compatible
from adatune.errors import ConfigError

__all__ = [
    "MLP",
    "NETWORK_NAMES",
    "VGG",
    "DenseNetBC",
    "LeNet5",
    "ResNetCifar",
    "TransformerBlock",
    "WideResNet",
    "build_model",
    "canonical_network",
    "check_compatible",
]


def build_model(network: str, spec: DataSpec) -> nn.Module:
    """A freshly initialised network for ``spec`` (seed torch beforehand for reproducibility)."""
    check_compatible(network, spec)
    key = canonical_network(network)
    c, h, w = spec.input_shape
    k = spec.num_classes
    if key == "mlp":
        return MLP(c * h * w, k)
    if key == "lenet":
        return LeNet5(spec.input_shape, k)
    if key == "vgg11":
        return VGG(_VGG_CONFIGS["A"], c, k)
    if key == "resnet18":
        return ResNetCifar((2, 2, 2, 2), c, k)
    if key == "wrn28_10":
        return WideResNet(28, 10, c, k)
    if key == "transformer":
        return TransformerBlock(spec.input_shape, k)
    return DenseNetBC(100, 12, c, k)


def _out_of_place(model: nn.Module) -> nn.Module:
    """Switch in-place activations (as in torchvision blocks) to out-of-place."""
    for module in model.modules():
        if getattr(module, "inplace", False) is True:
            module.inplace = False
    return model


class MLP(nn.Module):
    """Fully connected ReLU network on flattened inputs."""

    def __init__(
        self, in_features: int, num_classes: int, hidden: Sequence[int] = (256, 256)
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_features
        for units in hidden:
            layers += [nn.Linear(width, units), nn.ReLU()]
            width = units
        layers.append(nn.Linear(width, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class LeNet5(nn.Module):
    """LeNet-5 with ReLU and max-pooling; pads small inputs (see the module docstring)."""

    def __init__(self, input_shape: tuple[int, int, int], num_classes: int) -> None:
        super().__init__()
        c, h, w = input_shape
        pad1 = tuple(2 if s < 32 else 0 for s in (h, w))
        h1, w1 = ((s + 2 * p - 4) // 2 for s, p in zip((h, w), pad1))
        pad2 = tuple(2 if s < 10 else 0 for s in (h1, w1))
        h2, w2 = ((s + 2 * p - 4) // 2 for s, p in zip((h1, w1), pad2))
        if h2 < 1 or w2 < 1:
            raise ConfigError(f"lenet needs inputs of at least 4x4; got {c}x{h}x{w}")
        self.features = nn.Sequential(
            nn.Conv2d(c, 6, 5, padding=pad1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5, padding=pad2),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(16 * h2 * w2, 120),
            nn.ReLU(),
            nn.Linear(120, 84),
            nn.ReLU(),
            nn.Linear(84, num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))


class VGG(nn.Module):
    """VGG with batch norm from a torchvision configuration, CIFAR-style head."""

    def __init__(self, config: Sequence[int | str], in_channels: int, num_classes: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = in_channels
        for v in config:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [
                    nn.Conv2d(width, int(v), 3, padding=1),
                    nn.BatchNorm2d(int(v)),
                    nn.ReLU(),
                ]
                width = int(v)
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(width, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


class ResNetCifar(ResNet):
    """torchvision's ResNet of ``BasicBlock``s with a CIFAR stem (3x3 conv, no max-pool)."""

    def __init__(self, layers: Sequence[int], in_channels: int, num_classes: int) -> None:
        super().__init__(BasicBlock, list(layers), num_classes=num_classes)
        self.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
        nn.init.kaiming_normal_(self.conv1.weight, mode="fan_out", nonlinearity="relu")
        self.maxpool = nn.Identity()
        _out_of_place(self)


def _init_conv_bn_linear(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.zeros_(m.bias)


class _WideBasic(nn.Module):
    """Pre-activation block: BN-ReLU-conv3x3-(dropout)-BN-ReLU-conv3x3, plus shortcut."""

    def __init__(self, in_planes: int, planes: int, stride: int, dropout: float) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.shortcut = (
            nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False)
            if stride != 1 or in_planes != planes
            else None
        )

    def forward(self, x: Tensor) -> Tensor:
        pre = F.relu(self.bn1(x))
        out = self.conv2(F.relu(self.bn2(self.dropout(self.conv1(pre)))))
        # a projection shortcut takes the pre-activated input (as in the reference code)
        return out + (x if self.shortcut is None else self.shortcut(pre))


class WideResNet(nn.Module):
    """Wide ResNet ``depth``-``widen`` for small images (three groups, strides 1, 2, 2)."""

    def __init__(
        self, depth: int, widen: int, in_channels: int, num_classes: int, dropout: float = 0.0
    ) -> None:
        super().__init__()
        if (depth - 4) % 6 != 0 or depth < 10:
            raise ValueError(f"Invalid depth: {depth} (need 6n + 4, n >= 1)")
        if widen < 1:
            raise ValueError(f"Invalid widen: {widen}")
        n = (depth - 4) // 6
        widths = [16, 16 * widen, 32 * widen, 64 * widen]
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False)
        blocks: list[nn.Module] = []
        in_planes = widths[0]
        for group, stride in zip(range(1, 4), (1, 2, 2)):
            for i in range(n):
                blocks.append(
                    _WideBasic(in_planes, widths[group], stride if i == 0 else 1, dropout)
                )
                in_planes = widths[group]
        self.blocks = nn.Sequential(*blocks)
        self.bn = nn.BatchNorm2d(in_planes)
        self.fc = nn.Linear(in_planes, num_classes)
        _init_conv_bn_linear(self)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn(self.blocks(self.conv1(x))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(out, 1), 1))


class _DenseLayer(nn.Module):
    """Bottleneck layer: BN-ReLU-conv1x1(4k)-BN-ReLU-conv3x3(k), concatenated to its input."""

    def __init__(self, in_planes: int, growth: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, 4 * growth, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(4 * growth)
        self.conv2 = nn.Conv2d(4 * growth, growth, 3, padding=1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv2(F.relu(self.bn2(self.conv1(F.relu(self.bn1(x))))))
        return torch.cat([x, out], dim=1)


class _Transition(nn.Sequential):
    def __init__(self, in_planes: int, out_planes: int) -> None:
        super().__init__(
            nn.BatchNorm2d(in_planes),
            nn.ReLU(),
            nn.Conv2d(in_planes, out_planes, 1, bias=False),
            nn.AvgPool2d(2),
        )


class DenseNetBC(nn.Module):
    """DenseNet-BC for small images: three dense blocks, compression 0.5."""

    def __init__(
        self,
        depth: int,
        growth: int,
        in_channels: int,
        num_classes: int,
        compression: float = 0.5,
    ) -> None:
        super().__init__()
        if (depth - 4) % 6 != 0 or depth < 10:
            raise ValueError(f"Invalid depth: {depth} (need 6n + 4, n >= 1)")
        if not 0.0 < compression <= 1.0:
            raise ValueError(f"Invalid compression: {compression}")
        n = (depth - 4) // 6  # bottleneck layers per block
        planes = 2 * growth
        layers: list[nn.Module] = [nn.Conv2d(in_channels, planes, 3, padding=1, bias=False)]
        for block in range(3):
            for _ in range(n):
                layers.append(_DenseLayer(planes, growth))
                planes += growth
            if block < 2:
                out_planes = int(planes * compression)
                layers.append(_Transition(planes, out_planes))
                planes = out_planes
        layers += [nn.BatchNorm2d(planes), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(planes, num_classes)
        _init_conv_bn_linear(self)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))


class TransformerBlock(nn.Module):
    """Image patches through one pre-norm Transformer block (attention written out)."""

    def __init__(self, input_shape: Sequence[int], num_classes: int, *, dim: int = 128,
                 heads: int = 4, mlp_ratio: int = 4) -> None:
        super().__init__()
        c, h, w = input_shape
        self.patch = 4 if h % 4 == 0 and w % 4 == 0 else 1
        tokens = (h // self.patch) * (w // self.patch)
        self.heads = heads
        self.embed = nn.Linear(c * self.patch ** 2, dim)
        self.pos = nn.Parameter(torch.randn(tokens, dim) * 0.02)
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, mlp_ratio * dim)
        self.fc2 = nn.Linear(mlp_ratio * dim, dim)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        t = F.unfold(x, self.patch, stride=self.patch).transpose(1, 2)  # (n, tokens, c*p*p)
        t = self.embed(t) + self.pos
        t = t + self._attend(self.norm1(t))
        t = t + self.fc2(F.gelu(self.fc1(self.norm2(t))))
        return self.head(self.norm(t).mean(1))

    def _attend(self, t: Tensor) -> Tensor:
        n, s, d = t.shape
        q, k, v = self.qkv(t).view(n, s, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        weights = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(d // self.heads), dim=-1)
        return self.proj((weights @ v).transpose(1, 2).reshape(n, s, d))
