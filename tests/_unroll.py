"""An independent, differentiable re-implementation of torch's optimizer updates.

Used as the test oracle of docs/math.md: one LR leaf per step,
unrolled with autograd, so that ``dE(w_{t+1})/d eta_s`` comes from autodiff,
not from the tangent formulas under test. Its weights are checked against the
real ``torch.optim`` trajectory in the tests that use it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class OptSpec:
    kind: str  # "sgd" | "adam" | "adamw"
    momentum: float = 0.0
    dampening: float = 0.0
    nesterov: bool = False
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8

    def build(self, groups):
        if self.kind == "sgd":
            return torch.optim.SGD(groups, momentum=self.momentum, dampening=self.dampening,
                                   nesterov=self.nesterov)
        cls = torch.optim.Adam if self.kind == "adam" else torch.optim.AdamW
        return cls(groups, betas=self.betas, eps=self.eps)


def clip(grads, max_norm):
    norm = torch.sqrt(sum((g * g).sum() for g in grads))
    scale = torch.clamp(max_norm / (norm + 1e-6), max=1.0)
    return [g * scale for g in grads]


def unrolled_step(spec: OptSpec, ws, grads, state, *, lrs, wds, k, grad_clip=None):
    """One differentiable optimizer step. ``lrs``/``wds`` are per parameter."""
    if grad_clip is not None:
        grads = clip(grads, grad_clip)
    new_ws = []
    for i, (w, g) in enumerate(zip(ws, grads)):
        lr, wd = lrs[i], wds[i]
        if spec.kind != "adamw" and wd:
            g = g + wd * w
        if spec.kind == "sgd":
            d = g
            if spec.momentum:
                buf = state.get(i)
                buf = g if buf is None else spec.momentum * buf + (1 - spec.dampening) * g
                state[i] = buf
                d = g + spec.momentum * buf if spec.nesterov else buf
            new_ws.append(w - lr * d)
        else:
            b1, b2 = spec.betas
            m, v = state.get(("m", i), 0.0), state.get(("v", i), 0.0)
            m = b1 * m + (1 - b1) * g
            v = b2 * v + (1 - b2) * g * g
            state[("m", i)], state[("v", i)] = m, v
            bc1, bc2 = 1 - b1**k, 1 - b2**k
            denom = torch.sqrt(v) / bc2**0.5 + spec.eps
            w_dec = w * (1 - lr * wd) if spec.kind == "adamw" else w
            new_ws.append(w_dec - lr / bc1 * m / denom)
    return new_ws
