"""Learned schedules as data: read a run's LR of every step, export it, read it back.

A :class:`LRSchedule` is one LR per training step (``interval="step"``: rows of
step, epoch, lr) or one per epoch (``interval="epoch"``: the epoch's mean LR).
:func:`schedule_from_run` reads it from the store, :func:`schedule_from_file`
from a CSV or JSON file, and :func:`format_schedule` writes CSV, JSON or a
small Python module that needs only torch (a ``LambdaLR``). Replaying it is
:mod:`adatune.methods.replay`'s job.

This module needs no torch: the command line imports it for ``adatune
schedule export``.

File formats (every LR written with Python's shortest round-trip repr, so a
file read back gives the very same doubles)::

    step,epoch,lr            epoch,lr               {"format": "adatune-lr-schedule",
    0,1,0.05                 1,0.0498                "version": 1, "interval": "step",
    1,1,0.0500012            2,0.0467                "source": {"run": 12, ...},
    ...                      ...                     "step": [...], "epoch": [...],
                                                     "lr": [...]}

A CSV needs a header naming its columns (``step`` is left out per epoch;
other columns are ignored). Steps count from 0 without gaps, epochs from 1 and
never go down; every LR is finite and >= 0.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from array import array
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from adatune._durable import write_output
from adatune._reading import open_input
from adatune.checks import MAX_NAME, bounded_text
from adatune.errors import ConfigError
from adatune.store.protocols import RunSource
from adatune.store.records import RunRecord

FILE_FORMAT = "adatune-lr-schedule"
FILE_VERSION = 1
FORMATS = ("csv", "json", "torch")
INTERVALS = ("step", "epoch")


class NoStepLRs(ConfigError):
    """A run recorded before adatune stored the LR of every step."""

    def __init__(self, run_id: int, epochs: Sequence[int]) -> None:
        self.run_id = run_id
        self.epochs = tuple(epochs)
        first, last = self.epochs[0], self.epochs[-1]
        which = f"epoch {first}" if first == last else f"epochs {first}-{last}"
        super().__init__(f"run {run_id} has no per-step learning rates recorded for {which} "
                         "(it was trained before adatune recorded them)")


@dataclass(frozen=True)
class LRSchedule:
    """One LR per step (``interval="step"``) or per epoch (``"epoch"``), in order.

    ``epochs[i]`` is the epoch of point ``i``; ``steps`` holds the step numbers
    (0, 1, 2, ...) for a per-step schedule and is None per epoch. ``source``
    says where it came from (``{"run": 12, "method": "marthe", ...}`` or
    ``{"file": path}``).
    """

    interval: str
    lrs: tuple[float, ...]
    epochs: tuple[int, ...]
    steps: tuple[int, ...] | None = None
    source: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.interval not in INTERVALS:
            raise ValueError(f"Invalid interval: {self.interval!r} (step or epoch)")
        if len(self.epochs) != len(self.lrs) or (
                self.steps is not None and len(self.steps) != len(self.lrs)):
            raise ValueError("Invalid schedule: lrs, epochs and steps differ in length")
        if (self.steps is None) != (self.interval == "epoch"):
            raise ValueError("Invalid schedule: steps are given exactly for a per-step schedule")

    def __len__(self) -> int:
        return len(self.lrs)


def _run_source(run: RunRecord) -> dict[str, Any]:
    return {"run": run.id, "name": run.name, "method": run.method, "dataset": run.dataset,
            "network": run.network, "optimizer": run.optimizer, "seed": run.seed,
            "status": run.status, "epochs": run.epochs}


def schedule_from_run(store: RunSource, run_id: int, *,
                      per_epoch: bool = False) -> LRSchedule:
    """The LR of every step of a recorded run (or, ``per_epoch``, each epoch's mean LR).

    Raises :class:`~adatune.errors.RunNotFound` for an unknown run,
    :class:`NoStepLRs` for a run recorded before per-step LRs were stored, and
    :class:`~adatune.errors.ConfigError` for a run without a finished epoch.
    """
    detail = store.get_run(run_id, steps=False)
    source = _run_source(detail.run)
    if not detail.epochs:
        raise ConfigError(f"run {run_id} has no finished epoch to take a schedule from")
    if per_epoch:
        return LRSchedule("epoch", tuple(e.lr_mean for e in detail.epochs),
                          tuple(e.epoch for e in detail.epochs), None, source)
    per = store.get_step_lrs(run_id)
    missing = [g.epoch for g in per if g.lrs is None]
    if missing:
        raise NoStepLRs(run_id, missing)
    lrs = tuple(v for g in per for v in g.lrs)
    epochs = tuple(g.epoch for g in per for _ in g.lrs)
    if not lrs:
        raise ConfigError(f"run {run_id} recorded no training step")
    source["steps"] = len(lrs)
    return LRSchedule("step", lrs, epochs, tuple(range(len(lrs))), source)


# ------------------------------------------------------------------ writing
def format_schedule(schedule: LRSchedule, fmt: str, *, module: str = "schedule") -> str:
    """The schedule as the text of a ``csv``, ``json`` or ``torch`` (Python) file.

    ``module`` is the import name the Python file's docstring shows (a Python
    identifier; anything else shows as ``schedule``). Whatever the schedule's
    ``source`` holds (names a store recorded) is data in every format: JSON
    strings in JSON, an escaped literal (``SOURCE``) in the Python file, and
    nothing in CSV, which holds only numbers.
    """
    if fmt == "csv":
        return _csv(schedule)
    if fmt == "json":
        return _json(schedule)
    if fmt == "torch":
        return _torch(schedule, module)
    raise ConfigError(f"unknown schedule format {fmt!r} (choose from: {', '.join(FORMATS)})")


def format_for(path: str | os.PathLike[str] | None, fmt: str | None) -> str:
    """The format to write: ``fmt`` if given, else from the suffix (.json, .py), else csv."""
    if fmt is not None:
        key = fmt.strip().lower()
        if key not in FORMATS:
            raise ConfigError(f"unknown schedule format {fmt!r} (choose from: "
                              f"{', '.join(FORMATS)})")
        return key
    suffix = Path(path).suffix.lower() if path is not None else ""
    return {".json": "json", ".py": "torch"}.get(suffix, "csv")


def _csv(schedule: LRSchedule) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    if schedule.steps is None:
        writer.writerow(("epoch", "lr"))
        writer.writerows((int(e), repr(float(v))) for e, v in zip(schedule.epochs,
                                                                 schedule.lrs))
    else:
        writer.writerow(("step", "epoch", "lr"))
        writer.writerows((int(s), int(e), repr(float(v))) for s, e, v in
                         zip(schedule.steps, schedule.epochs, schedule.lrs))
    return buffer.getvalue()


def _json(schedule: LRSchedule) -> str:
    payload: dict[str, Any] = {"format": FILE_FORMAT, "version": FILE_VERSION,
                               "interval": schedule.interval, "source": schedule.source}
    if schedule.steps is not None:
        payload["step"] = list(schedule.steps)
    payload["epoch"] = list(schedule.epochs)
    payload["lr"] = list(schedule.lrs)
    return json.dumps(payload, allow_nan=False, default=str) + "\n"


def _literal(value: Any) -> str:
    """``value`` as a Python literal: plain data only, every string escaped, ASCII only.

    What a store recorded reaches the generated Python file only this way, as
    data that ``ast.literal_eval`` reads back: never as code, never inside a
    docstring or a comment.
    """
    if value is None or isinstance(value, (bool, int)):
        return repr(value)
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else ascii(repr(value))
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_literal(str(k))}: {_literal(v)}"
                               for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_literal(v) for v in value) + "]"
    return ascii(str(value))


_TORCH_TEMPLATE = '''"""A learning-rate schedule exported by `adatune schedule export`: {n} {unit}s.

