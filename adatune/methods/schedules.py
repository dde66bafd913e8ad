"""Baseline (non-adaptive) learning-rate schedules over ``torch.optim.lr_scheduler``.

constant, staircase (step decay every ``step_size`` epochs), exponential (decay
by ``lr_decay`` every epoch) and cosine annealing with warm restarts (period
``t_0`` epochs, multiplied by ``t_mult`` after each restart), the latter
stepped every iteration as in the original AdaTune. Replaying a recorded
schedule is :mod:`adatune.methods.replay`.

:class:`ScheduleConfig` holds each setting's default and range, once: the run
configuration and the command line read them from here. This module imports
torch only when a schedule is built.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from adatune.catalog import SCHEDULE_NAMES, canonical_schedule
from adatune.checks import MAX_EPOCHS, finite, whole
from adatune.errors import ConfigError

if TYPE_CHECKING:
    import torch
    from torch.optim import lr_scheduler

__all__ = [
    "DEFAULT_LR_DECAY",
    "SCHEDULE_NAMES",
    "Schedule",
    "ScheduleConfig",
    "build_schedule",
    "canonical_schedule",
]

#: The decay factor of each schedule that decays, unless one is given: staircase halves
#: the LR every ``step_size`` epochs, exponential multiplies it by 0.85 every epoch.
DEFAULT_LR_DECAY = {"staircase": 0.5, "exponential": 0.85}
_OTHER_LR_DECAY = 0.5  # what a schedule that does not decay records (it never reads it)


@dataclass(frozen=True)
class ScheduleConfig:
    """A baseline schedule. ``step_size``/``t_0`` count epochs.

    ``lr_decay`` defaults to the schedule's entry of :data:`DEFAULT_LR_DECAY`.
    """

    name: str = "constant"
    step_size: int = 5
    lr_decay: float | None = None
    t_0: int = 2
    t_mult: int = 2

    def __post_init__(self) -> None:
        object.__setattr__(self, "name", canonical_schedule(self.name))
        if self.lr_decay is None:
            object.__setattr__(self, "lr_decay",
                               DEFAULT_LR_DECAY.get(self.name, _OTHER_LR_DECAY))
        for name in ("step_size", "t_0", "t_mult"):
            whole(name, getattr(self, name), 1, MAX_EPOCHS)
        finite("lr_decay", self.lr_decay, low=0, low_open=True, high=1)


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
    from torch.optim import lr_scheduler

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
