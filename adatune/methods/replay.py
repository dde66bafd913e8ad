"""Replaying a recorded learning-rate schedule: the scheduler and everything a replay run needs.

A replay run trains with the LR of every step of an earlier run (``from_run``)
or of a schedule file (``from_file``), value for value, or stretched onto a run
of another length (``stretch``), optionally scaled (``scale``). This module
holds all of it:

* :class:`ReplayLR`, the torch LR scheduler that replays (``adatune.ReplayLR``);
* :func:`read_schedule`: the schedule to replay, from the store or a file;
* :func:`build_replay`: the run's scheduler, refusing a schedule shorter than
  the run unless it is stretched;
* :func:`replay_note`: what the run's record says about its source.

The schedule as data and its file format (CSV, JSON, a torch file), which the
command line reads without torch, are :mod:`adatune.methods.schedule_file`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch.optim import lr_scheduler

from adatune.errors import ConfigError
from adatune.methods.schedule_file import LRSchedule, schedule_from_file, schedule_from_run
from adatune.methods.schedules import Schedule
from adatune.store.protocols import RunSource

__all__ = ["ReplayLR", "build_replay", "check_lrs", "read_schedule", "replay_note",
           "replay_points"]


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


def read_schedule(store: RunSource, *, from_run: int | None = None,
                  from_file: str | None = None) -> LRSchedule:
    """The schedule to replay: run ``from_run``'s every-step LRs in ``store``, or a file.

    Errors are one line (:class:`~adatune.errors.ConfigError`; a run recorded
    without per-step LRs is :class:`~adatune.methods.schedule_file.NoStepLRs`),
    raised before anything is written.
    """
    if from_file is not None:
        return schedule_from_file(from_file)
    if from_run is None:
        raise ConfigError("a replay needs from_run= or from_file=")
    return schedule_from_run(store, from_run)


def replay_points(schedule: LRSchedule, *, epochs: int, steps_per_epoch: int) -> int:
    """How many points of the schedule a run of ``epochs`` uses: its steps, or its epochs."""
    return epochs * (steps_per_epoch if schedule.interval == "step" else 1)


def build_replay(optimizer: torch.optim.Optimizer, schedule: LRSchedule, *, epochs: int,
                 steps_per_epoch: int, stretch: bool = False, scale: float = 1.0) -> Schedule:
    """The :class:`ReplayLR` of a replay run, stepped per step or per epoch like its schedule.

    Without ``stretch`` the schedule must cover the run: a shorter one is refused.
    """
    unit = schedule.interval
    needed = replay_points(schedule, epochs=epochs, steps_per_epoch=steps_per_epoch)
    if not stretch and len(schedule) < needed:
        per = f" ({epochs} epochs of {steps_per_epoch} steps)" if unit == "step" else ""
        raise ConfigError(f"the schedule has {len(schedule)} {unit}s but this run trains "
                          f"{needed}{per}: add stretch=True to map it onto the run, or train "
                          "fewer epochs")
    scheduler = ReplayLR(optimizer, schedule.lrs, scale=scale,
                         total_steps=needed if stretch else None)
    return Schedule(scheduler, unit)


def replay_note(schedule: LRSchedule, *, epochs: int, steps_per_epoch: int) -> dict[str, Any]:
    """What a replay run records about its source (``extra["replay"]``: the report shows it)."""
    return {"source": schedule.source, "interval": schedule.interval,
            "source_points": len(schedule),
            "points": replay_points(schedule, epochs=epochs, steps_per_epoch=steps_per_epoch),
            "steps_per_epoch": steps_per_epoch}
