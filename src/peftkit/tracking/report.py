"""``peftkit runs report``: one static HTML page, no scripts and no external files (plots are
embedded as base64 PNGs), that can be mailed, attached to an issue or opened from disk.

Sections: the runs table (as ``runs list``), config versions run more than once and whether they
agreed, the config keys that differ between the runs (one column per run), lineage, the curves of
all runs in one figure, and each run's details with its own curves.

>>> write_report(catalog, catalog.select(), "report.html")   # doctest: +SKIP
'report.html'
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import os
from typing import Any, Iterable, Optional

from . import plots, views
from .diff import MISSING, varying_keys
from .records import Run
from .table import fmt_value

MAX_RUN_FIGURES = 20  # past this many runs, the per-run sections leave out their own plots

STYLE = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 24px 32px; color: #1b1f24; }
h1 { font-size: 22px; margin-bottom: 2px; } h2 { font-size: 17px; margin-top: 28px; border-bottom: 1px solid #d0d7de; }
p.meta { color: #57606a; margin-top: 0; }
table { border-collapse: collapse; margin: 8px 0; font-size: 13px; }
th, td { border: 1px solid #d0d7de; padding: 3px 8px; text-align: left; white-space: nowrap; }
th { background: #f6f8fa; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.completed td.status { color: #1a7f37; } tr.failed td.status, tr.unreadable td.status { color: #cf222e; }
tr.running td.status { color: #0969da; } tr.interrupted td.status { color: #9a6700; }
td.absent { color: #8c959f; font-style: italic; }
#config-diff td, #config-diff th { white-space: normal; overflow-wrap: anywhere; max-width: 18em; }
#config-diff td:first-child { white-space: nowrap; }
img { max-width: 100%; border: 1px solid #d0d7de; margin: 6px 0; }
pre { background: #f6f8fa; padding: 8px; overflow-x: auto; font-size: 12px; }
details { margin: 6px 0; } summary { cursor: pointer; font-weight: 600; }
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _table(headers: list[str], rows: Iterable[tuple[list[str], str]], table_id: str, numeric: Iterable[int] = ()) -> str:
    numeric = set(numeric)
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = []
    for cells, row_class in rows:
        tds = []
        for i, cell in enumerate(cells):
            classes = " ".join(c for c in ("num" if i in numeric else "", "status" if headers[i] == "status" else "",
                                           "absent" if cell == "(absent)" else "") if c)
            tds.append(f'<td class="{classes}">{_e(cell)}</td>' if classes else f"<td>{_e(cell)}</td>")
        body.append(f'<tr class="{_e(row_class)}">{"".join(tds)}</tr>')
    return f'<table id="{table_id}"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


def _image(data: Optional[bytes], alt: str, image_id: str = "") -> str:
    if data is None:
        return "<p>(no metrics logged)</p>"
    attr = f' id="{image_id}"' if image_id else ""
    return f'<img{attr} alt="{_e(alt)}" src="data:image/png;base64,{base64.b64encode(data).decode("ascii")}">'


def config_diff_html(runs: list[Run]) -> str:
    keys = varying_keys(runs)
    if len(runs) < 2:
        return "<p>(one run: nothing to compare)</p>"
    if not keys:
        return "<p>All runs share the same config (apart from where their outputs go).</p>"
    headers = ["key", *plots.labels(runs)]
    rows = [([k.key, *("(absent)" if v is MISSING else fmt_value(v) for v in k.values)], "") for k in keys]
    return _table(headers, rows, "config-diff")


def build_report(catalog: Any, runs: list[Run], title: Optional[str] = None) -> str:
    """The HTML page for ``runs`` (the version groups consider every run of the catalog)."""
    groups = catalog.groups()
    headers, rows = views.runs_table(runs, groups)
    stamp = dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    parts = [f"<h1>{_e(title or 'peftkit runs')}</h1>",
             f'<p class="meta">{len(runs)} run(s) in {_e(os.path.abspath(catalog.dir))}, report made {_e(stamp)}</p>',
             "<h2>Runs</h2>",
             _table(headers, [(row, run.status) for row, run in zip(rows, runs)], "runs", views.NUMERIC_RUN_COLUMNS)]
    shown = {r.version for r in runs}
    again = [g for v, g in groups.items() if v in shown and g.reruns > 1]
    if again:
        items = "".join(f"<li>{_e(views.group_line(g))}</li>" for g in again)
        parts += ["<h2>Config versions run more than once</h2>", f'<ul id="versions">{items}</ul>']
    parts += ["<h2>Config differences</h2>", config_diff_html(runs)]
    chains = [views.lineage_text(catalog, r) for r in runs]
    if any(chains):
        items = "".join(f"<li>{_e(c)}</li>" for c in chains if c)
        parts += ["<h2>Lineage</h2>", f'<ul id="lineage">{items}</ul>']
    parts += ["<h2>Curves</h2>", _image(plots.png_bytes(runs), "loss, learning rate and eval metrics of every run",
                                         "curves")]
    parts.append("<h2>Each run</h2>")
    for run in runs:
        figure = _image(plots.png_bytes([run], run.id), f"curves of {run.id}") if len(runs) <= MAX_RUN_FIGURES else ""
        parts.append(f'<details><summary>{_e(run.id)} ({_e(run.status)})</summary>'
                     f"<pre>{_e(views.show_text(catalog, run, groups))}</pre>{figure}</details>")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{_e(title or 'peftkit runs')}</title><style>{STYLE}</style></head>\n<body>\n"
            + "\n".join(parts) + "\n</body></html>\n")


def write_report(catalog: Any, runs: list[Run], out: str, title: Optional[str] = None) -> str:
    """Write the report to ``out`` (atomically); returns ``out``."""
    text = build_report(catalog, runs, title)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    tmp = f"{out}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, out)
    return out
