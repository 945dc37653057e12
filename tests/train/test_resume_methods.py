"""Resume is exact for methods that keep more than their saved adapter: AdaLoRA (its rank
allocator's importance averages and mask) and P-tuning / projected prefix tuning (whose adapter
holds the prompt their encoder computes, not the encoder that trains). An 8-step run in one go and
the same run stopped after step 4 (or 7) and resumed end with identical adapters."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
import yaml
from safetensors.torch import load_file
from tiny_assets import the_run, write_config

from peftkit.cli import main
from peftkit.train import loop

pytestmark = pytest.mark.usefixtures("torch_single_thread")

ADALORA = {"method": "adalora", "init_r": 6, "target_r": 2, "tinit": 1, "tfinal": 2, "lora_dropout": 0.1,
           "target_modules": "all-linear"}  # no total_step: the run fills in its 8 steps
METHODS = {
    "adalora": ADALORA,
    "p_tuning_mlp": {"method": "p_tuning", "num_virtual_tokens": 4, "encoder_hidden_size": 16},
    "p_tuning_lstm": {"method": "p_tuning", "num_virtual_tokens": 4, "encoder_reparameterization_type": "LSTM",
                      "encoder_hidden_size": 16, "encoder_dropout": 0.1},
    "prefix_projection": {"method": "prefix_tuning", "num_virtual_tokens": 4, "prefix_projection": True,
                          "encoder_hidden_size": 16},
}


def stop_before(step: int):
    """The loop's fault-injection point, raising Ctrl-C's exception in the middle of ``step``
    (after backward, before the optimizer): the newest checkpoint is the one before it."""
    def stop(at: int) -> None:
        if at == step:
            raise KeyboardInterrupt

    return stop


def adapter_of(run) -> tuple[dict, dict]:
    folder = run / "adapter"
    return load_file(folder / "adapter_model.safetensors"), json.loads((folder / "adapter_config.json").read_text())


def one_go_and_resumed(tmp_path, monkeypatch, adapter: dict, stop_at: int) -> tuple[tuple, tuple]:
    config = write_config(tmp_path, train={"max_steps": 8, "save_steps": 1 if stop_at > 5 else 2, "eval_steps": 100},
                          eval={"metrics": ["loss"]})
    raw = yaml.safe_load(config.read_text())
    raw["adapter"] = adapter
    config.write_text(yaml.safe_dump(raw))
    assert main(["train", str(config), "output.name=whole"]) == 0
    with monkeypatch.context() as patch:
        patch.setattr(loop, "_fault_injection", stop_before(stop_at))
        assert main(["train", str(config), "output.name=split"]) == 130
    split = the_run(tmp_path, "split")
    assert not (split / "adapter").exists()
    assert main(["train", "--resume", str(split)]) == 0
    assert json.loads((split / "run.json").read_text())["resumed_from"].endswith(f"step-{stop_at - 1:05d}")
    return adapter_of(the_run(tmp_path, "whole")), adapter_of(split)


@pytest.mark.parametrize("method", list(METHODS))
def test_stopped_after_step_4_and_resumed_equals_one_go(tmp_path, monkeypatch, method):
    (expected, expected_config), (got, got_config) = one_go_and_resumed(tmp_path, monkeypatch, METHODS[method], 5)
    assert got.keys() == expected.keys()
    assert all(torch.equal(got[k], expected[k]) for k in expected), [k for k in expected if not torch.equal(got[k], expected[k])]
    assert got_config == expected_config
    if method == "adalora":  # the budget shrank between the two halves: the allocation really ran across the resume
        pattern = got_config["rank_pattern"]
        assert got_config["total_step"] == 8 and sum(map(sum, pattern.values())) == 2 * len(pattern)


def test_adalora_resumed_after_its_final_mask_keeps_it(tmp_path, monkeypatch):
    """tfinal=2: the mask is chosen at step 6 and re-applied at steps 7 and 8; a run resumed from
    step 7 must still know it (it is not in the adapter until training ends). The checkpoint of
    step 8 holds the pruned layers: a run stopped after it (Ctrl-C in the last step) resumes too."""
    (expected, expected_config), (got, got_config) = one_go_and_resumed(tmp_path, monkeypatch, ADALORA, 8)
    assert got_config["rank_pattern"] == expected_config["rank_pattern"]
    assert all(torch.equal(got[k], expected[k]) for k in expected)

    whole = the_run(tmp_path, "whole")
    shutil.rmtree(whole / "adapter")  # as if stopped once the last checkpoint was written
    assert main(["train", "--resume", str(whole)]) == 0
    again, again_config = adapter_of(whole)
    assert again_config == expected_config and all(torch.equal(again[k], expected[k]) for k in expected)