It needs only torch. SOURCE says where the schedule comes from, as adatune
recorded it.

    from {module} import scheduler
    sched = scheduler(optimizer)   # a torch.optim.lr_scheduler.LambdaLR
{usage}
{unit_title} t runs at LRS[t] (the last value after the end) in the optimizer's first param
group; every other group keeps its initial ratio to the first. LambdaLR multiplies
each group's base LR by lr_lambda(t): scheduler() sets the base LRs to those ratios
(1.0 for the first group), so the first group's LR is LRS[t] exactly.
"""

from torch.optim.lr_scheduler import LambdaLR

SOURCE = {source}

LRS = [
{values}
]


def lr_lambda(t):
    return LRS[min(t, len(LRS) - 1)]


def scheduler(optimizer):
    first = optimizer.param_groups[0]["lr"]
    for group in optimizer.param_groups:
        group["initial_lr"] = group["lr"] / first if first else 1.0
    return LambdaLR(optimizer, lr_lambda)
'''


_USAGE = {
    "step": """    for x, y in loader:
        ...                        # forward, backward
        optimizer.step()           # step t runs at LRS[t]
        sched.step()               # after every optimizer step
""",
    "epoch": """    for epoch in range(epochs):
        for x, y in loader:
            ...                    # forward, backward
            optimizer.step()       # every step of epoch t runs at LRS[t]
        sched.step()               # once per epoch
