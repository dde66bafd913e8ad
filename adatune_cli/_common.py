"""Pieces every command shares: the store option, error exits, consoles."""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
from rich import box
from rich.console import Console
from rich.table import Table

from adatune.redact import mask_secrets
from adatune.store import DEFAULT_STORE

if TYPE_CHECKING:
    from adatune.running.config import TrainConfig
    from adatune.store import Store
    from adatune.store.records import EpochRecord


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
    err.print(mask_secrets(f"adatune: error: {as_flags(message)}"), markup=False)
    raise typer.Exit(code)


#: Library arguments whose flag is not ``--`` + the name with dashes.
_FLAG_OF = {"method": "--lr-scheduler"}
#: ``name=value`` as the library writes an argument in its messages (``epochs=30``,
#: ``stretch=True``, ``model='pkg:make'``, ``from_run=``): a value is a quoted string, or
#: anything up to a space or a closing punctuation mark.
_ARGUMENT = re.compile(r"(?<![\w.-])([a-z][a-z0-9_]*)=('[^']*'|\"[^\"]*\"|[^\s,;)]+)?")


def error_line(exc: BaseException) -> str:
    """What the command says about a library error: its arguments as flags, and what to do."""
    from adatune.methods.schedule_file import NoStepLRs

    text = str(exc)
    if isinstance(exc, NoStepLRs):  # the one advice, for `schedule export` and for a replay
        text += (f"; export its per-epoch mean LRs with `adatune schedule export {exc.run_id} "
                 "--per-epoch -o schedule.csv`, and replay that file with --from-file "
                 "schedule.csv")
    return as_flags(text)


_PLAIN = re.compile(r"[\w.-]+")


def as_flags(message: str) -> str:
    """A library message for the command line: its arguments written as the flags that set them.

    The library names arguments (``add stretch=True``, ``epochs=30: run 3 has
    ...``); the command says ``add --stretch``, ``--epochs 30: run 3 has ...``.
    Only the names of the command's options are rewritten.
    """
    from adatune_cli.options import flag, option_names

    known = option_names()

    def one(match: re.Match[str]) -> str:
        name, value = match.group(1), match.group(2)
        if name not in known:
            return match.group(0)
        spelled = _FLAG_OF.get(name, flag(name))
        if value is None or value == "True":
            return spelled
        if value[:1] in "'\"" and _PLAIN.fullmatch(value[1:-1]):
            value = value[1:-1]  # 'sgd' -> sgd; 'pkg.mod:make' and 'a b' keep their quotes
        return f"{spelled} {value}"

    return _ARGUMENT.sub(one, message)


_GAP = 2  # between two columns: one space of padding and the (blank) rule


@dataclass(frozen=True)
class Column:
    """A column of a :func:`compact_table`: ``drop`` ranks which go first when space runs out
    (0: never); free text (``number=False``) is shortened before anything is dropped."""

    header: str
    number: bool = True
    drop: int = 0


def compact_table(columns: Sequence[Column], rows: list[list[str]]) -> tuple[Table, list[str]]:
    """A table for narrow terminals, and the headers of the columns it had to leave out.

    Columns empty in every row are left out. Every column is as wide as its
    widest cell: numbers and statuses are never cut. When the table is wider
    than the terminal, free text (names) is shortened with an ellipsis, then
    the columns with the highest ``drop`` go (the caller says so).
    """
    keep = [i for i in range(len(columns)) if any(row[i] not in ("", "-") for row in rows)]
    widths = {i: max([len(columns[i].header), *(len(row[i]) for row in rows)]) for i in keep}

    def over() -> int:
        return sum(widths[i] for i in keep) + _GAP * (len(keep) - 1) - out.width

    for i in sorted((i for i in keep if not columns[i].number), key=lambda i: -widths[i]):
        cut = min(over(), widths[i] - max(6, len(columns[i].header)))
        if cut > 0:
            widths[i] -= cut
    dropped = []
    for i in sorted((i for i in keep if columns[i].drop), key=lambda i: -columns[i].drop):
        if over() <= 0:
            break
        keep.remove(i)
        dropped.append(columns[i].header)
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, padding=(0, 1, 0, 0))
    for i in keep:
        table.add_column(columns[i].header, justify="right" if columns[i].number else "left",
                         no_wrap=True, width=widths[i], overflow="ellipsis")
    for row in rows:
        table.add_row(*(row[i] for i in keep))
    return table, dropped


def print_table(table: Table, dropped: Sequence[str] = ()) -> None:
    """Print a :func:`compact_table` whole (past the terminal's edge rather than cut)."""
    needed = sum(c.width or 0 for c in table.columns) + _GAP * (len(table.columns) - 1)
    out.print(table, width=max(needed, out.width), crop=False)
    if dropped:
        out.print(f"(left out at this width: {', '.join(dropped)}; a wider terminal or --json "
                  "shows them)", markup=False, highlight=False)


def epoch_seconds(epochs: Sequence[EpochRecord]) -> list[float | None]:
    """Each epoch's own training seconds, from the cumulative ``elapsed_s`` (set-up excluded).

    The first epoch of a resumed run's table is measured from the epoch before it.
    """
    seconds: list[float | None] = []
    previous: EpochRecord | None = None
    for e in epochs:
        if previous is not None and previous.epoch == e.epoch - 1:
            seconds.append(e.elapsed_s - previous.elapsed_s)
        else:
            seconds.append(e.elapsed_s if e.epoch == 1 else None)
        previous = e
    return seconds
def open_for_run(store: str, config: TrainConfig | None, *, device: str | None = None) -> Store:
    """The store a run goes to, once everything the run is given has been checked.

    The device, the files ``config`` names (the dataset's, the checkpoint
    folder), then the store's location and schema version: bad input is
    rejected here, before the caller imports the training stack (torch).
    Without ``config`` (a resumed run, moved to ``device`` if given) the store
    must exist: a missing one is refused, not created.
    """
    from adatune.running.preflight import check_device, check_run_inputs

    if device is not None:
        check_device(device)
    if config is not None:
        check_run_inputs(config, store)
    from adatune.store import open_store  # SQLAlchemy: only for input that got this far

    return open_store(store, create=config is not None)
