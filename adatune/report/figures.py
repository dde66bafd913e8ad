"""Info -> Plotly figures (``_get_*_plot``). No numbers are computed here.

Every user string (run, group and experiment names) goes through
:func:`plotly_text` before it reaches a figure: Plotly renders a subset of
HTML tags in names, titles and hover labels, so a run named ``<b>x</b>``
would otherwise be bold, and ``<script>`` must show as text. Run labels go in
the trace's ``meta`` and are referenced from the hover template, so that a
``%{...}`` in a name is never read as a template field.
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence

import plotly.graph_objects as go
from plotly.colors import qualitative

from adatune.report.info import (
    BandCurve,
    EpochCurvesInfo,
    IncumbentInfo,
    ReplayGroup,
    RunTracesInfo,
    SearchInfo,
    SweepInfo,
    legend_name,
)

TEMPLATE = "plotly_white"
HEIGHT = 440
CONSTANT_HEIGHT = 260  # a constant series needs no full panel
PALETTE = (*qualitative.Plotly, *qualitative.D3, *qualitative.Dark24)
VERDICT_STYLE = {  # find-alpha verdict (as the CLI prints it) -> (colour, marker symbol)
    "stable": ("#2ca02c", "circle"),
    "diverged": ("#d62728", "x"),
    "failed": ("#7f7f7f", "square"),
    "interrupted": ("#ff7f0e", "diamond"),
    "running": ("#1f77b4", "triangle-up"),
}

METRIC_TITLES = {
    "val_acc": ("Validation accuracy per epoch", "validation accuracy", True),
    "test_acc": ("Test accuracy per epoch", "test accuracy", True),
    "train_acc": ("Training accuracy per epoch", "training accuracy", True),
    "train_loss": ("Training loss per epoch", "training loss", False),
    "val_loss": ("Validation loss per epoch", "validation loss", False),
    "test_loss": ("Test loss per epoch", "test loss", False),
}
FIELD_TITLES = {
    "lr": "learning rate",
    "lr_mean": "mean learning rate",
    "mu": "mu",
    "hyper_lr": "hyper-LR (beta)",
    "hypergradient": "hypergradient",
    "train_loss": "training loss",
}


def plotly_text(text: object) -> str:
    """Escape ``&``, ``<`` and ``>`` for Plotly's HTML-like text rendering.

    Plotly decodes ``&amp; &lt; &gt;`` and numeric entities but not ``&quot;``,
    so quotes stay as they are (they are harmless without a tag).
    """
    return html.escape(str(text), quote=False)


#: A legend line holds about this many characters; a longer group label wraps at a " · ".
LEGEND_LINE = 44


def legend_text(label: str) -> str:
    """A legend entry: escaped (:func:`plotly_text`), wrapped at ``" · "`` into short lines
    (``<br>``) so that a group named by its configuration leaves the plot its width."""
    lines: list[str] = []
    for part in label.split(" · "):
        if lines and len(lines[-1]) + 3 + len(part) <= LEGEND_LINE:
            lines[-1] += " · " + part
        else:
            lines.append(part)
    return "<br>".join(plotly_text(line) for line in lines)


def _r(value: float | None, digits: int = 6) -> float | None:
    """``digits`` significant digits: plenty for a plot, and short in JSON; ints stay."""
    if value is None or isinstance(value, int):
        return value
    return float(f"{value:.{digits}g}")


def _rs(values: Sequence[float | None], digits: int = 6) -> list[float | None]:
    return [_r(v, digits) for v in values]


def group_colors(labels: Sequence[str]) -> dict[str, str]:
    """A stable colour per group label, in the order given."""
    return {label: PALETTE[i % len(PALETTE)] for i, label in enumerate(labels)}


def _rgba(color: str, alpha: float) -> str:
    c = color.lstrip("#")
    r, g, b = (int(c[i : i + 2], 16) for i in (0, 2, 4))
    return f"rgba({r},{g},{b},{alpha})"


def _scale_menu(default: str = "linear") -> list[dict]:
    """Buttons that switch the y axis between linear and log scale.

    They sit at the top left of the plot area, under the title: Plotly's
    toolbar (modebar) takes the top right corner of every figure.
    """
    buttons = [
        {"label": s, "method": "relayout", "args": [{"yaxis.type": s}]} for s in ("linear", "log")
    ]
    return [
        {
            "type": "buttons",
            "direction": "right",
            "buttons": buttons,
            "active": 0 if default == "linear" else 1,
            "x": 0.0,
            "xanchor": "left",
            "y": 1.0,
            "yanchor": "bottom",
            "pad": {"b": 6},
            "showactive": True,
        }
    ]


def _layout(fig: go.Figure, title: str, xtitle: str, ytitle: str, **kwargs) -> go.Figure:
    """Title at the top left (the modebar is top right), scale buttons under it, then the plot."""
    kwargs.setdefault("height", HEIGHT)
    top = 90 if kwargs.get("updatemenus") else 60
    fig.update_layout(
        template=TEMPLATE,
        title={
            "text": title,
            "x": 0.0,
            "xref": "paper",
            "xanchor": "left",
            "y": 1.0,
            "yref": "container",
            "yanchor": "top",
            "pad": {"t": 14},
        },
        xaxis_title=xtitle,
        yaxis_title=ytitle,
        margin={"l": 70, "r": 30, "t": top, "b": 60},
        legend={"itemclick": "toggle", "itemdoubleclick": "toggleothers"},
        **kwargs,
    )
    return fig


def _constant_axis(fig: go.Figure, value: float, *, percent: bool) -> None:
    """A tight linear y range around the one value of a constant series, ticked there.

    Plotly's default range for a flat line is value ± 1, which puts 1e-4 at a
    tick reading "0" and 0.99 in the middle of 0..2.
    """
    half = abs(value) * 0.05 if value != 0 else 1.0
    fig.update_yaxes(
        type="linear",
        autorange=False,
        range=[value - half, value + half],
        tickmode="array",
        tickvals=[value],
        tickformat=".4~%" if percent else ".4~g",
    )
    fig.update_layout(height=CONSTANT_HEIGHT)


def _log_axis(fig: go.Figure, values: Sequence[float]) -> None:
    """A log y axis whose ticks read as numbers: 1, 2 and 5 of each decade, written out
    (0.002, 0.005, 0.01), over a few decades; powers of ten over many."""
    positive = [v for v in values if v > 0]
    decades = math.log10(max(positive) / min(positive)) if positive else 0.0
    if decades <= 3:
        fig.update_yaxes(type="log", dtick="D2", tickformat="~g")
    else:
        fig.update_yaxes(type="log", exponentformat="power")


def constant_note(what: str, value: float, *, where: str = "epoch", percent: bool = False) -> str:
    """The one line shown under a figure whose series is constant."""
    shown = f"{value:.2%}" if percent else f"{value:.6g}"
    return f"{what[0].upper()}{what[1:]} is constant: {shown} at every {where} of every run shown."


def _spread(curves: Sequence[BandCurve], unit: str) -> str:
    """`` (mean and min–max over 3 runs)``, or nothing when no curve has more than one run."""
    counts = sorted({c.runs for c in curves})
    if not counts or counts[-1] <= 1:
        return ""
    k = str(counts[-1]) if len(counts) == 1 else f"{counts[0]}–{counts[-1]}"
    return f" (mean and min–max over {k} {unit})"


def _integer_ticks(fig: go.Figure, xs: Sequence[Sequence[float]]) -> None:
    """Whole-number ticks on an epoch axis with few epochs (no "epoch 1.5")."""
    top = max((max(x) for x in xs if x), default=0)
    if 0 < top <= 20:
        fig.update_xaxes(dtick=1)


def _add_band(
    fig: go.Figure,
    curve: BandCurve,
    color: str,
    *,
    percent: bool,
    step: bool,
    xname: str,
    what: str,
) -> None:
    """Three traces per curve: band bottom, band top (filled to bottom), mean line.

    A curve of one run is its line alone (there is no band to draw).
    """
    name = legend_text(curve.legend)  # the group and its runs
    shape = "hv" if step else "linear"
    x = _rs(curve.x)
    fmt = ".2%" if percent else ".4g"
    if curve.runs <= 1:
        fig.add_trace(
            go.Scatter(
                x=x,
                y=_rs(curve.mean),
                mode="lines",
                name=name,
                legendgroup=name,
                line={"color": color, "width": 2, "shape": shape},
                hovertemplate=(
                    f"<b>%{{fullData.name}}</b><br>{xname} %{{x:.4g}}<br>{what} %{{y:{fmt}}}"
                    "<br>1 run<extra></extra>"
                ),
            )
        )
        return
    common = {"x": x, "legendgroup": name, "line": {"shape": shape, "width": 0}}
    fig.add_trace(
        go.Scatter(
            y=_rs(curve.lo), mode="lines", showlegend=False, hoverinfo="skip", name=name, **common
        )
    )
    fig.add_trace(
        go.Scatter(
            y=_rs(curve.hi),
            mode="lines",
            fill="tonexty",
            fillcolor=_rgba(color, 0.18),
            showlegend=False,
            hoverinfo="skip",
            name=name,
            **common,
        )
    )
    fig.add_trace(
        go.Scatter(
            x=x,
            y=_rs(curve.mean),
            customdata=[
                [_r(lo), _r(hi), n] for lo, hi, n in zip(curve.lo, curve.hi, curve.n, strict=True)
            ],
            mode="lines",
            name=name,
            legendgroup=name,
            line={"color": color, "width": 2, "shape": shape},
            hovertemplate=(
                f"<b>%{{fullData.name}}</b><br>{xname} %{{x:.4g}}<br>mean %{{y:{fmt}}}"
                f"<br>min %{{customdata[0]:{fmt}}} · max %{{customdata[1]:{fmt}}}"
                "<br>runs %{customdata[2]}<extra></extra>"
            ),
        )
    )


def _get_band_plot(
    curves: Sequence[BandCurve],
    *,
    title: str,
    xtitle: str,
    ytitle: str,
    colors: Mapping[str, str] | None,
    percent: bool,
    constant: float | None,
    step: bool = False,
    log_toggle: bool = False,
    xname: str = "epoch",
) -> go.Figure:
    colors = colors or group_colors([c.label for c in curves])
    fig = go.Figure()
    for curve in curves:
        color = colors.get(curve.label, PALETTE[0])
        _add_band(fig, curve, color, percent=percent, step=step, xname=xname, what=ytitle)
    extra = {"updatemenus": _scale_menu()} if log_toggle and constant is None else {}
    _layout(fig, title, xtitle, ytitle, hovermode="closest", **extra)
    if percent:
        fig.update_yaxes(tickformat=".0%")
    if constant is not None:
        _constant_axis(fig, constant, percent=percent)
    if xname == "epoch":
        _integer_ticks(fig, [c.x for c in curves])
    return fig


def _get_epoch_curves_plot(
    info: EpochCurvesInfo, colors: Mapping[str, str] | None = None
) -> go.Figure:
    """One metric per epoch and group: the mean line, and the min-max band over its runs."""
    title, ytitle, percent = METRIC_TITLES[info.metric]
    return _get_band_plot(
        info.curves,
        title=title + _spread(info.curves, "runs"),
        xtitle="epoch",
        ytitle=ytitle,
        colors=colors,
        percent=percent,
        constant=info.constant,
        log_toggle=not percent,
    )


def _get_incumbent_plot(info: IncumbentInfo, colors: Mapping[str, str] | None = None) -> go.Figure:
    """Best-so-far test accuracy (model with the best validation accuracy) against time."""
    return _get_band_plot(
        info.curves,
        title="Incumbent: test accuracy of the best-validation model so far"
        + _spread(info.curves, "runs"),
        xtitle="wall-clock seconds",
        ytitle="test accuracy",
        colors=colors,
        percent=True,
        constant=info.constant,
        step=True,
        xname="seconds",
    )


def _get_sweep_plot(info: SweepInfo, colors: Mapping[str, str] | None = None) -> go.Figure:
    """Per method: the best model found so far by the sweep against the sweep's time."""
    return _get_band_plot(
        info.curves,
        title="Sweeps: test accuracy of the best-validation model found so far"
        + _spread(info.curves, "seeds"),
        xtitle="cumulative wall-clock seconds of the sweep",
        ytitle="test accuracy",
        colors=colors,
        percent=True,
        constant=info.constant,
        step=True,
        xname="seconds",
    )


