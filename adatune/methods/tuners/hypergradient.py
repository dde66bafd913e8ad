"""Hypergradient learning-rate tuners: MARTHE, RTHO and HD.

A tuner wraps a ``torch.optim`` optimizer (SGD, Adam, AdamW). It never
re-implements the parameter update: it computes gradients, advances the
tangent ``Z`` of the training state with respect to the learning rate
(:mod:`adatune.methods.tuners._tangent`), lets the optimizer step, and writes the new
learning rate into ``param_groups[i]["lr"]``. With several param groups one
learning rate is tuned and every group keeps its initial ratio to it.

Under ``torch.distributed`` (a process group initialised, or ``process_group=``
given) every rank passes its shard of the batch and of the validation batch;
the tuner averages the training gradient, the Hessian-vector product and the
validation gradient's dot products over the ranks
(:mod:`adatune.methods.tuners.collectives`), so every rank takes the same step and
the same learning rate.

Mixed precision: call :meth:`HypergradientTuner.step` inside ``torch.autocast``
(the closures then run their forward in the autocast dtype). The tuner's own
gradients, Hessian-vector product and validation gradient are taken with
autocast off, as torch advises for backward passes: each op's backward runs in
the dtype its forward ran in, while the gradients of the float32 parameters,
the tangent and the hypergradient stay float32. With fp16, pass the
``torch.amp.GradScaler`` as ``scaler=``: a step whose gradients overflow is
skipped whole (no weight update, no tangent update, no hypergradient).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from adatune.methods import horizon as _horizon
from adatune.methods import hyper_update as _rule
from adatune.methods.peers import optimizer_view
from adatune.methods.tuners import _tangent
from adatune.methods.tuners import collectives as _distributed
from adatune.methods.tuners._double_backward import fast_double_backward
from adatune.methods.tuners.settings import (
    DEFAULT_ALPHA,
    DEFAULT_HVP,
    DEFAULT_HYPER_EVERY,
    DEFAULT_MU,
    HVP_MODES,
)

LossArg = Tensor | Callable[[], Tensor]

_CLIP_EPS = 1e-6  # the epsilon torch.nn.utils.clip_grad_norm_ adds to the norm


def _check_number(name: str, value: Any, *, low: float = 0.0, high: float | None = None,
                  low_open: bool = False) -> float:
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"Invalid {name}: {value!r}") from None
    bad = (not math.isfinite(x) or x < low or (low_open and x == low)
           or (high is not None and x > high))
    if bad:
        raise ValueError(f"Invalid {name}: {value!r}")
    return x


def _check_hyper_every(value: Any) -> int:
    """A whole number >= 1 (ValueError naming hyper_every otherwise)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"Invalid hyper_every: {value!r} (a whole number >= 1)")
    return int(value)


def _check_rate(name: str, value: Any, rule: str, low: float, high: float) -> float:
    """hyper_lr or alpha: a number in the rule's range (ValueError naming it otherwise)."""
    x = _check_number(name, value)
    if not low <= x <= high:
        raise ValueError(f"Invalid {name}: {value!r} (hyper_update={rule!r} takes "
                         f"{name} in [{low:g}, {high:g}])")
    return x


class _Dynamics:
    """What the tuner needs to know about the wrapped optimizer."""

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        if isinstance(optimizer, torch.optim.SGD):
            self.kind = "sgd"
        elif isinstance(optimizer, (torch.optim.Adam, torch.optim.AdamW)):
            self.kind = "adam"
        else:
            raise ValueError(
                f"Invalid optimizer: {type(optimizer).__name__} "
                "(supported: torch.optim.SGD, Adam, AdamW)"
            )
        if optimizer_view(optimizer).adaptive:  # Mechanic subclasses the optimizer it wraps
            raise ValueError(f"Invalid optimizer: {type(optimizer).__name__} sets its own step "
                             "size (a learning-rate-free peer); a tuner tunes the LR of plain "
                             "torch.optim.SGD, Adam or AdamW")
        for i, group in enumerate(optimizer.param_groups):
            if group.get("maximize", False):
                raise ValueError(f"Invalid optimizer: param group {i} has maximize=True")
            if group.get("amsgrad", False):
                raise ValueError(f"Invalid optimizer: param group {i} has amsgrad=True")
        self.decoupled = self.kind == "adam" and (
            isinstance(optimizer, torch.optim.AdamW)
            or bool(optimizer.param_groups[0].get("decoupled_weight_decay", False))
        )

    def tangent_keys(self, group: Mapping[str, Any]) -> tuple[str, ...]:
        if self.kind == "adam":
            return ("z", "p", "q")
        return ("z", "y") if group["momentum"] != 0 else ("z",)


