"""Per-step method hooks (AdaLoRA's rank allocation, orthogonal regularisation) reach the one
training loop through the method registry, with no method-specific code in the loop."""

from __future__ import annotations

import json
from typing import ClassVar, Optional

import pytest
import torch
from tiny_assets import write_config

import peftkit as pk
from peftkit.cli import main
from peftkit.methods.lora import LORA
from peftkit.registry import MethodSpec, register_method
from peftkit.train.config import config_hash, load_run_config

CALLS: list[tuple[int, int]] = []


class HookedLoraConfig(pk.LoraConfig):
    peft_type: ClassVar[str] = "TEST_HOOKED_LORA"


def on_step_end(model, step: int, total: int) -> None:
    assert isinstance(model, pk.PeftModel)
    CALLS.append((step, total))


def extra_loss(model) -> torch.Tensor:
    # a constant-valued penalty that still depends on the adapter (so it is a real graph term)
    a = next(p for n, p in model.named_parameters() if "lora_A" in n)
    return 100.0 + 0.0 * a.sum()


@pytest.fixture(autouse=True)
def hooked_method():
    register_method(MethodSpec("TEST_HOOKED_LORA", HookedLoraConfig, LORA.layer_cls, LORA.layer_factories,
                               on_step_end=on_step_end, extra_loss=extra_loss), replace=True)
    CALLS.clear()
    yield


def test_hooks_run_every_optimizer_step(tmp_path):
    config = write_config(tmp_path, adapter={"method": "test_hooked_lora"},
                          train={"max_steps": 3, "grad_accum": 2, "save_steps": 100, "eval_steps": 100})
    assert main(["train", str(config)]) == 0
    assert CALLS == [(1, 3), (2, 3), (3, 3)]  # once per optimizer step, not per micro-batch
    run = next((tmp_path / "runs").iterdir())
    losses = [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]
    assert all(loss > 100 for loss in losses)  # the extra loss term is part of what is optimised and logged
    saved = json.loads((run / "adapter" / "adapter_config.json").read_text())
    assert saved["peft_type"] == "TEST_HOOKED_LORA"


class PlannedLoraConfig(pk.LoraConfig):
    peft_type: ClassVar[str] = "TEST_PLANNED_LORA"
    planned_steps: Optional[int] = None


def fill_planned_steps(fields: dict, total_steps: Optional[int]) -> dict:
    PLANS.append(total_steps)
    return {} if fields.get("planned_steps") is not None else {"planned_steps": total_steps or 1}


PLANS: list[Optional[int]] = []


def test_settings_derived_from_the_run_reach_the_saved_adapter_but_not_the_config_version(tmp_path):
    """``MethodSpec.run_defaults`` (AdaLoRA's total_step uses it) for any method: called with no step
    count while the config is validated (train.max_steps unset), then with the run's real count."""
    register_method(MethodSpec("TEST_PLANNED_LORA", PlannedLoraConfig, LORA.layer_cls, LORA.layer_factories,
                               run_defaults=fill_planned_steps), replace=True)
    PLANS.clear()
    config = write_config(tmp_path, adapter={"method": "test_planned_lora"},
                          train={"max_steps": None, "epochs": 2, "save_steps": 100, "eval_steps": 100})
    cfg = load_run_config(config)
    assert cfg.adapter["planned_steps"] is None and set(PLANS) == {None}
    assert main(["train", str(config)]) == 0
    assert PLANS[-1] == 6  # 2 epochs x 3 batches of 4 rows
    run = next((tmp_path / "runs").iterdir())
    assert json.loads((run / "adapter" / "adapter_config.json").read_text())["planned_steps"] == 6
    assert "planned_steps: null" in (run / "config.yaml").read_text()
    assert json.loads((run / "run.json").read_text())["config_hash"] == config_hash(cfg)