def _get_run_traces_plot(
    info: RunTracesInfo,
    colors: Mapping[str, str] | None = None,
    *,
    title: str | None = None,
    log_default: bool | None = None,
) -> go.Figure:
    """One line per run, coloured by group; a legend entry (the group and its run ids)
    toggles a whole group, and the hover names the run.

    The y axis is log by default (``log_default=None``) as ``info.log_scale``
    says: a positive hyper-LR, or positive values that span decades. A constant
    series gets a short panel with a tight axis and no scale buttons.
    """
    if log_default is None:
        log_default = info.log_scale
    colors = colors or group_colors(info.groups)
    what = FIELD_TITLES[info.field]
    fig = go.Figure()
    shown: set[str] = set()
    for tr in info.traces:
        group = legend_text(tr.legend or tr.group)
        fig.add_trace(
            go.Scatter(
                x=list(tr.x),
                y=_rs(tr.y, 5),
                mode="lines",
                name=group,
                legendgroup=group,
                showlegend=tr.group not in shown,
                meta=[plotly_text(tr.label)],
                line={"color": colors.get(tr.group, PALETTE[0]), "width": 1.2},
                opacity=0.85,
                hovertemplate=(
                    f"<b>%{{meta[0]}}</b><br>{info.axis} %{{x}}<br>{what} %{{y:.4g}}"
                    "<extra>%{fullData.name}</extra>"
                ),
            )
        )
        shown.add(tr.group)
    per = "per step (traced steps)" if info.axis == "step" else "per epoch"
    default_title = f"{what[0].upper()}{what[1:]} {per}, one line per run"
    if info.constant is not None:
        _layout(fig, title or default_title, info.axis, what, hovermode="closest")
        _constant_axis(fig, info.constant, percent=False)
    else:
        _layout(
            fig,
            title or default_title,
            info.axis,
            what,
            hovermode="closest",
            updatemenus=_scale_menu("log" if log_default else "linear"),
        )
        if log_default:
            _log_axis(fig, [v for tr in info.traces for v in tr.y if v is not None])
    if info.axis == "epoch":
        _integer_ticks(fig, [t.x for t in info.traces])
    return fig


