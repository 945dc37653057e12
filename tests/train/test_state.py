"""Training checkpoints: optimizer, scheduler, RNG and progress survive a save/load exactly,
written without pickles, and a half-written checkpoint is never taken for a complete one."""

from __future__ import annotations

import os
import random

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from toy_models import TOYS
from transformers import get_scheduler

import peftkit as pk
from peftkit.train import state


def setup(seed: int = 0):
    torch.manual_seed(seed)
    toy = TOYS[0]
    model = pk.get_peft_model(toy.model(), pk.LoraConfig(r=4, target_modules=toy.targets, lora_dropout=0.1))
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    sched = get_scheduler("cosine", opt, num_warmup_steps=2, num_training_steps=20)
    return toy, model, opt, sched


def step(toy, model, opt, sched, i: int) -> None:
    x = toy.inputs(4) + i
    model(x).pow(2).mean().backward()
    opt.step()
    sched.step()
    opt.zero_grad()


def test_resume_from_checkpoint_is_bit_identical(tmp_path):
    toy, model, opt, sched = setup()
    for i in range(3):
        step(toy, model, opt, sched, i)
    folder = state.save_checkpoint(str(tmp_path / "step-00003"), model, opt, sched, state.Progress(3, 0, 3))
    random.random(), np.random.rand()  # the RNGs move on after the save...
    for i in range(3, 6):
        step(toy, model, opt, sched, i)
    expected = pk.get_peft_model_state_dict(model)

    _, model2, opt2, sched2 = setup(seed=123)  # ...a fresh process with other random state
    progress, _ = state.load_checkpoint(folder, model2, opt2, sched2)
    assert progress == state.Progress(3, 0, 3)
    for i in range(3, 6):
        step(toy, model2, opt2, sched2, i)
    got = pk.get_peft_model_state_dict(model2)
    assert all(torch.equal(got[k], expected[k]) for k in expected)
    assert sched2.get_last_lr() == sched.get_last_lr()


def test_resume_restores_the_trained_parameters_not_the_adapter_file(tmp_path):
    """run_state.safetensors holds every trainable parameter by name; a checkpoint without it (written
    by an older peftkit) resumes from its adapter as before."""
    toy, model, opt, sched = setup()
    step(toy, model, opt, sched, 0)
    folder = state.save_checkpoint(str(tmp_path / "step-00001"), model, opt, sched, state.Progress(1, 0, 1))
    saved = load_file(os.path.join(folder, state.RUN_STATE_NAME))
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert saved.keys() == {f"param.{n}" for n in trainable}
    assert all(torch.equal(saved[f"param.{n}"], p) for n, p in trainable.items())
    expected = pk.get_peft_model_state_dict(model)
    for older in (False, True):
        if older:
            os.remove(os.path.join(folder, state.RUN_STATE_NAME))
        _, model2, opt2, sched2 = setup(seed=123)
        state.load_checkpoint(folder, model2, opt2, sched2)
        got = pk.get_peft_model_state_dict(model2)
        assert all(torch.equal(got[k], expected[k]) for k in expected)


def test_a_checkpoint_of_another_adapter_is_refused_naming_the_parameter(tmp_path):
    toy, model, opt, sched = setup()
    folder = state.save_checkpoint(str(tmp_path / "step-00001"), model, opt, sched, state.Progress(1, 0, 1))
    torch.manual_seed(0)
    other = pk.get_peft_model(toy.model(), pk.LoraConfig(r=2, target_modules=toy.targets))
    before = {k: v.clone() for k, v in pk.get_peft_model_state_dict(other).items()}
    opt2 = torch.optim.AdamW([p for p in other.parameters() if p.requires_grad], lr=1e-2)
    with pytest.raises(pk.CheckpointError, match=r"lora_A\.default\.weight' has shape \(4, .*adapter section"):
        state.load_checkpoint(folder, other, opt2, get_scheduler("constant", opt2))
    assert all(torch.equal(v, before[k]) for k, v in pk.get_peft_model_state_dict(other).items())


def test_checkpoint_holds_no_pickles(tmp_path):
    toy, model, opt, sched = setup()
    step(toy, model, opt, sched, 0)
    folder = state.save_checkpoint(str(tmp_path / "step-00001"), model, opt, sched, state.Progress(1, 0, 1))
    names = sorted(os.listdir(folder))
    assert names == ["COMPLETE", "adapter", "optimizer.safetensors", "run_state.safetensors", "state.json"]
    assert sorted(os.listdir(os.path.join(folder, "adapter"))) == ["README.md", "adapter_config.json", "adapter_model.safetensors"]


def test_latest_checkpoint_skips_incomplete(tmp_path):
    toy, model, opt, sched = setup()
    ckpts = tmp_path / "checkpoints"
    state.save_checkpoint(str(ckpts / "step-00002"), model, opt, sched, state.Progress(2, 0, 2))
    state.save_checkpoint(str(ckpts / "step-00010"), model, opt, sched, state.Progress(10, 0, 10))
    # a save killed half-way: the temporary folder, and a folder without its COMPLETE mark
    (ckpts / "step-00012.tmp").mkdir()
    (ckpts / "step-00011").mkdir()
    assert state.latest_checkpoint(str(ckpts)) == str(ckpts / "step-00010")
    assert state.latest_checkpoint(str(tmp_path / "none")) is None