class HypergradientTuner:
    """Shared machinery of MARTHE, RTHO and HD (the math: docs/math.md).

    ``outer`` selects where the hypergradient's outer gradient comes from:
    ``"validation"`` (MARTHE/RTHO: the gradient of a validation loss at the
    updated weights, after the step) or ``"training"`` (HD: the next training
    gradient, before the step that uses the new learning rate).

    ``hyper_update`` is how the LR moves given the hypergradient
    (:mod:`adatune.methods.hyper_update`): ``"scale-free"`` (the default; ``hyper_lr``
    is dimensionless and defaults to ``horizon.HORIZON_HYPER_LR``, online to the
    tuner's entry of ``SCALE_FREE_HYPER_LR``) or ``"additive"`` (the papers' rule; ``hyper_lr``
    is then required, in LR per unit of hypergradient).

    ``total_steps``, ``anneal`` and ``warmup`` (:mod:`adatune.methods.horizon`):
    the LR of step ``t`` is ``s * shape(t)``, a linear warm-up over the first
    ``warmup`` fraction of the run's ``total_steps`` steps, then ``anneal``
    (``"cosine"`` or ``"linear"`` to 0 at the run's end, or ``"none"``). The
    hypergradient of the validation loss with respect to ``log s`` moves the
    scale ``s`` both ways during the warm-up, then only up while it says so;
    after that the tuner takes plain optimizer steps. ``total_steps`` may be
    given later (``tuner.total_steps = n``, as :func:`adatune.fit` does) but
    before the first step. ``online=True`` is the papers' tuner instead: no
    horizon, the LR itself moved by every step's hypergradient (prone to
    short-horizon bias on long runs; see docs/benchmarks.md).

    ``process_group``: the ranks to average over (default: torch.distributed's
    default group when it is initialised; a group of one rank turns averaging
    off). Only :meth:`step` averages; the low-level :meth:`compute_hg` and
    :meth:`hyper_step` refuse to run under a group of several ranks.

    ``hyper_every=k`` (MARTHE/RTHO): the costly part of a tuned step (the training
    gradient's graph, the Hessian-vector product and the validation gradient) runs on
    one tuned step in ``k``: those whose ``state["step"] % k == k - 1`` (the counter is
    checkpointed, so a resumed run keeps the cycle). Every tuned step advances the
    tangent with its first-order terms; on the ``k``-th the HVP of the cycle's tangents
    (each weighted by the ``mu`` the steps since would have applied) enters it, for the
    ``k`` steps' curvature terms, ``val_loss`` is called
    and the LR moves with ``k`` times the hyper-LR (at most the rule's largest,
    ``MAX_HYPER_LR`` for the scale-free rule). The other steps cost a plain step plus
    the tangent's update. ``k=1`` is the exact tuner (docs/math.md).
    """

    outer = "validation"
    _name = "marthe"  # key of the tuner's default scale-free hyper-LR

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        hyper_lr: float | None = None,
        *,
        mu: float | str = DEFAULT_MU,
        alpha: float = DEFAULT_ALPHA,
        first_order: bool = False,
        grad_clip: float | None = None,
        process_group: Any = None,
        hvp: str = DEFAULT_HVP,
        model: nn.Module | None = None,
        foreach: bool | None = None,
        hyper_update: str = _rule.DEFAULT_HYPER_UPDATE,
        total_steps: int | None = None,
        anneal: str = _horizon.DEFAULT_ANNEAL,
        warmup: float = _horizon.DEFAULT_WARMUP,
        online: bool = False,
        hyper_every: int = DEFAULT_HYPER_EVERY,
    ) -> None:
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise ValueError(f"Invalid optimizer: {optimizer!r}")
        self.optimizer = optimizer
        self._dyn = _Dynamics(optimizer)
        rule = _rule.canonical_hyper_update(hyper_update)
        low, high = _rule.hyper_lr_range(rule)
        if hyper_lr is None:
            if rule == _rule.ADDITIVE:
                raise ValueError("Invalid hyper_lr: None (hyper_update='additive' has no "
                                 "default hyper_lr: its units depend on the task)")
            hyper_lr = (_rule.SCALE_FREE_HYPER_LR[self._name] if online
                        else _horizon.HORIZON_HYPER_LR)
        hyper_lr = _check_rate("hyper_lr", hyper_lr, rule, low, high)
        alpha = _check_rate("alpha", alpha, rule, low, high)
        auto_mu = mu == "auto" or (isinstance(mu, (int, float)) and mu < 0)
        if isinstance(mu, str) and mu != "auto":
            raise ValueError(f"Invalid mu: {mu!r} (a number in [0, 1] or 'auto')")
        mu = 0.0 if auto_mu else _check_number("mu", mu, high=1.0)
        if grad_clip is not None:
            grad_clip = _check_number("grad_clip", grad_clip, low_open=True)
        if hvp not in HVP_MODES:
            raise ValueError(f"Invalid hvp: {hvp!r} (choose from {', '.join(HVP_MODES)})")
        if hvp == "finite-difference" and model is None:
            raise ValueError("Invalid model: hvp='finite-difference' needs model= (its "
                             "batch-norm statistics are restored after the second evaluation)")
        online = bool(online)
        hyper_every = _check_hyper_every(hyper_every)
        anneal = _horizon.canonical_anneal(anneal)
        warmup = _horizon.check_warmup(warmup)
        if total_steps is not None:
            total_steps = _horizon.check_total_steps(total_steps)
        lr0 = _check_number("lr", optimizer.param_groups[0]["lr"], low_open=True)
        ratios = []
        for group in optimizer.param_groups:
            ratios.append(_check_number("lr", group["lr"]) / lr0)

        self.alpha = alpha
        self.first_order = bool(first_order)
        self.grad_clip = grad_clip
        self.hvp = hvp
        self.model = model
        self.foreach = foreach if foreach is not None else True
        self.auto_mu = auto_mu
        self.process_group = process_group  # None: the default group, if initialised
        self.hyper_update = rule
        self.online = online
        self.anneal = anneal
        self.warmup = warmup
        self.hyper_every = hyper_every
        # Everything that changes while training lives in ``state`` (checkpointed).
        self.state: dict[str, Any] = {
            "lr": lr0,
            "hyper_lr": hyper_lr,
            "mu": mu,
            "c": 0.0,
            "step": 0,
            "nonfinite": 0,
            "overflows": 0,  # steps skipped because the scaled gradients overflowed
            "last_hypergradient": None,
            "ratios": ratios,
            "tangent_live": False,  # False while Z == 0 (start, or after a reset)
            "scale": lr0,  # s: the LR of step t is s * shape(t) (online: the LR itself)
            "phase": None if online else _horizon.WARMUP,
            "total_steps": total_steps,
            **_rule.initial_state(),
        }
        self._tangents: dict[Tensor, dict[str, Tensor]] = {}
        # hyper_every > 1: the cycle's earlier tangents, sum_j mu^(t-j) z_j (see _hvp_directions)
        self._cycle: dict[Tensor, Tensor] = {}
        self._prev_grad: dict[Tensor, Tensor] | None = None  # g_t, for auto-mu
        self._param_order: list[Tensor] | None = None  # model order, for hyper_step()
        if total_steps is not None:
            self._sync_lr()

    # ------------------------------------------------------------------ views
    @property
    def lr(self) -> float:
        """The LR of the next step (param group 0's; the others keep their ratio).

        HD's is the last step's: HD moves the LR when it sees the next gradient.
        """
        return self.state["lr"]

    @lr.setter
    def lr(self, value: float) -> None:
        """Make the next step's LR ``value`` (with a horizon: by setting the scale)."""
        value = _check_number("lr", value)
        if self.online:
            self.state["scale"] = value
            self._set_lr(value)
        else:
            self.scale = value / self._factor(self.state["step"])

    @property
    def scale(self) -> float:
        """``s``: the LR of step ``t`` is ``s * shape(t)`` (online: the LR itself)."""
        return self.state["scale"]

    @scale.setter
    def scale(self, value: float) -> None:
        self.state["scale"] = _check_number("scale", value)
        if self.online or self.state["total_steps"] is not None:
            self._sync_lr()

    @property
    def total_steps(self) -> int | None:
        """The run's length in steps (None until given; unused online)."""
        return self.state["total_steps"]

    @total_steps.setter
    def total_steps(self, value: int) -> None:
        self.state["total_steps"] = _horizon.check_total_steps(value)
        self._sync_lr()

    @property
    def phase(self) -> str | None:
        """``"warmup"``, ``"climb"`` or ``"fixed"`` (:mod:`adatune.methods.horizon`);
        None online."""
        return self.state["phase"]

    @property
    def mu(self) -> float:
        return self.state["mu"]

    @property
    def hyper_lr(self) -> float:
        return self.state["hyper_lr"]

    @property
    def last_hypergradient(self) -> float | None:
        return self.state["last_hypergradient"]

    @property
    def nonfinite_count(self) -> int:
        """How many hypergradients were not finite (and so left the LR unchanged)."""
        return self.state["nonfinite"]

    @property
    def overflow_count(self) -> int:
        """How many steps were skipped because their (scaled) gradients overflowed."""
        return self.state["overflows"]

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return self.optimizer.param_groups

    def __repr__(self) -> str:
        mu = "auto" if self.auto_mu else self.mu
        horizon = ("online=True" if self.online else
                   f"total_steps={self.total_steps}, anneal={self.anneal!r}, "
                   f"warmup={self.warmup:g}")
        every = "" if self.hyper_every == 1 else f", hyper_every={self.hyper_every}"
        return (f"{type(self).__name__}({type(self.optimizer).__name__}, lr={self.lr:.4g}, "
                f"hyper_lr={self.hyper_lr:.4g}, mu={mu}, alpha={self.alpha}, "
                f"hyper_update={self.hyper_update!r}, {horizon}{every})")

    # ------------------------------------------------------------- public API
    def step(self, loss: LossArg, val_loss: Callable[[], Tensor] | None = None, *,
             scaler: Any = None, hvp_loss: Callable[[], Tensor] | None = None) -> Tensor:
        """One training step: replaces ``loss.backward(); optimizer.step()``.

        ``loss`` is the minibatch training loss at the current weights, or a
        closure computing it (required for ``hvp="finite-difference"``, which
        evaluates it a second time on the same batch and dropout mask).
        MARTHE/RTHO need ``val_loss``: a closure returning the validation loss,
        called after the update. Returns the (detached) training loss. On the
        CPU a closure that needs an exact HVP runs under
        :func:`fast_double_backward`. Under a process group, ``loss`` and
        ``val_loss`` are this rank's; the returned loss is their mean over the
        ranks (scale each rank's loss by ``world * n_rank / n_global`` where the
        shards are uneven, so that the mean is the global batch's loss).

        Under ``torch.autocast`` the closures run in its dtype and the finite
        difference's step is sized for it. ``scaler``, a
        ``torch.amp.GradScaler``, scales the losses before differentiation
        and unscales the gradients through ``scaler.unscale_(optimizer)``
        (which records an overflow for ``scaler.update()``, the caller's to
        call after each step, as usual). A step whose gradients are not
        finite is skipped: no weight update, no tangent update, no
        hypergradient, and it does not count as a step of the horizon
        (:attr:`overflow_count` counts them).

        ``hvp_loss``: a closure returning the training loss on part of the
        batch (the first quarter, say). The Hessian-vector product is then
        taken on it (its gradient with ``create_graph``, or its finite
        difference) and ``loss``'s gradient without a double-backward graph:
        where the loss is a mean over examples, an unbiased estimate of the
        batch's HVP at a fraction of its cost. With ``model=``, batch-norm
        statistics are restored after its forwards.
        """
        if hvp_loss is not None and self.outer == "training":
            raise ValueError(f"{type(self).__name__}.step takes no hvp_loss (it has no "
                             "Hessian-vector product)")
        if hvp_loss is not None and not callable(hvp_loss):
            raise ValueError(f"Invalid hvp_loss: {hvp_loss!r} (a closure returning the loss on "
                             "part of the batch)")
        if self.outer == "validation" and val_loss is None:
            raise ValueError(f"{type(self).__name__}.step needs val_loss=, a closure "
                             "returning the validation loss")
        if self.outer == "training" and val_loss is not None:
            raise ValueError(f"{type(self).__name__}.step takes no val_loss")
        self._begin_step()
        params = self._params()
        if self.state["phase"] == _horizon.FIXED:
            return self._plain_step(params, loss, scaler)
        scaler = scaler if scaler is not None and scaler.is_enabled() else None
        device = params[0].device
        amp_dtype = _autocast_dtype(device)
        hyper = self._hyper_due()  # this step takes the HVP and the validation gradient
        use_hvp = hyper and self._wants_hvp()
        part = hvp_loss if use_hvp else None  # the HVP from part of the batch, if given
        fd = self.hvp == "finite-difference"
        rng = (_RngSnapshot(params[0].device) if fd and use_hvp and part is None
               and callable(loss) else None)
        create_graph = use_hvp and self.hvp == "exact" and part is None
        if not callable(loss):
            loss_value = loss
        elif create_graph and params[0].device.type == "cpu":  # measured there only
            with fast_double_backward():
                loss_value = loss()
        else:
            loss_value = loss()
        with _autocast_off(device):
            raw = torch.autograd.grad(_scaled(scaler, loss_value), params,
                                      create_graph=create_graph, allow_unused=True)
        live = [i for i, g in enumerate(raw) if g is not None]
        grads = [raw[i].detach() for i in live]
        used = [params[i] for i in live]

        hvps = None
        if part is not None:
            hvps = self._part_hvp(used, part, scaler, amp_dtype)
        elif use_hvp:
            if self.hvp == "exact":
                with _autocast_off(device):
                    hvps = self._exact_hvp(used, [raw[i] for i in live])
            else:
                if not callable(loss):
                    raise ValueError("hvp='finite-difference' needs loss to be a closure")
                hvps = self._fd_hvp(used, grads, lambda: _scaled(scaler, loss()), rng,
                                    amp_dtype)
        del raw
        group = _distributed.active_group(self.process_group)
        if group is not None:  # the global batch's gradient, HVP and loss
            used, grads, hvps, loss_value = _distributed.average_step(
                params, used, grads, hvps, loss_value, group)
        unscale = 1.0
        if scaler is not None:
            unscale = 1.0 / scaler.get_scale()
            if self._overflowed(scaler, params, used, grads):
                return self._skip(params, loss_value)
        if hvps is not None and unscale != 1.0:  # an overflow here reaches Z, then h's guard
            torch._foreach_mul_(hvps, unscale)

        if self.outer == "training" and self.state["tangent_live"]:
            # HD: dL_t(w_t)/d eta_{t-1}, the unclipped gradient of the regularised loss
            self._hyper_update(self._decayed_dot(used, grads), None)
        grads = self._prepare(used, grads, hvps, own_grads=True)
        if self.state["phase"] != _horizon.FIXED:  # HD may have just fixed the scale
            self._advance(params, used, grads, hvps)
        self._apply(params, used, grads)
        self.optimizer.step()
        _weights_changed(device)
        if self.outer == "validation" and hyper:
            val = val_loss()
            with _autocast_off(device):
                gv = torch.autograd.grad(_scaled(scaler, val), params, allow_unused=True)
            self._validation_update(params, gv, unscale)
        return self._end_step(loss_value)

    def _plain_step(self, params: list[Tensor], loss: LossArg, scaler: Any = None) -> Tensor:
        """A step of the optimizer along the schedule, with no hypergradient (phase fixed)."""
        scaler = scaler if scaler is not None and scaler.is_enabled() else None
        loss_value = loss() if callable(loss) else loss
        with _autocast_off(params[0].device):
            raw = torch.autograd.grad(_scaled(scaler, loss_value), params, allow_unused=True)
        live = [i for i, g in enumerate(raw) if g is not None]
        grads, used = [raw[i] for i in live], [params[i] for i in live]
        group = _distributed.active_group(self.process_group)
        if group is not None:
            used, grads, _, loss_value = _distributed.average_step(
                params, used, grads, None, loss_value, group)
        if scaler is not None and self._overflowed(scaler, params, used, grads):
            return self._skip(params, loss_value)
        grads = self._prepare(used, grads, None, own_grads=True)
        self._apply(params, used, grads)
        self.optimizer.step()
        _weights_changed(params[0].device)
        return self._end_step(loss_value)

    def _overflowed(self, scaler: Any, params: list[Tensor], used: list[Tensor],
                    grads: list[Tensor]) -> bool:
        """Unscale ``grads`` in place through the scaler (it records the overflow for its
        ``update()``); whether any of them is not finite."""
        for p in params:
            p.grad = None
        for p, g in zip(used, grads):
            p.grad = g
        scaler.unscale_(self.optimizer)
        if not grads:
            return False
        with torch.no_grad():
            total = torch.stack(torch._foreach_norm(grads)).sum()
        return not math.isfinite(float(total))

    def _skip(self, params: list[Tensor], loss_value: Tensor) -> Tensor:
        """An overflowed step: the weights, the optimizer, the tangent and the LR stay."""
        for p in params:
            p.grad = None
        self.state["overflows"] += 1
        return loss_value.detach()

    def _begin_step(self) -> None:
        """Enter the step's phase and give it its LR (with a horizon)."""
        if self.online:
            return
        s = self.state
        if s["total_steps"] is None:
            raise ValueError(f"Invalid total_steps: None ({type(self).__name__} with a horizon "
                             "needs the run's length before its first step: total_steps=N, "
                             "or online=True for the papers' tuner without one)")
        if s["phase"] == _horizon.WARMUP and s["step"] >= self._warmup_steps():
            s["phase"] = _horizon.CLIMB
        self._sync_lr()

    def _end_step(self, loss_value: Tensor | None) -> Tensor | None:
        self.state["step"] += 1
        if not self.online and self.outer == "validation":
            self._sync_lr()  # the next step's LR, as the LR a tuner shows between steps
        if loss_value is None:  # a step from given gradients, without the loss
            return None
        loss_value = loss_value.detach()
        if self.hyper_update == _rule.SCALE_FREE:  # gates the next steps' back-off
            _rule.note_loss(self.state, float(loss_value))
        return loss_value

    def compute_hg(self, model: nn.Module, first_grad: Sequence[Tensor | None]) -> None:
        """Low-level API of the original AdaTune: advance the tangent.

        ``first_grad`` are the training gradients for ``model.parameters()``
        (in that order), computed with ``create_graph=True`` when the
        curvature term is used. Then set ``p.grad``, call
        ``optimizer.step()`` and :meth:`hyper_step`. With ``grad_clip``, clip
        the gradients with ``clip_grad_norm_(..., grad_clip)`` before the step.
        This API takes every step's HVP and hypergradient: a tuner made with
        ``hyper_every`` > 1 refuses it (use :meth:`step`).
        """
        self._single_process("compute_hg")
        if self.hyper_every != 1:
            raise ValueError(f"Invalid call: compute_hg() takes every step's HVP; this tuner "
                             f"has hyper_every={self.hyper_every} (use step())")
        order = list(model.parameters())
        if len(order) != len(first_grad):
            raise ValueError("first_grad must hold one entry per model.parameters()")
        self._param_order = order
        self._begin_step()
        if self.state["phase"] == _horizon.FIXED:
            return
        by_param = dict(zip(order, first_grad))
        params = self._params()
        used = [p for p in params if by_param.get(p) is not None]
        graphs = [by_param[p] for p in used]
        grads = [g.detach() for g in graphs]
        hvps = None
        if self._wants_hvp():
            if not all(g.requires_grad for g in graphs):
                raise ValueError("first_grad needs create_graph=True (or use first_order=True)")
            hvps = self._exact_hvp(used, graphs)
        # These tensors are the caller's (they become p.grad): never modified in place.
        grads = self._prepare(used, grads, hvps, own_grads=False)
        self._advance(params, used, grads, hvps)
        if self.auto_mu:
            self._prev_grad = dict(zip(used, self._decayed(used, grads)))

    def hyper_step(self, val_grad: Sequence[Tensor | None] | Mapping[Tensor, Tensor]) -> float:
        """Low-level API: update the learning rate from the validation gradient.

        ``val_grad`` holds the validation gradients at the updated weights, in
        ``model.parameters()`` order (as given to :meth:`compute_hg`) or as a
        mapping ``param -> grad``. Returns the hypergradient.
        """
        self._single_process("hyper_step")
        if self.hyper_every != 1:
            raise ValueError(f"Invalid call: hyper_step() takes every step's hypergradient; "
                             f"this tuner has hyper_every={self.hyper_every} (use step())")
        if isinstance(val_grad, Mapping):
            by_param = val_grad
        else:
            if self._param_order is None:
                raise ValueError("call compute_hg() before hyper_step()")
            by_param = dict(zip(self._param_order, val_grad))
        params = self._params()
        if self.state["phase"] != _horizon.FIXED:
            self._validation_update(params, [by_param.get(p) for p in params])
        self.state["step"] += 1
        if not self.online:
            self._sync_lr()
        return self.last_hypergradient

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        """The tuner's state, nesting the optimizer's (tensors are not copied)."""
        index = {p: i for i, p in enumerate(self._params())}
        tangents = {index[p]: dict(t) for p, t in self._tangents.items() if p in index}
        prev = (None if self._prev_grad is None
                else {index[p]: g for p, g in self._prev_grad.items() if p in index})
        return {
            "optimizer": self.optimizer.state_dict(),
            "tuner": {**self.state, "ratios": list(self.state["ratios"]),
                      "auto_mu": self.auto_mu, "hyper_update": self.hyper_update,
                      "online": self.online, "anneal": self.anneal, "warmup": self.warmup,
                      "hyper_every": self.hyper_every},
            "tangents": tangents,
            "prev_grad": prev,
            "cycle": {index[p]: c for p, c in self._cycle.items() if p in index},
        }

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore tuner and optimizer state saved by :meth:`state_dict`."""
        self.optimizer.load_state_dict(state_dict["optimizer"])
        tuner = dict(state_dict["tuner"])
        self.auto_mu = bool(tuner.pop("auto_mu", self.auto_mu))
        # The rule gives hyper_lr its meaning: adopt the saved one (states saved before
        # the choice existed were additive), as torch adopts a saved group's settings.
        self.hyper_update = _rule.canonical_hyper_update(tuner.pop("hyper_update",
                                                                   _rule.ADDITIVE))
        # The same for the horizon (states saved before it existed were online). A total
        # given to this tuner wins over the saved one: a resumed run may be longer.
        self.online = bool(tuner.pop("online", True))
        self.anneal = _horizon.canonical_anneal(tuner.pop("anneal", self.anneal))
        self.warmup = _horizon.check_warmup(tuner.pop("warmup", self.warmup))
        # The cycle's length too (states saved before it existed took every step's HVP).
        self.hyper_every = _check_hyper_every(tuner.pop("hyper_every", 1))
        tuner.setdefault("scale", tuner.get("lr", self.state["lr"]))
        tuner.setdefault("phase", None if self.online else _horizon.WARMUP)
        total = self.state["total_steps"]
        self.state.update(tuner)
        if total is not None:
            self.state["total_steps"] = total
        params = self._params()
        self._tangents = {}
        for i, tensors in state_dict.get("tangents", {}).items():
            p = params[int(i)]
            self._tangents[p] = {k: v.to(device=p.device, dtype=p.dtype).clone()
                                 for k, v in tensors.items()}
        self._cycle = {params[int(i)]: c.to(device=params[int(i)].device,
                                            dtype=params[int(i)].dtype).clone()
                       for i, c in state_dict.get("cycle", {}).items()}
        prev = state_dict.get("prev_grad")
        self._prev_grad = (None if prev is None
                           else {params[int(i)]: g.clone() for i, g in prev.items()})
        if self.online or self.state["total_steps"] is None:
            self._set_lr(self.state["lr"])
        else:
            self._sync_lr()

    # -------------------------------------------------------------- internals
    def _single_process(self, name: str) -> None:
        group = _distributed.active_group(self.process_group)
        if group is not None:
            raise ValueError(f"Invalid call: {name}() does not average across the "
                             f"{torch.distributed.get_world_size(group)} ranks of the process "
                             "group; use step(), which does")

    def _params(self) -> list[Tensor]:
        return [p for g in self.optimizer.param_groups for p in g["params"] if p.requires_grad]

    def _hyper_due(self) -> bool:
        """This tuned step is the ``hyper_every``-th of its cycle (always, with 1)."""
        k = self.hyper_every
        return k == 1 or self.state["step"] % k == k - 1

    def _wants_hvp(self) -> bool:
        """The curvature term matters: mu != 0, not first order, and Z != 0."""
        return not self.first_order and self.state["mu"] != 0 and self.state["tangent_live"]

    def _hvp_directions(self, used: list[Tensor]) -> list[Tensor]:
        """The tangent the HVP multiplies: ``z_t``; with ``hyper_every`` > 1, the cycle's
        tangents ``z_t + sum_j mu^(t-j) z_j``, each weighted as the dynamics would have
        carried its curvature term to this step (docs/math.md, "Every k steps")."""
        zs = [self._tangents[p]["z"] for p in used]
        if not self._cycle:
            return zs
        mu = self.state["mu"]
        return [z if p not in self._cycle else torch.add(z, self._cycle[p], alpha=mu)
                for p, z in zip(used, zs)]

    def _note_cycle(self, params: list[Tensor], mu: float) -> None:
        """Before a tangent step with ``hyper_every`` > 1: add ``z`` to the cycle's sum
        (``c <- mu c + z``) on a step without the HVP, empty it on the step with."""
        if self.hyper_every == 1 or self.first_order:
            return
        if self._hyper_due():
            self._cycle = {}
            return
        for p in params:
            if p not in self._cycle:  # the cycle's first step (c = 0), or a new parameter
                self._cycle[p] = torch.zeros_like(p)
        cycle = [self._cycle[p] for p in params]  # one foreach pass, not one per tensor
        torch._foreach_mul_(cycle, mu)
        torch._foreach_add_(cycle, [self._tangents[p]["z"] for p in params])

    def _exact_hvp(self, used: list[Tensor], graphs: Sequence[Tensor | None]) -> list[Tensor]:
        zs = self._hvp_directions(used)
        live = [i for i, g in enumerate(graphs) if g is not None and g.requires_grad]
        if not live:  # no gradient depends on the weights: the Hessian is 0
            return [torch.zeros_like(p) for p in used]
        hz = torch.autograd.grad([graphs[i] for i in live], used,
                                 grad_outputs=[zs[i] for i in live], allow_unused=True)
        return [torch.zeros_like(p) if h is None else h for p, h in zip(used, hz)]

    def _part_hvp(self, used: list[Tensor], part: Callable[[], Tensor], scaler: Any,
                  amp_dtype: torch.dtype | None) -> list[Tensor]:
        """The HVP of ``part()``, the loss on part of the batch (step's ``hvp_loss``)."""
        device = used[0].device
        buffers = self._buffers()
        try:
            if self.hvp == "exact":
                fast = device.type == "cpu"  # as for the whole batch's HVP
                with fast_double_backward() if fast else contextlib.nullcontext():
                    value = part()
                with _autocast_off(device):
                    graphs = torch.autograd.grad(_scaled(scaler, value), used, create_graph=True,
                                                 allow_unused=True)
                    return self._exact_hvp(used, graphs)
            rng = _RngSnapshot(device)
            value = part()
            with _autocast_off(device):
                raw = torch.autograd.grad(_scaled(scaler, value), used, allow_unused=True)
            grads = [torch.zeros_like(p) if g is None else g for p, g in zip(used, raw)]
            return self._fd_hvp(used, grads, lambda: _scaled(scaler, part()), rng, amp_dtype)
        finally:
            self._restore_buffers(buffers)

    def _buffers(self) -> list[Tensor]:
        """A copy of ``model``'s buffers (batch-norm statistics), when it was given."""
        return [] if self.model is None else [b.detach().clone() for b in self.model.buffers()]

    def _restore_buffers(self, saved: list[Tensor]) -> None:
        if saved:
            with torch.no_grad():
                torch._foreach_copy_(list(self.model.buffers()), saved)

    def _fd_hvp(self, used: list[Tensor], grads: list[Tensor], closure: Callable[[], Tensor],
                rng: _RngSnapshot, amp_dtype: torch.dtype | None = None) -> list[Tensor]:
        """One-sided finite difference of gradients along z, on the same batch.

        The step is sized for the precision the forward runs in: under autocast
        a shift below the autocast dtype's resolution would vanish in its casts.
        """
        zs = self._hvp_directions(used)
        with torch.no_grad():
            z_norm = float(torch.linalg.vector_norm(torch.stack(torch._foreach_norm(zs))))
            w_norm = float(torch.linalg.vector_norm(torch.stack(torch._foreach_norm(used))))
        if z_norm == 0 or not math.isfinite(z_norm):
            return [torch.zeros_like(p) for p in used]
        dtype = used[0].dtype if amp_dtype is None else amp_dtype
        eps = math.sqrt(torch.finfo(dtype).eps) * (1.0 + w_norm) / z_norm
        buffers = self._buffers()
        try:
            with torch.no_grad():
                torch._foreach_add_(used, zs, alpha=eps)
            _weights_changed(used[0].device)
            with rng.replay():
                shifted_loss = closure()
            with _autocast_off(used[0].device):
                shifted = torch.autograd.grad(shifted_loss, used, allow_unused=True)
        finally:
            with torch.no_grad():
                # Shift back instead of keeping a copy of every weight: w + eps z - eps z
                # equals w up to rounding, well inside the finite difference's own error.
                torch._foreach_add_(used, zs, alpha=-eps)
                _weights_changed(used[0].device)
            self._restore_buffers(buffers)
        out = []
        for p, g, s in zip(used, grads, shifted):
            # the shifted gradients are fresh tensors of ours: difference them in place
            out.append(torch.zeros_like(p) if s is None else s.detach().sub_(g).div_(eps))
        return out

    def _clip_factor(self, grads: list[Tensor]) -> tuple[float, float] | None:
        """(scale, norm) when gradient clipping is active at this step, else None."""
        if self.grad_clip is None or not grads:
            return None
        norm = float(torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads))))
        scale = self.grad_clip / (norm + _CLIP_EPS)
        return (scale, norm) if scale < 1.0 else None

    def _group_slices(self, used: list[Tensor]):
        """Yield (group index, group, indices into ``used``) per param group."""
        where = {p: i for i, p in enumerate(used)}
        for gi, group in enumerate(self.optimizer.param_groups):
            idx = [where[p] for p in group["params"] if p in where]
            if idx:
                yield gi, group, idx

    def _coupled_decay(self, group: Mapping[str, Any]) -> float:
        return 0.0 if self._dyn.decoupled else float(group["weight_decay"])

    @torch.no_grad()
    def _prepare(self, used, grads, hvps, *, own_grads: bool) -> list[Tensor]:
        """Clip the gradient (and, exactly, its tangent ``hvps``, in place).

        Returns the gradient the optimizer gets; ``own_grads`` allows scaling
        ``grads`` in place. With s = C / (|g| + 1e-6) the tangent of s g is
        s Hz + g ds.
        """
        clip = self._clip_factor(grads)
        if clip is None:
            return grads
        scale, norm = clip
        if hvps is not None:
            ds = -self.grad_clip * self._dot(grads, hvps) / (norm * (norm + _CLIP_EPS) ** 2)
            torch._foreach_mul_(hvps, scale)
            torch._foreach_add_(hvps, grads, alpha=ds)
        if own_grads:
            torch._foreach_mul_(grads, scale)
            return grads
        return torch._foreach_mul(grads, scale)

    def _decayed(self, used, grads) -> list[Tensor]:
        """New tensors ``g + lambda*w`` (coupled decay): the gradient the optimizer uses."""
        out = list(grads)
        for _, group, idx in self._group_slices(used):
            wd = self._coupled_decay(group)
            if wd != 0:
                decayed = torch._foreach_add([grads[i] for i in idx], [used[i] for i in idx],
                                             alpha=wd)
                for i, g in zip(idx, decayed):
                    out[i] = g
        return out

    def _decayed_dot(self, used, grads) -> float:
        """<g + lambda*w, z>, without building g + lambda*w."""
        total = 0.0
        for _, group, idx in self._group_slices(used):
            zs = [self._tangents[used[i]]["z"] for i in idx]
            total += self._dot([grads[i] for i in idx], zs)
            wd = self._coupled_decay(group)
            if wd != 0:
                total += wd * self._dot([used[i] for i in idx], zs)
        return total

    @torch.no_grad()
    def _advance(self, params, used, grads, hvps) -> None:
        """Z <- mu * A_t Z + B_t with the learning rate of this step.

        ``grads``: the (clipped) loss gradient; ``hvps``: its tangent, or None.
        The weight decay belongs to the dynamics (:mod:`._tangent`).
        """
        mu = self.state["mu"]
        self._ensure_tangents(params)
        self._note_cycle(params, mu)
        used_set = set(used)
        skipped = [p for p in params if p not in used_set]
        if skipped and mu != 1:
            # The optimizer leaves these parameters (and their buffers) alone: A = I, B = 0.
            for p in skipped:
                torch._foreach_mul_(list(self._tangents[p].values()), mu)
        # B_t = d Phi_t / d s: the group's ratio to the scale at this step, shape included
        shape = 1.0 if self.online else self._factor(self.state["step"])
        for gi, group, idx in self._group_slices(used):
            ratio = self.state["ratios"][gi]
            hz = None if hvps is None or mu == 0 else [hvps[i] for i in idx]
            self._advance_group(group, [used[i] for i in idx], [grads[i] for i in idx], hz,
                                lr=ratio * self.state["lr"], ratio=ratio * shape, mu=mu)
        self.state["tangent_live"] = True

    def _advance_group(self, group, ps, gs, hz, *, lr, ratio, mu) -> None:
        tan = [self._tangents[p] for p in ps]
        opt_state = [self.optimizer.state.get(p, {}) for p in ps]
        if self._dyn.kind == "sgd":
            momentum = float(group["momentum"])
            _tangent.sgd_tangent_(
                ps, gs, hz,
                [s.get("momentum_buffer") for s in opt_state],
                [t["z"] for t in tan],
                [t["y"] for t in tan] if momentum != 0 else None,
                lr=lr, ratio=ratio, weight_decay=float(group["weight_decay"]),
                momentum=momentum,
                dampening=float(group["dampening"]), nesterov=bool(group["nesterov"]),
                mu=mu, foreach=self.foreach,
            )
        else:
            beta1, beta2 = (float(b) for b in group["betas"])
            _tangent.adam_tangent_(
                ps, gs, hz,
                [s.get("exp_avg") for s in opt_state],
                [s.get("exp_avg_sq") for s in opt_state],
                [int(s["step"]) if "step" in s else 0 for s in opt_state],
                [t["z"] for t in tan], [t["p"] for t in tan], [t["q"] for t in tan],
                lr=lr, ratio=ratio, beta1=beta1, beta2=beta2, eps=float(group["eps"]),
                weight_decay=self._coupled_decay(group),
                decoupled_weight_decay=float(group["weight_decay"]) if self._dyn.decoupled
                else 0.0,
                mu=mu, foreach=self.foreach,
            )

    def _ensure_tangents(self, params: list[Tensor]) -> None:
        for group in self.optimizer.param_groups:
            keys = self._dyn.tangent_keys(group)
            for p in group["params"]:
                if p.requires_grad and p not in self._tangents:
                    self._tangents[p] = {k: torch.zeros_like(p) for k in keys}

    def _apply(self, params, used, grads) -> None:
        """Hand the (clipped) gradients to the optimizer; keep g_t for auto-mu."""
        for p in params:
            p.grad = None
        for p, g in zip(used, grads):
            p.grad = g
        if self.auto_mu:
            self._prev_grad = dict(zip(used, self._decayed(used, grads)))

    def _validation_update(self, params: list[Tensor], val_grads: Sequence[Tensor | None],
                           unscale: float = 1.0) -> None:
        """``unscale``: one over the loss scale the validation gradients carry."""
        pairs = [(g, self._tangents[p]["z"]) for p, g in zip(params, val_grads)
                 if g is not None and p in self._tangents]
        h = self._dot([g.detach() for g, _ in pairs], [z for _, z in pairs]) * unscale
        g_dot = None
        if self.auto_mu and self._prev_grad is not None:
            prev = [(g.detach(), self._prev_grad[p]) for p, g in zip(params, val_grads)
                    if g is not None and p in self._prev_grad]
            g_dot = self._dot([a for a, _ in prev], [b for _, b in prev]) * unscale
        group = _distributed.active_group(self.process_group)
        if group is not None:
            # Z and g_t are the same on every rank: averaging these dot products is
            # averaging the validation gradient (exactly, in exact arithmetic).
            device = params[0].device
            if g_dot is None:
                [h] = _distributed.average_scalars([h], group, device)
            else:
                h, g_dot = _distributed.average_scalars([h, g_dot], group, device)
        self._hyper_update(h, g_dot, self._update_hyper_lr())

    def _update_hyper_lr(self) -> float | None:
        """The hyper-LR of one update: ``hyper_every`` times the per-step one, within the
        rule's range (None: the per-step one)."""
        if self.hyper_every == 1:
            return None
        high = _rule.hyper_lr_range(self.hyper_update)[1]
        return min(self.hyper_every * self.state["hyper_lr"], high)

    def _hyper_update(self, h: float, g_dot: float | None,
                      hyper_lr: float | None = None) -> None:
        """Move the scale by the rule (:mod:`adatune.methods.hyper_update`) within the
        phase (:mod:`adatune.methods.horizon`); adapt beta and mu. ``hyper_lr``: this
        update's (default: ``state["hyper_lr"]``)."""
        s = self.state
        beta = s["hyper_lr"] if hyper_lr is None else hyper_lr
        s["last_hypergradient"] = h
        additive = self.hyper_update == _rule.ADDITIVE
        x = s["scale"] * h  # the scale-free rule averages x and x * x: both must be finite
        if not math.isfinite(h) or not (additive or math.isfinite(x * x)):
            # Never let a non-finite hypergradient reach the LR (or the rule's moving
            # averages); restart the tangent.
            s["nonfinite"] += 1
            for t in self._tangents.values():
                torch._foreach_zero_(list(t.values()))
            s["tangent_live"] = False
            return
        r_prev = s["hyper_r"]
        if additive:
            scale = _rule.additive_step(s["scale"], h, hyper_lr=beta)
        else:
            scale = _rule.scale_free_step(s["scale"], h, s, hyper_lr=beta,
                                          calm="evidence" if self.online else "even")
        if s["phase"] == _horizon.WARMUP and scale > s["scale"]:
            # A "raise" is evidence about the LR in use (scale * shape, below the scale
            # in the ramp): the scale rises only as far as carrying that LR up requires.
            scale = max(s["scale"], scale * self._factor(s["step"]))
        if s["phase"] == _horizon.CLIMB and not scale > s["scale"]:
            self._fix()  # the evidence no longer says "raise": the scale is final
            return
        s["scale"] = scale
        if self.online:
            self._set_lr(scale)
        else:
            self._sync_lr()
        eta = s["lr"]
        if self.alpha != 0:
            s["hyper_lr"] = _rule.adapt_hyper_lr(self.hyper_update, s["hyper_lr"], h, eta,
                                                 alpha=self.alpha, r=s["hyper_r"],
                                                 r_prev=r_prev)
        if self.auto_mu:
            # q = eta_new / <grad E(w_{t+1}), g_t>; a non-finite q counts as 0.
            q = eta / g_dot if g_dot else float("nan")
            z = min(max(q, 0.0), 1.0) if math.isfinite(q) else 0.0
            mu = s["mu"]
            s["c"] = s["c"] * (1.0 if mu > 0 else 0.0) + mu
            s["mu"] = z ** (1.0 / (s["c"] + 1.0))

    def _fix(self) -> None:
        """Enter phase fixed: no more hypergradients, and their memory is released."""
        self.state["phase"] = _horizon.FIXED
        self._tangents = {}
        self._prev_grad = None
        self.state["tangent_live"] = False

    def _warmup_steps(self) -> int:
        return _horizon.warmup_steps(self.state["total_steps"], self.warmup)

    def _factor(self, step: int) -> float:
        """shape(step): the LR of step ``step`` over the scale (1 online)."""
        if self.online:
            return 1.0
        total = self.state["total_steps"]
        if total is None:
            raise ValueError("Invalid total_steps: None (the run's length is not known yet)")
        return _horizon.factor(step, total, self.warmup, self.anneal)

    def _sync_lr(self) -> None:
        """The LR of the step at hand: ``s * shape(step)``."""
        self._set_lr(self.state["scale"] * self._factor(self.state["step"]))

    def _set_lr(self, eta: float) -> None:
        self.state["lr"] = eta
        for group, ratio in zip(self.optimizer.param_groups, self.state["ratios"]):
            value = ratio * eta
            if isinstance(group["lr"], Tensor):
                group["lr"].fill_(value)
            else:
                group["lr"] = value

    @staticmethod
    @torch.no_grad()
    def _dot(xs: Iterable[Tensor], ys: Iterable[Tensor]) -> float:
        terms = [torch.vdot(x.reshape(-1), y.reshape(-1)).double() for x, y in zip(xs, ys)]
        return float(torch.stack(terms).sum()) if terms else 0.0


