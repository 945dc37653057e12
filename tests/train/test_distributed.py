"""`peftkit train` under `accelerate launch` with two CPU processes (gloo): one run folder, written by
one process, each step logged once, the learning-rate schedule of one process, an adapter that loads.
Also: a NaN loss on one process stops both at the same step with the step named (without the
agreement in the loop, the healthy process died in its next all-reduce with a gloo "connection closed"
error, which is what run.json then said; with NCCL it would hang).
About 15-25 s per test on the 2-core CPU (two interpreters start and import torch), so not marked slow.

Note on the launch flags: `accelerate launch --cpu --num_processes 2` does *not* start two processes
(accelerate 1.x hands `--cpu` to its simple launcher, which runs one process unless MPI is set up).
Two CPU processes are started with the torchrun-based launcher (`--multi_gpu`) and
`ACCELERATE_USE_CPU=1`, which makes every process use the CPU and the gloo backend. The test checks
that the run really had two processes (`run.json` records them).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
import torch
from tiny_assets import assert_loads_in_peftkit_and_peft, read_metrics, the_run, tiny_model_dir, write_config
from transformers import AutoModelForCausalLM


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_cpu_processes_make_one_run(tmp_path):
    config = write_config(tmp_path, train={"max_steps": 6, "save_steps": 3, "eval_steps": 3, "scheduler": "linear",
                                           "lr": 6e-3},
                          adapter={"lora_dropout": 0.0})
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(free_port()), "-m", "peftkit.cli", "train", str(config)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-4000:]

    run = the_run(tmp_path)  # one run folder, chosen by the main process and shared
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "completed" and info["processes"] == 2
    records = read_metrics(run)
    steps = [r["step"] for r in records if "loss" in r]
    assert steps == [1, 2, 3, 4, 5, 6]  # each step once: only the main process writes
    assert [r["step"] for r in records if "eval_loss" in r] == [3, 6, 6]  # step 3, step 6, final
    # the schedule is in optimizer updates, as with one process: linear decay reaches 0 at the last step
    lrs = [r["lr"] for r in records if "lr" in r]
    assert lrs == pytest.approx([6e-3 * (6 - s) / 6 for s in steps])
    assert sorted(os.listdir(run / "checkpoints")) == ["step-00003", "step-00006"]
    assert not [p for p in run.rglob("*.tmp")]
    assert {"config.yaml", "adapter", "loss.png"} <= set(os.listdir(run))
    ids = torch.randint(0, 200, (2, 8), generator=torch.Generator().manual_seed(0))
    assert_loads_in_peftkit_and_peft(run / "adapter", lambda: AutoModelForCausalLM.from_pretrained(tiny_model_dir(tmp_path)),
                                     {"input_ids": ids})


NAN_ON_RANK_1 = """
import sys
from accelerate import PartialState
from peftkit.train import loop, tasks
from peftkit.cli import main

calls = []

def loss(model, batch, beta):  # process 1 alone gets a NaN loss at its 2nd training step
    value, tokens = tasks.sft_loss(model, batch, beta)
    calls.append(model.training)
    bad = PartialState().process_index == 1 and calls.count(True) == 2
    return (value * float("nan") if bad else value), tokens

loop.TASKS["sft"] = tasks.Task("sft", loss)
sys.exit(main(sys.argv[1:]))
"""


def test_a_nan_on_one_process_stops_both_at_the_same_step(tmp_path):
    config = write_config(tmp_path, train={"max_steps": 6, "save_steps": 1, "eval_steps": 100}, eval={"metrics": ["loss"]})
    script = tmp_path / "nan_on_rank_1.py"
    script.write_text(NAN_ON_RANK_1)
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(free_port()), str(script), "train", str(config)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode != 0
    # both processes report the same error, instead of one waiting in a collective for the other
    assert done.stderr.count("error: loss is not finite on another process at step 2") == 1, done.stderr[-3000:]
    assert done.stderr.count("error: loss is nan at step 2") == 1
    run = the_run(tmp_path)
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "failed" and "step 2" in info["error"]
    assert os.listdir(run / "checkpoints") == ["step-00001"]
