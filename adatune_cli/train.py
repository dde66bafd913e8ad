"""``adatune train`` and ``adatune baseline``: one run, live progress, a summary.

Everything a run is given is checked (values, names, files, the store and its
schema) before the training stack is imported: bad input exits at once.

Under ``torchrun`` every rank runs the command; rank 0 alone checks the input
against the store, opens it, shows progress and prints, and its errors are every
rank's (:mod:`adatune.running.distributed`).
"""

from __future__ import annotations

import os
import shlex
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich import box
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from adatune.catalog import canonical_schedule
from adatune.errors import AdatuneError, ConfigError
from adatune.imports import attr_name
from adatune.methods.peers import PEER_NAMES, PEERS
from adatune.redact import printable
from adatune.running import signals
from adatune.running.config import REPLAY, TUNER_NAMES, TrainConfig, canonical_method
from adatune.running.runtypes import Events, RunResult
from adatune.store.records import EpochRecord
from adatune_cli._common import (
    DEFAULT_STORE,
    StoreOption,
    epoch_seconds,
    err,
    fail,
    fmt,
    open_for_run,
    out,
    store_default,
)
from adatune_cli.main import app
from adatune_cli.options import (
    PANEL_PEER,
    PANEL_SCHED,
    PANEL_TUNER,
    flag,
    given,
    make_config,
    refuse_given,
    run_options,
)

if TYPE_CHECKING:
    from adatune.running.distributed import LazyStore
    from adatune.store import Store

NameOption = Annotated[str | None, typer.Option("--name", help="A name for the run.")]


def check_names(name: str | None, experiment: str | None) -> None:
    """A run's name and experiment fit the store (255 characters): one line otherwise."""
    from adatune import checks

    checks.name("name", name)
    checks.name("experiment", experiment)
ExperimentOption = Annotated[str | None, typer.Option(
    "--experiment", help="Group the run under this experiment name.")]


class RichEvents(Events):
    """Epoch and batch bars with the live LR, mu and loss."""

    def __init__(self, progress: Progress, note: str | None = None) -> None:
        self.progress = progress
        self.note = note  # said once the run has started (a resume: what it changes)
        self.epoch_task = None
        self.batch_task = None
        self.last: EpochRecord | None = None

    def run_started(self, run_id: int, config: dict[str, Any], *, steps_per_epoch: int,
                    start_epoch: int) -> None:
        data = _label(config.get("dataset") or config.get("data"))
        network = _label(config.get("network") or config.get("model"))
        if self.note:
            err.print(self.note, markup=False, highlight=False)
        self.progress.console.print(printable(
            f"run {run_id}: {config['method']} on {data}/{network} "
            f"({config['optimizer']}, lr {config['lr']:g}) for {config['epochs']} epochs"),
            markup=False, highlight=False)
        self.epoch_task = self.progress.add_task("epochs", total=config["epochs"],
                                                 completed=start_epoch - 1, info="")
        self.batch_task = self.progress.add_task("batches", total=steps_per_epoch, info="")

    def step_done(self, epoch: int, batch: int, loss: float, lr: float,
                  mu: float | None) -> None:
        mu_text = "" if mu is None else f"  mu {mu:.3g}"
        self.progress.update(self.batch_task, completed=batch,
                             info=f"loss {loss:.4f}  lr {lr:.4g}{mu_text}")

    def epoch_done(self, record: EpochRecord) -> None:
        self.last = record
        score = (f"val acc {record.val_acc:.2%}" if record.val_acc is not None
                 else f"val loss {record.val_loss:.4g}")
        self.progress.update(self.epoch_task, completed=record.epoch,
                             info=f"{score}  lr {record.lr:.4g}")
        self.progress.reset(self.batch_task)

    def close(self) -> None:
        """Take the batch bar off the screen (the epochs bar says where the run ended)."""
        if self.batch_task is not None:
            self.progress.remove_task(self.batch_task)
            self.batch_task = None


def _label(name: str | None) -> str:
    """How progress names a network or dataset: its name, or its factory's (``pkg:make``)."""
    return "?" if not name else attr_name(name) if ":" in name else name


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description:>8}"), BarColumn(), MofNCompleteColumn(),
        TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
        console=err, transient=False,
    )