def _autocast_dtype(device: torch.device) -> torch.dtype | None:
    """The dtype autocast gives the forward on ``device`` now (None when it is off)."""
    kind = device.type
    return torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else None


def _autocast_off(device: torch.device) -> contextlib.AbstractContextManager:
    """The tuner's backward passes run with autocast off (each op's backward then runs
    in the dtype its forward ran in)."""
    if torch.is_autocast_enabled(device.type):
        return torch.autocast(device.type, enabled=False)
    return contextlib.nullcontext()


def _weights_changed(device: torch.device) -> None:
    """Weights changed in place: drop autocast's cached low-precision copies of them
    (inside one autocast region it would otherwise reuse the copies of the old weights).
    Outside autocast there is no cache to drop: nothing on the plain step's path."""
    if torch.is_autocast_enabled(device.type) and torch.is_autocast_cache_enabled():
        torch.clear_autocast_cache()


def _scaled(scaler: Any, loss: Tensor) -> Tensor:
    return loss if scaler is None else scaler.scale(loss)


class _RngSnapshot:
    """The RNG state before the training forward, to replay its dropout mask."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.cpu = torch.get_rng_state()
        self.accel = torch.cuda.get_rng_state(device) if device.type == "cuda" else None

    @contextlib.contextmanager
    def replay(self) -> Iterator[None]:
        """Run the block from the saved state; the stream continues as if it had not run."""
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.set_rng_state(self.cpu)
            if self.accel is not None:
                torch.cuda.set_rng_state(self.accel, self.device)
            yield


class MARTHE(HypergradientTuner):
    """MARTHE (Donini et al., 2020): ``Z <- mu A Z + B``, validation hypergradient.

    >>> tuner = MARTHE(optimizer, total_steps=2000)  # warm-up, tuned, then cosine
    >>> tuner.step(loss, val_loss=lambda: criterion(model(xv), yv))
    >>> MARTHE(optimizer, online=True, hyper_lr=1e-8, hyper_update="additive")  # the paper's
    """


class RTHO(HypergradientTuner):
    """RTHO (Franceschi et al., 2017): MARTHE with ``mu = 1`` (exact forward-mode)."""

    _name = "rtho"

    def __init__(self, optimizer: torch.optim.Optimizer, hyper_lr: float | None = None,
                 **kwargs: Any) -> None:
        if "mu" in kwargs:
            raise ValueError("Invalid mu: RTHO fixes mu = 1 (use MARTHE for other values)")
        super().__init__(optimizer, hyper_lr, mu=1.0, **kwargs)


class HD(HypergradientTuner):
    """Hypergradient descent (Baydin et al., 2018), exact through the optimizer's update.

    Before each update the LR moves along ``-dL_t(w_t)/d eta_{t-1}``; for SGD
    this is ``eta_t = eta_{t-1} + beta * g_t . g_{t-1}``.

    >>> tuner = HD(optimizer, total_steps=1000)  # HD(optimizer, online=True): the paper's
    >>> tuner.step(loss)
    """

    outer = "training"
    _name = "hd"

    def __init__(self, optimizer: torch.optim.Optimizer, hyper_lr: float | None = None, *,
                 alpha: float = DEFAULT_ALPHA, grad_clip: float | None = None,
                 foreach: bool | None = None, process_group: Any = None,
                 hyper_update: str = _rule.DEFAULT_HYPER_UPDATE,
                 total_steps: int | None = None, anneal: str = _horizon.DEFAULT_ANNEAL,
                 warmup: float = _horizon.DEFAULT_WARMUP, online: bool = False,
                 hyper_every: int = DEFAULT_HYPER_EVERY) -> None:
        if _check_hyper_every(hyper_every) != 1:
            raise ValueError(f"Invalid hyper_every: {hyper_every!r} (HD takes no HVP and no "
                             "validation gradient to space out: it applies to MARTHE and RTHO)")
        super().__init__(optimizer, hyper_lr, mu=0.0, alpha=alpha, grad_clip=grad_clip,
                         foreach=foreach, process_group=process_group,
                         hyper_update=hyper_update, total_steps=total_steps, anneal=anneal,
                         warmup=warmup, online=online)

    def step_from_grads(self, loss: Tensor | None = None) -> None:
        """One step from the gradients already in ``p.grad`` (``loss.backward()`` ran).

        The same arithmetic as :meth:`step`, which computes those gradients
        itself. The gradients are not averaged across ranks (a framework's
        ``DistributedDataParallel`` already has); ``loss``, the step's training
        loss, is (one scalar): it gates the scale-free rule's back-off, which
        must agree on every rank. Without it every step counts as one where
        the loss rises (the back-off at its fastest).
        :class:`adatune.HDOptimizer` is this as a ``torch.optim.Optimizer``.
        """
        group = _distributed.active_group(self.process_group)
        if loss is not None and group is not None:
            [mean] = _distributed.average_scalars([float(loss)], group, loss.device)
            loss = torch.tensor(mean)
        self._begin_step()
        params = self._params()
        used = [p for p in params if p.grad is not None]
        grads = [p.grad.detach() for p in used]
        fixed = self.state["phase"] == _horizon.FIXED
        if not fixed and self.state["tangent_live"]:
            self._hyper_update(self._decayed_dot(used, grads), None)
        grads = self._prepare(used, grads, None, own_grads=True)
        if self.state["phase"] != _horizon.FIXED:
            self._advance(params, used, grads, None)
        self._apply(params, used, grads)
        self.optimizer.step()
        self._end_step(None if loss is None else loss.detach())
