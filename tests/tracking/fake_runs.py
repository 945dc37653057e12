"""Synthetic run folders, written the way `peftkit train` writes them (config.yaml through the real
RunConfig and dump_yaml, run.json, metrics.jsonl), so that the `peftkit runs` commands can be tested
without training."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

from peftkit.train.config import RunConfig, config_hash, dump_yaml

BASE = {"model": {"name": "user/tiny-model"}, "adapter": {"method": "lora", "r": 8, "target_modules": ["q", "v"]},
        "data": {"train": "user/dataset", "format": "chat"}, "train": {"lr": 2e-4, "max_steps": 4}}


def make_config(**sections: dict) -> RunConfig:
    raw = {name: dict(values) for name, values in BASE.items()}
    for name, values in sections.items():
        raw[name] = {**raw.get(name, {}), **values}
    return RunConfig(**raw)


def make_run(runs_dir: Path, run_id: str, *, losses: tuple = (2.0, 1.5, 1.2, 1.0), evals: Optional[dict] = None,
             status: str = "completed", started: str = "2026-11-22T10:00:00+00:00", seconds: float = 12.0,
             info: Optional[dict] = None, **sections: dict) -> Path:
    """A run folder ``runs_dir/run_id``: ``losses`` logged at steps 1.., ``evals`` maps step ->
    {metric: value} (eval_ prefixed in the file); the final metrics are the last evaluation's."""
    cfg = make_config(**sections)
    path = runs_dir / run_id
    path.mkdir(parents=True)
    dump_yaml(cfg, path / "config.yaml")
    evals = {len(losses): {"loss": losses[-1] + 0.1}} if evals is None else evals
    records: list[dict[str, Any]] = []
    for step, loss in enumerate(losses, start=1):
        record = {"step": step, "epoch": 0, "loss": loss, "lr": 2e-4 * (1 - step / (len(losses) + 1)),
                  "tokens_per_s": 100.0}
        record.update({f"eval_{k}": v for k, v in evals.get(step, {}).items()})
        records.append(record)
    final = {f"eval_{k}": v for k, v in evals[max(evals)].items()} if evals and status == "completed" else {}
    if final:
        records.append({"step": len(losses), "final": True, **final})
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    data = {"run_id": run_id, "name": cfg.output.name, "config_hash": config_hash(cfg), "status": status,
            "started": started, "ended": None if status == "running" else started, "seed": cfg.train.seed,
            "parent": None, "environment": {"python": "3.11.7", "device": "cpu (2 cores)",
                                            "packages": {"torch": "2.13.0"}, "git": None},
            **({"final_metrics": final, "train_seconds": seconds} if status == "completed" else {}),
            **(info or {})}
    (path / "run.json").write_text(json.dumps(data, indent=2))
    return path
