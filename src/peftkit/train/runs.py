"""Run directories: one folder per training run, the source of truth for what happened.

``<output.dir>/<run-id>/`` holds ``config.yaml`` (fully resolved), ``run.json`` (config hash,
times, status, environment, seed, parent run), ``metrics.jsonl`` (one JSON object per logged
step), ``checkpoints/``, ``adapter/`` (the final adapter, peft format) and ``loss.png``.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import sys
from importlib.metadata import PackageNotFoundError, version
from typing import Any, Optional

PACKAGES = ("peftkit", "torch", "transformers", "accelerate", "datasets", "safetensors", "peft")


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def environment() -> dict[str, Any]:
    """Package versions, Python, OS and device: what a person needs to reproduce a run."""
    import torch

    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            pass
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"cpu ({os.cpu_count()} cores)"
    return {"python": sys.version.split()[0], "os": platform.platform(), "device": device, "packages": versions}


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
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def truncate_metrics(run_dir: str, step: int) -> None:
    """On resume, drop records logged after the checkpoint's step (they will be logged again)."""
    records = [r for r in read_metrics(run_dir) if r.get("step", 0) <= step]
    tmp = os.path.join(run_dir, "metrics.jsonl.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)
    os.replace(tmp, os.path.join(run_dir, "metrics.jsonl"))


def plot_loss(run_dir: str) -> Optional[str]:
    """``loss.png``: training loss (and eval loss, if logged) against the step."""
    records = read_metrics(run_dir)
    train = [(r["step"], r["loss"]) for r in records if "loss" in r]
    evals = [(r["step"], r["eval_loss"]) for r in records if "eval_loss" in r]
    if not train and not evals:
        return None
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and CI
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    if train:
        ax.plot(*zip(*train), label="train loss")
    if evals:
        ax.plot(*zip(*evals), "o-", label="eval loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(os.path.basename(run_dir.rstrip("/")), fontsize=9)
    ax.legend()
    fig.tight_layout()
    path = os.path.join(run_dir, "loss.png")
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
