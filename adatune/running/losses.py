"""The loss a run minimises: ``cross_entropy``, ``mse``, or the user's own.

A loss is called ``loss(output, target)`` and returns the minibatch mean. Its
name says whether the run is a classification (``cross_entropy``: accuracies
are recorded and pick the best epoch) or not (the lowest validation loss
does). Names are checked without torch (:func:`canonical_loss`); torch is
imported when a loss is computed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from adatune import imports
from adatune.errors import ConfigError

if TYPE_CHECKING:
    from torch import Tensor

__all__ = ["LOSS_NAMES", "AlignedLoss", "build_loss", "canonical_loss", "loss_from"]

LOSS_NAMES = ("cross_entropy", "mse")
_LOSS_ALIASES = {"ce": "cross_entropy", "crossentropy": "cross_entropy",
                 "cross-entropy": "cross_entropy", "l2": "mse"}


def canonical_loss(name: str) -> str:
    """cross_entropy, mse, or an import path ``module:fn`` (a loss function or class)."""
    if not isinstance(name, str):
        raise ConfigError(f"invalid loss: {name!r}")
    key = name.strip()
    if ":" in key:
        return imports.check_import_path("loss", key)
    key = key.lower()
    key = _LOSS_ALIASES.get(key, key)
    if key not in LOSS_NAMES:
        raise ConfigError(f"unknown loss {name!r} (choose from: {', '.join(LOSS_NAMES)}, "
                          "or an import path module:fn)")
    return key


def _cross_entropy(output: Tensor, target: Tensor) -> Tensor:
    from torch import nn

    return nn.functional.cross_entropy(output, target)


def _align(output: Tensor, target: Tensor) -> Tensor:
    """(N,) targets for (N, 1) outputs, and the like: the target in the output's shape.

    Without it, torch's element-wise losses broadcast (N, 1) against (N,) to an
    (N, N) loss matrix, with a warning only.
    """
    if output.shape != target.shape and output.numel() == target.numel():
        return target.reshape(output.shape)
    return target


def _mse(output: Tensor, target: Tensor) -> Tensor:
    from torch import nn

    return nn.functional.mse_loss(output, _align(output, target).to(output.dtype))


class AlignedLoss:
    """A user's loss, given targets in the output's shape when only the shape differs."""

    def __init__(self, loss: Any) -> None:
        self.loss = loss

    def __call__(self, output: Tensor, target: Tensor) -> Tensor:
        return self.loss(output, _align(output, target))


def build_loss(name: str) -> tuple[Any, bool]:
    """(loss(output, target), classification) for ``cross_entropy``, ``mse`` or a path.

    A path may name a loss function or a loss class (``torch.nn:SmoothL1Loss``),
    which is instantiated without arguments.
    """
    if name == "cross_entropy":
        return _cross_entropy, True
    if name == "mse":
        return _mse, False
    obj = imports.load_callable("loss", name)
    if isinstance(obj, type):
        obj = imports.call("loss", name, obj)
        if not callable(obj):
            raise ConfigError(f"loss={name!r} built {imports.describe_type(obj)}, "
                              "which is not callable")
    return AlignedLoss(obj), False


def loss_from(loss: str | Callable[[Tensor, Tensor], Tensor]) -> tuple[Any, bool, str]:
    """(loss, classification, the name a run records) for a name or a callable."""
    if isinstance(loss, str):
        name = canonical_loss(loss)
        fn, classification = build_loss(name)
        return fn, classification, name
    if not callable(loss):
        raise ConfigError(f"Invalid loss: {loss!r} (a name or a callable)")
    label = getattr(loss, "__qualname__", None) or type(loss).__name__
    return AlignedLoss(loss), False, f"{getattr(loss, '__module__', '')}:{label}".lstrip(":")
