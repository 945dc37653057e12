"""What `peftkit train` does when things go wrong: a NaN loss, Ctrl-C, bad data, a model that does
not exist; and that every YAML config shipped in examples/ validates.

Decided behaviour (see peftkit.train.runner): problems found before training can start (the config,
the data, the tokenizer) fail before a run folder is created, so no run is left behind; problems
after that are recorded in the run's run.json ("failed", with the error; Ctrl-C: "interrupted").
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tiny_assets import chat_rows, read_metrics, the_run, write_config, write_jsonl

from peftkit.cli import main
from peftkit.train import loop, prepare, tasks
from peftkit.train.config import validate_file

REPO = Path(__file__).resolve().parents[2]


def run_json(run: Path) -> dict:
    return json.loads((run / "run.json").read_text())


# --------------------------------------------------------------------------- NaN
def test_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch, capsys):
    config = write_config(tmp_path, train={"max_steps": 6, "save_steps": 2, "eval_steps": 100})
    calls = []

    def nan_at_third_step(model, batch, beta):
        loss, tokens = tasks.sft_loss(model, batch, beta)
        calls.append(model.training)
        return (loss * float("nan") if calls.count(True) == 3 else loss), tokens

    monkeypatch.setitem(loop.TASKS, "sft", tasks.Task("sft", nan_at_third_step))
    assert main(["train", str(config)]) == 2
    err = capsys.readouterr().err
    assert "loss is nan at step 3" in err and "last good checkpoint" in err
    run = the_run(tmp_path)
    info = run_json(run)
    assert info["status"] == "failed" and "step 3" in info["error"] and info["ended"]
    assert os.listdir(run / "checkpoints") == ["step-00002"]  # kept, nothing half-written beside it
    weights = load_file(run / "checkpoints" / "step-00002" / "adapter" / "adapter_model.safetensors")
    assert all(torch.isfinite(w).all() for w in weights.values())
    assert not (run / "adapter").exists()  # no final adapter from a failed run
    assert [r["step"] for r in read_metrics(run)] == [1, 2]


# --------------------------------------------------------------------------- Ctrl-C
SLOW_TRAIN = """
import sys, time
import peftkit.train.loop as loop
real = loop._fault_injection
loop._fault_injection = lambda step: (time.sleep(0.3), real(step))  # slow steps: time to press Ctrl-C
from peftkit.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_ctrl_c_saves_a_checkpoint_and_resume_finishes_identically(tmp_path):
    config = write_config(tmp_path, train={"max_steps": 8, "save_steps": 2, "eval_steps": 100},
                          eval={"metrics": ["loss"]})
    assert main(["train", str(config), "output.name=full"]) == 0
    expected = load_file(the_run(tmp_path, "full") / "adapter" / "adapter_model.safetensors")

    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-c", SLOW_TRAIN, "train", str(config), "output.name=stopped"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        first = None
        while time.time() < deadline and proc.poll() is None:
            found = list((tmp_path / "runs").glob("*stopped*/checkpoints/step-00002/COMPLETE"))
            if found:
                first = found[0]
                break
            time.sleep(0.02)
        assert first is not None, proc.communicate(timeout=60)[1][-3000:]
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err[-3000:]
    assert "interrupted" in err and "--resume" in err
    run = the_run(tmp_path, "stopped")
    info = run_json(run)
    assert info["status"] == "interrupted" and info["ended"]
    saved = sorted(os.listdir(run / "checkpoints"))
    stopped_at = int(saved[-1].split("-")[1])
    assert 2 <= stopped_at < 8 and not any(name.endswith(".tmp") for name in saved)
    # the step it stopped after was checkpointed and logged; nothing after it
    assert [r["step"] for r in read_metrics(run)] == list(range(1, stopped_at + 1))
    assert not (run / "adapter").exists()

    assert main(["train", "--resume", str(run)]) == 0
    info = run_json(run)
    assert info["status"] == "completed" and info["resumed_from"].endswith(saved[-1])
    assert [r["step"] for r in read_metrics(run) if "loss" in r] == list(range(1, 9))
    got = load_file(run / "adapter" / "adapter_model.safetensors")
    assert got.keys() == expected.keys() and all(torch.equal(got[k], expected[k]) for k in expected)