def next_steps(db: Store, result: RunResult, store: str) -> list[str]:
    """Where the run went and the commands that come next: what ``train``/``baseline`` print.

    ``store`` is the store as given; the commands name it unless it is the default
    (or ``$ADATUNE_STORE``), with any password masked.
    """
    run = db.get_run(result.run_id, steps=False).run
    flag = "" if store == store_default() else f" --store {shlex.quote(db.location)}"
    commands = [f"adatune runs show {result.run_id}{flag}",
                f"adatune report html{flag}  # every run of the store, side by side"]
    if result.status in ("interrupted", "failed"):
        commands.insert(0, f"adatune {run.kind} --resume {result.run_id}{flag}")
    if result.status != "diverged":
        commands.append(_compare_with(run.config, flag))
    return [f"store:       {db.location}", f"checkpoints: {result.checkpoint_dir}",
            "next:        " + commands[0], *("             " + c for c in commands[1:])]


def _compare_with(config: dict[str, Any], flag: str) -> str:
    """A run to set beside this one: a constant LR for a tuner or peer, MARTHE for a schedule,
    the source run for a replay of one."""
    if config["method"] == REPLAY and config.get("from_run") is not None:
        return f"adatune runs show {config['from_run']}{flag}  # compare: the run it replays"
    common = []
    peer = config["method"] in PEER_NAMES
    for key in ("network", "dataset", "model", "data", "optimizer", "lr", "epochs", "seed"):
        value = config.get(key)
        if value is not None and not (peer and key in ("optimizer", "lr")):
            common += [f"--{key}", str(value)]
    wraps = PEERS[config["method"]].wraps.lower() if peer else ""
    if wraps:  # Mechanic: MARTHE over the same base optimizer
        common[:0] = ["--optimizer", wraps]
    own = shlex.join(common) + flag
    if peer:
        return f"adatune train --tuner marthe {own}  # compare: MARTHE from the default LR"
    if config["method"] in TUNER_NAMES:
        return f"adatune baseline --lr-scheduler constant {own}  # compare: this LR, held"
    return f"adatune train --tuner marthe {own}  # compare: MARTHE from the same LR"


def print_summary(result: RunResult) -> None:
    table = Table(title=f"run {result.run_id}: {result.status}", title_justify="left",
                  box=box.SIMPLE_HEAD, pad_edge=False)
    accuracy = any(e.val_acc is not None for e in result.epochs)
    scores = ("train", "val", "test") if accuracy else ("val loss", "test loss")
    # a method without mu or a hyper-LR (a schedule, a peer) shows no column of them
    tuned = [name for name, field in (("mu", "mu"), ("hyper-lr", "hyper_lr"))
             if any(getattr(e, field) is not None for e in result.epochs)]
    for column in ("epoch", "lr", *tuned, "loss", *scores, "s"):
        table.add_column(column, justify="right", no_wrap=True)
    for e, seconds in zip(result.epochs, epoch_seconds(result.epochs), strict=True):
        if accuracy:
            cells = (fmt(e.train_acc, ".1%"), fmt(e.val_acc, ".1%"), fmt(e.test_acc, ".1%"))
        else:
            cells = (fmt(e.val_loss, ".4g"), fmt(e.test_loss, ".4g"))
        extra = {"mu": fmt(e.mu, ".3g"), "hyper-lr": fmt(e.hyper_lr, ".2g")}
        table.add_row(str(e.epoch), fmt(e.lr, ".3g"), *(extra[c] for c in tuned),
                      fmt(e.train_loss, ".3f"), *cells, fmt(seconds, ".1f"))
    out.print(table)
    line = f"run {result.run_id} {result.status}"
    if result.best_val_acc is not None:
        line += (f": best val acc {result.best_val_acc:.2%} at epoch {result.best_epoch}, "
                 f"test acc there {fmt(result.test_acc, '.2%')}")
    elif result.best_val_loss is not None:
        line += (f": best val loss {result.best_val_loss:.4g} at epoch {result.best_epoch}, "
                 f"test loss there {fmt(result.test_loss)}")
    if result.stopped_early:
        line += " (stopped early)"
    if result.reason:
        line += f" ({result.reason})"
    out.print(line, markup=False)


