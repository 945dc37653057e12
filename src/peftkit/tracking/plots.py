"""Curves of one or many runs in one PNG: training loss (with eval loss dashed on the same axes),
learning rate, then one panel per other eval metric; one colour per run.

Drawn to be read: the loss on a log scale (it falls by orders of magnitude; a linear axis flattens
everything after the first steps into the floor), the raw training loss faint with a smoothed line
over it, every evaluation marked with a dot, and the learning rate only when it changes (a
constant rate is a wasted panel).

>>> plot_runs([read_run("runs/a"), read_run("runs/b")], "compare.png")  # doctest: +SKIP
'compare.png'
"""

from __future__ import annotations

import io
import math
import os
import re
from typing import Any, Optional

from ..train import runs as run_files
from .records import Run

Curve = list[tuple[float, float]]


def curves(run: Run) -> dict[str, Curve]:
    """``{"loss": [(step, value), ...], "lr": ..., "eval_loss": ..., "eval_<metric>": ...}`` from
    metrics.jsonl (the closing ``final`` record repeats the last evaluation and is left out)."""
    found: dict[str, Curve] = {}
    for record in run_files.read_metrics(run.path):
        if record.get("final") or "step" not in record:
            continue
        for key, value in record.items():
            plotted = key in ("loss", "lr") or key.startswith("eval_")
            if plotted and isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                found.setdefault(key, []).append((record["step"], value))
    return found


def labels(runs: list[Run]) -> list[str]:
    """Short labels for legends and column heads: the run name where it is unique among ``runs``,
    else the folder name without its time stamp (``lora-3f2a9c``) where that is unique, else the
    whole folder name."""
    names = [r.info.get("name") for r in runs]
    tails = [re.sub(r"^\d{8}-\d{6}-", "", r.id) for r in runs]
    return [n if n and names.count(n) == 1 else t if tails.count(t) == 1 else r.id
            for n, t, r in zip(names, tails, runs)]


def _panels(all_curves: list[dict[str, Curve]]) -> list[str]:
    keys = {k for c in all_curves for k in c}
    extra = sorted(k for k in keys if k.startswith("eval_") and k != "eval_loss")
    first = ["loss"] if keys & {"loss", "eval_loss"} else []
    lr_changes = any(len({v for _, v in c.get("lr", [])}) > 1 for c in all_curves)
    return first + (["lr"] if lr_changes else []) + extra


def smoothed(curve: Curve, weight: Optional[float] = None) -> Curve:
    """An exponential moving average of ``curve``, bias-corrected so that it starts at the first
    value (not at 0); the weight grows with the length (0 for a handful of points: nothing to smooth).

    >>> [round(v, 2) for _, v in smoothed([(1, 4.0), (2, 2.0), (3, 4.0)], weight=0.5)]
    [4.0, 2.67, 3.43]
    """
    if weight is None:
        weight = 0.0 if len(curve) < 10 else min(0.9, 1 - 5 / len(curve))
    out, average = [], 0.0
    for i, (step, value) in enumerate(curve, 1):
        average = weight * average + (1 - weight) * value
        out.append((step, average / (1 - weight ** i) if weight else value))
    return out


def _log_scale_fits(all_curves: list[dict[str, Curve]]) -> bool:
    values = [v for c in all_curves for k in ("loss", "eval_loss") for _, v in c.get(k, [])]
    return bool(values) and min(values) > 0


def figure(runs: list[Run], title: Optional[str] = None) -> Any:
    """A matplotlib figure of ``runs`` (None when none of them logged anything)."""
    all_curves = [curves(r) for r in runs]
    panels = _panels(all_curves)
    if not panels:
        return None
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and CI
    import matplotlib.pyplot as plt

    cols = min(3, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.4 * cols, 3.1 * rows + (0.5 if len(runs) > 1 else 0)),
                             squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    log_loss = _log_scale_fits(all_curves)
    for ax, panel in zip(axes.flat, panels):
        for i, (run_curves, label) in enumerate(zip(all_curves, labels(runs))):
            color = colors[i % len(colors)]
            _draw(ax, panel, run_curves, color, label, single=len(runs) == 1)
        title = {"loss": "loss" + (", log scale" if log_loss else "") + " (eval: dots)", "lr": "learning rate"}
        ax.set_title(title.get(panel, panel.replace("_", " ")), fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3, which="both")
        ax.margins(x=0.03, y=0.08)  # the first and last points stay inside the frame
        if panel == "loss" and log_loss:
            ax.set_yscale("log")
        if panel == "lr":
            ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    if len(runs) > 1:
        handles = [plt.Line2D([], [], color=colors[i % len(colors)]) for i in range(len(runs))]
        fig.legend(handles, labels(runs), loc="lower center", ncol=min(len(runs), 3), fontsize=8, frameon=False)
    if title:
        fig.suptitle(title, fontsize=10)
    bottom = min(0.35, 0.08 + 0.06 * math.ceil(len(runs) / 3) / rows) if len(runs) > 1 else 0
    fig.tight_layout(rect=(0, bottom, 1, 1))
    return fig


def _draw(ax: Any, panel: str, run_curves: dict[str, Curve], color: str, label: str, single: bool) -> None:
    if panel == "loss":
        train = run_curves.get("loss") or []
        if train:
            smooth = smoothed(train)
            if smooth != train:  # the raw curve faint behind its smoothed line
                ax.plot(*zip(*train), color=color, alpha=0.25, linewidth=0.8)
            ax.plot(*zip(*smooth), color=color, label="train" + (" (smoothed)" if smooth != train else "") if single else label)
        if run_curves.get("eval_loss"):
            ax.plot(*zip(*run_curves["eval_loss"]), "o--", color=color, markersize=5, label="eval" if single else None)
        if single:
            ax.legend(fontsize=8)
    elif run_curves.get(panel):
        style = "-" if panel == "lr" else "o-"
        ax.plot(*zip(*run_curves[panel]), style, color=color, markersize=5)


def png_bytes(runs: list[Run], title: Optional[str] = None, dpi: int = 90) -> Optional[bytes]:
    """The figure as PNG bytes (for embedding in the HTML report), None when nothing was logged."""
    fig = figure(runs, title)
    if fig is None:
        return None
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    plt.close(fig)
    return buffer.getvalue()


def plot_runs(runs: list[Run], out: str, title: Optional[str] = None) -> Optional[str]:
    """Write the curves of ``runs`` to the PNG file ``out``; returns ``out`` (None if nothing was logged)."""
    data = png_bytes(runs, title if title is not None else (runs[0].id if len(runs) == 1 else None), dpi=100)
    if data is None:
        return None
    folder = os.path.dirname(os.path.abspath(out))
    os.makedirs(folder, exist_ok=True)
    tmp = f"{out}.tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, out)
    return out
