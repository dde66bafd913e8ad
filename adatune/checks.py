"""Argument checks every layer shares: one :class:`ConfigError` line naming the argument.

The bounds of the whole-number settings live here too, because the store holds
them: seeds seed torch's 64-bit generators and are stored as 64-bit integers,
and epoch counts must keep the step numbers of the longest run within the
store's 32-bit columns.
"""

from __future__ import annotations

import math

from adatune.errors import ConfigError

#: Seeds seed torch's generators (64 bits) and are stored as 64-bit integers.
MAX_SEED = 2**63 - 1
#: Epoch counts (epochs, patience, staircase step, cosine periods): finite, and the
#: step numbers of the longest run still fit the store's 32-bit columns.
MAX_EPOCHS = 100_000
#: Names (a run's, an experiment's): the store's name columns hold 255 characters, which
#: SQLite does not enforce by itself.
MAX_NAME = 255
#: Free text a run records (its error, each string of its configuration and summary) is
#: shortened to this many characters.
MAX_TEXT = 4096


def whole(name: str, value: int, low: int, high: int) -> None:
    """Refuse anything but a whole number in [low, high] (ConfigError naming ``name``)."""
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigError(f"invalid {name}: {value!r} (must be a whole number from {low} "
                          f"to {high})")


def finite(name: str, value: float, *, low: float | None = None, low_open: bool = False,
           high: float | None = None, high_open: bool = False, rule: str | None = None) -> None:
    """Refuse anything but a finite number in the interval (ConfigError naming ``name``).

    ``rule``: the hyper-LR update rule the interval belongs to (said in the message).
    """
    ok = isinstance(value, (int, float)) and math.isfinite(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        lo = "" if low is None else ("(" if low_open else "[") + f"{low:g}"
        hi = "" if high is None else f"{high:g}" + (")" if high_open else "]")
        where = f" (must be in {lo or '(-inf'}, {hi or 'inf)'}" if (lo or hi) else ""
        if where and rule is not None:
            where += f" with hyper_update={rule!r}"
        raise ConfigError(f"invalid {name}: {value!r}{where}{')' if where else ''}")


def name(argument: str, value: str | None) -> str | None:
    """Refuse a name longer than :data:`MAX_NAME` characters, or one that is not text."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise ConfigError(f"invalid {argument}: {type(value).__name__} (a string)")
    if len(value) > MAX_NAME:
        raise ConfigError(f"invalid {argument}: {len(value)} characters (at most {MAX_NAME})")
    return value


def bounded_text(text: str, limit: int = MAX_TEXT) -> str:
    """``text`` shortened to ``limit`` characters, saying how much was left out."""
    if len(text) <= limit:
        return text
    keep = max(0, limit - 40)  # room for the note
    return f"{text[:keep]}... [{len(text) - keep} more characters]"


__all__ = ["MAX_EPOCHS", "MAX_NAME", "MAX_SEED", "MAX_TEXT", "bounded_text", "finite", "name",
           "whole"]