""",
}


def _torch(schedule: LRSchedule, module: str) -> str:
    per_step = schedule.interval == "step"
    if not (module.isidentifier() and module.isascii()):
        module = "schedule"
    values = "\n".join("    " + ", ".join(repr(float(v)) for v in schedule.lrs[i:i + 4]) + ","
                       for i in range(0, len(schedule.lrs), 4))
    return _TORCH_TEMPLATE.format(
        n=len(schedule.lrs), unit="step" if per_step else "epoch",
        unit_title="Step" if per_step else "Epoch", module=module,
        usage=_USAGE[schedule.interval], source=_literal(schedule.source), values=values)


def write_schedule(schedule: LRSchedule, path: str | os.PathLike[str], fmt: str, *,
                   protected: Iterable[tuple[str | os.PathLike[str], str]] = ()) -> Path:
    """Write the schedule to ``path``: replaced whole, never half-written, never through a link.

    ``path`` must be new or a regular file: anything else (a folder, a device, a
    symbolic link), an SQLite store, an adatune checkpoint and each of
    ``protected`` (``(path, what it is)``: the store being read) are refused in
    one line (:func:`adatune._durable.write_output`).
    """
    out = Path(path)
    text = format_schedule(schedule, fmt, module=out.stem)
    try:
        return write_output(out, text.encode("utf-8"), protected=protected)
    except OSError as exc:
        raise ConfigError(f"cannot write {out}: {exc.strerror or exc}") from None


# ------------------------------------------------------------------ reading
#: The largest schedule file read (a run of a million steps is about 30 MB as CSV).
MAX_SCHEDULE_BYTES = 512 * 2**20
#: The longest line of a CSV schedule, and the largest value of a JSON one other than its
#: ``step``/``epoch``/``lr`` lists (its ``source``), in characters.
MAX_LINE_CHARS = 1 << 16
MAX_VALUE_CHARS = 1 << 20
#: What a schedule file's ``source`` may hold: this many entries, each string this long.
MAX_SOURCE_ENTRIES = 32
_COLUMNS = ("step", "epoch", "lr")
_CHUNK = 1 << 20


def schedule_from_file(path: str | os.PathLike[str]) -> LRSchedule:
    """Read a schedule file: JSON (``.json``) or CSV (anything else).

    The path is opened as given (a pipe such as ``<(cat s.csv)`` works), only
    a regular file or a pipe is read, and at most :data:`MAX_SCHEDULE_BYTES`
    of it, parsed as it streams in (a byte-order mark is dropped). Raises
    :class:`~adatune.errors.ConfigError` (one line naming the file and the line
    or point) for a missing or unreadable file, a malformed one, or an LR that
    is negative or not finite.
    """
    p = Path(path)
    what = f"schedule file {p}"
    source = {"file": os.path.abspath(p)}
    raw = open_input(p, what, MAX_SCHEDULE_BYTES, missing=f"no {what}")
    with io.TextIOWrapper(raw, encoding="utf-8-sig", newline="") as text:
        try:
            if p.suffix.lower() == ".json":
                return _read_json(p, text, source)
            return _read_csv(p, text, source)
        except UnicodeDecodeError:
            raise ConfigError(f"{what} is not UTF-8 text") from None


def _shown(value: Any) -> str:
    """A value as an error line quotes it: its repr, at most 40 characters."""
    text = repr(value) if not isinstance(value, int) or abs(value) < 10**30 else \
        f"{str(value)[:20]}... ({len(str(abs(value)))} digits)"
    return text if len(text) <= 40 else text[:37] + "..."


def _number(where: str, name: str, text: Any, kind: type) -> Any:
    if kind is int:
        if isinstance(text, bool) or (isinstance(text, float) and not text.is_integer()):
            raise ConfigError(f"{where}: {name} {_shown(text)} is not a whole number")
        try:
            value = int(text)
        except (TypeError, ValueError, OverflowError):
            raise ConfigError(f"{where}: {name} {_shown(text)} is not a whole number") from None
        if not -2**63 <= value < 2**63:
            raise ConfigError(f"{where}: {name} {_shown(text)} is out of range")
        return value
    if isinstance(text, bool):
        raise ConfigError(f"{where}: {name} {_shown(text)} is not a number")
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: {name} {_shown(text)} is not a number") from None
    except OverflowError:  # an integer too large for a double
        value = math.inf
    if not math.isfinite(value) or value < 0:
        raise ConfigError(f"{where}: {name} {_shown(text)} is not a learning rate (finite "
                          "and >= 0)")
    return value


class _Points:
    """A schedule's points as they are read, checked in order, kept as packed numbers."""

    def __init__(self, p: Path, per_step: bool) -> None:
        self.p, self.per_step = p, per_step
        self.epochs, self.lrs = array("q"), array("d")
        self.previous: int | None = None

    def add(self, where: Callable[[], str], step: int | None, epoch: int, lr: float) -> None:
        index = len(self.lrs)
        if self.per_step and step != index:
            raise ConfigError(f"{where()}: step {step}, expected {index} (steps count from 0 "
                              "without gaps)")
        if epoch < 1:
            raise ConfigError(f"{where()}: epoch {epoch} (epochs count from 1)")
        previous = self.previous
        if previous is not None:
            if not self.per_step and epoch != previous + 1:
                raise ConfigError(f"{where()}: epoch {epoch}, expected {previous + 1} (one row "
                                  "per epoch, from 1 without gaps)")
            if self.per_step and epoch < previous:
                raise ConfigError(f"{where()}: epoch {epoch} after epoch {previous} (epochs "
                                  "never go down)")
        elif not self.per_step and epoch != 1:
            raise ConfigError(f"{where()}: epoch {epoch}, expected 1 (one row per epoch, "
                              "from 1)")
        self.previous = epoch
        self.epochs.append(epoch)
        self.lrs.append(lr)

    def schedule(self, source: dict[str, Any]) -> LRSchedule:
        if not self.lrs:
            raise ConfigError(f"schedule file {self.p} has no rows")
        n = len(self.lrs)
        return LRSchedule("step" if self.per_step else "epoch", tuple(self.lrs),
                          tuple(self.epochs), tuple(range(n)) if self.per_step else None, source)


