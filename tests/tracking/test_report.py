"""`peftkit runs report`: the HTML parsed (runs table, config differences, versions, lineage, embedded
PNGs, nothing external), and rendered once by a headless browser when one is installed."""

from __future__ import annotations

import base64
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
from fake_runs import make_run

from peftkit.cli import main

A, B, C, D = "20261122-100000-base-aaaaaa", "20261122-110000-wide-bbbbbb", "20261122-120000-base-aaaaaa", \
    "20261122-130000-empty-dddddd"


class Page(HTMLParser):
    """Tables (id -> rows of cell texts, header row first), list items by list id, images, links."""

    def __init__(self):
        super().__init__()
        self.tables, self.lists, self.images, self.links, self.scripts = {}, {}, [], [], 0
        self.row_classes: dict[str, list[str]] = {}
        self._table = self._list = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "table":
            self._table = attrs.get("id")
            self.tables[self._table], self.row_classes[self._table] = [], []
        elif tag == "tr" and self._table is not None:
            self.tables[self._table].append([])
            self.row_classes[self._table].append(attrs.get("class", ""))
        elif tag in ("td", "th") and self._table is not None:
            self._cell = []
        elif tag == "ul":
            self._list = attrs.get("id")
            self.lists[self._list] = []
        elif tag == "li" and self._list is not None:
            self.lists[self._list].append("")
        elif tag == "img":
            self.images.append(attrs)
        elif tag in ("a", "link"):
            self.links.append(attrs.get("href", ""))
        elif tag == "script":
            self.scripts += 1

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.tables[self._table][-1].append("".join(self._cell).strip())
            self._cell = None
        elif tag == "table":
            self._table = None
        elif tag == "ul":
            self._list = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)
        elif self._list is not None and self.lists[self._list]:
            self.lists[self._list][-1] += data


@pytest.fixture
def runs(tmp_path) -> Path:
    folder = tmp_path / "runs"
    make_run(folder, A, started="2026-11-22T10:00:00+00:00", output={"name": "base"})
    make_run(folder, B, started="2026-11-22T11:00:00+00:00", adapter={"r": 16}, evals={2: {"loss": 1.4}, 4: {"loss": 0.9}},
             info={"parent": A})
    make_run(folder, C, started="2026-11-22T12:00:00+00:00", info={"reproduces": A})
    make_run(folder, D, started="2026-11-22T13:00:00+00:00", status="failed", losses=(), evals={}, train={"lr": 1e-3})
    return folder


def report(runs, tmp_path, capsys, *args) -> tuple[Page, Path]:
    out = tmp_path / "report.html"
    assert main(["runs", "report", "--dir", str(runs), "--out", str(out), *args]) == 0
    assert capsys.readouterr().out.startswith(f"{out}: ")
    page = Page()
    page.feed(out.read_text(encoding="utf-8"))
    return page, out


def test_report_holds_the_runs_table_diffs_and_plots(runs, tmp_path, capsys):
    page, _ = report(runs, tmp_path, capsys, "--title", "LoRA <experiments>")
    header, *rows = page.tables["runs"]
    assert header[:4] == ["run", "name", "status", "version"] and header[-1] == "re-runs"
    assert [r[0] for r in rows] == [A, B, C, D]
    assert page.row_classes["runs"][1:] == ["completed", "completed", "completed", "failed"]
    assert rows[0][-1] == "2x agree" and rows[1][5] == "16"
    head, *keys = page.tables["config-diff"]
    assert head == ["key", "base", "wide-bbbbbb", C, "empty-dddddd"]  # short labels where they are unique
    diff = {row[0]: row[1:] for row in keys}
    assert diff["adapter.r"] == ["8", "16", "8", "8"] and diff["train.lr"] == ["0.0002"] * 3 + ["0.001"]
    assert "output.name" not in diff  # where outputs go is no config difference
    assert any("agree on loss" in item for item in page.lists["versions"])
    assert page.lists["lineage"] == [f"{B} <- {A}"]
    pngs = [base64.b64decode(img["src"].split(",", 1)[1]) for img in page.images]
    assert len(pngs) == 1 + 3  # all runs together, then each run that logged metrics
    assert all(p[:8] == b"\x89PNG\r\n\x1a\n" and len(p) > 5000 for p in pngs)
    assert page.images[0]["id"] == "curves" and all(img["src"].startswith("data:image/png;base64,") for img in page.images)
    assert page.scripts == 0 and not [link for link in page.links if link]  # self-contained: nothing to fetch


def test_report_of_filtered_runs(runs, tmp_path, capsys):
    page, _ = report(runs, tmp_path, capsys, "--where", "adapter.r=8", "--where", "status=completed")
    assert [r[0] for r in page.tables["runs"][1:]] == [A, C]
    assert "lineage" not in page.lists  # B, the only child, is not in the report
    page, _ = report(runs, tmp_path, capsys, B)
    assert [r[0] for r in page.tables["runs"][1:]] == [B] and "config-diff" not in page.tables


def test_report_of_nothing_is_an_error(runs, tmp_path, capsys):
    assert main(["runs", "report", "--dir", str(runs), "--where", "adapter.r=99", "--out", str(tmp_path / "r.html")]) == 2
    assert "no runs to report on" in capsys.readouterr().err


def browser() -> str | None:
    return next((shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)


@pytest.mark.skipif(browser() is None, reason="no headless browser (apt-get install chromium)")
def test_report_renders_in_a_headless_browser(runs, tmp_path, capsys):
    _, out = report(runs, tmp_path, capsys)
    shot = tmp_path / "shot.png"
    done = subprocess.run([browser(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                           f"--screenshot={shot}", "--window-size=1200,1600", out.as_uri()],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and shot.exists(), done.stderr[-2000:]
    import matplotlib.image

    pixels = matplotlib.image.imread(shot)
    assert pixels.shape[:2] == (1600, 1200)
    rows_with_ink = (pixels[..., :3].min(axis=2) < 0.5).any(axis=1)  # dark pixels: text, lines, plots
    assert rows_with_ink[:200].any() and rows_with_ink[600:1400].sum() > 100  # the title, tables and the figure
