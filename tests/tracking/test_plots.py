"""Plots a person would read: the loss on a log scale with a smoothed line over the raw one, every
evaluation a dot, the learning rate only when it changes; `runs plot` / `compare` / `report` write
into the run's or the runs folder unless --out says otherwise."""

from __future__ import annotations

import json

import matplotlib
import pytest
from fake_runs import make_run

from peftkit.cli import main
from peftkit.tracking.plots import figure, smoothed
from peftkit.tracking.records import read_run

matplotlib.use("Agg")


def _panels(fig):
    return {ax.get_title(): ax for ax in fig.axes if ax.get_visible()}


def _constant_lr(path):
    records = [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]
    for r in records:
        if "lr" in r:
            r["lr"] = 2e-3
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def test_loss_is_log_scale_smoothed_with_eval_dots_and_a_changing_lr_gets_a_panel(tmp_path):
    losses = tuple(4.0 * 0.8 ** i for i in range(30))
    run = make_run(tmp_path, "20261122-100000-a", losses=losses, evals={10: {"loss": 1.0}, 30: {"loss": 0.01}})
    panels = _panels(figure([read_run(run)]))
    assert set(panels) == {"loss, log scale (eval: dots)", "learning rate"}
    loss = panels["loss, log scale (eval: dots)"]
    assert loss.get_yscale() == "log"
    lines = loss.get_lines()
    raw, smooth, evals = lines
    assert raw.get_alpha() == 0.25 and list(raw.get_ydata()) == list(losses)  # every point, the first too
    assert list(smooth.get_ydata()) != list(losses) and smooth.get_ydata()[0] == pytest.approx(losses[0])
    assert evals.get_marker() == "o" and list(evals.get_xdata()) == [10, 30]
    low, high = loss.get_ylim()
    assert low < min(losses) and high > max(losses)  # nothing is cut off at either end


def test_a_constant_learning_rate_gets_no_panel(tmp_path):
    run = make_run(tmp_path, "20261122-100000-a")
    _constant_lr(run)
    assert "learning rate" not in _panels(figure([read_run(run)]))


def test_smoothing_starts_at_the_first_value_and_leaves_short_curves_alone():
    curve = [(i, float(v)) for i, v in enumerate([5, 1, 5, 1, 5, 1, 5, 1, 5, 1, 5, 1], 1)]
    out = smoothed(curve)
    assert out[0] == (1, pytest.approx(5.0)) and max(v for _, v in out[4:]) < 4 and min(v for _, v in out[4:]) > 2
    assert smoothed(curve[:5]) == curve[:5]


def test_outputs_go_into_the_run_or_runs_folder_by_default(tmp_path, monkeypatch, capsys):
    runs = tmp_path / "runs"
    make_run(runs, "20261122-100000-a")
    make_run(runs, "20261122-110000-b")
    monkeypatch.chdir(tmp_path)  # nothing may land here
    assert main(["runs", "--dir", str(runs), "plot", "20261122-100000-a"]) == 0
    assert (runs / "20261122-100000-a" / "plot.png").is_file()
    assert main(["runs", "--dir", str(runs), "plot", "20261122-100000-a", "20261122-110000-b"]) == 0
    assert main(["runs", "--dir", str(runs), "compare", "20261122-100000-a", "20261122-110000-b"]) == 0
    assert main(["runs", "--dir", str(runs), "report"]) == 0
    assert {"runs-plot.png", "runs-compare.png", "runs-report.html"} <= {p.name for p in runs.iterdir()}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs"]
    capsys.readouterr()


@pytest.mark.parametrize("name", ["runs-plot.png", "runs-compare.png", "runs-report.html"])
def test_the_repository_ignores_the_default_outputs(name):
    from pathlib import Path

    ignored = (Path(__file__).resolve().parents[2] / ".gitignore").read_text().split()
    assert name in ignored
