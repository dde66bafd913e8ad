"""``adatune find-alpha``: the largest stable alpha (or hyper-LR) from short probe runs.

The search and the base configuration are checked, files and store included,
before the first probe imports the training stack.
"""

from __future__ import annotations

import json
import shlex
from typing import Annotated, Any

import typer
from rich import box
from rich.progress import Progress, TaskID
from rich.table import Table

from adatune.errors import ConfigError
from adatune.methods.hyper_update import ADDITIVE, MAX_HYPER_LR, SCALE_FREE
from adatune.redact import mask_secrets
from adatune.running import signals
from adatune.running.config import TUNER_NAMES, TrainConfig, canonical_method
from adatune.running.runtypes import RunResult
from adatune.search.findalpha import (
    DEFAULT_ALPHA_MAX,
    DEFAULT_ALPHA_MIN,
    DEFAULT_FACTOR,
    DEFAULT_LOSS_FACTOR,
    DEFAULT_LR_FACTOR,
    DEFAULT_PROBE_EPOCHS,
    HYPER_LR_MAX_RATIO,
    HYPER_LR_SPAN,
    ProbeResult,
    SearchConfig,
    SearchEvents,
    SearchResult,
    find_alpha,
    with_found_value,
)
from adatune_cli._common import (
    DEFAULT_STORE,
    StoreOption,
    err,
    fail,
    fmt,
    json_safe,
    open_for_run,
    out,
)
from adatune_cli.main import app
from adatune_cli.options import (
    PANEL_PEER,
    PANEL_SCHED,
    flag,
    given,
    make_config,
    refuse_given,
    run_options,
)
from adatune_cli.train import (
    ExperimentOption,
    NameOption,
    RichEvents,
    _progress,
    check_names,
    print_summary,
)

_PANEL = "Search"


def _opt(*names: str, help: str, **kw: Any) -> Any:
    return typer.Option(*names, help=help, rich_help_panel=_PANEL, **kw)


