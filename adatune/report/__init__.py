"""Reports: records -> figure data (``info``) -> Plotly figures -> one HTML file.

Entry points:

* :func:`write_html` / :func:`render_html`: the self-contained HTML report.
* :func:`summary_table`: the per-method summary; :func:`summary_rich` and
  :func:`summary_json` present it.
"""

from adatune.report.html import build_figures, render_html, write_html
from adatune.report.table import summary_json, summary_rich, summary_table

__all__ = [
    "build_figures",
    "render_html",
    "summary_json",
    "summary_rich",
    "summary_table",
    "write_html",
]
