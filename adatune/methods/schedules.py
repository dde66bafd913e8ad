"""Baseline (non-adaptive) learning-rate schedules over ``torch.optim.lr_scheduler``.

constant, staircase (step decay every ``step_size`` epochs), exponential (decay
by ``lr_decay`` every epoch) and cosine annealing with warm restarts (period
``t_0`` epochs, multiplied by ``t_mult`` after each restart), the latter
stepped every iteration as in the original AdaTune. :class:`ReplayLR` replays
a recorded schedule (a tuner's, learned once) step for step.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.optim import lr_scheduler

from adatune.catalog import SCHEDULE_NAMES, canonical_schedule
from adatune.errors import ConfigError

__all__ = [
    "SCHEDULE_NAMES",
    "Schedule",
    "ScheduleConfig",
    "build_schedule",
    "canonical_schedule",
]


@dataclass(frozen=True)
class ScheduleConfig:
    """A baseline schedule. ``step_size``/``t_0`` count epochs."""

    name: str = "constant"
    step_size: int = 3
    lr_decay: float = 0.5
    t_0: int = 2
    t_mult: int = 2

    def __post_init__(self) -> None:
        object.__setattr__(self, "name", canonical_schedule(self.name))
        if self.step_size < 1:
            raise ConfigError(f"invalid step_size: {self.step_size} (must be >= 1)")
        if not (math.isfinite(self.lr_decay) and 0 < self.lr_decay <= 1):
            raise ConfigError(f"invalid lr_decay: {self.lr_decay} (must be in (0, 1])")
        if self.t_0 < 1:
            raise ConfigError(f"invalid t_0: {self.t_0} (must be >= 1)")
        if self.t_mult < 1:
            raise ConfigError(f"invalid t_mult: {self.t_mult} (must be >= 1)")


class ReplayLR(lr_scheduler.LRScheduler):
    """Replay a recorded learning-rate schedule: one LR per scheduler step.

    >>> scheduler = adatune.ReplayLR(optimizer, lrs)   # lrs[t]: the LR of step t
    >>> for x, y in loader:
    ...     loss_fn(model(x), y).backward(); optimizer.step(); scheduler.step()

    Step ``t`` (counted by :meth:`step` calls; 0 after construction) runs at
    ``scale * lrs[t]``, value for value, so replaying a run's recorded LRs
    reproduces its LR sequence exactly. ``total_steps`` stretches (or shrinks)
    the schedule onto a run of that many steps, linearly in progress: step
    ``t`` takes the schedule at position ``t * len(lrs) / total_steps``,
    linearly interpolated between the two recorded steps around it, so step
    ``t`` of the new run and step ``t * len(lrs) / total_steps`` of the
    recorded one sit at the same fraction of training and agree exactly where
    that position is a whole step. Past the end the last LR is kept.

    Group 0 of the optimizer follows the schedule; every other param group
    keeps its initial ratio to group 0. Step it per epoch instead of per
    iteration to replay one LR per epoch. The schedule is part of
    :meth:`state_dict` (as a float64 tensor), which ``torch.load(...,
    weights_only=True)`` reads back.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, lrs: Sequence[float], *,
                 total_steps: int | None = None, scale: float = 1.0,
                 last_epoch: int = -1) -> None:
        self.lrs = check_lrs(lrs)
        if total_steps is not None and (isinstance(total_steps, bool)
                                        or not isinstance(total_steps, int) or total_steps < 1):
            raise ValueError(f"Invalid total_steps: {total_steps!r} (a whole number >= 1)")
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) \
                or not math.isfinite(scale) or scale <= 0:
            raise ValueError(f"Invalid scale: {scale!r} (a finite number > 0)")
        self.total_steps = total_steps
        self.scale = float(scale)
        super().__init__(optimizer, last_epoch)

    def lr_at(self, step: int) -> float:
        """The LR of group 0 at scheduler step ``step``."""
        lrs, n = self.lrs, len(self.lrs)
        if self.total_steps is None:
            index, rem = step, 0
        else:
            index, rem = divmod(step * n, self.total_steps)
        if index >= n - 1:
            value = lrs[-1]
        elif rem == 0:
            value = lrs[index]
        else:
            low = lrs[index]
            value = low + (lrs[index + 1] - low) * (rem / self.total_steps)
        return value if self.scale == 1.0 else value * self.scale

    def get_lr(self) -> list[float]:
        value = self.lr_at(max(self.last_epoch, 0))
        base0 = self.base_lrs[0]
        return [value if i == 0 or not base0 else value * (float(base) / float(base0))
                for i, base in enumerate(self.base_lrs)]

    def _get_closed_form_lr(self) -> list[float]:
        return self.get_lr()

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["lrs"] = torch.tensor(self.lrs, dtype=torch.float64)
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state = dict(state_dict)
        lrs = state.pop("lrs")
        super().load_state_dict(state)
        self.lrs = check_lrs(lrs.tolist() if isinstance(lrs, torch.Tensor) else lrs)


def check_lrs(lrs: Sequence[float]) -> list[float]:
    """``lrs`` as a list of floats, or ValueError: it must be non-empty, finite and >= 0."""
    try:
        values = [float(v) for v in lrs]
    except (TypeError, ValueError):
        raise ValueError(f"Invalid lrs: {type(lrs).__name__} (a sequence of numbers)") from None
    if not values:
        raise ValueError("Invalid lrs: empty (at least one learning rate)")
    for step, value in enumerate(values):
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"Invalid lrs: {value!r} at step {step} (learning rates are "
                             "finite and >= 0)")
    return values


class Schedule:
    """A torch LR scheduler and when to step it (per iteration or per epoch)."""

    def __init__(self, scheduler: lr_scheduler.LRScheduler, per: str) -> None:
        self.scheduler = scheduler
        self.per = per

    def after_step(self) -> None:
        if self.per == "step":
            self.scheduler.step()

    def after_epoch(self) -> None:
        if self.per == "epoch":
            self.scheduler.step()

    def state_dict(self) -> dict[str, Any]:
        return self.scheduler.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.scheduler.load_state_dict(state)


def build_schedule(optimizer: torch.optim.Optimizer, config: ScheduleConfig, *,
                   steps_per_epoch: int) -> Schedule:
    """The torch scheduler for ``config`` on ``optimizer``."""
    if steps_per_epoch < 1:
        raise ConfigError(f"invalid steps_per_epoch: {steps_per_epoch}")
    if config.name == "constant":
        return Schedule(lr_scheduler.LambdaLR(optimizer, lambda _: 1.0), "epoch")
    if config.name == "staircase":
        return Schedule(lr_scheduler.StepLR(optimizer, config.step_size, config.lr_decay),
                        "epoch")
    if config.name == "exponential":
        return Schedule(lr_scheduler.ExponentialLR(optimizer, config.lr_decay), "epoch")
    # Cosine with warm restarts, stepped every iteration: T_0 is counted in iterations.
    scheduler = lr_scheduler.CosineAnnealingWarmRestarts(
        optimizer, T_0=config.t_0 * steps_per_epoch, T_mult=config.t_mult)
    return Schedule(scheduler, "step")
