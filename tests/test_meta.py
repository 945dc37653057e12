"""low_cpu_mem_usage=True: adapter tensors on the meta device, given storage when loaded."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import peftkit as pk


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))


@pytest.mark.parametrize("config", [pk.LoraConfig(target_modules=["0"]), pk.IA3Config(target_modules=["0"], feedforward_modules=[]),
                                    pk.LoHaConfig(target_modules=["0"])])
def test_injected_on_meta_then_loaded_matches_the_saved_adapter(config):
    source = pk.get_peft_model(_mlp(), config.model_copy(update={"init_lora_weights": False} if isinstance(config, pk.LoraConfig) else {}))
    state = {k.removeprefix("base_model.model."): v for k, v in pk.get_peft_model_state_dict(source).items()}
    x = torch.randn(3, 8)
    expected = source(x)

    model = _mlp()
    pk.inject_adapter_in_model(config, model, low_cpu_mem_usage=True)
    assert "meta" in {p.device.type for p in model.parameters()}
    assert {p.device.type for n, p in model.named_parameters() if "base_layer" in n} == {"cpu"}
    pk.set_peft_model_state_dict(model, state, low_cpu_mem_usage=True)
    assert {p.device.type for p in model.parameters()} == {"cpu"}
    torch.testing.assert_close(model(x), expected)


def test_get_peft_model_and_add_adapter_take_low_cpu_mem_usage():
    model = pk.get_peft_model(_mlp(), pk.LoraConfig(target_modules=["0"]), low_cpu_mem_usage=True)
    assert model.base_model.model[0].lora_A["default"].weight.is_meta
    model.add_adapter("b", pk.LoraConfig(target_modules=["2"]), low_cpu_mem_usage=False)
    assert not model.base_model.model[2].lora_A["b"].weight.is_meta


def test_shared_state_methods_refuse_injection_into_a_plain_module():
    with pytest.raises(pk.AdapterError, match="shared state.*get_peft_model"):
        pk.inject_adapter_in_model(pk.VeraConfig(target_modules=["0"]), _mlp())
