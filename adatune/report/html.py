"""Figures -> one self-contained HTML page that works offline.

* plotly.js is embedded once. By default it is gzip-compressed and base64
  encoded (about 2 MB instead of 4.8 MB) and unpacked in the page with the
  browser's ``DecompressionStream`` (Chrome/Edge 80+, Firefox 113+,
  Safari 16.4+); ``compress_plotlyjs=False`` embeds it verbatim for any browser.
* Each figure is a JSON spec in a ``<script type="application/json">`` block;
  one small script renders them all once plotly.js is there. The plotly
  template is stored once and shared.
* A Content-Security-Policy forbids every network request, so nothing leaves
  the page even if a library tried.
* Every user string is HTML-escaped here (tables, headings, configs) and in
  the figures (see :func:`adatune.report.figures.plotly_text`).
"""

from __future__ import annotations

import base64
import datetime as dt
import functools
import gzip
import html
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import plotly.graph_objects as go
import plotly.io as pio
from plotly.offline import get_plotlyjs

from adatune._durable import write_output
from adatune._version import __version__
from adatune.report import figures as F
from adatune.report import info as ri
from adatune.report.table import fmt_pct, fmt_seconds, fmt_value, summary_rows
from adatune.store.records import RunDetail

CSP = (
    "default-src 'none'; script-src 'unsafe-inline' 'unsafe-eval'; style-src 'unsafe-inline'; "
    "img-src data: blob:; font-src data:; connect-src data: blob:; base-uri 'none'; "
    "form-action 'none'"
)
PLOTLY_CONFIG = {"responsive": True, "displaylogo": False, "showLink": False}
#: Points per figure with one line per run: the per-run limit shrinks as runs
#: grow (never below MIN_RUN_POINTS), so 200 runs x 200 epochs stays small.
EPOCH_POINTS_PER_FIGURE = 20_000
STEP_POINTS_PER_FIGURE = 40_000
MIN_RUN_POINTS = 20


class FigureBlock(NamedTuple):
    section: str  # section id
    fig_id: str  # element id of the figure's div (stable: tests and links use it)
    figure: go.Figure
    note: str = ""  # plain text shown under the figure


