"""``adatune sweep``: random or TPE search over one method's space, shared through the store.

The space and the base configuration are checked, and ``--show-space`` answered,
before the store, Optuna or the training stack is imported.
"""

from __future__ import annotations

import shlex
from typing import Annotated, Any

import typer
from rich import box
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from adatune.errors import ConfigError
from adatune.methods.hyper_update import ADDITIVE, DEFAULT_HYPER_UPDATE
from adatune.methods.peers import PEER_NAMES, check_available
from adatune.running import signals
from adatune.running.config import TrainConfig
from adatune.search.space import (
    DEFAULT_SPACES,
    Space,
    check_space,
    default_space,
    describe_space,
    load_space,
    parse_space,
    space_toml,
    without,
)
from adatune.search.sweep import (
    DEFAULT_PATIENCE,
    DEFAULT_SEEDS,
    DEFAULT_TRIALS,
    SweepConfig,
    SweepEvents,
    SweepResult,
    TrialOutcome,
    run_sweep,
)
from adatune_cli._common import DEFAULT_STORE, StoreOption, err, fmt, open_for_run, out
from adatune_cli.main import app
from adatune_cli.options import given, make_config, run_options
from adatune_cli.train import RichEvents


def _epilog() -> str:
    lines = ["Default search spaces (with --optimizer sgd and the default --hyper-update "
             f"{DEFAULT_HYPER_UPDATE}; adam and adamw use a lower LR range, and --hyper-update "
             f"{ADDITIVE} other hyper-LR and alpha ranges: see --show-space):"]
    for method, data in DEFAULT_SPACES[DEFAULT_HYPER_UPDATE]["sgd"].items():
        lines.append(f"{method}: {describe_space(parse_space(data, method=method))}.")
    lines.append("Options given on the command line fix their parameter (it is not sampled).")
    return "\n\n".join(lines)


def _fmt_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def _fmt_values(values: dict[str, Any]) -> str:
    return " ".join(f"{k}={_fmt_value(v)}" for k, v in values.items()) or "(no parameters)"


class _SweepProgress(RichEvents, SweepEvents):
    """One line per trial and per run; live bars for the current run only."""

    def __init__(self, progress: Progress) -> None:
        super().__init__(progress)

    def trial_started(self, number: int, values: dict[str, Any], seeds: tuple[int, ...]) -> None:
        seeds_text = ", ".join(map(str, seeds))
        self.progress.console.print(
            f"trial {number}: {_fmt_values(values)} (seed{'s' if len(seeds) > 1 else ''} "
            f"{seeds_text})", markup=False, highlight=False)

    def run_started(self, run_id: int, config: dict[str, Any], *, steps_per_epoch: int,
                    start_epoch: int) -> None:
        for task in (self.epoch_task, self.batch_task):
            if task is not None:
                self.progress.remove_task(task)
        super().run_started(run_id, config, steps_per_epoch=steps_per_epoch,
                            start_epoch=start_epoch)

    def trial_finished(self, outcome: TrialOutcome) -> None:
        if outcome.state == "complete":
            text = f"val acc {fmt(outcome.value, '.2%')} (mean best over seeds)"
        else:
            text = outcome.state + (f" ({outcome.reason})" if outcome.reason else "")
        self.progress.console.print(f"trial {outcome.number} {text}", markup=False,
                                    highlight=False)


def _print_result(result: SweepResult, location: str, store_url: str) -> None:
    from adatune.store.connection import sqlite_path

    s = result.status
    if result.trials:
        table = Table(title=f"trials run here ({len(result.trials)})", title_justify="left",
                      box=box.SIMPLE_HEAD, pad_edge=False)
        for column in ("trial", "state", "val acc", "runs", "configuration"):
            table.add_column(column, justify="left" if column == "configuration" else "right")
        for t in result.trials:
            table.add_row(str(t.number), t.state, fmt(t.value, '.2%'),
                          ", ".join(map(str, t.run_ids)) or "-", _fmt_values(t.values))
        out.print(table)
    here = sum(t.state == "interrupted" for t in result.trials)  # this worker's, stopped
    if result.stopped == "interrupted" and s.failed:
        here = max(here, 1)  # Ctrl-C between a trial's runs: its trial is failed too
    earlier = s.failed - here  # other workers' or earlier commands': stopped or failed
    extra = ", ".join(text for n, text in (
        (here, f"{here} interrupted"),
        (earlier, f"{earlier} earlier trial{'s' * (earlier > 1)} stopped or failed before "
                  "finishing (not counted)"),
        (s.running, f"{s.running} running")) if n > 0)
    out.print(f"study {s.name}: {s.counted} of {result.target} trials "
              f"({s.complete} complete, {s.pruned} diverged or invalid)"
              + (f"; {extra}" if extra else ""), markup=False, highlight=False)
    if s.best is not None:
        out.print(f"best: trial {s.best.number}, val acc {fmt(s.best.value, '.2%')} "
                  f"(mean best over seeds): {_fmt_values(s.best.values)} (runs "
                  f"{', '.join(map(str, s.best.run_ids))})", markup=False, highlight=False)
    if result.stopped == "timeout":
        out.print("stopped: --timeout reached (other workers may go on)", markup=False)
    elif result.stopped == "interrupted":
        out.print("stopped: interrupted (the trial in progress is marked failed; the same "
                  "command carries on with new trials)", markup=False)
    command = ["adatune", "report", "html", "--experiment", s.name]
    if sqlite_path(store_url) is not None:  # a PostgreSQL URL would show its password
        command += ["--store", location]
    out.print(f"compare: {shlex.join(command)}", markup=False, highlight=False)


