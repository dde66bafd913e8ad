"""``adatune schedule``: export a run's learned schedule for reuse without adatune."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from adatune._durable import check_output
from adatune.methods.schedule_file import (
    format_for,
    format_schedule,
    schedule_from_run,
    write_schedule,
)
from adatune_cli._common import (
    DEFAULT_STORE,
    StoreOption,
    err,
    no_runs,
    open_to_read,
    store_files,
)
from adatune_cli.main import app

schedule_app = typer.Typer(help="Export a run's learned learning-rate schedule.",
                           no_args_is_help=True)
app.add_typer(schedule_app, name="schedule")


@schedule_app.command("export")
def export(
    run_id: Annotated[int, typer.Argument(metavar="RUN_ID")],
    output: Annotated[Path | None, typer.Option(
        "--output", "-o", dir_okay=False,
        help="File to write (default: standard output).")] = None,
    fmt: Annotated[str | None, typer.Option(
        "--format", "-f",
        help="csv (step,epoch,lr), json, or torch: a Python file with a LambdaLR that needs "
             "only torch \\[default: from the suffix of --output (.json, .py), else csv].")]
    = None,
    per_epoch: Annotated[bool, typer.Option(
        "--per-epoch", help="One row per epoch (epoch,lr): the epoch's mean LR.")] = False,
    store: StoreOption = DEFAULT_STORE,
) -> None:
    """Write the LR a run used at every step (or its per-epoch mean) as CSV, JSON or Python.

    Replay it with `adatune baseline --lr-scheduler replay --from-file FILE`, or in your
    own script with `adatune.ReplayLR` or the exported torch file.

    Example: adatune schedule export 12 -o marthe.csv
    """
    from adatune.errors import RunNotFound

    kind = format_for(output, fmt)
    protected = store_files(store)
    if output is not None:  # before the store is read: a target never to write over
        check_output(output, protected=protected)
    with open_to_read(store) as db:  # a missing store is one line
        try:
            schedule = schedule_from_run(db, run_id, per_epoch=per_epoch)  # NoStepLRs: main
        except RunNotFound as exc:
            no_runs(db, store, missing=exc)
    if output is None:
        typer.echo(format_schedule(schedule, kind), nl=False)
        return
    path = write_schedule(schedule, output, kind, protected=protected)
    unit = "epochs" if per_epoch else "steps"
    err.print(f"wrote {path}: {len(schedule)} {unit} of run {run_id} ({kind})", markup=False,
              highlight=False, soft_wrap=True)