def _run(config: TrainConfig | None, store: str, *, resume_id: int | None = None,
         resume_changes: dict[str, Any] | None = None, **run_kw: Any) -> None:
    if _ranked():
        _run_ranked(config, store, resume_id=resume_id, resume_changes=resume_changes,
                    **run_kw)
        return
    db = open_for_run(store, config, device=(resume_changes or {}).get("device"))
    try:
        note = None if resume_id is None else _check_resume(db, resume_id, resume_changes)
        from adatune.running.engine import resume, train  # torch, once the input is known good

        with _progress() as progress:
            events = RichEvents(progress, note)
            try:
                if resume_id is not None:
                    result = resume(db, resume_id, events=events, **(resume_changes or {}))
                else:
                    result = train(config, db, events=events, **run_kw)
            finally:
                events.close()  # no bar of a finished run stays on screen
        hints = next_steps(db, result, store)
    finally:
        db.close()
    _report(result, hints)


def _report(result: RunResult, hints: list[str]) -> None:
    print_summary(result)
    for line in hints:
        out.print(line, markup=False, highlight=False)
    if result.status == "interrupted":
        raise typer.Exit(signals.exit_code(130))  # 143 after SIGTERM
    if result.status == "diverged":
        raise typer.Exit(1)


def _ranked() -> bool:
    """Launched as one of several ranks (torchrun sets WORLD_SIZE)."""
    return os.environ.get("WORLD_SIZE", "1").strip() not in ("", "0", "1")


def _run_ranked(config: TrainConfig | None, store: str, *, resume_id: int | None,
                resume_changes: dict[str, Any] | None, **run_kw: Any) -> None:
    """:func:`_run` on one rank of several: rank 0 checks, records, shows and prints."""
    from adatune.running.distributed import LazyStore, RankFailure, launch, on_main
    from adatune.running.engine import resume, train

    def go(db: Store | LazyStore, events: Events) -> RunResult:
        if resume_id is not None:
            return resume(db, resume_id, events=events, **(resume_changes or {}))
        return train(config, db, events=events, **run_kw)

    opened: dict[str, Any] = {}

    def check_and_open() -> None:  # rank 0: what it rejects, every rank rejects
        db = open_for_run(store, config, device=(resume_changes or {}).get("device"))
        try:
            if resume_id is not None:
                opened["note"] = _check_resume(db, resume_id, resume_changes)
        except BaseException:
            db.close()
            raise
        opened["db"] = db

    rank, hints = 0, []
    try:
        with launch() as rank:
            on_main(check_and_open)
            if rank != 0:  # rank 0 records and reports
                result = go(LazyStore(store), Events())
            else:
                db = opened["db"]
                try:
                    with _progress() as progress:
                        events = RichEvents(progress, opened.get("note"))
                        try:
                            result = go(db, events)
                        finally:
                            events.close()
                    hints = next_steps(db, result, store)
                finally:
                    db.close()
    except RankFailure as exc:
        fail(f"the run failed on rank {rank}: {exc}", code=1)
    except AdatuneError:
        if rank == 0:
            raise
        raise typer.Exit(2) from None  # rank 0 says what went wrong
    if rank != 0:
        if result.status != "completed":
            raise typer.Exit(signals.exit_code(130) if result.status == "interrupted" else 1)
        return
    _report(result, hints)


#: What ``--resume`` may be given with: moving a run, and training it longer.
RESUME_OPTIONS = ("epochs", "device")


def resume_changes(ctx: typer.Context, run_id: int, opts: dict[str, Any],
                   **others: bool) -> dict[str, Any]:
    """The options given with ``--resume``: --epochs and --device, or a one-line refusal.

    ``others`` says which of the command's own options were given (e.g. --name).
    """
    refused = [flag(name) for name in opts if name not in RESUME_OPTIONS and given(ctx, name)]
    refused += [flag(name) for name, was_given in others.items() if was_given]
    if refused:
        raise ConfigError(f"--resume {run_id} continues the run as it was recorded; "
                          f"{', '.join(refused)} would change it (only "
                          f"{', '.join(flag(n) for n in RESUME_OPTIONS)} may be given with "
                          "--resume: start a new run for anything else)")
    return {name: opts[name] for name in RESUME_OPTIONS if given(ctx, name)}