def _lines(p: Path, text: io.TextIOBase) -> Iterator[str]:
    """The file's lines, each at most :data:`MAX_LINE_CHARS` long."""
    number = 0
    while True:
        line = text.readline(MAX_LINE_CHARS + 1)
        if not line:
            return
        number += 1
        if len(line) > MAX_LINE_CHARS:
            raise ConfigError(f"schedule file {p} line {number}: longer than "
                              f"{MAX_LINE_CHARS} characters")
        yield line


def _read_csv(p: Path, text: io.TextIOBase, source: dict[str, Any]) -> LRSchedule:
    reader = csv.reader(_lines(p, text))
    try:
        header = next(reader, None)
        if header is None:
            raise ConfigError(f"schedule file {p} is empty")
        names = [h.strip().lower() for h in header]
        for required in ("epoch", "lr"):
            if required not in names:
                raise ConfigError(f"schedule file {p} line 1: no {required!r} column (the "
                                  "header names the columns: step,epoch,lr or epoch,lr)")
        per_step = "step" in names
        at = {name: names.index(name) for name in _COLUMNS if name in names}
        points = _Points(p, per_step)

        def where() -> str:
            return f"schedule file {p} line {reader.line_num}"

        for fields in reader:
            if not fields or all(not f.strip() for f in fields):
                continue
            here = where()
            if len(fields) != len(names):
                raise ConfigError(f"{here}: {len(fields)} fields, the header has {len(names)}")
            step = _number(here, "step", fields[at["step"]].strip(), int) if per_step else None
            epoch = _number(here, "epoch", fields[at["epoch"]].strip(), int)
            lr = _number(here, "lr", fields[at["lr"]].strip(), float)
            points.add(where, step, epoch, lr)
    except csv.Error as exc:
        raise ConfigError(f"schedule file {p} line {reader.line_num}: not CSV ({exc})") from None
    return points.schedule(source)