# --------------------------------------------------------------------------- bad data
@pytest.fixture
def no_model_loading(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded although the data is bad")

    monkeypatch.setattr(prepare, "load_model", refuse)


def test_a_row_with_a_missing_field_fails_before_the_model_and_the_run_folder(tmp_path, capsys, no_model_loading):
    rows = chat_rows(6)
    rows[2] = {"text": "no messages here"}  # line 3
    bad = write_jsonl(tmp_path / "bad.jsonl", rows)
    config = write_config(tmp_path, data={"train": str(bad)})
    assert main(["train", str(config)]) == 2
    err = capsys.readouterr().err
    assert f"{bad} row 3" in err and "'messages'" in err and "missing" in err, err
    assert not (tmp_path / "runs").exists() or not os.listdir(tmp_path / "runs")


def test_missing_completion_and_too_long_rows_fail_before_the_run_folder(tmp_path, capsys, no_model_loading):
    rows = [{"prompt": f"Echo {i}", "completion": f"{i}!"} for i in range(5)]
    rows[3] = {"prompt": "Echo 3"}
    bad = write_jsonl(tmp_path / "pc.jsonl", rows)
    config = write_config(tmp_path, data={"train": str(bad), "eval": None, "format": "prompt_completion"},
                          eval={"metrics": ["loss"]})
    assert main(["train", str(config)]) == 2
    err = capsys.readouterr().err
    assert f"{bad} row 4: field 'completion' is missing" in err, err
    rows[3] = {"prompt": "Echo " * 40, "completion": "3!"}  # longer than max_seq_len=64
    write_jsonl(bad, rows)
    assert main(["train", str(config), "train.truncation=error"]) == 2
    err = capsys.readouterr().err
    assert f"{bad} row 4" in err and "max_seq_len=64" in err, err
    assert not (tmp_path / "runs").exists() or not os.listdir(tmp_path / "runs")


def test_resume_with_data_gone_bad_leaves_the_run_as_it_was(tmp_path, capsys):
    config = write_config(tmp_path, train={"max_steps": 2, "save_steps": 2, "eval_steps": 100}, eval={"metrics": ["loss"]})
    assert main(["train", str(config)]) == 0
    run = the_run(tmp_path)
    before = run_json(run)
    write_jsonl(tmp_path / "train.jsonl", [{"messages": "oops"}])
    assert main(["train", "--resume", str(run)]) == 2
    assert "train.jsonl row 1" in capsys.readouterr().err
    assert run_json(run) == before


def test_a_model_that_does_not_exist_is_a_clean_error_without_a_run(tmp_path, capsys):
    config = write_config(tmp_path)
    assert main(["train", str(config), f"model.name={tmp_path / 'no-such-model'}"]) == 2
    err = capsys.readouterr().err
    assert "model.name" in err and "no-such-model" in err and "Traceback" not in err
    assert not (tmp_path / "runs").exists() or not os.listdir(tmp_path / "runs")


# --------------------------------------------------------------------------- shipped configs
# The task gallery (examples/tasks) names hub models too: tests/train/test_examples_gallery.py
# validates it against tiny models of the same families, offline.
EXAMPLES = sorted(p.relative_to(REPO) for p in (REPO / "examples").rglob("*.y*ml") if "tasks" not in p.parts)


def test_examples_has_configs():
    assert EXAMPLES, "no YAML config found under examples/"


@pytest.mark.parametrize("path", EXAMPLES, ids=str)
def test_every_shipped_example_config_validates(path, monkeypatch):
    monkeypatch.chdir(REPO)  # data paths in examples are relative to the repository root
    assert validate_file(path) == []
    assert main(["validate", str(path)]) == 0

