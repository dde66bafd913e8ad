"""A run's learned schedule, for reuse: ``from adatune.replay import schedule_from_run``.

The public path of the schedule as data and its files
(:mod:`adatune.methods.schedule_file`, where the code lives, and which needs no
torch). The scheduler that replays one is ``adatune.ReplayLR``
(:mod:`adatune.methods.replay`); docs/replay.md says more.
"""

from adatune.methods.schedule_file import (
    FORMATS,
    LRSchedule,
    NoStepLRs,
    format_for,
    format_schedule,
    schedule_from_file,
    schedule_from_run,
    write_schedule,
)

__all__ = ["FORMATS", "LRSchedule", "NoStepLRs", "format_for", "format_schedule",
           "schedule_from_file", "schedule_from_run", "write_schedule"]
