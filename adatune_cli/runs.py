"""``adatune runs``: list, show and delete recorded runs."""

from __future__ import annotations

import dataclasses
import json
from typing import Annotated, Any

import typer

from adatune.catalog import TUNER_NAMES
from adatune.redact import mask_secrets, mask_values, printable
from adatune.store.records import RunRecord
from adatune_cli._common import (
    DEFAULT_STORE,
    Column,
    StoreOption,
    compact_table,
    epoch_seconds,
    fmt,
    json_safe,
    no_runs,
    open_to_read,
    out,
    print_table,
)
from adatune_cli.main import app
from adatune_cli.options import command_line

runs_app = typer.Typer(help="List, show and delete recorded runs.", no_args_is_help=True)
app.add_typer(runs_app, name="runs")

JsonOption = Annotated[bool, typer.Option("--json", help="Machine-readable JSON on stdout.")]


def _shown(value: Any) -> Any:
    """What is printed of a recorded value: strict JSON, any URL password masked."""
    return mask_values(json_safe(value))


def _run_json(run: RunRecord) -> dict[str, Any]:
    return _shown({
        "id": run.id, "name": run.name, "experiment": run.experiment, "kind": run.kind,
        "method": run.method, "optimizer": run.optimizer, "network": run.network,
        "dataset": run.dataset, "seed": run.seed, "status": run.status, "epochs": run.epochs,
        "best_val_acc": run.best_val_acc, "best_epoch": run.best_epoch,
        "test_acc": run.test_acc, "started_at": run.started_at, "ended_at": run.ended_at,
        "error": run.error, "parent_id": run.parent_id,
    })


def _text(value: str) -> str:
    """A recorded string as a terminal shows it: any URL password masked, control characters
    written out (the tables and lines print it as plain text, never as Rich markup)."""
    return printable(mask_secrets(value))


def _reproduce(run: RunRecord) -> str | None:
    """The train/baseline command for a run (a sweep trial's too).

    Probes train on a subset no flag expresses, and searches train nothing: None.
    """
    if run.kind not in ("train", "baseline", "sweep") or run.config.get("entry") == "fit":
        return None
    command = "train" if run.config["method"] in TUNER_NAMES else "baseline"
    return command_line(command, run.config, name=run.name, experiment=run.experiment)


def _replayed(run: RunRecord) -> str | None:
    """``replays run 1 (marthe on digits/mlp, seed 0): 63 steps onto 126, x0.5`` or None."""
    extra = run.config.get("extra")
    meta = extra.get("replay") if run.method == "replay" and isinstance(extra, dict) else None
    if not isinstance(meta, dict):
        return None
    source = meta.get("source") if isinstance(meta.get("source"), dict) else {}
    if "run" in source:
        what = (f"run {source['run']} ({source.get('method')} on {source.get('dataset')}/"
                f"{source.get('network')}, seed {source.get('seed')})")
    else:
        what = f"the file {source.get('file', run.config.get('from_file'))}"
    unit = meta.get("interval", "step")
    line = f"replays {what}: {meta.get('source_points')} {unit}s"
    if run.config.get("stretch"):
        line += f" stretched onto {meta.get('points')}"
    if run.config.get("scale", 1.0) != 1.0:
        line += f", x{run.config['scale']:g}"
    return line


@runs_app.command("list")
def list_runs(
    experiment: Annotated[str | None, typer.Option(
        "--experiment", "-e", help="Only runs of this experiment.")] = None,
    method: Annotated[str | None, typer.Option(
        "--method", "-m", help="Only this method, e.g. marthe, cosine or prodigy.")] = None,
    dataset: Annotated[str | None, typer.Option(
        "--dataset", help="Only runs on this dataset, e.g. digits.")] = None,
    status: Annotated[str | None, typer.Option(
        "--status", help="Only runs with this status: running, completed, interrupted, "
                         "diverged or failed.")] = None,
    kind: Annotated[str | None, typer.Option("--kind", help="train, baseline, probe, "
                                                            "find-alpha or sweep.")] = None,
    as_json: JsonOption = False,
    store: StoreOption = DEFAULT_STORE,
) -> None:
    """List runs, newest last.

    Example: adatune runs list --method marthe --status completed
    """
    with open_to_read(store) as db:
        runs = db.list_runs(experiment=experiment, method=method, dataset=dataset,
                            status=status, kind=kind)
        if not runs:
            no_runs(db, store, experiment=experiment, method=method, dataset=dataset,
                    status=status, kind=kind)
    if as_json:
        typer.echo(json.dumps([_run_json(r) for r in runs], indent=2))
        return
    columns = [Column("id"), Column("name", False), Column("experiment", False, common=True),
               Column("kind", drop=3), Column("method"), Column("task", False, common=True),
               Column("seed", drop=4), Column("status"), Column("ep", drop=2), Column("val"),
               Column("test", drop=1)]
    rows = [[str(r.id), _text(r.name or ""), _text(r.experiment or ""), _text(r.kind),
             _text(r.method), _text(f"{r.dataset}/{r.network}"), str(r.seed), _text(r.status),
             str(r.epochs), fmt(r.best_val_acc, ".1%"), fmt(r.test_acc, ".1%")] for r in runs]
    print_table(*compact_table(columns, rows))