def build_figures(
    details: Sequence[RunDetail],
    *,
    max_points: int = ri.DEFAULT_MAX_POINTS,
    max_step_points: int = ri.DEFAULT_MAX_STEP_POINTS,
) -> list[FigureBlock]:
    """Every figure of the report, in page order; figures without data are left out.

    Band figures keep up to ``max_points`` points per group. Figures with one
    line per run keep up to ``max_points`` (epochs) or ``max_step_points``
    (steps) per run, fewer when many runs share the figure: at most
    :data:`EPOCH_POINTS_PER_FIGURE` / :data:`STEP_POINTS_PER_FIGURE` in all.
    """
    groups = ri._get_groups(details)
    colors = F.group_colors([g.label for g in groups])
    n_runs = max(1, sum(len(g.runs) for g in groups))

    def per_run(limit: int, budget: int) -> int:
        return max(MIN_RUN_POINTS, min(limit, budget // n_runs))

    blocks: list[FigureBlock] = []
    for metric, fig_id in (
        ("val_acc", "fig-val-acc"),
        ("test_acc", "fig-test-acc"),
        ("train_loss", "fig-train-loss"),
        ("val_loss", "fig-val-loss"),
        ("test_loss", "fig-test-loss"),
    ):
        info = ri._get_epoch_curves_info(details, metric, max_points=max_points)
        if info.curves:
            _, what, percent = F.METRIC_TITLES[metric]
            blocks.append(
                FigureBlock(
                    "curves",
                    fig_id,
                    F._get_epoch_curves_plot(info, colors),
                    _constant_note(info.constant, what, percent=percent),
                )
            )
    inc = ri._get_incumbent_info(details, max_points=max_points)
    if inc.curves:
        blocks.append(
            FigureBlock(
                "incumbent",
                "fig-incumbent",
                F._get_incumbent_plot(inc, colors),
                _constant_note(inc.constant, "the incumbent's test accuracy", percent=True)
                + "At each epoch, the test accuracy of the epoch with the best validation "
                "accuracy so far, against cumulative wall-clock seconds. Seeds are combined on "
                "the union of their epoch times (step-wise: a run keeps its last value until its "
                "next epoch, and its final value after it ends), from the time every seed has a "
                "value.",
            )
        )
    sweep = ri._get_sweep_info(details, max_points=max_points)
    if sweep.curves:
        labels = [c.label for c in sweep.curves]
        sweep_colors = {
            **F.group_colors(labels),
            **{k: v for k, v in colors.items() if k in labels},
        }
        blocks.append(
            FigureBlock(
                "sweep",
                "fig-sweep",
                F._get_sweep_plot(sweep, sweep_colors),
                _constant_note(sweep.constant, "the best test accuracy found", percent=True)
                + "For each seed, the sweep's runs are laid end to end in trial order (each "
                "takes the longer of its training time and its wall-clock time); at each "
                "epoch the curve shows the test accuracy of the model with the best validation "
                "accuracy found so far over all those runs. Seeds are combined as in the "
                "incumbent figure.",
            )
        )
    for field, axis, fig_id, limit in (
        ("lr", "epoch", "fig-lr-epoch", per_run(max_points, EPOCH_POINTS_PER_FIGURE)),
        ("lr", "step", "fig-lr-step", per_run(max_step_points, STEP_POINTS_PER_FIGURE)),
        ("mu", "epoch", "fig-mu", per_run(max_points, EPOCH_POINTS_PER_FIGURE)),
        ("hyper_lr", "epoch", "fig-hyper-lr", per_run(max_points, EPOCH_POINTS_PER_FIGURE)),
    ):
        tr = ri._get_run_traces_info(details, field, axis=axis, max_points=limit)
        if tr.traces:
            where = "traced step" if axis == "step" else "epoch"
            note = _constant_note(tr.constant, F.FIELD_TITLES[field], where=where)
            if field == "lr" and axis == "epoch":
                note += "The learning rate at the end of each epoch."
            blocks.append(
                FigureBlock("schedules", fig_id, F._get_run_traces_plot(tr, colors), note)
            )
    for i, group in enumerate(ri._get_replay_info(details, max_points=max_step_points).groups):
        fig_id = f"fig-replay-{group.source_id if group.source_id is not None else f'file-{i}'}"
        blocks.append(
            FigureBlock(
                "schedules",
                fig_id,
                F._get_replay_plot(group),
                "Each replay's LR at its traced steps, placed at the point of the source "
                "schedule it replayed (with --stretch: its own fraction of training), next to "
                "the source run's traced LR: a faithful replay lies on its source, times its "
                "--scale.",
            )
        )
    for search in ri._get_find_alpha_info(details).searches:
        blocks.append(
            FigureBlock(
                "find-alpha", f"fig-find-alpha-{search.search_id}", F._get_find_alpha_plot(search)
            )
        )
    return blocks


def _constant_note(value: float | None, what: str, **kwargs) -> str:
    """:func:`figures.constant_note` and a space, or nothing when the series varies."""
    return "" if value is None else F.constant_note(what, value, **kwargs) + " "


def write_html(
    details: Sequence[RunDetail],
    path: str | os.PathLike[str],
    *,
    title: str | None = None,
    compress_plotlyjs: bool = True,
    max_points: int = ri.DEFAULT_MAX_POINTS,
    max_step_points: int = ri.DEFAULT_MAX_STEP_POINTS,
    protected: Iterable[tuple[str | os.PathLike[str], str]] = (),
) -> Path:
    """Write the report for ``details`` to ``path`` (one file) and return the path.

    ``max_points`` bounds every per-epoch series and incumbent grid,
    ``max_step_points`` every per-step series (see :mod:`adatune.report.info`).
    The file is replaced whole, never written through a link; a target that is
    not a regular file, an SQLite store, an adatune checkpoint and each of
    ``protected`` (``(path, what it is)``) are refused with a
    :class:`~adatune.errors.ConfigError` (:func:`adatune._durable.write_output`).
    """
    text = render_html(
        details,
        title=title,
        compress_plotlyjs=compress_plotlyjs,
        max_points=max_points,
        max_step_points=max_step_points,
    )
    return write_output(path, text.encode("utf-8"), protected=protected)


def render_html(
    details: Sequence[RunDetail],
    *,
    title: str | None = None,
    compress_plotlyjs: bool = True,
    max_points: int = ri.DEFAULT_MAX_POINTS,
    max_step_points: int = ri.DEFAULT_MAX_STEP_POINTS,
) -> str:
    """The report page as a string (see :func:`write_html`)."""
    if not details:
        raise ValueError("no runs to report")
    blocks = build_figures(details, max_points=max_points, max_step_points=max_step_points)
    title = title or _default_title(details)
    specs, template = _figure_specs(blocks)
    summary = ri._get_summary_info(details)
    sweeps = ri._get_sweep_info(details, max_points=max_points)
    searches = ri._get_find_alpha_info(details).searches
    by_section: dict[str, list[str]] = {}
    for block in blocks:
        by_section.setdefault(block.section, []).append(_figure_html(block, specs[block.fig_id]))
    sections = [
        ("summary", "Summary per method", _summary_html(summary)),
        ("curves", "Accuracy and loss per epoch", "".join(by_section.get("curves", []))),
        ("incumbent", "Best model so far against time", "".join(by_section.get("incumbent", []))),
        ("sweep", "Sweeps: best model found so far", _sweep_html(sweeps, by_section)),
        ("schedules", "Learning-rate schedules", "".join(by_section.get("schedules", []))),
        ("find-alpha", "find-alpha searches", _find_alpha_html(searches, by_section)),
    ]
    sections = [(sid, head, body) for sid, head, body in sections if body]
    return _page(title, details, sections, template, compress_plotlyjs)


# --------------------------------------------------------------------------- pieces


def _e(text: Any) -> str:
    return html.escape("" if text is None else str(text), quote=True)


def _default_title(details: Sequence[RunDetail]) -> str:
    experiments = sorted({d.run.experiment for d in details if d.run.experiment})
    if len(experiments) == 1:
        return f"adatune report: {experiments[0]}"
    return "adatune report"


def _script_json(obj: Any) -> str:
    """JSON that is safe inside a <script> element (no ``<``, ``>`` or ``&``)."""
    text = json.dumps(obj, separators=(",", ":"), allow_nan=False)
    return text.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")


def _figure_specs(blocks: Sequence[FigureBlock]) -> tuple[dict[str, str], Any]:
    """Each figure's JSON (``data`` + ``layout``); the first figure's template is shared."""
    specs: dict[str, str] = {}
    shared = None
    for block in blocks:
        spec = json.loads(pio.to_json(block.figure, validate=False))
        layout = spec.setdefault("layout", {})
        tpl = layout.get("template")
        if tpl is not None:
            if shared is None:
                shared = tpl
            if tpl == shared:
                del layout["template"]
        specs[block.fig_id] = _script_json({"data": spec.get("data", []), "layout": layout})
    return specs, shared


def _figure_html(block: FigureBlock, spec: str) -> str:
    text = block.note.strip()
    note = f'<p class="note">{_e(text)}</p>' if text else ""
    return (
        f'<figure><div class="adatune-figure" id="{_e(block.fig_id)}" '
        f'data-traces="{len(block.figure.data)}"></div>'
        f'<script type="application/json" id="spec-{_e(block.fig_id)}">{spec}</script>'
        f"{note}</figure>\n"
    )


def _summary_html(summary: ri.SummaryInfo) -> str:
    if not summary.groups:
        return ""
    columns, cells = summary_rows(summary)
    head = "".join(f"<th>{_e(c)}</th>" for c in columns)
    rows = "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in row) + "</tr>" for row in cells)
    parts = [
        '<table class="summary" id="summary-table">'
        f"<thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>",
        '<p class="note">Accuracies in percent: mean ± sample standard deviation over runs '
        "(n = runs with a finite value when fewer than all). Test accuracy is read at each "
        "run's best validation epoch (the lowest validation loss for runs without "
        "accuracies). Wall is the mean wall-clock time per run in its epochs (set-up not "
        "counted); it grows with whatever else the machine was doing. CPU is the training "
        "process's CPU time (all its threads), which machine load changes far less: compare "
        "methods by CPU time when their runs did not share a quiet machine.</p>",
    ]
    for g in summary.groups:
        parts.append(
            f'<details class="runs"><summary>Runs of {_e(g.label)} ({g.runs})</summary>'
            + _runs_table(g.run_rows)
            + "</details>"
        )
    return "".join(parts)


_RUN_COLUMNS = (
    "run",
    "experiment",
    "kind",
    "seed",
    "status",
    "epochs",
    "best val acc %",
    "best epoch",
    "test acc % @ best",
    "val loss @ best",
    "test loss @ best",
    "wall",
    "CPU",
    "non-finite h",
    "error",
    "configuration",
)


def _runs_table(rows: Sequence[ri.RunSummary]) -> str:
    head = "".join(f"<th>{c}</th>" for c in _RUN_COLUMNS)
    body = []
    for r in rows:
        config = json.dumps(r.config, indent=2, sort_keys=True, default=str)
        cells = (
            _e(r.label),
            _e(r.experiment or "–"),
            _e(r.kind),
            _e(r.seed),
            _e(r.status),
            _e(r.epochs),
            _e(fmt_pct(r.best_val_acc)),
            _e(r.best_epoch if r.best_epoch is not None else "–"),
            _e(fmt_pct(r.test_acc_at_best)),
            _e(fmt_value(r.best_val_loss)),
            _e(fmt_value(r.test_loss_at_best)),
            _e(fmt_seconds(r.time_s)),
            _e(fmt_seconds(r.cpu_s)),
            _e(r.nonfinite_hypergradients),
            _e(r.error or ""),
            f"<details><summary>config</summary><pre>{_e(config)}</pre></details>",
        )
        body.append(f'<tr id="run-{r.run_id}">' + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    rows = "".join(body)
    return f'<table class="runs"><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>'


def _sweep_html(info: ri.SweepInfo, by_section: dict[str, list[str]]) -> str:
    if not info.groups:
        return ""
    rows = []
    for g in info.groups:
        b = g.best
        config = (
            "–" if b is None else ", ".join(f"{k}={_fmt_param(v)}" for k, v in b.params.items())
        )
        runs = "–" if b is None else ", ".join(f"#{i}" for i in b.run_ids)
        cells = (
            _e(g.label),
            _e(g.study or "–"),
            _e(g.trials),
            _e(g.runs),
            _e(g.diverged),
            _e("–" if b is None else b.trial),
            _e("–" if b is None else fmt_pct(b.val_acc)),
            _e("–" if b is None else fmt_pct(b.test_acc)),
            _e(config or "–"),
            _e(runs),
        )
        rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    head = "".join(
        f"<th>{c}</th>"
        for c in (
            "method",
            "study",
            "trials",
            "runs",
            "diverged runs",
            "best trial",
            "val acc % (mean over seeds)",
            "test acc % @ best val",
            "best configuration",
            "its runs",
        )
    )
    return (
        "".join(by_section.get("sweep", []))
        + f'<table class="summary" id="sweep-table"><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table>"
        '<p class="note">Best configuration: the trial whose runs all completed, over every '
        "seed, with the highest mean best validation accuracy (the sweep's objective).</p>"
    )


def _fmt_param(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def _find_alpha_html(searches: Sequence[ri.SearchInfo], by_section: dict[str, list[str]]) -> str:
    figs = {  # fig_id -> html; one figure per search, in search order
        f"fig-find-alpha-{s.search_id}": h
        for s, h in zip(searches, by_section.get("find-alpha", []), strict=True)
    }
    parts = []
    for s in searches:
        param = "hyper-LR" if s.parameter == "hyper-lr" else "alpha"
        chosen = (
            "no stable value" if s.chosen is None else f"recommended {param}: {s.chosen:.6g}"
        )
        status = f" · search run {_e(s.status)}" if s.status else ""
        parts.append(
            f'<h3 id="search-{s.search_id}">{_e(s.label)}</h3>'
            f'<p class="note">Search over {param}; {_e(chosen)}{status}; '
            f"{len(s.probes)} probes. A probe is stable when it ran its epochs without "
            "diverging.</p>"
        )
        parts.append(figs[f"fig-find-alpha-{s.search_id}"])
        rows = "".join(
            "<tr>"
            + "".join(
                f"<td>{c}</td>"
                for c in (
                    _e(p.label),
                    _e("–" if p.value is None else f"{p.value:.6g}"),
                    _e(p.verdict),
                    _e(fmt_pct(p.best_val_acc)),
                    _e(p.epochs),
                    _e(p.error or ""),
                )
            )
            + "</tr>"
            for p in s.probes
        )
        parts.append(
            '<details class="runs"><summary>Probes</summary><table class="runs"><thead><tr>'
            f"<th>probe</th><th>{param}</th><th>verdict</th><th>best val acc %</th>"
            f"<th>epochs</th><th>reason</th></tr></thead><tbody>{rows}</tbody></table></details>"
        )
    return "".join(parts)


@functools.lru_cache(maxsize=1)
def _plotlyjs_gzip_b64() -> str:
    data = gzip.compress(get_plotlyjs().encode("utf-8"), compresslevel=9, mtime=0)
    return base64.b64encode(data).decode("ascii")


def _plotlyjs_html(compress: bool) -> str:
    if compress:
        return (
            '<script type="application/octet-stream" id="adatune-plotlyjs-gz">'
            f"{_plotlyjs_gzip_b64()}</script>\n"
        )
    return f"<script>{get_plotlyjs()}</script>\n"


_LOADER = """
(function () {
  "use strict";
  var body = document.body;
  function fail(err) {
    var box = document.getElementById("adatune-status");
    box.textContent = "The figures could not be drawn: " + (err && err.message || err);
    box.hidden = false;
    body.setAttribute("data-rendered", "error");
    console.error(err);
  }
  function loadPlotly() {
    if (window.Plotly) return Promise.resolve();
    var packed = document.getElementById("adatune-plotlyjs-gz");
    if (!packed) return Promise.reject(new Error("plotly.js is missing from this file"));
    if (typeof DecompressionStream === "undefined") {
      return Promise.reject(new Error("this browser cannot unpack the embedded plotly.js " +
        "(it needs DecompressionStream: Chrome 80+, Firefox 113+, Safari 16.4+)"));
    }
    var bin = atob(packed.textContent.trim());
    var bytes = new Uint8Array(bin.length);
    for (var i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
    var stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream("gzip"));
    return new Response(stream).text().then(function (code) {
      var s = document.createElement("script");
      s.textContent = code;
      document.head.appendChild(s);
      if (!window.Plotly) throw new Error("plotly.js did not load");
    });
  }
  loadPlotly().then(function () {
    var tplNode = document.getElementById("adatune-template");
    var template = tplNode ? JSON.parse(tplNode.textContent) : null;
    var config = JSON.parse(document.getElementById("adatune-config").textContent);
    var divs = Array.prototype.slice.call(document.querySelectorAll("div.adatune-figure"));
    return divs.reduce(function (done, div) {
      return done.then(function () {
        var spec = JSON.parse(document.getElementById("spec-" + div.id).textContent);
        if (template && !spec.layout.template) spec.layout.template = template;
        return Plotly.newPlot(div, spec.data, spec.layout, config);
      });
    }, Promise.resolve());
  }).then(function () {
    body.setAttribute("data-rendered", "ok");
  }).catch(fail);
})();
"""

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0 auto;
max-width:1200px;padding:0 1.5rem 3rem;color:#222;line-height:1.4}
h1{font-size:1.6rem;margin:1.5rem 0 .3rem}h2{margin-top:2.2rem;border-bottom:1px solid #ddd;
padding-bottom:.2rem}h3{margin:1.6rem 0 .2rem}
.meta,.note{color:#555;font-size:.9rem}
nav a{margin-right:1rem}
table{border-collapse:collapse;font-size:.88rem;margin:.6rem 0}
th,td{border:1px solid #ddd;padding:.25rem .5rem;text-align:left;vertical-align:top}
th{background:#f5f5f5}
table.summary td:nth-child(n+2){text-align:right}
details.runs{margin:.4rem 0}details.runs>summary{cursor:pointer;font-weight:600}
pre{margin:.2rem 0;font-size:.8rem;white-space:pre-wrap;max-width:40rem}
figure{margin:1rem 0}
#adatune-status{background:#fee;border:1px solid #c33;padding:.6rem;margin:1rem 0}
"""


def _page(
    title: str,
    details: Sequence[RunDetail],
    sections: Sequence[tuple[str, str, str]],
    template: Any,
    compress: bool,
) -> str:
    experiments = sorted({d.run.experiment for d in details if d.run.experiment})
    now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    meta = (
        f"{len(details)} runs"
        + (f" · experiments: {_e(', '.join(experiments))}" if experiments else "")
        + f" · generated {now} by adatune {_e(__version__)}"
    )
    nav = "".join(f'<a href="#{sid}">{_e(head)}</a>' for sid, head, _ in sections)
    body = "".join(
        f'<section id="{sid}"><h2>{_e(head)}</h2>{content}</section>\n'
        for sid, head, content in sections
    )
    template_json = (
        f'<script type="application/json" id="adatune-template">{_script_json(template)}</script>'
        if template is not None
        else ""
    )
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(title)}</title><style>{_CSS}</style></head>\n"
        f'<body data-rendered="pending"><header><h1>{_e(title)}</h1>'
        f'<p class="meta">{meta}</p><nav>{nav}</nav></header>\n'
        '<div id="adatune-status" hidden></div>'
        '<noscript><div id="adatune-noscript">The figures need JavaScript.</div></noscript>\n'
        f"{body}"
        f'<script type="application/json" id="adatune-config">{_script_json(PLOTLY_CONFIG)}'
        "</script>\n"
        f"{template_json}\n"
        f"{_plotlyjs_html(compress)}"
        f"<script>{_LOADER}</script>\n"
        "</body></html>\n"
    )
