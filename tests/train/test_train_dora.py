"""`peftkit train` with `adapter: {method: lora, use_dora: true}` on the tiny model: the loss
falls, the magnitudes train, and the saved adapter is a DoRA adapter that peft loads identically."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from tiny_assets import assert_loads_in_peftkit_and_peft, the_run, tiny_model_dir, write_config
from transformers import AutoModelForCausalLM

from peftkit.cli import main

# tiny matmuls on a busy 2-core machine: one thread avoids the thread pool's spinning
pytestmark = pytest.mark.usefixtures("torch_single_thread")


def test_dora_run_from_yaml_learns_and_saves_a_peft_dora_adapter(tmp_path):
    config = write_config(tmp_path, adapter={"use_dora": True, "lora_dropout": 0.05},
                          train={"max_steps": 20, "lr": 1e-2, "save_steps": 100, "eval_steps": 100})
    assert main(["train", str(config)]) == 0
    run = the_run(tmp_path)
    losses = [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]
    assert len(losses) == 20 and losses[-1] < 0.5 * losses[0], losses

    adapter = run / "adapter"
    assert json.loads((adapter / "adapter_config.json").read_text())["use_dora"] is True
    weights = load_file(adapter / "adapter_model.safetensors")
    magnitudes = {k: v for k, v in weights.items() if k.endswith(".lora_magnitude_vector")}
    assert len(magnitudes) == 14  # 7 projections x 2 layers
    # trained: the magnitudes moved away from the norms they start at (a fresh adapter's)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir(tmp_path))
    q = base.model.layers[0].self_attn.q_proj.weight
    start = torch.linalg.norm(q, dim=1)
    trained = magnitudes["base_model.model.model.layers.0.self_attn.q_proj.lora_magnitude_vector"]
    assert not torch.allclose(trained, start, atol=1e-3)

    ids = torch.randint(0, 200, (2, 8))
    make_base = lambda: AutoModelForCausalLM.from_pretrained(tiny_model_dir(tmp_path))  # noqa: E731
    assert_loads_in_peftkit_and_peft(adapter, make_base, {"input_ids": ids})
