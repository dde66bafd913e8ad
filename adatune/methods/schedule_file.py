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
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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

    ``module`` is the import name the Python file's docstring shows.
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
        writer.writerows((e, repr(v)) for e, v in zip(schedule.epochs, schedule.lrs))
    else:
        writer.writerow(("step", "epoch", "lr"))
        writer.writerows((s, e, repr(v)) for s, e, v in
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


def _describe(source: dict[str, Any]) -> str:
    if "run" in source:
        return (f"adatune run {source['run']} ({source.get('method')} on "
                f"{source.get('dataset')}/{source.get('network')}, {source.get('optimizer')}, "
                f"seed {source.get('seed')})")
    if "file" in source:
        return f"the schedule file {source['file']}"
    return "adatune"


_TORCH_TEMPLATE = '''"""Learning-rate schedule of {what}: {n} {unit}s.

Written by `adatune schedule export`; it needs only torch.

    from {module} import scheduler
    sched = scheduler(optimizer)   # a torch.optim.lr_scheduler.LambdaLR
{usage}
{unit_title} t runs at LRS[t] (the last value after the end) in the optimizer's first param
group; every other group keeps its initial ratio to the first. LambdaLR multiplies
each group's base LR by lr_lambda(t): scheduler() sets the base LRs to those ratios
(1.0 for the first group), so the first group's LR is LRS[t] exactly.
"""

from torch.optim.lr_scheduler import LambdaLR

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
    values = "\n".join("    " + ", ".join(repr(v) for v in schedule.lrs[i:i + 4]) + ","
                       for i in range(0, len(schedule.lrs), 4))
    return _TORCH_TEMPLATE.format(
        what=_describe(schedule.source), n=len(schedule.lrs),
        unit="step" if per_step else "epoch", unit_title="Step" if per_step else "Epoch",
        module=module, usage=_USAGE[schedule.interval], values=values)


def write_schedule(schedule: LRSchedule, path: str | os.PathLike[str], fmt: str) -> Path:
    """Write the schedule to ``path`` (replaced whole, never half-written)."""
    module = Path(path).stem if Path(path).stem.isidentifier() else "schedule"
    text = format_schedule(schedule, fmt, module=module)
    out = Path(path)
    tmp = out.with_name(f".{out.name}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, out)
    except OSError as exc:
        raise ConfigError(f"cannot write {out}: {exc.strerror or exc}") from None
    finally:
        tmp.unlink(missing_ok=True)
    return out


# ------------------------------------------------------------------ reading
def schedule_from_file(path: str | os.PathLike[str]) -> LRSchedule:
    """Read a schedule file: JSON (``.json``) or CSV (anything else).

    Raises :class:`~adatune.errors.ConfigError` (one line naming the file and
    the line or field) for a missing or unreadable file, a malformed one, or
    an LR that is negative or not finite.
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"no schedule file {p}") from None
    except IsADirectoryError:
        raise ConfigError(f"schedule file {p} is a directory") from None
    except UnicodeDecodeError:
        raise ConfigError(f"schedule file {p} is not UTF-8 text") from None
    except OSError as exc:
        raise ConfigError(f"cannot read the schedule file {p}: {exc.strerror or exc}") from None
    source = {"file": str(p.resolve())}
    if p.suffix.lower() == ".json":
        return _read_json(p, text, source)
    return _read_csv(p, text, source)


def _number(where: str, name: str, text: Any, kind: type) -> Any:
    if kind is int:
        if isinstance(text, bool) or (isinstance(text, float) and not text.is_integer()):
            raise ConfigError(f"{where}: {name} {text!r} is not a whole number")
        try:
            return int(text)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: {name} {text!r} is not a whole number") from None
    if isinstance(text, bool):
        raise ConfigError(f"{where}: {name} {text!r} is not a number")
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: {name} {text!r} is not a number") from None
    if not math.isfinite(value) or value < 0:
        raise ConfigError(f"{where}: {name} {text!r} is not a learning rate (finite and >= 0)")
    return value


def _checked(p: Path, rows: list[tuple[str, int | None, int, float]], source: dict[str, Any],
             per_step: bool) -> LRSchedule:
    """Check the order of steps and epochs; rows are (where, step, epoch, lr)."""
    if not rows:
        raise ConfigError(f"schedule file {p} has no rows")
    previous = None
    for index, (where, step, epoch, _) in enumerate(rows):
        if per_step and step != index:
            raise ConfigError(f"{where}: step {step}, expected {index} (steps count from 0 "
                              "without gaps)")
        if epoch < 1:
            raise ConfigError(f"{where}: epoch {epoch} (epochs count from 1)")
        if previous is not None:
            if not per_step and epoch != previous + 1:
                raise ConfigError(f"{where}: epoch {epoch}, expected {previous + 1} (one row "
                                  "per epoch, from 1 without gaps)")
            if per_step and epoch < previous:
                raise ConfigError(f"{where}: epoch {epoch} after epoch {previous} (epochs "
                                  "never go down)")
        elif not per_step and epoch != 1:
            raise ConfigError(f"{where}: epoch {epoch}, expected 1 (one row per epoch, from 1)")
        previous = epoch
    return LRSchedule("step" if per_step else "epoch", tuple(r[3] for r in rows),
                      tuple(r[2] for r in rows),
                      tuple(r[1] for r in rows) if per_step else None, source)


def _read_csv(p: Path, text: str, source: dict[str, Any]) -> LRSchedule:
    reader = csv.reader(io.StringIO(text))
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
        at = {name: names.index(name) for name in ("step", "epoch", "lr") if name in names}
        rows = []
        for fields in reader:
            where = f"schedule file {p} line {reader.line_num}"
            if not fields or all(not f.strip() for f in fields):
                continue
            if len(fields) != len(names):
                raise ConfigError(f"{where}: {len(fields)} fields, the header has "
                                  f"{len(names)}")
            step = _number(where, "step", fields[at["step"]].strip(), int) if per_step else None
            epoch = _number(where, "epoch", fields[at["epoch"]].strip(), int)
            lr = _number(where, "lr", fields[at["lr"]].strip(), float)
            rows.append((where, step, epoch, lr))
    except csv.Error as exc:
        raise ConfigError(f"schedule file {p} line {reader.line_num}: not CSV ({exc})") from None
    return _checked(p, rows, source, per_step)


def _read_json(p: Path, text: str, source: dict[str, Any]) -> LRSchedule:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"schedule file {p} line {exc.lineno}: not JSON ({exc.msg})") from None
    if not isinstance(data, dict) or "lr" not in data or "epoch" not in data:
        raise ConfigError(f"schedule file {p}: expected an object with \"epoch\" and \"lr\" "
                          "lists (and \"step\" for a per-step schedule)")
    if isinstance(data.get("source"), dict):
        source = {**data["source"], **source}
    per_step = "step" in data
    columns = {k: data[k] for k in ("step", "epoch", "lr") if k in data}
    for key, values in columns.items():
        if not isinstance(values, list):
            raise ConfigError(f"schedule file {p}: \"{key}\" is not a list")
    lengths = {len(v) for v in columns.values()}
    if len(lengths) != 1:
        raise ConfigError(f"schedule file {p}: " + ", ".join(
            f"\"{k}\" has {len(v)} values" for k, v in columns.items()))
    interval = data.get("interval", "step" if per_step else "epoch")
    if interval != ("step" if per_step else "epoch"):
        raise ConfigError(f"schedule file {p}: interval {interval!r} does not match its "
                          "columns (\"step\" lists go with interval \"step\")")
    rows = []
    for i, lr in enumerate(columns["lr"]):
        where = f"schedule file {p} point {i}"
        step = _number(where, "step", columns["step"][i], int) if per_step else None
        rows.append((where, step, _number(where, "epoch", columns["epoch"][i], int),
                     _number(where, "lr", lr, float)))
    return _checked(p, rows, source, per_step)


__all__ = ["FORMATS", "LRSchedule", "NoStepLRs", "format_for", "format_schedule",
           "schedule_from_file", "schedule_from_run", "write_schedule"]
