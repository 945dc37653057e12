"""Trackers without training: a backend whose package is missing fails before a run folder exists,
and records reach accelerate's trackers under TensorBoard/MLflow-style names."""

from __future__ import annotations

import importlib.util

import pytest
from train.tiny_assets import write_config

from peftkit.cli import main
from peftkit.errors import ConfigError
from peftkit.tracking.trackers import check_backends, hyperparameters, log_metrics


@pytest.mark.skipif(importlib.util.find_spec("wandb") is not None, reason="wandb is installed")
def test_a_missing_tracker_package_fails_before_the_run_folder(tmp_path, capsys):
    with pytest.raises(ConfigError, match=r"tracking.backends\[1\]: 'wandb' needs the wandb package: pip install wandb"):
        check_backends(["local", "wandb"])
    config = write_config(tmp_path)
    assert main(["train", str(config), "tracking.backends=[wandb]"]) == 2
    assert "pip install wandb" in capsys.readouterr().err and not (tmp_path / "runs").exists()


class FakeAccelerator:
    def __init__(self):
        self.trackers, self.logged = ["a tracker"], []

    def log(self, values, step):
        self.logged.append((step, values))


def test_records_reach_the_trackers_with_grouped_names(tmp_path):
    accelerator = FakeAccelerator()
    log_metrics(accelerator, str(tmp_path), {"step": 3, "epoch": 0, "loss": 1.5, "lr": 1e-4, "eval_loss": 1.7,
                                             "eval_exact_match": 0.5, "note": "text", "flag": True})
    assert accelerator.logged == [(3, {"train/epoch": 0, "train/loss": 1.5, "train/lr": 1e-4, "eval/loss": 1.7,
                                       "eval/exact_match": 0.5})]
    assert (tmp_path / "metrics.jsonl").read_text().count("\n") == 1  # the run folder gets the record too


def test_hyperparameters_are_flat_simple_values(tmp_path):
    from peftkit.train.config import load_run_config

    cfg = load_run_config(write_config(tmp_path))
    params = hyperparameters(cfg, str(tmp_path / "runs" / "r1"), "abc")
    assert params["run_id"] == "r1" and params["config_version"] == "abc" and params["adapter.r"] == 4
    assert params["eval.metrics"] == "['loss', 'exact_match']" and params["model.revision"] == "null"
    assert all(isinstance(v, (bool, int, float, str)) for v in params.values())
