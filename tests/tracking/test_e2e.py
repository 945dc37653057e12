"""Tracking end to end on the tiny local model: a sweep that also writes to TensorBoard and MLflow
(offline), a run continued from another run's adapter (lineage), a reproduction that agrees, a
resume that keeps its MLflow run, and two `peftkit train` processes writing one runs folder at once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from event_files import shown_scalars, written_scalars
from train.tiny_assets import write_config

from peftkit.cli import main
from peftkit.tracking.index import INDEX_FILE, RunIndex

SMALL = dict(train={"max_steps": 2, "save_steps": 2, "eval_steps": 2}, eval={"metrics": ["loss"]})


pytestmark = pytest.mark.usefixtures("torch_single_thread")


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    """Two runs (adapter.r=2,4) of one sweep, each also logged to TensorBoard and MLflow."""
    root = tmp_path_factory.mktemp("tracking")
    config = write_config(root, **SMALL, tracking={"backends": ["local", "tensorboard", "mlflow"]})
    previous = torch.get_num_threads()
    torch.set_num_threads(1)  # set up before the per-test fixture: tiny models run faster on one thread
    try:
        assert main(["train", str(config), "--sweep", "adapter.r=2,4", "output.name=sw"]) == 0
    finally:
        torch.set_num_threads(previous)
    assert not (root / "runs" / INDEX_FILE).exists()  # no `peftkit runs` yet: nothing but run folders (and mlruns)
    return root


def runs_of(root: Path) -> dict[int, Path]:
    """Sweep runs by their adapter.r."""
    found = {}
    for path in (root / "runs").iterdir():
        info = json.loads((path / "run.json").read_text()) if (path / "run.json").exists() else {}
        if info.get("sweep"):
            found[info["sweep"]["point"]["adapter.r"]] = path
    return found


def shortest_unique_prefix(run: Path) -> str:
    """The shortest start of the run's name that no other run in its folder shares (runs of one sweep
    can start within the same second, so the timestamp alone may fit two)."""
    others = [p.name for p in run.parent.iterdir() if p != run]
    return next(run.name[:n] for n in range(1, len(run.name) + 1)
                if not any(o.startswith(run.name[:n]) for o in others))


def info(run: Path) -> dict:
    return json.loads((run / "run.json").read_text())


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_sweep_runs_are_one_group(sweep, capsys):
    runs = runs_of(sweep)
    assert sorted(runs) == [2, 4]
    first, second = info(runs[2]), info(runs[4])
    assert first["sweep"]["id"] == second["sweep"]["id"] and (first["sweep"]["index"], second["sweep"]["index"]) == (0, 1)
    assert first["config_hash"] != second["config_hash"] and first["status"] == second["status"] == "completed"
    assert set(first["data"]) == {"train", "eval"} and len(first["data"]["train"]["sha256"]) == 64
    assert {"git", "cwd", "packages", "device"} <= set(first["environment"])
    capsys.readouterr()
    assert main(["runs", "compare", "--sweep", first["sweep"]["id"][:12], "--dir", str(sweep / "runs"),
                 "--out", str(sweep / "cmp.png")]) == 0
    out = capsys.readouterr().out
    table = [line.split() for line in out.splitlines()[2:4]]
    assert [row[:2] for row in table] == [[runs[2].name, "2"], [runs[4].name, "4"]]
    assert (sweep / "cmp.png").read_bytes()[:4] == b"\x89PNG"


def test_tensorboard_gets_the_same_metrics(sweep):
    run = runs_of(sweep)[2]
    scalars = shown_scalars(run / "tensorboard")
    assert written_scalars(run / "tensorboard") == scalars  # a run that was never resumed purges nothing
    logged = [r for r in metrics(run) if not r.get("final")]
    assert [s for s, _ in scalars["train/loss"]] == [1, 2]
    assert [v for _, v in scalars["train/loss"]] == pytest.approx([r["loss"] for r in logged if "loss" in r])
    assert scalars["eval/loss"] == [(2, pytest.approx(logged[-1]["eval_loss"]))] and "train/lr" in scalars
    assert info(run)["trackers"]["tensorboard"]["dir"] == str(run / "tensorboard")


def test_mlflow_file_store_gets_params_and_metrics(sweep):
    from mlflow.tracking import MlflowClient

    run = runs_of(sweep)[4]
    tracked = info(run)["trackers"]["mlflow"]
    assert tracked["uri"] == "file:" + str(sweep / "runs" / "mlruns") and tracked["experiment"] == "peftkit"
    client = MlflowClient(tracking_uri=tracked["uri"])
    found = client.get_run(tracked["run_id"])
    assert found.info.status == "FINISHED" and found.info.run_name == run.name
    assert found.data.params["adapter.r"] == "4" and found.data.params["config_version"] == info(run)["config_hash"]
    assert found.data.tags["peftkit.config_version"] == info(run)["config_hash"]
    history = client.get_metric_history(tracked["run_id"], "train/loss")
    assert [(m.step, m.value) for m in history] == [(r["step"], pytest.approx(r["loss"])) for r in metrics(run)
                                                    if "loss" in r]
    assert len(client.search_runs([found.info.experiment_id])) == 2  # one MLflow run per sweep run


def test_resume_continues_the_same_mlflow_run(sweep):
    from mlflow.tracking import MlflowClient

    run = runs_of(sweep)[2]
    before = info(run)["trackers"]["mlflow"]
    assert main(["train", "--resume", str(run)]) == 0  # from its last checkpoint: nothing left but the final eval
    after = info(run)["trackers"]["mlflow"]
    assert after["run_id"] == before["run_id"] and info(run)["status"] == "completed"
    client = MlflowClient(tracking_uri=after["uri"])
    experiment = client.get_run(after["run_id"]).info.experiment_id
    assert len(client.search_runs([experiment])) == 2 and client.get_run(after["run_id"]).info.status == "FINISHED"


def test_a_run_continued_from_another_runs_adapter_records_its_parent(sweep, capsys):
    parent = runs_of(sweep)[4]
    assert main(["train", "--from-run", str(parent), "eval.at_start=true", "output.name=child",
                 "tracking.backends=[local]"]) == 0
    (child,) = [p for p in (sweep / "runs").iterdir() if "-child-" in p.name]
    record = info(child)
    assert record["parent"] == parent.name and record["parent_path"] == str(parent)
    assert record["parent_adapter"] == str(parent / "adapter")
    # the adapter really starts where the parent ended: step 0 scores the parent's final adapter
    start = next(r for r in metrics(child) if r["step"] == 0)
    assert start["eval_loss"] == pytest.approx(info(parent)["final_metrics"]["eval_loss"], rel=1e-6)
    capsys.readouterr()
    assert main(["runs", "show", child.name, "--dir", str(sweep / "runs")]) == 0
    assert f"lineage         {child.name} <- {parent.name}" in capsys.readouterr().out


def test_reproduce_runs_the_same_version_and_agrees(sweep, capsys):
    original = runs_of(sweep)[2]
    capsys.readouterr()
    prefix = shortest_unique_prefix(original)
    assert len(prefix) < len(original.name)  # a prefix, not the whole name, finds the run
    assert main(["runs", "reproduce", prefix, "--dir", str(sweep / "runs")]) == 0
    out = capsys.readouterr().out
    (copy,) = [p for p in (sweep / "runs").iterdir() if p.is_dir() and (p / "run.json").exists()
               and info(p).get("reproduces") == original.name]
    assert info(copy)["config_hash"] == info(original)["config_hash"] and info(copy)["parent"] is None
    assert "results agree" in out and "largest relative difference 0" in out
    assert main(["runs", "list", "--dir", str(sweep / "runs"), "--where", f"version={info(copy)['config_hash']}"]) == 0
    listed = capsys.readouterr().out
    assert listed.count("2x agree") == 2 and "config versions run more than once" in listed


@pytest.mark.slow  # two fresh Python processes importing torch; the index's own two-writer test is fast
def test_two_train_processes_share_one_runs_folder(tmp_path):
    config = write_config(tmp_path, **SMALL)
    (tmp_path / "runs").mkdir()
    RunIndex(tmp_path / "runs").close()  # as after a first `peftkit runs list`: the trainers then keep it current
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-m", "peftkit.cli", "train", str(config)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    for proc in procs:
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-3000:]
    folders = sorted(p for p in (tmp_path / "runs").iterdir() if p.is_dir())
    assert len(folders) == 2 and all(info(f)["status"] == "completed" for f in folders)
    with RunIndex(tmp_path / "runs") as index:
        assert index.integrity() == "ok" and index.sync() == 0  # both trainers indexed their final state
        assert index.load()[0].status == "completed"
        runs = index.load()
    assert [r.id for r in runs] == [f.name for f in folders] and runs[0].version == runs[1].version
    assert runs[0].summary["final"] == runs[1].summary["final"]  # same config, same results on CPU
