"""Reports: records -> figure data (``info``) -> Plotly figures -> one HTML file.

Entry points:

* :func:`write_html` / :func:`render_html`: the self-contained HTML report.
* :func:`summary_table`: the per-method summary; :func:`summary_rich` and
  :func:`summary_json` present it.

The names are imported on first use: the summary table and the figure data
(:mod:`adatune.report.info`) do not load Plotly; the HTML report does.
"""

from adatune._lazy import lazy_exports as _lazy_exports

_EXPORTS = {
    "build_figures": "adatune.report.html",
    "render_html": "adatune.report.html",
    "write_html": "adatune.report.html",
    "summary_json": "adatune.report.table",
    "summary_rich": "adatune.report.table",
    "summary_table": "adatune.report.table",
}

__all__ = list(_EXPORTS)
__getattr__, __dir__ = _lazy_exports(__name__, _EXPORTS)
