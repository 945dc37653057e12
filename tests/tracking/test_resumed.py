"""A resumed run's trackers show each step once, with the values of the run that continued: the
TensorBoard purge mark and its file name (units), MLflow's replacement run (unit, file store), and a
run that fails after its last checkpoint and is resumed (end to end, TensorBoard and MLflow)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace

import pytest
from event_files import shown_scalars, written_scalars
from train.tiny_assets import read_metrics, the_run, write_config

from peftkit.cli import main
from peftkit.tracking.resumed import REPLACES_TAG, mlflow_run_to_continue, tensorboard_options
from peftkit.train import loop, tasks

pytestmark = pytest.mark.usefixtures("torch_single_thread")


def write_steps(log_dir: Path, steps, value, **options) -> None:
    from tensorboardX import SummaryWriter

    writer = SummaryWriter(str(log_dir), **options)
    for step in steps:
        writer.add_scalar("train/loss", value(step), step)
    writer.close()


def test_tensorboard_shows_the_continued_values_once_even_within_the_same_second(tmp_path, monkeypatch):
    from tensorboardX import event_file_writer

    # both writers open their file in the same second: tensorboardX would give them one name
    monkeypatch.setattr(event_file_writer, "time", SimpleNamespace(time=lambda: 1_800_000_000.0))
    log_dir = tmp_path / "tensorboard"
    write_steps(log_dir, range(1, 6), lambda s: 100.0 + s)  # crashed after step 5, checkpoint at step 2
    assert tensorboard_options(str(log_dir), None) == {}
    options = tensorboard_options(str(log_dir), 3)
    assert options == {"purge_step": 3, "filename_suffix": ".resume001"}
    write_steps(log_dir, range(3, 8), float, **options)
    assert len(os.listdir(log_dir)) == 2  # the first file was kept, not overwritten
    assert [s for s, _ in written_scalars(log_dir)["train/loss"]] == [1, 2, 3, 4, 5, 3, 4, 5, 6, 7]
    assert shown_scalars(log_dir)["train/loss"] == [(1, 101.0), (2, 102.0), (3, 3.0), (4, 4.0), (5, 5.0), (6, 6.0),
                                                    (7, 7.0)]


@pytest.fixture
def mlflow_client(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=f"file:{tmp_path / 'mlruns'}")


def logged_run(client, steps) -> str:
    from mlflow.entities import Metric, Param

    experiment = client.create_experiment("peftkit")
    run = client.create_run(experiment, run_name="20261122-100000-lora-aaaaaa", tags={"peftkit.config_version": "abc"})
    metrics = [Metric(key, 10.0 * step + i, 1_000 + step, step) for step in steps for i, key in enumerate(["a", "b"])]
    params = [Param(f"p{i}", str(i)) for i in range(130)]  # more than one request of MLflow's holds
    client.log_batch(run.info.run_id, metrics=metrics, params=params)
    return run.info.run_id


def test_mlflow_run_without_values_past_the_checkpoint_is_continued(mlflow_client):
    run_id = logged_run(mlflow_client, range(1, 4))
    assert mlflow_run_to_continue(mlflow_client, run_id, None) == run_id  # not a resume
    assert mlflow_run_to_continue(mlflow_client, run_id, 4) == run_id  # Ctrl-C: checkpointed where it stopped
    assert mlflow_client.get_run(run_id).info.lifecycle_stage == "active"


def test_mlflow_run_with_values_past_the_checkpoint_is_replaced(mlflow_client):
    old_id = logged_run(mlflow_client, range(1, 6))
    old = mlflow_client.get_run(old_id)
    new_id = mlflow_run_to_continue(mlflow_client, old_id, 3)
    assert new_id != old_id and mlflow_client.get_run(old_id).info.lifecycle_stage == "deleted"
    new = mlflow_client.get_run(new_id)
    assert new.info.run_name == old.info.run_name and new.info.start_time == old.info.start_time
    assert new.info.experiment_id == old.info.experiment_id and new.data.params == old.data.params
    assert new.data.tags == {**old.data.tags, REPLACES_TAG: old_id}
    for i, key in enumerate(["a", "b"]):  # the history before the first step logged again, timestamps kept
        history = mlflow_client.get_metric_history(new_id, key)
        assert [(m.step, m.value, m.timestamp) for m in history] == [(s, 10.0 * s + i, 1_000 + s) for s in (1, 2)]
    assert mlflow_run_to_continue(mlflow_client, new_id, 0) != new_id  # no checkpoint: everything goes
    assert mlflow_client.get_run(new_id).info.lifecycle_stage == "deleted"


# ----------------------------------------------------------------------------------- end to end
def fail_at(step: int, offset: float):
    """An sft loss ``offset`` too high (same gradients: the logged values tell the runs apart) that
    turns NaN at training step ``step``, failing the run after step ``step - 1``."""
    calls = []

    def loss(model, batch, beta):
        value, tokens = tasks.sft_loss(model, batch, beta)
        calls.append(model.training)
        return (value * float("nan") if calls.count(True) == step else value + offset), tokens

    return tasks.Task("sft", loss)


def info(run: Path) -> dict:
    return json.loads((run / "run.json").read_text())


def test_a_failed_run_resumed_shows_each_step_once_in_tensorboard_and_mlflow(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    config = write_config(tmp_path, train={"max_steps": 6, "save_steps": 3, "eval_steps": 100},
                          eval={"metrics": ["loss"]}, tracking={"backends": ["local", "tensorboard", "mlflow"]})
    sft = loop.TASKS["sft"]
    monkeypatch.setitem(loop.TASKS, "sft", fail_at(5, offset=100.0))
    assert main(["train", str(config)]) == 2  # steps 1-4 logged, checkpoint at 3
    run = the_run(tmp_path, "-lora-")  # beside it: mlruns
    failed = info(run)["trackers"]["mlflow"]
    monkeypatch.setitem(loop.TASKS, "sft", sft)
    assert main(["train", "--resume", str(run)]) == 0  # from step-00003: logs 4, 5, 6

    logged = [r for r in read_metrics(run) if "loss" in r]
    assert [r["step"] for r in logged] == [1, 2, 3, 4, 5, 6]
    assert all(r["loss"] > 100 for r in logged[:3]) and all(r["loss"] < 100 for r in logged[3:])
    scalars = shown_scalars(run / "tensorboard")
    assert [s for s, _ in written_scalars(run / "tensorboard")["train/loss"]] == [1, 2, 3, 4, 4, 5, 6]
    for tag, key in [("train/loss", "loss"), ("train/tokens_per_s", "tokens_per_s")]:
        assert scalars[tag] == [(r["step"], pytest.approx(r[key])) for r in logged]

    resumed = info(run)["trackers"]["mlflow"]
    client = MlflowClient(tracking_uri=resumed["uri"])
    assert resumed["run_id"] != failed["run_id"]
    assert client.get_run(failed["run_id"]).info.lifecycle_stage == "deleted"
    found = client.get_run(resumed["run_id"])
    assert found.info.status == "FINISHED" and found.data.tags[REPLACES_TAG] == failed["run_id"]
    assert found.data.params["adapter.r"] == "4" and found.info.run_name == run.name
    history = client.get_metric_history(resumed["run_id"], "train/loss")
    assert [(m.step, m.value) for m in history] == [(r["step"], pytest.approx(r["loss"])) for r in logged]


def test_a_run_resumed_without_a_checkpoint_starts_its_curves_over(tmp_path, monkeypatch):
    config = write_config(tmp_path, train={"max_steps": 3, "save_steps": 100, "eval_steps": 100},
                          eval={"metrics": ["loss"], "at_start": True}, tracking={"backends": ["local", "tensorboard"]})
    sft = loop.TASKS["sft"]
    monkeypatch.setitem(loop.TASKS, "sft", fail_at(3, offset=100.0))
    assert main(["train", str(config)]) == 2  # the step-0 evaluation and steps 1-2 logged, no checkpoint
    run = the_run(tmp_path, "-lora-")  # beside it: mlruns
    monkeypatch.setitem(loop.TASKS, "sft", sft)
    assert main(["train", "--resume", str(run)]) == 0

    records = [r for r in read_metrics(run) if not r.get("final")]
    steps = [r for r in records if "loss" in r]
    evals = [r for r in records if "eval_loss" in r]  # step 0 and the last step, always measured
    assert [r["step"] for r in steps] == [1, 2, 3] and all(r["loss"] < 100 for r in steps)
    assert [r["step"] for r in evals] == [0, 3]
    assert [s for s, _ in written_scalars(run / "tensorboard")["train/loss"]] == [1, 2, 1, 2, 3]  # both files kept
    scalars = shown_scalars(run / "tensorboard")
    assert scalars["train/loss"] == [(r["step"], pytest.approx(r["loss"])) for r in steps]
    assert scalars["eval/loss"] == [(r["step"], pytest.approx(r["eval_loss"])) for r in evals]
