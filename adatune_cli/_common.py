"""Pieces every command shares: the store option, error exits, consoles."""

from __future__ import annotations

import math
import os
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
from rich.console import Console

from adatune.errors import AdatuneError
from adatune.redact import mask_secrets

if TYPE_CHECKING:
    from adatune.config import TrainConfig
    from adatune.store import Store

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


def open_for_run(store: str, config: TrainConfig | None) -> Store:
    """The store a run goes to, once everything the run is given has been checked.

    The files ``config`` names (the dataset's, the checkpoint folder), then the
    store's location and schema version: bad input is rejected here, before
    the caller imports the training stack (torch).
    """
    from adatune.preflight import check_run_inputs

    if config is not None:
        check_run_inputs(config)
    from adatune.store import open_store  # SQLAlchemy: only for input that got this far

    return open_store(store)
