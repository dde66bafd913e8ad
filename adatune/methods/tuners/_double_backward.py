"""A cheaper, exact double backward for convolutions and training-mode batch norm.

An exact MARTHE/RTHO step differentiates the training gradient once more (a
Hessian-vector product). For convolutions and batch norm, torch's generic
double-backward formulas are far from the cost of the work itself on the CPU:
the weight term of a convolution's double backward runs as a convolution with
batch and channels swapped and a kernel as large as the image, and batch
norm's is some thirty separate elementwise passes. Forward passes run under
:func:`fast_double_backward` record these two ops as autograd functions whose
backward is the ordinary one (same kernels, same values) and whose double
backward is written out here:

* convolution, backward ``(gI, gW, gb) = (convT(g, W), wgrad(x, g), sum g)``;
  for cotangents ``(ggI, ggW, ggb)``: ``d/dg = conv(ggI, W) + conv(x, ggW) + ggb``,
  ``d/dW = wgrad(ggI, g)``, ``d/dx = convT(g, ggW)``; each one call of torch's
  own convolution kernels.
* batch norm over ``N`` values per channel, with ``r = 1/sqrt(var + eps)``,
  ``xh = (x - mean) r`` and the projection ``P(v) = v - mean(v) - xh mean(v xh)``,
  backward ``gI = gamma r P(g)``, ``gamma' = sum g xh``, ``beta' = sum g``.
  Its double backward, with per-channel sums ``S1 = sum ggI``,
  ``S2 = sum ggI xh``, ``S3 = sum ggI g``, ``G1 = sum g``, ``G2 = sum g xh`` and
  ``K = S3 - (G1 S1 + G2 S2) / N``:
  ``d/dg = gamma r P(ggI) + ggW xh + ggb``, ``d/dgamma = r K``,
  ``d/dx = (ggW - gamma r S2 / N) r P(g) - gamma r (G2 / N) r P(ggI) - gamma K r^2 xh / N``
  (``x`` reaches ``gI`` through ``xh``, ``mean`` and ``r``). Both ``r P(v)``
  and the sums come from torch's fused batch-norm backward kernel.

Tests check both against torch's own double backward in float64.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd import Function
from torch.overrides import TorchFunctionMode

__all__ = ["fast_double_backward"]

_BN_BACKWARD = torch.ops.aten.native_batch_norm_backward
_CONV_BACKWARD = torch.ops.aten.convolution_backward
_CONVS = {F.conv1d: 1, F.conv2d: 2, F.conv3d: 3}
_CONV_ARGS = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
_BN_ARGS = ("input", "running_mean", "running_var", "weight", "bias", "training",
            "momentum", "eps")


def _per_channel(t: Tensor, like: Tensor) -> Tensor:
    return t.view(1, -1, *([1] * (like.dim() - 2)))


def _handled(x: Tensor, *params: Tensor | None) -> bool:
    """A gradient is wanted, and autocast (whose casts these functions skip) is off."""
    return (torch.is_grad_enabled() and not torch.is_autocast_enabled(x.device.type)
            and any(t is not None and t.requires_grad for t in (x, *params)))


class _BatchNorm(Function):
    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, momentum, eps):  # noqa: ANN001
        out, mean, invstd = torch.native_batch_norm(x, weight, bias, running_mean, running_var,
                                                    True, momentum, eps)
        ctx.save_for_backward(x, weight, mean, invstd)
        ctx.eps = eps
        return out

    @staticmethod
    def backward(ctx, g):  # noqa: ANN001
        x, weight, mean, invstd = ctx.saved_tensors
        grads = _BatchNormBackward.apply(g, x, weight, mean, invstd, ctx.eps,
                                         ctx.needs_input_grad[:3])
        return *grads, None, None, None, None


class _BatchNormBackward(Function):
    @staticmethod
    def forward(ctx, g, x, weight, mean, invstd, eps, mask):  # noqa: ANN001
        ctx.save_for_backward(g, x, weight, mean, invstd)
        ctx.eps = eps
        return tuple(_BN_BACKWARD(g, x, weight, None, None, mean, invstd, True, eps, list(mask)))

    @staticmethod
    def backward(ctx, ggi, ggw, ggb):  # noqa: ANN001
        g, x, weight, mean, invstd = ctx.saved_tensors
        need_g, need_x, need_w = ctx.needs_input_grad[:3]
        n = x.numel() // x.shape[1]
        gamma = torch.ones_like(invstd) if weight is None else weight
        mu = _per_channel(mean, x)
        out_g = out_x = out_w = None

        def projected(v: Tensor, full: bool) -> tuple:  # r P(v) (if full), sum v xh, sum v
            return _BN_BACKWARD(v, x, None, None, None, mean, invstd, True, ctx.eps,
                                [full, True, True])

        if ggi is not None:
            p_ggi, s2, s1 = projected(ggi, need_g or need_x)
        if need_g:
            out_g = (p_ggi * _per_channel(gamma, x) if ggi is not None
                     else torch.zeros_like(g))
            if ggw is not None:  # + ggw xh
                c = _per_channel(ggw * invstd, x)
                out_g.addcmul_(x, c).sub_(c * mu)
            if ggb is not None:
                out_g.add_(_per_channel(ggb, x))
        if not (need_x or need_w) or (ggi is None and ggw is None):
            return out_g, out_x, out_w, None, None, None, None
        p_g, g2, g1 = projected(g, need_x)
        if ggi is not None:
            k = (ggi * g).sum([0, *range(2, x.dim())]) - (g1 * s1 + g2 * s2) / n
            if need_w:
                out_w = invstd * k
        if need_x:
            c_g = torch.zeros_like(invstd) if ggw is None else ggw
            if ggi is not None:
                c_g = c_g - gamma * invstd * s2 / n
            out_x = p_g * _per_channel(c_g, x)
            if ggi is not None:
                out_x.addcmul_(p_ggi, _per_channel(-gamma * invstd * g2 / n, x))
                c_x = _per_channel(-gamma * k * invstd**3 / n, x)  # times xh = (x - mean) r
                out_x.addcmul_(x, c_x).sub_(c_x * mu)
        return out_g, out_x, out_w, None, None, None, None


class _Conv(Function):
    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding, dilation, groups):  # noqa: ANN001
        ctx.save_for_backward(x, weight)
        ctx.geometry = (stride, padding, dilation, groups)
        ctx.bias_shape = None if bias is None else list(bias.shape)
        return torch.convolution(x, weight, bias, stride, padding, dilation, False,
                                 [0] * len(stride), groups)

    @staticmethod
    def backward(ctx, g):  # noqa: ANN001
        x, weight = ctx.saved_tensors
        grads = _ConvBackward.apply(g, x, weight, ctx.geometry, ctx.bias_shape,
                                    ctx.needs_input_grad[:3])
        return *grads, None, None, None, None


def _conv_backward(g: Tensor, x: Tensor, weight: Tensor, geometry: tuple,
                   mask: Sequence[bool], bias_shape: list[int] | None = None) -> tuple:
    stride, padding, dilation, groups = geometry
    return _CONV_BACKWARD(g, x, weight, bias_shape, stride, padding, dilation, False,
                          [0] * len(stride), groups, list(mask))


class _ConvBackward(Function):
    @staticmethod
    def forward(ctx, g, x, weight, geometry, bias_shape, mask):  # noqa: ANN001
        ctx.save_for_backward(g, x, weight)
        ctx.geometry = geometry
        return tuple(_conv_backward(g, x, weight, geometry, mask, bias_shape))

    @staticmethod
    def backward(ctx, ggi, ggw, ggb):  # noqa: ANN001
        g, x, weight = ctx.saved_tensors
        geometry = ctx.geometry
        stride, padding, dilation, groups = geometry
        need_g, need_x, need_w = ctx.needs_input_grad[:3]
        zeros = [0] * len(stride)
        out_g = out_x = out_w = None
        if need_g:
            if ggi is not None:
                out_g = torch.convolution(ggi, weight, None, stride, padding, dilation, False,
                                          zeros, groups)
            if ggw is not None or ggb is not None:
                w = torch.zeros_like(weight) if ggw is None else ggw
                more = torch.convolution(x, w, ggb, stride, padding, dilation, False, zeros,
                                         groups)
                out_g = more if out_g is None else out_g.add_(more)
        if need_w and ggi is not None:
            out_w = _conv_backward(g, ggi, weight, geometry, (False, True, False))[1]
        if need_x and ggw is not None:
            out_x = _conv_backward(g, x, ggw, geometry, (True, False, False))[0]
        return out_g, out_x, out_w, None, None, None


def _bound(names: Sequence[str], args: tuple, kwargs: dict) -> dict[str, Any]:
    return {**dict(zip(names, args)), **kwargs}


def _tuple(value: Any, n: int) -> list[int]:
    return list(value) if isinstance(value, (tuple, list)) else [value] * n


class fast_double_backward(TorchFunctionMode):  # noqa: N801 - used like a function
    """Record convolutions and training-mode batch norms with a cheaper exact double backward.

    Use it around the forward pass whose loss is differentiated twice
    (``create_graph=True`` followed by a Hessian-vector product)::

        with adatune.fast_double_backward():
            loss = criterion(model(x), y)
        tuner.step(loss, val_loss=...)

    Values, first-order gradients and batch-norm running statistics are the
    same as without it; only the graph of the double backward changes. The
    tuners apply it themselves when ``step`` is given a closure. Calls it does
    not handle (string padding, eval-mode batch norm, no gradient needed,
    autocast) run unchanged.
    """

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        kwargs = kwargs or {}
        if func is F.batch_norm:
            a = _bound(_BN_ARGS, args, kwargs)
            x = a["input"]
            if (a.get("training", False) and x.dim() >= 2 and x.numel() > x.shape[1]
                    and _handled(x, a.get("weight"), a.get("bias"))):
                return _BatchNorm.apply(x, a.get("weight"), a.get("bias"), a["running_mean"],
                                        a["running_var"], a.get("momentum", 0.1),
                                        a.get("eps", 1e-5))
        elif func in _CONVS:
            a = _bound(_CONV_ARGS, args, kwargs)
            n = _CONVS[func]
            x, weight, bias = a["input"], a["weight"], a.get("bias")
            padding = a.get("padding", 0)
            if (not isinstance(padding, str) and x.dim() == n + 2
                    and _handled(x, weight, bias)):
                return _Conv.apply(x, weight, bias, _tuple(a.get("stride", 1), n),
                                   _tuple(padding, n), _tuple(a.get("dilation", 1), n),
                                   a.get("groups", 1))
        return func(*args, **kwargs)
