"""The registry: a method defined outside peftkit plugs into the same core (inject, train, save,
load, merge, mixed batches) without any change to generic code."""

from __future__ import annotations

from typing import ClassVar

import pytest
import torch
import torch.nn as nn
from toy_models import TOYS

import peftkit as pk
from peftkit.config import TargetedConfig
from peftkit.registry import get_method


class OutScaleConfig(TargetedConfig):
    """A toy method: a learned per-output-feature offset to the scale, ``y = W x * (1 + s)``."""

    peft_type: ClassVar[str] = "TEST_OUT_SCALE"
    init_value: float = 0.0


class OutScaleLinear(pk.AdapterLayer):
    adapter_param_names = ("out_scale",)

    def __init__(self, base_layer: nn.Linear, adapter_name: str, config: OutScaleConfig, key: str):
        super().__init__(base_layer, key)
        self.out_scale = nn.ParameterDict()
        self.add_adapter(adapter_name, config, key)

    def add_adapter(self, adapter_name, config, key):
        self.out_scale[adapter_name] = nn.Parameter(torch.full((self.base_layer.out_features,), config.init_value))

    def delta(self, adapter_name, x):
        return nn.functional.linear(x, self.base_layer.weight) * self.out_scale[adapter_name]

    def delta_weight(self, adapter_name):
        return self.base_layer.weight * self.out_scale[adapter_name][:, None]


@pytest.fixture(scope="module", autouse=True)
def registered():
    pk.register_method(
        pk.MethodSpec(
            "TEST_OUT_SCALE",
            OutScaleConfig,
            OutScaleLinear,
            [pk.LayerFactory("nn.Linear", lambda m: isinstance(m, nn.Linear), OutScaleLinear)],
        ),
        replace=True,
    )
    yield


def test_builtin_lora_is_registered():
    assert get_method("LORA").config_cls is pk.LoraConfig
    assert "LORA" in pk.registered_methods()


def test_third_party_method_end_to_end(tmp_path):
    toy = TOYS[0]
    x = toy.inputs()
    model = pk.get_peft_model(toy.model(), OutScaleConfig(target_modules=["lin1"], init_value=0.5))
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable == ["base_model.model.lin1.out_scale.default"]
    expected = model(x)
    assert not torch.allclose(expected, toy.model()(x))

    model.save_pretrained(tmp_path)
    assert pk.PeftConfig.from_pretrained(tmp_path).__class__ is OutScaleConfig
    loaded = pk.PeftModel.from_pretrained(toy.model(), tmp_path)
    assert torch.equal(loaded(x), expected)

    model.add_adapter("zero", OutScaleConfig(target_modules=["lin1"]))
    mixed = model(x, adapter_names=["default", "zero", "default", "zero"])
    torch.testing.assert_close(mixed[1], toy.model()(x)[1])
    torch.testing.assert_close(mixed[0], expected[0])

    merged = loaded.merge_and_unload()
    torch.testing.assert_close(merged(x), expected, atol=1e-5, rtol=0)


def test_methods_do_not_mix_in_one_model():
    model = pk.get_peft_model(TOYS[0].model(), OutScaleConfig(target_modules=["lin1"]))
    with pytest.raises(pk.AdapterError, match="TEST_OUT_SCALE adapters; LORA cannot be added"):
        model.add_adapter("lora", pk.LoraConfig(target_modules=["lin1"]))


def test_unknown_method_in_a_saved_config(tmp_path):
    (tmp_path / "adapter_config.json").write_text('{"peft_type": "LORRA", "r": 8}')
    with pytest.raises(pk.ConfigError, match=r"unknown method 'LORRA'.*did you mean 'LORA'"):
        pk.PeftConfig.from_pretrained(tmp_path)


def test_registering_a_second_method_under_a_taken_name_fails():
    spec = pk.MethodSpec("LORA", pk.LoraConfig, OutScaleLinear, [])
    with pytest.raises(ValueError, match="already registered"):
        pk.register_method(spec)


class GlobalGainConfig(TargetedConfig):
    """A toy method with model-level state: one learned gain shared by every adapted layer."""

    peft_type: ClassVar[str] = "TEST_GLOBAL_GAIN"


class GlobalGainLinear(pk.AdapterLayer):
    adapter_param_names = ()

    def __init__(self, base_layer: nn.Linear, adapter_name: str, config: GlobalGainConfig, key: str):
        super().__init__(base_layer, key)
        self.gains: dict[str, nn.Parameter] = {}  # filled by on_add; the model owns the parameter

    @property
    def adapter_names(self):
        return list(self.gains)

    def add_adapter(self, adapter_name, config, key):
        pass  # on_add hands the shared gain to the layer

    def delete_adapter(self, adapter_name):
        self.gains.pop(adapter_name, None)
        super().delete_adapter(adapter_name)

    def delta(self, adapter_name, x):
        return nn.functional.linear(x, self.base_layer.weight) * self.gains[adapter_name]


def _gain_on_add(peft_model, adapter_name, config):
    if not hasattr(peft_model.base_model, "global_gain"):
        peft_model.base_model.global_gain = nn.ParameterDict()
    peft_model.base_model.global_gain[adapter_name] = nn.Parameter(torch.tensor(0.25))
    for layer in peft_model._adapter_layers():
        layer.gains[adapter_name] = peft_model.base_model.global_gain[adapter_name]


def _gain_on_delete(peft_model, adapter_name):
    gains = getattr(peft_model.base_model, "global_gain", {})
    if adapter_name in gains:
        del gains[adapter_name]


def _gain_tensors(peft_model, adapter_name):
    return {"base_model.global_gain": peft_model.base_model.global_gain[adapter_name]}


def test_model_level_state_is_created_saved_loaded_and_trained(tmp_path):
    pk.register_method(
        pk.MethodSpec(
            "TEST_GLOBAL_GAIN", GlobalGainConfig, GlobalGainLinear,
            [pk.LayerFactory("nn.Linear", lambda m: isinstance(m, nn.Linear), GlobalGainLinear)],
            on_add=_gain_on_add, on_delete=_gain_on_delete, model_tensors=_gain_tensors,
        ),
        replace=True,
    )
    toy = TOYS[0]
    x = toy.inputs()
    model = pk.get_peft_model(toy.model(), GlobalGainConfig(target_modules=["lin1"]))
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["base_model.global_gain.default"]
    with torch.no_grad():
        model.base_model.global_gain["default"].fill_(0.75)
    expected = model(x)
    state = pk.get_peft_model_state_dict(model)
    assert list(state) == ["base_model.global_gain"] and state["base_model.global_gain"].item() == 0.75

    model.save_pretrained(tmp_path)
    loaded = pk.PeftModel.from_pretrained(toy.model(), tmp_path)
    assert torch.equal(loaded(x), expected)
    assert not loaded.base_model.global_gain["default"].requires_grad  # loaded for inference

    model.add_adapter("other", GlobalGainConfig(target_modules=["lin1"]))
    model.set_adapter("other")
    assert model.base_model.global_gain["other"].requires_grad
    assert not model.base_model.global_gain["default"].requires_grad
    model.delete_adapter("other")
    assert "other" not in model.base_model.global_gain
