"""Pure tangent math: one step of ``Z <- mu * A_t Z + B_t`` per optimizer dynamics.

``Z`` is the derivative of the training state (weights and optimizer buffers)
with respect to the learning rate, ``A_t = dPhi_t/ds`` and ``B_t = dPhi_t/d eta``
(docs/math.md). Every function here updates the tangent lists in place,
reads the optimizer state *before* the step, and never touches the weights.

Conventions shared by every function:

- ``grads`` is the (clipped) loss gradient and ``hvps`` its tangent ``Hz``
  (``None`` when the curvature term is dropped: first order). The weight
  decay is the dynamics' business and is added here. With ``mu == 0`` the
  whole ``A_t`` term is dropped and ``hvps`` is ignored. ``hvps`` may be
  overwritten (it is scratch space the caller owns).
- ``lr`` is the learning rate the group actually uses at this step and
  ``ratio`` its derivative with respect to the tuned learning rate (the
  group's fixed ratio to it).
- ``foreach`` selects the ``torch._foreach_*`` fast path; the plain loop is the
  reference it is tested against.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Hashable, Sequence

import torch
from torch import Tensor


def _grouped(keys: Sequence[Hashable]) -> dict[Hashable, list[int]]:
    """Indices grouped by key, so each foreach call sees one set of scalars."""
    groups: dict[Hashable, list[int]] = defaultdict(list)
    for i, key in enumerate(keys):
        groups[key].append(i)
    return groups


def _pick(items: Sequence, idx: Sequence[int]) -> list:
    return [items[i] for i in idx]


# --------------------------------------------------------------------------- SGD


def sgd_tangent_(
    params: list[Tensor],
    grads: list[Tensor],
    hvps: list[Tensor] | None,
    momentum_buffers: list[Tensor | None],
    zs: list[Tensor],
    ys: list[Tensor] | None,
    *,
    lr: float,
    ratio: float,
    weight_decay: float,
    momentum: float,
    dampening: float,
    nesterov: bool,
    mu: float,
    foreach: bool = True,
) -> None:
    """Tangent step through ``torch.optim.SGD`` (momentum, dampening, Nesterov).

    torch semantics: ``g = grad + wd*w``; on the first step the buffer is a copy
    of ``g`` (no dampening), afterwards ``b' = m*b + (1-dampening)*g``; the
    direction is ``b'`` (or ``g + m*b'`` with Nesterov) and
    ``w' = w - lr*direction``. ``ys`` (tangent of the buffer) is required when
    ``momentum != 0``. The foreach path allocates nothing: it expands ``b'``
    instead of building it, and writes ``Hz + wd*z`` into ``hvps``.
    """
    if momentum != 0 and ys is None:
        raise ValueError("momentum tangents (ys) are required when momentum != 0")
    # The first step of a buffer behaves like b = 0 with coefficient 1.
    keys = [(b is None, 1.0 if b is None else 1.0 - dampening) for b in momentum_buffers]
    impl = _sgd_foreach if foreach else _sgd_loop
    for (first, c), idx in _grouped(keys).items():
        impl(
            _pick(params, idx),
            _pick(grads, idx),
            None if hvps is None else _pick(hvps, idx),
            None if first else _pick(momentum_buffers, idx),
            _pick(zs, idx),
            None if ys is None else _pick(ys, idx),
            c=c,
            lr=lr,
            ratio=ratio,
            wd=weight_decay,
            momentum=momentum,
            nesterov=nesterov,
            mu=mu,
        )


def _sgd_loop(params, grads, hvps, bufs, zs, ys, *, c, lr, ratio, wd, momentum, nesterov, mu):
    """The reference: the update's derivative written out term by term."""
    for i, (w, g, z) in enumerate(zip(params, grads, zs)):
        g = g + wd * w
        hz = None if (hvps is None or mu == 0) else hvps[i] + wd * z
        if hz is None and mu != 0 and wd != 0:
            hz = wd * z
        ddir = hz
        direction = g
        if momentum != 0:
            b_new = g if bufs is None else bufs[i] * momentum + c * g
            direction = g + momentum * b_new if nesterov else b_new
            y = ys[i]
            if mu == 0:
                y.zero_()
            else:
                db_new = momentum * y if hz is None else momentum * y + c * hz
                if nesterov:
                    ddir = momentum * db_new if hz is None else hz + momentum * db_new
                else:
                    ddir = db_new
                y.copy_(mu * db_new)
        if mu == 0:
            z.copy_(-ratio * direction)
        else:
            a_z = z if ddir is None else z - lr * ddir
            z.copy_(mu * a_z - ratio * direction)