def _space(method: str, base: TrainConfig, space_file: str | None,
           fixed: list[str]) -> tuple[Space, list[str]]:
    space = (load_space(space_file, method=method) if space_file
             else default_space(method, base.optimizer, base.hyper_update))
    fixed_here = [p.name for p in space if p.name in fixed]
    space = without(space, fixed_here)
    if not space:
        raise ConfigError(f"nothing left to sample: {', '.join(fixed_here)} given on the "
                          "command line fix every parameter of the search space")
    check_space(space, base)
    return space, fixed_here


@app.command("sweep", epilog=_epilog())
@run_options
def sweep_command(
    ctx: typer.Context,
    opts: dict[str, Any],
    method: Annotated[str, typer.Option(
        "--method", help="marthe, rtho, hd, constant, staircase, exponential, cosine, or a "
                         f"peer: {', '.join(PEER_NAMES)}.")],
    trials: Annotated[int, typer.Option(
        "--trials", help="Trials of the whole study, over all workers.")] = DEFAULT_TRIALS,
    seeds: Annotated[int, typer.Option(
        "--seeds", help="Runs per trial: seeds --seed, --seed + 1, ...")] = DEFAULT_SEEDS,
    sampler: Annotated[str, typer.Option("--sampler", help="random or tpe.")]
    = SweepConfig.sampler,
    study: Annotated[str | None, typer.Option(
        "--study", help="Optuna study (and experiment) name (default: sweep-METHOD). "
                        "Workers running the same command share it.")] = None,
    space_file: Annotated[str | None, typer.Option(
        "--space", metavar="FILE",
        help="TOML or JSON search space that replaces the default one.")] = None,
    timeout: Annotated[float | None, typer.Option(
        "--timeout", metavar="S", help="Start no new trial after S seconds.")] = None,
    show_space: Annotated[bool, typer.Option(
        "--show-space", help="Print the search space as a TOML space file and exit.")] = False,
    store: StoreOption = DEFAULT_STORE,
) -> None:
    """Sample configurations of one method with Optuna; train each over several seeds.

    Every trial's runs go to the store (kind sweep, experiment = the study). Run the
    same command in several processes or on several machines sharing one store to
    share the study; --trials counts for all of them. Early stopping: --patience,
    default 10.

    Example: adatune sweep --method marthe --trials 20 --seeds 3 --epochs 30
    """
    if opts["patience"] is None:
        opts = {**opts, "patience": DEFAULT_PATIENCE}
    given_here = [name for name in opts if given(ctx, name)]
    probe = SweepConfig(method, trials=trials, seeds=seeds, sampler=sampler, study=study,
                        timeout=timeout)  # validates before anything is read or written
    base = make_config(probe.method, opts)
    probe.check_seeds(base)
    if base.is_peer and not show_space:  # its package, before the study is announced
        check_available(base.method)
    space, fixed = _space(probe.method, base, space_file, given_here)
    sweep = SweepConfig(probe.method, trials=trials, seeds=seeds, sampler=sampler,
                        study=study, timeout=timeout, space=space)
    if show_space:
        header = (f"adatune sweep search space: {sweep.method} with {base.optimizer}"
                  + (f"\nfixed on the command line: {', '.join(fixed)}" if fixed else ""))
        typer.echo(space_toml(space, header=header), nl=False)
        return
    with open_for_run(store, base) as db:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        location, url = db.location, db.url
        err.print(f"study {sweep.study} in {location}: sampling {describe_space(space)} "
                  f"({sweep.sampler}); {sweep.trials} trials over all workers, "
                  f"{sweep.seeds} seed{'s' if sweep.seeds > 1 else ''} each; early stopping "
                  f"after {base.patience} epochs without progress", markup=False,
                  highlight=False)
        with Progress(TextColumn("{task.description:>8}"), BarColumn(), MofNCompleteColumn(),
                      TimeElapsedColumn(), TextColumn("{task.fields[info]}"), console=err,
                      transient=True) as progress:
            result = run_sweep(base, sweep, db, events=_SweepProgress(progress))
    _print_result(result, location, url)
    if result.stopped == "interrupted":
        raise typer.Exit(signals.exit_code(130))
