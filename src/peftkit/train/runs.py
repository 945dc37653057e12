"""Run directories: one folder per training run, the source of truth for what happened.

``<output.dir>/<run-id>/`` holds ``config.yaml`` (fully resolved), ``run.json`` (config version,
times, status, environment, seed, parent run, sweep), ``metrics.jsonl`` (one JSON object per logged
step), ``checkpoints/``, ``adapter/`` (the final adapter, peft format) and ``loss.png``. Listing,
comparing and reporting on many runs is :mod:`peftkit.tracking`.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from typing import Any, Optional


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def new_run_id(name: Optional[str], method: str, config_hash: str) -> str:
    """``20261122-184500-<name or method>-<hash6>``: sortable by time, readable, unique enough."""
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    label = "".join(c if c.isalnum() or c in "-_" else "-" for c in (name or method.lower()))
    return f"{stamp}-{label}-{config_hash[:6]}"


def create_run_dir(output_dir: str, run_id: str) -> str:
    """Make the run folder; a clash (two runs in the same second) gets a numeric suffix."""
    os.makedirs(output_dir, exist_ok=True)
    path, n = os.path.join(output_dir, run_id), 1
    while True:
        try:
            os.makedirs(path)
            return path
        except FileExistsError:
            n += 1
            path = os.path.join(output_dir, f"{run_id}-{n}")


def write_json_atomic(path: str, data: Any) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, default=str)
    os.replace(tmp, path)


def read_run_json(run_dir: str) -> dict[str, Any]:
    with open(os.path.join(run_dir, "run.json"), encoding="utf-8") as f:
        return json.load(f)


def update_run_json(run_dir: str, **fields: Any) -> dict[str, Any]:
    """Merge ``fields`` into ``run.json`` (written atomically)."""
    path = os.path.join(run_dir, "run.json")
    data = read_run_json(run_dir) if os.path.exists(path) else {}
    data.update(fields)
    write_json_atomic(path, data)
    return data


def append_metrics(run_dir: str, record: dict[str, Any]) -> None:
    """One JSON object per line; flushed at once so a killed run keeps what it logged."""
    with open(os.path.join(run_dir, "metrics.jsonl"), "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()


def read_metrics(run_dir: str) -> list[dict[str, Any]]:
    """The records of ``metrics.jsonl``. A line that is not JSON (the half-written last line of a
    killed run, or one being written while another process reads) is skipped."""
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    records = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                record = json.loads(line) if line.strip() else None
            except ValueError:
                continue
            if isinstance(record, dict):
                records.append(record)
    return records


def truncate_metrics(run_dir: str, step: int) -> None:
    """On resume, drop records logged after the checkpoint's step (they will be logged again)."""
    records = [r for r in read_metrics(run_dir) if r.get("step", 0) <= step]
    tmp = os.path.join(run_dir, "metrics.jsonl.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)
    os.replace(tmp, os.path.join(run_dir, "metrics.jsonl"))


def plot_loss(run_dir: str) -> Optional[str]:
    """``loss.png``: the run's curves (loss, learning rate, eval metrics) against the step; None
    when nothing was logged."""
    from ..tracking.plots import plot_runs
    from ..tracking.records import read_run

    return plot_runs([read_run(run_dir)], os.path.join(run_dir, "loss.png"))