SOURCE_COLOR = "#444444"


def _get_replay_plot(group: ReplayGroup) -> go.Figure:
    """A source schedule (dark, dashed) and every replay of it, on the source's progress axis."""
    fig = go.Figure()
    replays = [line for line in group.lines if line.role == "replay"]
    colors = group_colors([line.label for line in replays])
    for line in group.lines:
        source = line.role == "source"
        fig.add_trace(
            go.Scatter(
                x=_rs(line.x),
                y=_rs(line.y, 5),
                mode="lines",
                name=plotly_text(("source " if source else "replay ") + line.label),
                meta=[plotly_text(line.label)],
                line={"color": SOURCE_COLOR if source else colors[line.label],
                      "width": 2.4 if source else 1.4, "dash": "dash" if source else "solid"},
                hovertemplate=(
                    "<b>%{meta[0]}</b><br>source schedule %{x:.1%}<br>learning rate %{y:.4g}"
                    "<extra>%{fullData.name}</extra>"
                ),
            )
        )
    _layout(
        fig,
        f"Replayed schedule next to its source: {plotly_text(group.source)}",
        "position in the source schedule (fraction of its steps)",
        "learning rate",
        hovermode="closest",
        updatemenus=_scale_menu("log" if group.log_scale else "linear"),
    )
    fig.update_xaxes(tickformat=".0%")
    if group.log_scale:
        _log_axis(fig, [v for line in group.lines for v in line.y if v is not None])
    return fig


