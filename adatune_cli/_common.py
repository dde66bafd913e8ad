"""Pieces every command shares: the store option, error exits, consoles."""

from __future__ import annotations

import math
import os
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console

from adatune.errors import AdatuneError
from adatune.redact import mask_secrets

DEFAULT_STORE = "adatune.db"

out = Console(soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)

StoreOption = Annotated[
    str,
    typer.Option(
        "--store",
        envvar="ADATUNE_STORE",
        help="Experiment store: a file path or an SQLAlchemy URL (env ADATUNE_STORE).",
        show_default=True,
    ),
]


def store_default() -> str:
    return os.environ.get("ADATUNE_STORE", DEFAULT_STORE)


def fmt(value: float | None, spec: str = ".4g") -> str:
    """A number for a table cell: '-' for missing, 'nan'/'inf' as they are."""
    if value is None:
        return "-"
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return format(value, spec)


def json_safe(value: Any) -> Any:
    """Strict JSON: non-finite floats become null, datetimes ISO strings."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return value


def fail(message: str, code: int = 2) -> NoReturn:
    """Print one clear line on stderr and exit with ``code``."""
    err.print(mask_secrets(f"adatune: error: {message}"), markup=False)
    raise typer.Exit(code)


def user_errors(exc: AdatuneError) -> NoReturn:
    fail(str(exc))