def _sgd_foreach(params, grads, hvps, bufs, zs, ys, *, c, lr, ratio, wd, momentum, nesterov,
                 mu):
    """Allocation-free: every update is an in-place foreach op.

    With ``g = grad + wd*w`` and ``b`` the buffer before the step, the direction
    is ``coef_g*g + coef_b*b``: ``(c, m)`` for heavy ball, ``(1 + m*c, m^2)``
    for Nesterov (``coef_b = 0`` on the buffer's first step).
    """
    if momentum == 0:
        coef_g, coef_b = 1.0, 0.0
    elif nesterov:
        coef_g, coef_b = 1.0 + momentum * c, momentum * momentum
    else:
        coef_g, coef_b = c, momentum
    if bufs is None:
        coef_b = 0.0
    if mu == 0:
        torch._foreach_zero_(zs)
        if ys is not None:
            torch._foreach_zero_(ys)
    else:
        h = None  # the tangent of g: Hz + wd*z, built in hvps
        if hvps is not None:
            if wd != 0:
                torch._foreach_add_(hvps, zs, alpha=wd)
            h = hvps
        if momentum != 0:
            # ys <- db' = m*y + c*(Hz + wd*z), still without the mu factor
            torch._foreach_mul_(ys, momentum)
            if h is not None:
                torch._foreach_add_(ys, h, alpha=c)
            elif wd != 0:
                torch._foreach_add_(ys, zs, alpha=c * wd)
        # z <- z - lr*ddir, ddir = db' (heavy ball) or h + m*db' (Nesterov) or h (plain)
        if momentum == 0 or nesterov:
            if h is not None:
                torch._foreach_add_(zs, h, alpha=-lr)
            elif wd != 0:
                torch._foreach_mul_(zs, 1.0 - lr * wd)
        if momentum != 0:
            torch._foreach_add_(zs, ys, alpha=-lr * (momentum if nesterov else 1.0))
            torch._foreach_mul_(ys, mu)
        torch._foreach_mul_(zs, mu)
    # z <- z - ratio*direction
    torch._foreach_add_(zs, grads, alpha=-ratio * coef_g)
    if wd != 0:
        torch._foreach_add_(zs, params, alpha=-ratio * coef_g * wd)
    if coef_b != 0:
        torch._foreach_add_(zs, bufs, alpha=-ratio * coef_b)


# -------------------------------------------------------------------------- Adam


def adam_tangent_(
    params: list[Tensor],
    grads: list[Tensor],
    hvps: list[Tensor] | None,
    exp_avgs: list[Tensor | None],
    exp_avg_sqs: list[Tensor | None],
    steps: list[int],
    zs: list[Tensor],
    ps: list[Tensor],
    qs: list[Tensor],
    *,
    lr: float,
    ratio: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    decoupled_weight_decay: float,
    mu: float,
    foreach: bool = True,
) -> None:
    """Tangent step through ``torch.optim.Adam`` / ``AdamW``.

    ``steps`` are the optimizer's step counts *before* this step (0 on the
    first). ``exp_avgs``/``exp_avg_sqs`` entries are ``None`` before the first
    step. ``ps``/``qs`` are the tangents of the two moments.
    ``weight_decay`` is Adam's coupled L2 (added to ``grads`` and ``hvps``
    here), ``decoupled_weight_decay`` AdamW's ``lambda``.
    """
    if weight_decay != 0:
        grads = [g + weight_decay * w for g, w in zip(grads, params)]
        if mu != 0:
            hvps = ([weight_decay * z for z in zs] if hvps is None
                    else [h + weight_decay * z for h, z in zip(hvps, zs)])
    impl = _adam_foreach if foreach else _adam_loop
    keys = [(s + 1, m is None) for s, m in zip(steps, exp_avgs)]
    for (k, _), idx in _grouped(keys).items():
        impl(
            _pick(params, idx),
            _pick(grads, idx),
            None if hvps is None else _pick(hvps, idx),
            _pick(exp_avgs, idx),
            _pick(exp_avg_sqs, idx),
            _pick(zs, idx),
            _pick(ps, idx),
            _pick(qs, idx),
            bc1=1.0 - beta1**k,
            sqrt_bc2=math.sqrt(1.0 - beta2**k),
            lr=lr,
            ratio=ratio,
            beta1=beta1,
            beta2=beta2,
            eps=eps,
            wd=decoupled_weight_decay,
            mu=mu,
        )


