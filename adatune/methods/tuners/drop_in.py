"""HD as a ``torch.optim.Optimizer``: a plain ``optimizer.step()`` in any loop.

HD's hypergradient is the dot product of this step's gradient with the
derivative of the weights with respect to the last LR, which the optimizer's
own update gives (docs/math.md): gradients are all it needs, so it can run
after any ``loss.backward()``, in any framework's loop. MARTHE and RTHO cannot:
they need a Hessian-vector product (the graph of the gradient, which
``backward()`` frees) and a validation loss after the update.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor

from adatune.methods.tuners.hypergradient import HD


class HDOptimizer(torch.optim.Optimizer):
    """``optimizer`` (SGD, Adam, AdamW) with its LR moved by HD at every ``step()``.

    >>> optimizer = HDOptimizer(torch.optim.SGD(model.parameters(), lr=0.05), total_steps=n)
    >>> loss.backward(); optimizer.step(); optimizer.zero_grad()

    The options are :class:`adatune.HD`'s (``total_steps`` or ``online=True``,
    ``hyper_lr``, ``hyper_update``, ...); ``tuner`` is that HD. The param
    groups and state are the wrapped optimizer's, so an LR monitor shows the
    tuned LR; ``state_dict()`` is the tuner's (which nests the optimizer's).
    ``step(closure)`` calls the closure (which computes the loss and its
    gradients, as torch's optimizers expect) and gives its loss to the
    scale-free rule, which backs off faster while the loss rises; without a
    closure, pass ``loss=`` to ``step``, or every step counts as rising.
    Gradients are used as they are: under ``DistributedDataParallel`` they are
    already the average over the ranks, and every rank gets the same LR.
    Step in every call: no LR scheduler (the tuner owns the LR).
    """

    def __init__(self, optimizer: torch.optim.Optimizer, hyper_lr: float | None = None,
                 **options: Any) -> None:
        self.tuner = HD(optimizer, hyper_lr, **options)
        super().__init__(optimizer.param_groups, optimizer.defaults)
        self.param_groups = optimizer.param_groups  # shared: the LR the tuner writes
        self.state = optimizer.state

    @property
    def lr(self) -> float:
        """The LR of the last step (the tuner's)."""
        return self.tuner.lr

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None, *,
             loss: Tensor | None = None) -> Tensor | None:
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self.tuner.step_from_grads(loss)
        return loss

    def state_dict(self) -> dict[str, Any]:
        return self.tuner.state_dict()

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        self.tuner.load_state_dict(state_dict)

    def __repr__(self) -> str:
        return f"HDOptimizer({self.tuner!r})"
