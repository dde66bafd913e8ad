"""Baseline (non-adaptive) learning-rate schedules over ``torch.optim.lr_scheduler``.

constant, staircase (step decay every ``step_size`` epochs), exponential (decay
by ``lr_decay`` every epoch) and cosine annealing with warm restarts (period
``t_0`` epochs, multiplied by ``t_mult`` after each restart), the latter
stepped every iteration as in the original AdaTune.
"""

from __future__ import annotations

import math
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