def _check_resume(db: Store, run_id: int, changes: dict[str, Any] | None) -> str | None:
    """Refuse a run that cannot go on as asked (before torch loads); what it changes.

    The line is printed once the run has started: a resume refused later (its
    checkpoint, another process) changes nothing, and says nothing of changes.
    """
    from adatune.running.preflight import check_resume

    changes = changes or {}
    config = check_resume(db, run_id, epochs=changes.get("epochs")).config
    parts = [f"{flag(k)} {v} (was {config.get(k)})" for k, v in changes.items()
             if config.get(k) != v]
    if not parts:
        return None
    return printable(f"resuming run {run_id} with {' and '.join(parts)}; recorded in its "
                     "config (extra.resumed)")


@app.command("train")
@run_options(hide=(PANEL_SCHED, PANEL_PEER))
def train_command(
    ctx: typer.Context,
    opts: dict[str, Any],
    tuner: Annotated[str, typer.Option("--tuner", help="marthe, rtho or hd.")] = "marthe",
    resume_id: Annotated[int | None, typer.Option(
        "--resume", help="Continue run RUN_ID from its last checkpoint.",
        metavar="RUN_ID")] = None,
    name: NameOption = None,
    experiment: ExperimentOption = None,
    store: StoreOption = DEFAULT_STORE,
) -> None:
    """Train with an online hypergradient LR tuner and record the run.

    Example: adatune train --tuner marthe --epochs 15
    """
    if resume_id is not None:
        changes = resume_changes(ctx, resume_id, opts, **{
            "tuner": given(ctx, "tuner"), "name": given(ctx, "name"),
            "experiment": given(ctx, "experiment")})
        _run(None, store, resume_id=resume_id, resume_changes=changes)
        return
    check_names(name, experiment)
    method = tuner.strip().lower()
    if method not in TUNER_NAMES:
        raise ConfigError(f"unknown tuner {tuner!r} (choose from: {', '.join(TUNER_NAMES)}; "
                          "baseline schedules run with `adatune baseline`)")
    refuse_given(ctx, (PANEL_SCHED, PANEL_PEER), "for baseline schedules and peer optimizers "
                 "(`adatune baseline`); a tuner moves the LR itself")
    _run(make_config(method, opts), store, name=name, experiment=experiment)


_PANEL_REPLAY = "Replay a learned schedule"