def _adam_loop(params, grads, hvps, ms, vs, zs, ps, qs, *, bc1, sqrt_bc2, lr, ratio,
               beta1, beta2, eps, wd, mu):
    for i, (w, g, z) in enumerate(zip(params, grads, zs)):
        m, v = ms[i], vs[i]
        m_new = (1 - beta1) * g if m is None else beta1 * m + (1 - beta1) * g
        v_new = (1 - beta2) * g * g if v is None else beta2 * v + (1 - beta2) * g * g
        sqrt_v = v_new.sqrt()
        d = sqrt_v / sqrt_bc2 + eps
        u = m_new / d
        b_term = u / bc1 if wd == 0 else u / bc1 + wd * w
        if mu == 0:
            ps[i].zero_()
            qs[i].zero_()
            z.copy_(-ratio * b_term)
            continue
        hz = None if hvps is None else hvps[i]
        dm = beta1 * ps[i] if hz is None else beta1 * ps[i] + (1 - beta1) * hz
        dv = beta2 * qs[i] if hz is None else beta2 * qs[i] + 2 * (1 - beta2) * g * hz
        coef = torch.where(sqrt_v > 0, m_new / (2 * sqrt_bc2 * sqrt_v * d * d), 0.0)
        du = dm / d - coef * dv
        ps[i].copy_(mu * dm)
        qs[i].copy_(mu * dv)
        a_z = (1 - lr * wd) * z - (lr / bc1) * du
        z.copy_(mu * a_z - ratio * b_term)


def _adam_foreach(params, grads, hvps, ms, vs, zs, ps, qs, *, bc1, sqrt_bc2, lr, ratio,
                  beta1, beta2, eps, wd, mu):
    if ms[0] is None:  # first step (grouped by step count)
        m_new = torch._foreach_mul(grads, 1 - beta1)
        v_new = torch._foreach_mul(grads, grads)
        torch._foreach_mul_(v_new, 1 - beta2)
    else:
        m_new = torch._foreach_mul(ms, beta1)
        torch._foreach_add_(m_new, grads, alpha=1 - beta1)
        v_new = torch._foreach_mul(vs, beta2)
        torch._foreach_addcmul_(v_new, grads, grads, value=1 - beta2)
    sqrt_v = torch._foreach_sqrt(v_new)
    d = torch._foreach_div(sqrt_v, sqrt_bc2)
    torch._foreach_add_(d, eps)
    u = torch._foreach_div(m_new, d)
    if mu == 0:
        torch._foreach_zero_(ps)
        torch._foreach_zero_(qs)
        torch._foreach_copy_(zs, u)
        torch._foreach_mul_(zs, -ratio / bc1)
        if wd != 0:
            torch._foreach_add_(zs, params, alpha=-ratio * wd)
        return
    dm = torch._foreach_mul(ps, beta1)
    dv = torch._foreach_mul(qs, beta2)
    if hvps is not None:
        torch._foreach_add_(dm, hvps, alpha=1 - beta1)
        torch._foreach_addcmul_(dv, grads, hvps, value=2 * (1 - beta2))
    # coef = m' / (2 sqrt(bc2) sqrt(v') d^2), and 0 where v' = 0 (there m' = 0 too).
    denom = torch._foreach_mul(d, d)
    torch._foreach_mul_(denom, sqrt_v)
    torch._foreach_mul_(denom, 2 * sqrt_bc2)
    coef = torch._foreach_div(m_new, denom)
    for c, s in zip(coef, sqrt_v):
        c.masked_fill_(s == 0, 0.0)
    du = torch._foreach_div(dm, d)
    torch._foreach_mul_(coef, dv)
    torch._foreach_sub_(du, coef)
    torch._foreach_copy_(ps, dm)
    torch._foreach_mul_(ps, mu)
    torch._foreach_copy_(qs, dv)
    torch._foreach_mul_(qs, mu)
    if wd != 0:
        torch._foreach_mul_(zs, 1 - lr * wd)
    torch._foreach_add_(zs, du, alpha=-lr / bc1)
    torch._foreach_mul_(zs, mu)
    torch._foreach_add_(zs, u, alpha=-ratio / bc1)
    if wd != 0:
        torch._foreach_add_(zs, params, alpha=-ratio * wd)