class _NotJSON(Exception):
    def __init__(self, position: int, message: str) -> None:
        super().__init__(message)
        self.position, self.message = position, message


def _bounded_int(digits: str) -> int | float:
    """A JSON integer (the decoder's ``parse_int``); one of more than 30 digits is inf."""
    return int(digits) if len(digits) <= 30 else (math.inf if digits[0] != "-" else -math.inf)


class _JSONStream:
    """A pull parser for a schedule's JSON object, read as it streams in.

    The ``step``, ``epoch`` and ``lr`` lists are read value by value; any other
    value (``source``, ``interval``) must fit in :data:`MAX_VALUE_CHARS`.
    Nothing nests deeper than the decoder allows (a deeper value is not JSON).
    """

    def __init__(self, p: Path, text: io.TextIOBase) -> None:
        self.p, self.text = p, text
        self.buf, self.pos, self.eof = "", 0, False
        self.lines_before = 0  # newlines in what was dropped from the buffer
        self.decoder = json.JSONDecoder(parse_int=_bounded_int)

    def fill(self, need: int = _CHUNK) -> None:
        """At least ``need`` characters after ``pos`` in the buffer, or all that is left."""
        if len(self.buf) - self.pos >= need or self.eof:
            return
        self.lines_before += self.buf.count("\n", 0, self.pos)
        parts = [self.buf[self.pos:]]
        have = len(parts[0])
        while have < need:
            chunk = self.text.read(_CHUNK)
            if not chunk:
                self.eof = True
                break
            parts.append(chunk)
            have += len(chunk)
        self.buf, self.pos = "".join(parts), 0

    def line(self, position: int | None = None) -> int:
        at = self.pos if position is None else position
        return self.lines_before + self.buf.count("\n", 0, at) + 1

    def fail(self, message: str, position: int | None = None) -> ConfigError:
        return ConfigError(f"schedule file {self.p} line {self.line(position)}: not JSON "
                           f"({message})")

    def peek(self) -> str:
        """The next character that is not white space ('' at the end)."""
        while True:
            self.fill(1)
            buf, pos = self.buf, self.pos
            while pos < len(buf) and buf[pos] in " \t\n\r":
                pos += 1
            self.pos = pos
            if pos < len(buf) or self.eof:
                return buf[pos] if pos < len(buf) else ""

    def expect(self, chars: str, what: str) -> str:
        found = self.peek()
        if not found or found not in chars:
            raise self.fail(f"expecting {what}")
        self.pos += 1
        return found

    def value(self, limit: int = MAX_VALUE_CHARS) -> Any:
        """One JSON value, which must fit in ``limit`` characters."""
        self.peek()
        self.fill(limit)
        try:
            found, end = self.decoder.raw_decode(self.buf, self.pos)
        except json.JSONDecodeError as exc:
            if not self.eof and len(self.buf) - self.pos >= limit:
                raise ConfigError(f"schedule file {self.p} line {self.line()}: a value longer "
                                  f"than {limit} characters") from None
            raise self.fail(exc.msg, exc.pos) from None
        except RecursionError:
            raise self.fail("nested too deeply") from None
        self.pos = end
        return found

    def values(self) -> Iterator[Any]:
        """The values of a list, one at a time (after its '[')."""
        if self.peek() == "]":
            self.pos += 1
            return
        while True:
            yield self.value(MAX_LINE_CHARS)
            if self.expect(",]", "',' or ']'") == "]":
                return