class _SearchProgress(SearchEvents):
    """One bar per probe (its steps over all its epochs) and one line per verdict."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.task: TaskID | None = None
        self.parameter = "alpha"
        self.header: str | None = None
        self.value = 0.0
        self.steps_per_epoch = 1

    def search_started(self, search_run_id: int, parameter: str,
                       ladder: tuple[float, ...]) -> None:
        self.parameter = parameter
        self.header = (f"find-alpha: {parameter} from {ladder[0]:.3g} down to "
                       f"{ladder[-1]:.3g} ({len(ladder)} values at most); the search is run "
                       f"{search_run_id}, each probe a run of its own")

    def probe_started(self, index: int, value: float, phase: str) -> None:
        self.value = value

    def run_started(self, run_id: int, config: dict[str, Any], *, steps_per_epoch: int,
                    start_epoch: int) -> None:
        if self.header is not None:  # printed once the first probe could start
            self.progress.console.print(self.header, markup=False)
            self.header = None
        self.steps_per_epoch = steps_per_epoch
        self.task = self.progress.add_task(f"{self.parameter} {self.value:.3g}",
                                           total=steps_per_epoch * config["epochs"],
                                           info="")

    def step_done(self, epoch: int, batch: int, loss: float, lr: float,
                  mu: float | None) -> None:
        self.progress.update(self.task, completed=(epoch - 1) * self.steps_per_epoch + batch,
                             info=f"epoch {epoch}  loss {loss:.4f}  lr {lr:.4g}")

    def probe_done(self, probe: ProbeResult) -> None:
        if self.task is not None:
            self.progress.remove_task(self.task)
            self.task = None
        line = f"  {self.parameter} {probe.value:.3g}: {probe.verdict}"
        if probe.reason:
            line += f" ({probe.reason})"
        self.progress.console.print(line, markup=False)


def _label(parameter: str) -> str:
    return "hyper-LR" if parameter == "hyper-lr" else "alpha"


def print_probes(result: SearchResult) -> None:
    label = _label(result.parameter)
    table = Table(title=f"probes of {label} (the search is run {result.search_run_id})",
                  title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    accuracy = not result.probes or any(p.val_acc is not None for p in result.probes)
    for column, justify in ((label, "right"), ("verdict", "left"), ("reason", "left"),
                            ("epochs", "right"), ("final LR", "right"),
                            ("val acc" if accuracy else "val loss", "right"),
                            ("probe run", "right")):
        table.add_column(column, justify=justify, no_wrap=column != "reason")
    for p in result.probes:
        verdict = p.verdict if p.phase == "ladder" else f"{p.verdict} (refine)"
        if p.phase == "reference":
            verdict = f"{p.verdict} (reference)"
        style = {"stable": "green", "diverged": "red"}.get(p.verdict, "yellow")
        score = fmt(p.val_acc, ".1%") if accuracy else fmt(p.val_loss, ".4g")
        table.add_row(f"{p.value:.3g}", f"[{style}]{verdict}[/]", p.reason or "-",
                      str(p.epochs), fmt(p.final_lr, ".3g"), score, str(p.run_id))
    out.print(table)
    if result.value is not None:
        out.print(f"recommended {label}: {result.value:.3g}", markup=False)
        if result.top_was_stable:
            flag = "--hyper-lr-max" if result.parameter == "hyper-lr" else "--alpha-max"
            out.print(f"note: the largest {label} probed was stable; a larger one may be too "
                      f"(raise {flag} to look)", markup=False)


def exact(value: float) -> str:
    """``value`` written short when that reads back as the same float, else in full."""
    short = f"{value:.6g}"
    return short if float(short) == value else repr(value)


def train_command_line(ctx: typer.Context, opts: dict[str, Any], tuner: str,
                       result: SearchResult, store: str) -> str:
    """The ``adatune train`` command with the options given here and the value found."""
    parts = ["adatune", "train", "--tuner", tuner]
    for key, value in opts.items():
        if key == result.config_key or not given(ctx, key):
            continue
        if isinstance(value, bool):
            parts += [flag(key)] if value else []
        elif value is not None:
            parts += [flag(key), str(value)]
    parts += [flag(result.config_key), exact(result.value)]
    if given(ctx, "store"):
        parts += ["--store", mask_secrets(store)]
    return shlex.join(parts)


def _as_json(result: SearchResult, trained: RunResult | None) -> dict[str, Any]:
    key = result.config_key
    data: dict[str, Any] = {
        key: result.value, "search": result.parameter, "search_run_id": result.search_run_id,
        "probes": [
            {key: p.value, "status": p.verdict, "reason": p.reason, "run_id": p.run_id,
             "epochs": p.epochs, "final_lr": json_safe(p.final_lr), "val_acc": p.val_acc,
             "val_loss": json_safe(p.val_loss), "phase": p.phase}
            for p in result.probes
        ],
    }
    if trained is not None:
        data["train"] = {"run_id": trained.run_id, "status": trained.status,
                         "reason": trained.reason, "best_val_acc": trained.best_val_acc,
                         "test_acc": trained.test_acc,
                         "best_val_loss": json_safe(trained.best_val_loss),
                         "test_loss": json_safe(trained.test_loss)}
    return data


def _search_config(search: str, alpha_max: float | None, alpha_min: float | None,
                   hyper_lr_max: float | None, hyper_lr_min: float | None,
                   **rest: Any) -> SearchConfig:
    probe = SearchConfig(search=search)  # canonicalises (and checks) the parameter name
    if probe.search == "alpha":
        if hyper_lr_max is not None or hyper_lr_min is not None:
            raise ConfigError("--hyper-lr-max/--hyper-lr-min bound a --search hyper-lr; "
                              "an alpha search takes --alpha-max/--alpha-min")
        high, low = alpha_max, alpha_min
    else:
        if alpha_max is not None or alpha_min is not None:
            raise ConfigError("--alpha-max/--alpha-min bound an alpha search; "
                              "--search hyper-lr takes --hyper-lr-max/--hyper-lr-min")
        high, low = hyper_lr_max, hyper_lr_min
    return SearchConfig(search=probe.search, high=high, low=low, **rest)


def _base_config(tuner: str, search: SearchConfig, opts: dict[str, Any]) -> TrainConfig:
    method = canonical_method(tuner)
    if method not in TUNER_NAMES:
        raise ConfigError(f"find-alpha needs a hypergradient tuner ({', '.join(TUNER_NAMES)}); "
                          f"{tuner!r} is a baseline schedule")
    if search.search == "alpha" and opts["alpha"] != 0.0:
        raise ConfigError("--alpha is what find-alpha searches; to fix alpha and search the "
                          "hyper-LR, add --search hyper-lr")
    if search.search == "hyper-lr" and opts["hyper_lr"] is not None:
        raise ConfigError("--hyper-lr is what --search hyper-lr searches; bound it with "
                          "--hyper-lr-max/--hyper-lr-min")
    return make_config(method, opts)


def _all_diverged(result: SearchResult, config: TrainConfig) -> str:
    label = _label(result.parameter)
    rungs = [p for p in result.probes if p.phase != "reference"]
    if any(p.verdict in ("collapsed", "worse") for p in rungs):
        own = getattr(config, result.config_key)
        return (f"no {label} from {result.ladder[0]:.3g} down to {result.ladder[-1]:.3g} "
                f"trained as well as the reference {label} {own:g}: keep it "
                f"(adatune train --tuner {config.method})")
    span = f"every {label} from {result.ladder[0]:.3g} down to {result.ladder[-1]:.3g} diverged"
    if result.parameter == "hyper-lr":
        return (f"{span}: lower --lr (now {config.lr:g}) or --hyper-lr-min, "
                "then search again")
    return (f"{span}: lower --hyper-lr (now {config.hyper_lr:g}) or --lr (now {config.lr:g}), "
            "then search again")


@app.command("find-alpha")
@run_options(hide=(PANEL_SCHED, PANEL_PEER))
def find_alpha_command(
    ctx: typer.Context,
    opts: dict[str, Any],
    tuner: Annotated[str, _opt("--tuner", help="marthe, rtho or hd.")] = TrainConfig.method,
    search: Annotated[str, _opt(
        "--search", help="What to search: alpha (the hyper-LR fixed at --hyper-lr), or "
                         "hyper-lr (alpha fixed at --alpha).")] = SearchConfig.search,
    alpha_max: Annotated[float | None, _opt(
        "--alpha-max", help="First (largest) alpha probed \\[default: "
                            f"{DEFAULT_ALPHA_MAX[SCALE_FREE]:g} with --hyper-update {SCALE_FREE}, "
                            f"{DEFAULT_ALPHA_MAX[ADDITIVE]:g} with {ADDITIVE}].")]
    = None,
    alpha_min: Annotated[float | None, _opt(
        "--alpha-min", help="Smallest alpha probed \\[default: "
                            f"{DEFAULT_ALPHA_MIN[SCALE_FREE]:g} with {SCALE_FREE}, "
                            f"{DEFAULT_ALPHA_MIN[ADDITIVE]:g} with {ADDITIVE}].")] = None,
    hyper_lr_max: Annotated[float | None, _opt(
        "--hyper-lr-max", help=f"--search hyper-lr: first hyper-LR probed \\[default: "
                               f"{HYPER_LR_MAX_RATIO:g}x the tuner's default hyper-LR, at most "
                               f"{MAX_HYPER_LR:g} with {SCALE_FREE}].")]
    = None,
    hyper_lr_min: Annotated[float | None, _opt(
        "--hyper-lr-min", help=f"--search hyper-lr: smallest hyper-LR probed \\[default: "
                               f"{HYPER_LR_SPAN[SCALE_FREE]:g}x --hyper-lr-max with "
                               f"{SCALE_FREE}, {HYPER_LR_SPAN[ADDITIVE]:g}x with {ADDITIVE}].")]
    = None,
    factor: Annotated[float, _opt("--factor", help="Divide by this between probes (> 1).")]
    = DEFAULT_FACTOR,
    probe_epochs: Annotated[int, _opt(
        "--probe-epochs", help="Epochs per probe (at most --epochs).")] = DEFAULT_PROBE_EPOCHS,
    probe_fraction: Annotated[float | None, _opt(
        "--probe-fraction", help="Probes train on this seeded fraction of the training set "
                                 "(cheaper probes) \\[default: all of it].")] = None,
    refine: Annotated[int, _opt(
        "--refine", help="Bisection probes (log space) between the last divergent and the "
                         "first stable value.", metavar="N")] = SearchConfig.refine,
    probe_loss_factor: Annotated[float, _opt(
        "--probe-loss-factor", help="Divergent: a minibatch loss above this times the first.")]
    = DEFAULT_LOSS_FACTOR,
    probe_lr_factor: Annotated[float, _opt(
        "--probe-lr-factor", help="Divergent: an LR above this times --lr.")]
    = DEFAULT_LR_FACTOR,
    then_train: Annotated[bool, _opt(
        "--then-train", help="Then train --epochs with the value found.")] = False,
    as_json: Annotated[bool, _opt("--json", help="Print the result as JSON.")] = False,
    name: NameOption = None,
    experiment: ExperimentOption = None,
    store: StoreOption = DEFAULT_STORE,
) -> None:
    """Find the largest alpha at which a tuner trains as well as without it, by short probes.

    A reference probe runs first at the tuner's own --alpha (0 unless given).
    Then it probes alpha-max, alpha-max/factor, ... down to alpha-min, each a
    short run (--probe-epochs) recorded in the store as a probe of this
    search, and stops at the first stable one: the largest stable alpha. Same
    seed, same answer.

    A probe is judged divergent, and stopped at once, at the first of:
    (1) a non-finite training loss or learning rate at any step;
    (2) a non-finite hypergradient at any step;
    (3) a minibatch training loss above --probe-loss-factor (default 3) times
    the probe's first minibatch loss;
    (4) a learning rate above --probe-lr-factor (default 100) times --lr;
    (5) an epoch in which the learning rate was 0 at every step;
    (6) a non-finite validation loss after an epoch.
    A probe that ran to its end did harm, and is not stable, when its last
    epoch's LR is below 1/10 of the reference's (collapsed) or its best
    validation accuracy is over 1 point below the reference's (worse; a
    validation loss over 1% above it). Any other probe is stable. When no
    value is stable the command exits 1.

    --search hyper-lr runs the same search over the hyper-LR (alpha fixed at
    --alpha), for when the LR blows up with the default hyper-LR.

    Example: adatune find-alpha --tuner marthe --then-train
    """
    refuse_given(ctx, (PANEL_SCHED, PANEL_PEER), "for baseline schedules and peer optimizers; "
                 "find-alpha searches a tuner's")
    check_names(name, experiment)
    settings = _search_config(
        search, alpha_max, alpha_min, hyper_lr_max, hyper_lr_min, factor=factor,
        probe_epochs=probe_epochs, probe_fraction=probe_fraction, refine=refine,
        loss_factor=probe_loss_factor, lr_factor=probe_lr_factor)
    config = _base_config(tuner, settings, opts)
    settings.ladder(config)  # bound errors before the store is opened
    db = open_for_run(store, config)
    trained: RunResult | None = None
    try:
        with _progress() as progress:
            result = find_alpha(config, settings, db, name=name, experiment=experiment,
                                events=_SearchProgress(progress))
        if then_train and result.value is not None and result.status == "completed":
            from adatune.running.engine import train

            with _progress() as progress:
                trained = train(with_found_value(config, result), db, name=name,
                                experiment=experiment, events=RichEvents(progress))
    finally:
        db.close()
    if as_json:
        typer.echo(json.dumps(_as_json(result, trained), indent=2))
    else:
        print_probes(result)
        if trained is not None:
            print_summary(trained)
        elif result.value is not None and result.status == "completed":
            out.print("train with it:", markup=False)
            out.print("  " + train_command_line(ctx, opts, tuner, result, store), markup=False,
                      highlight=False, soft_wrap=True)
    if result.status == "interrupted":
        err.print("adatune: find-alpha interrupted", markup=False)
        raise typer.Exit(signals.exit_code(130))
    if result.value is None:
        fail(_all_diverged(result, config), 1)
    if trained is not None and trained.status == "interrupted":
        raise typer.Exit(signals.exit_code(130))
    if trained is not None and trained.status == "diverged":
        raise typer.Exit(1)
