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
from rich.text import Text

from adatune.redact import mask_secrets, printable
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
    err.print(printable(mask_secrets(f"adatune: error: {as_flags(message)}")), markup=False)
    raise typer.Exit(code)


def plain(value: object) -> Text:
    """A recorded value as the terminal shows it: plain text, never Rich markup, with its
    control characters written out (:func:`adatune.redact.printable`)."""
    return Text(printable("" if value is None else str(value)))


def store_flag(store: str, location: str) -> str:
    """`` --store LOCATION`` for a command to paste, or nothing for the default store."""
    import shlex

    return "" if store == store_default() else f" --store {shlex.quote(location)}"


def selection(**filters: Any) -> str:
    """The filters given, as flags: ``--method foo --run 3`` (``(no filter)`` without any)."""
    parts = []
    for name, value in filters.items():
        for one in value if isinstance(value, (list, tuple)) else [value]:
            if one is not None:
                parts.append(f"--{name.replace('_', '-')} {one}")
    return " ".join(parts) or "(no filter)"


def open_to_read(store: str, *, write: bool = False) -> Store:
    """The store a command reads runs from; a missing one is refused, never created.

    A missing file says what makes one: a first run (not ``db upgrade``, which
    makes an empty store). ``write=False`` opens it read-only (see
    :func:`adatune.store.open_store`).
    """
    from adatune.store import open_store
    from adatune.store.connection import resolve_url, sqlite_path

    path = sqlite_path(resolve_url(store))
    if path is not None and not path.exists():
        flag = store_flag(store, str(path))
        other = "" if flag else " (or give --store, or set ADATUNE_STORE)"
        fail(f"no store at {path}: `adatune train --tuner marthe{flag}` makes it, with a "
             f"first run{other}")
    return open_store(store, create=False, write=write)


def no_runs(db: Store, store: str, missing: Exception | None = None,
            **filters: Any) -> NoReturn:
    """Exit 2 with the one line for a selection that matched nothing.

    The rule of every command that reads runs: an empty store says so and names
    the command that makes a run; filters that match no run (an unknown method,
    a run id the store does not have: ``missing``, the store's own error) are
    named. Either way nothing is printed on stdout, ``--json`` included.
    """
    flag = store_flag(store, db.location)
    what = error_line(missing) if missing is not None else \
        f"no runs match {selection(**filters)} in {db.location}"
    if not db.has_runs():
        lead = (f"{what}: it holds no runs yet;" if missing is not None
                else f"no runs yet in {db.location}:")
        fail(f"{lead} `adatune train --tuner marthe{flag}` makes one")
    fail(f"{what} (`adatune runs list{flag}` lists the runs it holds)")


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
    (0: never); free text (``number=False``) is shortened before anything is dropped, and
    said once above the table when every row has the same (``common=True``)."""

    header: str
    number: bool = True
    drop: int = 0
    common: bool = False


#: Free text keeps at least this much before a column is dropped (then at least 6).
_READABLE = 14


def shorten(text: str, width: int) -> str:
    """``text`` in ``width`` characters, cut in the middle: ``my-long…seed-1``.

    Names differ at their ends (a seed, a trial, a date) as often as at their
    starts, so both are kept.
    """
    if len(text) <= width:
        return text
    if width <= 1:
        return "…"[:width]
    head = (width - 1) // 2
    return text[:head] + "…" + text[len(text) - (width - 1 - head):]


def compact_table(columns: Sequence[Column],
                  rows: list[list[str]]) -> tuple[Table, list[str], list[str]]:
    """A table for narrow terminals, the headers of the columns it left out, and what every
    row has in common.

    Columns empty in every row are left out; a ``common`` column whose rows all
    hold the same text is said once (``task: digits/mlp``) instead. Every column
    is as wide as its widest cell: numbers and statuses are never cut. When the
    table is wider than the terminal, free text (names) is shortened in the
    middle, keeping both ends, to a readable width; then the columns with the
    highest ``drop`` go (the caller says so); then free text is shortened further.
    """
    keep = [i for i in range(len(columns)) if any(row[i] not in ("", "-") for row in rows)]
    common = []
    if len(rows) > 1:
        for i in [i for i in keep if columns[i].common and len({row[i] for row in rows}) == 1]:
            keep.remove(i)
            common.append(f"{columns[i].header} {rows[0][i]}")
    widths = {i: max([len(columns[i].header), *(len(row[i]) for row in rows)]) for i in keep}

    def over() -> int:
        return sum(widths[i] for i in keep) + _GAP * (len(keep) - 1) - out.width

    def cut_text(floor: int) -> None:
        for i in sorted((i for i in keep if not columns[i].number), key=lambda i: -widths[i]):
            cut = min(over(), widths[i] - max(floor, len(columns[i].header)))
            if cut > 0:
                widths[i] -= cut

    cut_text(_READABLE)
    dropped = []
    for i in sorted((i for i in keep if columns[i].drop), key=lambda i: -columns[i].drop):
        if over() <= 0:
            break
        keep.remove(i)
        dropped.append(columns[i].header)
    cut_text(6)
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, padding=(0, 1, 0, 0))
    for i in keep:
        table.add_column(columns[i].header, justify="right" if columns[i].number else "left",
                         no_wrap=True, width=widths[i], overflow="ellipsis")
    for row in rows:
        table.add_row(*(plain(row[i]) if columns[i].number else plain(shorten(row[i], widths[i]))
                        for i in keep))
    return table, dropped, common


def print_table(table: Table, dropped: Sequence[str] = (), common: Sequence[str] = ()) -> None:
    """Print a :func:`compact_table` whole (past the terminal's edge rather than cut)."""
    if common:
        out.print(f"every run shown: {'; '.join(common)}", markup=False, highlight=False)
    needed = sum(c.width or 0 for c in table.columns) + _GAP * (len(table.columns) - 1)
    out.print(table, width=max(needed, out.width), crop=False)
    if dropped:
        out.print(f"(left out at this width: {', '.join(dropped)}; a wider terminal or --json "
                  "shows them)", markup=False, highlight=False)


def store_files(store: str) -> list[tuple[str, str]]:
    """The files of an SQLite store (its database, log and index), for
    :func:`adatune._durable.write_output`'s ``protected``: a command never writes over them."""
    from adatune.store.connection import resolve_url, sqlite_path

    try:
        path = sqlite_path(resolve_url(store))
    except Exception:  # noqa: BLE001 - a bad store location is reported when it is opened
        return []
    if path is None:
        return []
    return [(f"{path}{suffix}", "the store the runs are read from") for suffix in
            ("", "-wal", "-shm", "-journal")]


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