def _read_json(p: Path, text: io.TextIOBase, source: dict[str, Any]) -> LRSchedule:
    stream = _JSONStream(p, text)
    shape = (f"schedule file {p}: expected an object with \"epoch\" and \"lr\" lists (and "
             "\"step\" for a per-step schedule)")
    if stream.peek() != "{":
        try:
            stream.value()
        except ConfigError:
            raise
        raise ConfigError(shape)
    stream.pos += 1
    kinds = {"step": int, "epoch": int, "lr": float}
    columns: dict[str, array] = {}
    other: dict[str, Any] = {}
    while True:
        if stream.peek() == "}" and not columns and not other:
            stream.pos += 1
            break
        if stream.peek() != '"':
            raise stream.fail("expecting a property name in double quotes")
        key = stream.value(MAX_LINE_CHARS)
        stream.expect(":", "':'")
        if key in kinds:
            if stream.peek() != "[":
                stream.value()
                raise ConfigError(f"schedule file {p}: \"{key}\" is not a list")
            stream.pos += 1
            packed = array("d" if kinds[key] is float else "q")
            for i, item in enumerate(stream.values()):
                packed.append(_number(f"schedule file {p} point {i}", key, item, kinds[key]))
            columns[key] = packed
        else:
            other[key] = stream.value()
        if stream.expect(",}", "',' or '}'") == "}":
            break
    if stream.peek():
        raise stream.fail("extra data after the object")
    if "lr" not in columns or "epoch" not in columns:
        raise ConfigError(shape)
    if isinstance(other.get("source"), dict):
        source = {**_bounded_source(other["source"]), **source}
    per_step = "step" in columns
    lengths = {len(v) for v in columns.values()}
    if len(lengths) != 1:
        raise ConfigError(f"schedule file {p}: " + ", ".join(
            f"\"{k}\" has {len(columns[k])} values" for k in _COLUMNS if k in columns))
    interval = other.get("interval", "step" if per_step else "epoch")
    if interval != ("step" if per_step else "epoch"):
        raise ConfigError(f"schedule file {p}: interval {_shown(interval)} does not match its "
                          "columns (\"step\" lists go with interval \"step\")")
    points = _Points(p, per_step)
    steps, epochs, lrs = columns.get("step"), columns["epoch"], columns["lr"]
    for i in range(len(lrs)):
        points.add(lambda i=i: f"schedule file {p} point {i}",
                   None if steps is None else steps[i], epochs[i], lrs[i])
    return points.schedule(source)


def _bounded_source(found: dict[str, Any]) -> dict[str, Any]:
    """A file's ``source`` as a replay records it: plain values, strings shortened."""
    kept: dict[str, Any] = {}
    for key, value in list(found.items())[:MAX_SOURCE_ENTRIES]:
        if isinstance(value, str):
            value = bounded_text(value)
        elif not (value is None or isinstance(value, (bool, int, float))):
            continue  # lists and objects: a replay does not need them
        elif isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 2**63:
            continue
        kept[bounded_text(str(key), MAX_NAME)] = value
    return kept


__all__ = ["FORMATS", "LRSchedule", "MAX_SCHEDULE_BYTES", "NoStepLRs", "format_for",
           "format_schedule", "schedule_from_file", "schedule_from_run", "write_schedule"]