def _get_find_alpha_plot(search: SearchInfo) -> go.Figure:
    """Probes of one search by probed value, one trace per verdict (stable, diverged, ...).

    The x axis spans the probed values and the recommended one (half a decade
    beyond each end on a log axis), ticked at exactly those values, so that a
    search of one probe sits in the middle and no tick reads 0.15000000000000002.
    """
    param = "hyper-LR" if search.parameter == "hyper-lr" else "alpha"
    probes = [p for p in search.probes if p.value is not None]
    verdicts = [v for v in VERDICT_STYLE if any(p.verdict == v for p in probes)]
    verdicts += sorted({p.verdict for p in probes} - set(verdicts))
    fig = go.Figure()
    for verdict in verdicts:
        rows = [p for p in probes if p.verdict == verdict]
        color, symbol = VERDICT_STYLE.get(verdict, ("#8c564b", "circle-open"))
        fig.add_trace(
            go.Scatter(
                x=[_r(p.value) for p in rows],
                y=[verdict] * len(rows),
                mode="markers",
                name=plotly_text(legend_name(verdict, [p.run_id for p in rows])),
                marker={"color": color, "symbol": symbol, "size": 11},
                customdata=[
                    [
                        plotly_text(p.label),
                        "–" if p.best_val_acc is None else f"{p.best_val_acc:.2%}",
                        p.epochs,
                        plotly_text(p.error or "–"),
                    ]
                    for p in rows
                ],
                hovertemplate=(
                    f"<b>%{{customdata[0]}}</b><br>{param} %{{x:.3g}}<br>{verdict}"
                    "<br>best val acc %{customdata[1]}<br>epochs %{customdata[2]}"
                    "<br>%{customdata[3]}<extra></extra>"
                ),
            )
        )
    chosen = (
        "no stable value" if search.chosen is None else f"recommended {param}: {search.chosen:.3g}"
    )
    values = [p.value for p in probes]
    if search.chosen is not None:
        values.append(search.chosen)
    log_x = bool(values) and all(v > 0 for v in values)
    _layout(
        fig,
        f"find-alpha {plotly_text(search.label)}: probes by {param} ({chosen})",
        param,
        "verdict",
        hovermode="closest",
        height=max(260, 120 + 60 * len(verdicts)),
    )
    fig.update_yaxes(type="category", categoryorder="array", categoryarray=verdicts)
    ticks = sorted({_r(v, 3) for v in values})
    if log_x:
        lo, hi = math.log10(min(values)), math.log10(max(values))
        fig.update_xaxes(type="log", range=[lo - 0.5, hi + 0.5])  # a log axis's range: log10
    elif values:
        pad = (max(values) - min(values)) * 0.1 or abs(values[0]) * 0.5 or 1.0
        fig.update_xaxes(type="linear", range=[min(values) - pad, max(values) + pad])
    if ticks and len(ticks) <= 12:
        fig.update_xaxes(tickmode="array", tickvals=ticks, ticktext=[f"{v:.3g}" for v in ticks])
    else:
        fig.update_xaxes(tickformat=".2~g" if not log_x else None, exponentformat="e")
    if search.chosen is not None:
        fig.add_shape(
            type="line",
            xref="x",
            yref="paper",
            x0=search.chosen,
            x1=search.chosen,
            y0=0,
            y1=1,
            line={"color": "#444", "dash": "dash", "width": 1},
        )
    return fig