@runs_app.command("show")
def show_run(
    run_id: Annotated[int, typer.Argument(metavar="RUN_ID")],
    as_json: JsonOption = False,
    store: StoreOption = DEFAULT_STORE,
) -> None:
    """Show one run: its configuration, every epoch, and the command that reproduces it.

    Example: adatune runs show 3 --json
    """
    from adatune.errors import RunNotFound

    with open_to_read(store) as db:
        try:
            detail = db.get_run(run_id, steps=False)
        except RunNotFound as exc:
            no_runs(db, store, missing=exc)
    run = detail.run
    command = _reproduce(run)
    if as_json:
        payload = _run_json(run)
        payload.update(_shown({"config": run.config, "summary": run.summary,
                               "epochs": [dataclasses.asdict(e) for e in detail.epochs],
                               "command": command, "device": run.device, "host": run.host,
                               "adatune_version": run.adatune_version,
                               "torch_version": run.torch_version}))
        typer.echo(json.dumps(payload, indent=2))
        return
    out.print(_text(f"run {run.id} {run.name or ''}  [{run.status}]  {run.kind} {run.method} "
                    f"on {run.dataset}/{run.network} ({run.optimizer}), seed {run.seed}"),
              markup=False, highlight=False)
    if run.error:
        out.print(f"reason: {_text(run.error)}", markup=False, highlight=False)
    replayed = _replayed(run)
    if replayed:
        out.print(_text(replayed), markup=False, highlight=False, soft_wrap=True)
    summary = run.summary or {}
    if run.best_val_acc is None and summary.get("best_val_loss") is not None:
        out.print(f"best val loss {fmt(summary['best_val_loss'])} at epoch {run.best_epoch}, "
                  f"test loss there {fmt(summary.get('test_loss'))}", markup=False)
    else:
        out.print(f"best val acc {fmt(run.best_val_acc, '.2%')} at epoch {run.best_epoch}, "
                  f"test acc there {fmt(run.test_acc, '.2%')}", markup=False)
    columns = [Column("epoch"), Column("lr"), Column("mean lr", drop=3), Column("mu"),
               Column("hyper-lr"), Column("loss"), Column("train", drop=2),
               Column("val loss"), Column("val"), Column("test"), Column("s", drop=1),
               Column("non-finite h", drop=4)]
    seconds = epoch_seconds(detail.epochs)
    rows = [[str(e.epoch), fmt(e.lr, ".3g"), fmt(e.lr_mean, ".3g"), fmt(e.mu, ".3g"),
             fmt(e.hyper_lr, ".3g"), fmt(e.train_loss, ".3g"), fmt(e.train_acc, ".1%"),
             fmt(e.val_loss, ".3g"), fmt(e.val_acc, ".1%"), fmt(e.test_acc, ".1%"),
             fmt(s, ".1f"), str(e.nonfinite_hypergradients or "")]
            for e, s in zip(detail.epochs, seconds, strict=True)]
    print_table(*compact_table(columns, rows))
    out.print("config: " + json.dumps(_shown(run.config), sort_keys=True), markup=False,
              soft_wrap=True)
    if command:
        out.print("reproduce with:", markup=False)
        out.print(f"  {_text(command)}", markup=False, highlight=False, soft_wrap=True)


@runs_app.command("delete")
def delete_run(
    run_id: Annotated[int, typer.Argument(metavar="RUN_ID")],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask.")] = False,
    keep_checkpoints: Annotated[bool, typer.Option(
        "--keep-checkpoints", help="Keep the run's checkpoint folder (last.pt, best.pt).")]
    = False,
    store: StoreOption = DEFAULT_STORE,
) -> None:
    """Delete a run with its epochs and steps (and a search's probes), and their checkpoints.

    The run's checkpoint folder (<checkpoint-dir>/run-ID) goes too, unless
    --keep-checkpoints; only the files a run writes are removed. A run that is
    still training is refused.
    Example: adatune runs delete 3 --yes
    """
    from adatune.running.deletion import delete_run as delete

    with open_to_read(store, write=True) as db:
        run = db.get_run(run_id, steps=False).run
        what = "" if keep_checkpoints else " and its checkpoints"
        if not yes and not typer.confirm(_text(f"delete run {run.id} ({run.method}, "
                                               f"{run.status}){what}?")):
            raise typer.Exit(1)
        result = delete(db, run_id, keep_checkpoints=keep_checkpoints)
    others = len(result.runs) - 1
    out.print(f"deleted run {run_id}" + (f" and its {others} child run{'s' * (others > 1)}"
                                        if others else ""), markup=False)
    if result.kept:
        out.print(_text(f"checkpoints kept in {', '.join(result.kept)}"), markup=False,
                  highlight=False, soft_wrap=True)
    failed = False
    for folder in result.folders:
        if folder.state == "removed":
            out.print(_text(f"removed {folder.folder}"), markup=False, highlight=False)
        elif folder.state != "absent":
            failed = failed or folder.state == "failed"
            out.print(_text(f"kept {folder.folder}: {folder.note}"), markup=False,
                      highlight=False)
    if failed:
        raise typer.Exit(1)
