"""`peftkit train` end to end on a tiny local model: the run folder, the adapter in peft's format,
checkpoints, and resume after a kill giving a bit-identical adapter."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import peft
import torch
from safetensors.torch import load_file
from tiny_assets import tiny_model_dir, write_config
from transformers import AutoModelForCausalLM

import peftkit as pk
from peftkit.cli import main


def run_dirs(root):
    return sorted(p for p in (root / "runs").iterdir() if p.is_dir())


def test_train_writes_a_complete_run_folder(tmp_path, capsys):
    config = write_config(tmp_path)
    assert main(["train", str(config), "adapter.r=2"]) == 0
    (run,) = run_dirs(tmp_path)
    names = set(os.listdir(run))
    assert {"config.yaml", "run.json", "metrics.jsonl", "adapter", "checkpoints", "loss.png"} <= names
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "completed" and len(info["config_hash"]) == 12 and info["seed"] == 0
    assert "torch" in info["environment"]["packages"]
    assert "r: 2" in (run / "config.yaml").read_text()  # the override is in the resolved config
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2, 3, 4, 5, 6]
    assert all({"lr", "tokens_per_s"} <= set(r) for r in steps)
    assert any("eval_loss" in r and "eval_exact_match" in r for r in records)
    # the last step is on eval_steps: measured once, not again as a separate final evaluation
    assert [r["step"] for r in records if "eval_loss" in r and not r.get("final")] == [3, 6]
    assert sorted(os.listdir(run / "checkpoints")) == ["step-00002", "step-00004", "step-00006"]
    # the adapter is in peft's format: peft loads it onto the same base
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir(tmp_path))
    ours = pk.PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir(tmp_path)), run / "adapter")
    theirs = peft.PeftModel.from_pretrained(base, run / "adapter")
    ids = torch.randint(0, 200, (2, 8))
    torch.testing.assert_close(ours(input_ids=ids).logits, theirs(input_ids=ids).logits, atol=1e-5, rtol=0)


def test_loss_falls(tmp_path):
    config = write_config(tmp_path, train={"max_steps": 20, "lr": 1e-2, "save_steps": 100, "eval_steps": 100},
                          adapter={"lora_dropout": 0.0})
    assert main(["train", str(config)]) == 0
    (run,) = run_dirs(tmp_path)
    losses = [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]
    assert losses[-1] < 0.5 * losses[0], losses


def adapter_weights(run) -> dict[str, torch.Tensor]:
    return load_file(run / "adapter" / "adapter_model.safetensors")


def test_kill_and_resume_gives_identical_adapter(tmp_path):
    """A run killed with SIGKILL (here: after step 4's checkpoint, mid-way through step 5) and
    resumed ends with exactly the adapter of an uninterrupted run."""
    config = write_config(tmp_path, train={"max_steps": 8, "save_steps": 2, "eval_steps": 100})
    assert main(["train", str(config)]) == 0
    (full,) = run_dirs(tmp_path)
    expected = adapter_weights(full)

    env = {**os.environ, "PEFTKIT_FAULT_KILL_AT_STEP": "5", "HF_HUB_OFFLINE": "1"}
    killed = subprocess.run([sys.executable, "-m", "peftkit.cli", "train", str(config), "output.name=killed"],
                            env=env, capture_output=True, text=True)
    assert killed.returncode == -9, killed.stderr[-2000:]
    run = tmp_path / "runs" / next(p for p in os.listdir(tmp_path / "runs") if "killed" in p)
    assert json.loads((run / "run.json").read_text())["status"] == "running"  # what a crash leaves
    # a checkpoint being written at the time of the kill is left as a .tmp folder: ignored
    shutil.copytree(run / "checkpoints" / "step-00004", run / "checkpoints" / "step-00006.tmp")
    assert main(["train", "--resume", str(run)]) == 0
    got = adapter_weights(run)
    assert got.keys() == expected.keys()
    assert all(torch.equal(got[k], expected[k]) for k in expected)
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "completed" and info["resumed_from"].endswith("step-00004")
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]
    assert steps == list(range(1, 9))  # no step logged twice


def test_validate_reports_problems(tmp_path, capsys):
    config = write_config(tmp_path)
    assert main(["validate", str(config)]) == 0
    assert main(["validate", str(config), "adapter.r=0", "train.learning_rate=1"]) == 2
    err = capsys.readouterr().err
    assert "adapter.r" in err and "train.learning_rate" in err and "did you mean 'lr'" in err
