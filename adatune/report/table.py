"""The per-method summary: info, text formatting, a Rich table and plain JSON."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rich.table import Table
from rich.text import Text

from adatune.redact import printable
from adatune.report.info import (
    GroupSummary,
    Stat,
    SummaryInfo,
    _get_summary_info,
    run_ids_text,
)
from adatune.store.records import RunDetail

SUMMARY_COLUMNS = (
    "method",
    "runs",
    "status",
    "best val acc %",
    "test acc % @ best val",
    "epochs",
    "wall / run",
    "CPU / run",
)
#: Added when some group has no accuracies (regression, custom losses).
LOSS_COLUMNS = ("best val loss", "test loss @ best val")


def summary_columns(info: SummaryInfo) -> tuple[str, ...]:
    """The columns of the summary: the loss ones only when some group is judged by loss."""
    if any(g.by_loss for g in info.groups):
        return (*SUMMARY_COLUMNS[:5], *LOSS_COLUMNS, *SUMMARY_COLUMNS[5:])
    return SUMMARY_COLUMNS


def summary_table(details: Sequence[RunDetail]) -> SummaryInfo:
    """The per-method summary of the compared runs (probes and searches excluded)."""
    return _get_summary_info(details)


def fmt_pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.2f}"


def fmt_stat_pct(stat: Stat, runs: int | None = None) -> str:
    """``91.23 ± 0.40`` in percent; ``(n=2)`` when fewer values than runs."""
    if stat.n == 0 or stat.mean is None:
        return "–"
    text = fmt_pct(stat.mean) if stat.n == 1 else f"{fmt_pct(stat.mean)} ± {100 * stat.std:.2f}"
    if runs is not None and stat.n < runs:
        text += f" (n={stat.n})"
    return text


def fmt_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def fmt_status(counts: Sequence[tuple[str, int]]) -> str:
    return ", ".join(f"{n} {status}" for status, n in counts)


def fmt_epochs(lo: int, hi: int) -> str:
    return str(lo) if lo == hi else f"{lo}–{hi}"


def fmt_value(value: float | None) -> str:
    return "–" if value is None else f"{value:.4g}"


def fmt_stat(stat: Stat, runs: int | None = None) -> str:
    """``0.1234 ± 0.0040`` (4 significant digits); ``(n=2)`` when fewer values than runs."""
    if stat.n == 0 or stat.mean is None:
        return "–"
    text = f"{stat.mean:.4g}" if stat.n == 1 else f"{stat.mean:.4g} ± {stat.std:.2g}"
    if runs is not None and stat.n < runs:
        text += f" (n={stat.n})"
    return text


def summary_cells(g: GroupSummary, *, losses: bool = False) -> tuple[str, ...]:
    """The row of one group, as text, in :func:`summary_columns` order."""
    loss_cells = ((fmt_stat(g.best_val_loss, g.runs), fmt_stat(g.test_loss_at_best, g.runs))
                  if losses else ())
    return (
        g.label,
        f"{g.runs} ({run_ids_text(g.run_ids)})",
        fmt_status(g.status_counts),
        fmt_stat_pct(g.best_val_acc, g.runs),
        fmt_stat_pct(g.test_acc_at_best, g.runs),
        *loss_cells,
        fmt_epochs(g.epochs_min, g.epochs_max),
        fmt_seconds(g.time_s.mean),
        fmt_seconds(g.cpu_s.mean),
    )


def summary_rows(info: SummaryInfo) -> tuple[tuple[str, ...], list[tuple[str, ...]]]:
    """(columns, one row of cells per group): what the terminal and HTML tables show."""
    columns = summary_columns(info)
    losses = columns != SUMMARY_COLUMNS
    return columns, [summary_cells(g, losses=losses) for g in info.groups]


def summary_rich(info: SummaryInfo, *, title: str | None = None) -> Table:
    """A Rich table (markup off: names are shown as typed)."""
    table = Table(title=title, title_justify="left")
    columns, rows = summary_rows(info)
    for col in columns:
        numeric = col not in ("method", "status")
        table.add_column(col, justify="right" if numeric else "left", overflow="fold")
    for cells in rows:
        table.add_row(*(_plain(c) for c in cells))
    return table


def _plain(text: str) -> Text:
    return Text(printable(text))


def _stat_json(stat: Stat) -> dict[str, Any]:
    return {"mean": stat.mean, "std": stat.std, "n": stat.n}


def summary_json(info: SummaryInfo) -> list[dict[str, Any]]:
    """Plain JSON-ready dicts (fractions, seconds; ``None`` where there is no value)."""
    return [
        {
            "group": g.label,
            "method": g.method,
            "config": dict(g.config),
            "dataset": g.dataset,
            "network": g.network,
            "optimizer": g.optimizer,
            "runs": g.runs,
            "status": dict(g.status_counts),
            "best_val_acc": _stat_json(g.best_val_acc),
            "test_acc_at_best_val": _stat_json(g.test_acc_at_best),
            "best_val_loss": _stat_json(g.best_val_loss),
            "test_loss_at_best_val": _stat_json(g.test_loss_at_best),
            "epochs": {"min": g.epochs_min, "max": g.epochs_max},
            "time_s": _stat_json(g.time_s),
            "cpu_s": _stat_json(g.cpu_s),
            "run_ids": [r.run_id for r in g.run_rows],
        }
        for g in info.groups
    ]
