"""The integrations in a process where ``peft`` cannot be imported (as if it were not installed):
TRL's trainers train peftkit models exactly as with peft present, peftkit's diffusers functions
save and load LoRA files, and diffusers' own LoRA methods refuse loudly (they need peft)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers_setup import UNET_TARGETS, images, randomize, sd_pipeline
from trl_setup import logged, trainer_for

import peftkit as pk
from peftkit.integrations import diffusers as pkd

pytestmark = [
    pytest.mark.usefixtures("torch_single_thread"),
    pytest.mark.filterwarnings("ignore::UserWarning"),
    pytest.mark.filterwarnings("ignore::FutureWarning"),
]

SCRIPT = """
import json, sys
sys.modules["peft"] = None  # import peft now fails, as if it were not installed
sys.path[:0] = {paths!r}
import torch
import peftkit as pk
import trl_setup, diffusers_setup
from peftkit.integrations import diffusers as pkd, trl as pk_trl
assert pk_trl.sft_trainer.BaseTunerLayer is pk.AdapterLayer
result = {{}}
for task in ("sft", "dpo"):
    torch.manual_seed(0)
    trainer = trl_setup.trainer_for(task, pk, {out!r} + task)
    trainer.train()
    result[task] = trl_setup.logged(trainer)["loss"]
pipe = diffusers_setup.sd_pipeline()
pkd.add_adapter(pipe.unet, pk.LoraConfig(r=4, lora_alpha=8, target_modules=diffusers_setup.UNET_TARGETS))
diffusers_setup.randomize(pipe.unet)
pkd.save_lora_weights(pipe, {out!r} + "lora")
loaded = diffusers_setup.sd_pipeline()
pkd.load_lora_weights(loaded, {out!r} + "lora")
result["images"] = diffusers_setup.images(loaded).tolist()
refused = {{}}
for name, call in [("fuse_lora", lambda: loaded.fuse_lora()), ("disable_lora", lambda: loaded.unet.disable_lora()),
                   ("load_lora_weights", lambda: diffusers_setup.sd_pipeline().load_lora_weights({out!r} + "lora"))]:
    try:
        call()
        refused[name] = ""
    except Exception as e:
        refused[name] = str(e)
result["refused"] = refused
print(json.dumps(result))
"""


@pytest.mark.slow  # a second interpreter that imports torch, transformers, TRL and diffusers (~1 min on 2 cores)
def test_trl_and_diffusers_without_peft(tmp_path):
    here = Path(__file__).resolve().parent
    paths = [str(here), str(here.parent), str(here.parent / "train")]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    script = SCRIPT.format(paths=paths, out=str(tmp_path / "sub-"))
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    for task in ("sft", "dpo"):  # the same run here, with peft importable
        torch.manual_seed(0)
        trainer = trainer_for(task, pk, tmp_path / task)
        trainer.train()
        assert result[task] == pytest.approx(logged(trainer)["loss"], rel=1e-5), task
    pipe = sd_pipeline()
    pkd.add_adapter(pipe.unet, pk.LoraConfig(r=4, lora_alpha=8, target_modules=UNET_TARGETS))
    randomize(pipe.unet)
    assert np.abs(np.array(result["images"], dtype=np.float32) - images(pipe)).max() < 1e-5
    assert all("PEFT backend is required" in message for message in result["refused"].values()), result["refused"]
