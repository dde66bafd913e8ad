"""Model factories: the first takes the data's spec, the regressor takes nothing."""

from __future__ import annotations

import torch
from torch import nn

NOT_CALLABLE = 3


class Conv1dNet(nn.Module):
    """A small 1-D convolutional classifier for (channels, length) sequences."""

    def __init__(self, channels: int, num_classes: int) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv1d(channels, 8, kernel_size=5, padding=2), nn.ReLU(),
            nn.AdaptiveAvgPool1d(4), nn.Flatten())
        self.head = nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def conv1d(spec):
    channels, _length = spec.input_shape
    return Conv1dNet(channels, spec.num_classes)


def tiny_cnn(spec):
    """For image data such as the built-in digits (1x8x8)."""
    channels = spec.input_shape[0]
    return nn.Sequential(nn.Conv2d(channels, 4, 3, padding=1), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * spec.input_shape[1] * spec.input_shape[2],
                                   spec.num_classes))


def regressor():
    return nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 1))


def three_scores():
    return Conv1dNet(1, 3)


def linear5():
    return nn.Linear(5, 3)


def not_a_module(spec):
    return [spec]


def broken(spec):
    raise ValueError("width must be positive")


def frozen(spec):
    model = nn.Linear(2, 2)
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def noisy_mlp(spec):
    """Batch norm and dropout (for the built-in digits): what differs by rank under torchrun."""
    features = 1
    for size in spec.input_shape:
        features *= size
    return nn.Sequential(nn.Flatten(), nn.Linear(features, 32), nn.BatchNorm1d(32), nn.ReLU(),
                         nn.Dropout(0.2), nn.Linear(32, spec.num_classes))


def narrow(spec):
    """Three class scores whatever the data: too few for the built-in digits' ten classes."""
    features = 1
    for size in spec.input_shape:
        features *= size
    return nn.Sequential(nn.Flatten(), nn.Linear(features, 3))


def exits(spec=None):
    """A factory that ends the process, as a script's factory might (``sys.exit(0)``)."""
    import sys

    sys.exit(0)
