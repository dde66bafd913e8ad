"""``adatune report``: compare runs in an offline HTML page or a terminal table.

The store and the report modules are imported by the command that uses them:
Plotly only by ``report html``.
"""

from __future__ import annotations

import dataclasses
import json
import webbrowser
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from adatune._durable import check_output
from adatune.redact import mask_secrets, mask_values  # plain Python: no store, no Plotly
from adatune_cli._common import (
    DEFAULT_STORE,
    StoreOption,
    fail,
    no_runs,
    open_to_read,
    out,
    selection,
    store_files,
)
from adatune_cli.main import app

if TYPE_CHECKING:
    from adatune.store.records import RunDetail

report_app = typer.Typer(
    help="Compare runs: a self-contained HTML report or a summary table.",
    no_args_is_help=True,
)
app.add_typer(report_app, name="report")

ExperimentOption = Annotated[
    str | None, typer.Option("--experiment", "-e", help="Only runs of this experiment.")
]
RunOption = Annotated[
    list[int] | None,
    typer.Option("--run", metavar="ID", help="Only this run id (repeat for several)."),
]
MethodOption = Annotated[
    list[str] | None,
    typer.Option(
        "--method",
        "-m",
        metavar="METHOD",
        help="Only this method, e.g. marthe (repeat for several).",
    ),
]
DatasetOption = Annotated[str | None, typer.Option("--dataset", help="Only runs on this dataset.")]


def _load(
    store: str,
    experiment: str | None,
    runs: list[int] | None,
    methods: list[str] | None,
    dataset: str | None,
    *,
    steps: bool = True,
) -> list[RunDetail]:
    """The selected runs; a store without runs, or filters that match none, exit 2."""
    from adatune.report.select import load_details

    with open_to_read(store) as st:  # a missing store is one line
        details = load_details(
            st, experiment=experiment, run_ids=runs, methods=methods, dataset=dataset,
            steps=steps,
        )
        if not details:
            no_runs(st, store, experiment=experiment, run=runs, method=methods,
                    dataset=dataset)
    return [_masked(d) for d in details]


def _masked(detail: RunDetail) -> RunDetail:
    """A run as reports show it: any URL password in its texts masked."""
    run = detail.run
    shown = dataclasses.replace(run, config=mask_values(run.config),
                                summary=mask_values(run.summary),
                                error=None if run.error is None else mask_secrets(run.error),
                                name=None if run.name is None else mask_secrets(run.name))
    return dataclasses.replace(detail, run=shown)


def _size(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 1e6 else f"{n / 1e3:.0f} kB"


@report_app.command("html")
def html(
    store: StoreOption = DEFAULT_STORE,
    output: Annotated[
        Path, typer.Option("--output", "-o", help="HTML file to write.", dir_okay=False)
    ] = Path("adatune-report.html"),
    experiment: ExperimentOption = None,
    run: RunOption = None,
    method: MethodOption = None,
    dataset: DatasetOption = None,
    title: Annotated[str | None, typer.Option("--title", help="Page title.")] = None,
    open_: Annotated[
        bool, typer.Option("--open", help="Open the report in the web browser.")
    ] = False,
) -> None:
    """Write one HTML file comparing the selected runs; it works offline.

    Example: adatune report html --experiment mnist-lr -m marthe -m cosine -o mnist.html --open
    """
    protected = store_files(store)
    check_output(output, protected=protected)  # before the work: a target never to write over
    details = _load(store, experiment, run, method, dataset)
    from adatune.report.html import write_html  # Plotly

    try:
        path = write_html(details, output, title=title, protected=protected)
    except OSError as exc:
        fail(f"cannot write {output}: {exc.strerror or exc}")
    out.print(
        f"wrote {path} ({_size(path.stat().st_size)}, {len(details)} runs)",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )
    if open_:
        webbrowser.open(path.resolve().as_uri())


@report_app.command("table")
def table(
    store: StoreOption = DEFAULT_STORE,
    experiment: ExperimentOption = None,
    run: RunOption = None,
    method: MethodOption = None,
    dataset: DatasetOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Print the per-method summary of the selected runs (probes and searches excluded).

    Example: adatune report table --experiment mnist-lr --json
    """
    from adatune.report.table import summary_json, summary_rich, summary_table

    # the summary reads runs and epochs: the step traces stay in the store
    info = summary_table(_load(store, experiment, run, method, dataset, steps=False))
    if not info.groups:
        chosen = selection(experiment=experiment, run=run, method=method, dataset=dataset)
        fail(f"no train or baseline runs match {chosen} (only find-alpha searches and their "
             "probes; `adatune report html` shows those)")
    if as_json:
        typer.echo(json.dumps(summary_json(info), indent=2))
    else:
        out.print(summary_rich(info))
