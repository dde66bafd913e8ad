"""Canonical names for the things a user names on the command line."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from adatune.errors import ConfigError


def canonical_name(kind: str, name: str, aliases: Mapping[str, str],
                   choices: Sequence[str]) -> str:
    """``name`` lower-cased, ``-`` read as ``_``, an alias resolved; else one ConfigError line."""
    if not isinstance(name, str):
        raise ConfigError(f"Invalid {kind}: {name!r} (expected a name)")
    key = name.strip().lower().replace("-", "_")
    key = aliases.get(key, key)
    if key not in choices:
        raise ConfigError(f"unknown {kind} '{name}' (choose from: {', '.join(choices)})")
    return key