@app.command("baseline")
@run_options(hide=(PANEL_TUNER,))
def baseline_command(
    ctx: typer.Context,
    opts: dict[str, Any],
    lr_scheduler: Annotated[str | None, typer.Option(
        "--lr-scheduler", help="constant, staircase, exponential, cosine, or replay (a "
                               "recorded schedule: --from-run or --from-file). The original's "
                               "ed, cyclic and hd are accepted; hd runs the HD tuner "
                               "\\[default: constant].")] = None,
    method: Annotated[str | None, typer.Option(
        "--method", help=f"A learning-rate-free peer optimizer: {', '.join(PEER_NAMES)} "
                         "(each at its authors' defaults); or a schedule name, as "
                         "--lr-scheduler.")] = None,
    resume_id: Annotated[int | None, typer.Option(
        "--resume", help="Continue run RUN_ID from its last checkpoint.",
        metavar="RUN_ID")] = None,
    from_run: Annotated[int | None, typer.Option(
        "--from-run", metavar="RUN_ID", rich_help_panel=_PANEL_REPLAY,
        help="Replay the LR of every step of this run. Its network, data, optimizer, batch "
             "size and epochs are the defaults here; the seed is not.")] = None,
    from_file: Annotated[str | None, typer.Option(
        "--from-file", metavar="FILE", rich_help_panel=_PANEL_REPLAY,
        help="Replay a schedule file (CSV step,epoch,lr or epoch,lr, or JSON) as written by "
             "`adatune schedule export`.")] = None,
    stretch: Annotated[bool, typer.Option(
        "--stretch", rich_help_panel=_PANEL_REPLAY,
        help="Map the schedule onto this run's number of steps, linearly in progress.")]
    = False,
    scale: Annotated[float, typer.Option(
        "--scale", rich_help_panel=_PANEL_REPLAY,
        help="Multiply every replayed LR by this factor.")] = 1.0,
    name: NameOption = None,
    experiment: ExperimentOption = None,
    store: StoreOption = DEFAULT_STORE,
) -> None:
    """Train with a fixed LR schedule, or with a learning-rate-free optimizer, and record it.

    Example: adatune baseline --lr-scheduler cosine --t-0 2 --t-mult 2

    Example: adatune baseline --method prodigy --epochs 15

    Example: adatune baseline --lr-scheduler replay --from-run 12 --seed 1
    """
    replay = {"from_run": from_run, "from_file": from_file, "stretch": stretch, "scale": scale}
    if resume_id is not None:
        changes = resume_changes(ctx, resume_id, opts, **{
            "lr_scheduler": given(ctx, "lr_scheduler"), "method": given(ctx, "method"),
            "name": given(ctx, "name"), "experiment": given(ctx, "experiment"),
            **{k: given(ctx, k) for k in replay}})
        _run(None, store, resume_id=resume_id, resume_changes=changes)
        return
    check_names(name, experiment)
    if method is not None and lr_scheduler is not None:
        raise ConfigError("give --method or --lr-scheduler, not both (a peer optimizer sets "
                          "its own step size)")
    if method is not None:
        chosen = canonical_method(method)
        if chosen in TUNER_NAMES:
            raise ConfigError(f"{chosen} is a tuner: run it with `adatune train --tuner "
                              f"{chosen}`")
    else:
        key = (lr_scheduler or "constant").strip().lower()
        chosen = "hd" if key == "hd" else REPLAY if key == REPLAY else canonical_schedule(key)
    if chosen != "hd":  # the original's `--lr-scheduler hd` runs the HD tuner
        refuse_given(ctx, (PANEL_TUNER,), "for the hypergradient tuners (`adatune train`)")
    if chosen in PEER_NAMES:
        refuse_given(ctx, (PANEL_SCHED,), f"for LR schedules; {chosen} sets its own step size")
    else:
        refuse_given(ctx, (PANEL_PEER,), "for the peer optimizers (--method)")
    if chosen == REPLAY:
        refuse_given(ctx, (PANEL_SCHED,), "for the built-in schedules; a replay follows the "
                                          "recorded one")
        if from_run is not None:
            opts = {**opts, **_inherited(ctx, from_run, store)}
    _run(make_config(chosen, opts, **replay), store, name=name, experiment=experiment)


#: What a replay of a recorded run takes from it unless told otherwise: the task and
#: the optimizer, not the seed (replaying on other seeds is the point), the device or
#: the folders; and the epochs the source recorded.
INHERITED = ("network", "model", "dataset", "data", "loss", "optimizer", "momentum", "nesterov",
             "weight_decay", "batch_size", "grad_clip", "data_dir", "val_fraction",
             "val_source", "workers", "log_every")


def _inherited(ctx: typer.Context, run_id: int, store: str) -> dict[str, Any]:
    """The source run's training setup (:data:`INHERITED`), for every option not given.

    Nothing for a run started from Python (``adatune.fit``), whose parts are objects.
    """
    from adatune.store import open_store

    with open_store(store, write=False) as db:  # a source run needs a store that exists
        source = db.get_run(run_id, steps=False).run
    config = source.config
    if config.get("entry") == "fit" or "method" not in config:
        return {}
    inherited = {key: config[key] for key in INHERITED if key in config}
    if source.epochs:
        inherited["epochs"] = source.epochs
    inherited = {k: v for k, v in inherited.items() if not given(ctx, k)}
    # A replay needs the schedule, not the source's code: an import path the store names
    # (its own model, data or loss) is never imported unless the user gives it again.
    code = {k: v for k, v in inherited.items() if k in ("model", "data", "loss")
            and isinstance(v, str) and ":" in v}
    if code:
        named = " and ".join(f"{k}={v!r}" for k, v in code.items())
        raise ConfigError(f"run {run_id} was trained with {named}; a replay imports no code "
                          f"that a store names: give {', '.join(f'{k}=' for k in code)} "
                          "yourself to replay it on that code")
    return inherited
