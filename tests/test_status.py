"""peftkit.status: layer and model status, and the irregular states they expose."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from toy_models import LinearNet

import peftkit as pk
from peftkit.status import get_layer_status, get_model_status


class Large(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin0 = nn.Linear(10, 10)
        self.conv0 = nn.Conv2d(3, 10, 3)
        self.emb0 = nn.Embedding(10, 10)
        self.lin1 = nn.Linear(10, 10)
        self.conv1 = nn.Conv2d(3, 10, 3)


def large_model() -> pk.PeftModel:
    """Two adapters that overlap on lin0 only: "default" on lin0/conv1/emb0, "other" on lin0/lin1."""
    torch.manual_seed(0)
    model = pk.get_peft_model(Large(), pk.LoraConfig(target_modules=["lin0", "conv1", "emb0"]))
    model.add_adapter("other", pk.LoraConfig(target_modules=["lin0", "lin1"], r=16))
    return model


def by_name(model) -> dict:
    return {s.name: s for s in model.get_layer_status()}


def test_layer_status_of_a_fresh_model():
    status = by_name(large_model())
    assert sorted(status) == ["model.conv1", "model.emb0", "model.lin0", "model.lin1"]
    assert status["model.lin0"].module_type == "lora.Linear"
    assert status["model.conv1"].module_type == "lora.Conv2d"
    assert status["model.emb0"].module_type == "lora.Embedding"
    assert status["model.lin0"].available_adapters == ["default", "other"]
    assert status["model.lin1"].available_adapters == ["other"]
    # each layer follows the model's selection, also where it does not hold the adapter (peft's meaning)
    assert {s.active_adapters[0] for s in status.values()} == {"default"}
    # only the active adapter trains
    assert status["model.lin0"].requires_grad == {"default": True, "other": False}
    assert status["model.lin1"].requires_grad == {"other": False}
    assert status["model.lin0"].devices == {"default": ["cpu"], "other": ["cpu"]}
    assert all(s.enabled and s.merged_adapters == [] and s.quantization_backend is None for s in status.values())


def test_model_status_of_a_fresh_model():
    model = large_model()
    status = model.get_model_status()
    trainable, total = model.get_nb_trainable_parameters()
    assert (status.base_model_type, status.adapter_model_type) == ("Large", "LoraModel")
    assert status.peft_types == {"default": "LORA", "other": "LORA"}
    assert (status.trainable_params, status.total_params) == (trainable, total)
    assert status.num_adapter_layers == 4
    assert status.enabled is True
    assert status.active_adapters == ["default"]
    assert status.merged_adapters == []
    assert status.requires_grad == {"default": True, "other": False}
    assert status.available_adapters == ["default", "other"]
    assert status.quantization_backend is None


def test_switching_adapters_is_regular_even_where_a_layer_lacks_the_adapter():
    model = large_model()
    model.set_adapter("other")
    status = model.get_model_status()
    assert status.active_adapters == ["other"]  # not "irregular", though conv1 and emb0 lack "other"
    assert status.requires_grad == {"default": False, "other": True}


def test_merging_some_adapters_everywhere_is_regular_merging_one_layer_is_not():
    model = large_model()
    model.merge_adapter(["default", "other"])
    assert model.get_model_status().merged_adapters == ["default", "other"]
    assert by_name(model)["model.lin1"].merged_adapters == ["other"]
    model.unmerge_adapter()
    assert model.get_model_status().merged_adapters == []

    model.base_model.model.lin0.merge(["default"])  # by hand, on one layer only
    assert model.get_model_status().merged_adapters == "irregular"


def test_one_layer_disabled_or_switched_by_hand_shows_as_irregular():
    model = large_model()
    model.base_model.model.lin0.enable_adapters(False)
    assert model.get_model_status().enabled == "irregular"
    assert by_name(model)["model.lin0"].enabled is False

    model = large_model()
    model.disable_adapter_layers()
    assert model.get_model_status().enabled is False

    model = large_model()
    model.base_model.model.lin0.set_adapter("other")
    assert by_name(model)["model.lin0"].active_adapters == ["other"]
    assert model.get_model_status().active_adapters == "irregular"


def test_partly_frozen_adapter_is_irregular():
    model = large_model()
    model.base_model.model.lin0.lora_A["default"].weight.requires_grad_(False)
    assert by_name(model)["model.lin0"].requires_grad["default"] == "irregular"
    assert model.get_model_status().requires_grad == {"default": "irregular", "other": False}


def test_set_requires_grad_changes_training_not_the_selection():
    model = large_model()
    model.set_requires_grad("other", requires_grad=True)
    model.set_requires_grad("default", requires_grad=False)
    status = model.get_model_status()
    assert status.requires_grad == {"default": False, "other": True}
    assert status.active_adapters == ["default"]
    with pytest.raises(pk.AdapterError, match="does not exist"):
        model.set_requires_grad("nope")


def test_modules_to_save_are_reported_and_count_for_irregularity():
    model = pk.get_peft_model(LinearNet(), pk.LoraConfig(target_modules=["lin1"], modules_to_save=["lin2"]))
    saved = by_name(model)["model.lin2"]
    assert saved.module_type == "ModulesToSaveWrapper"
    assert (saved.active_adapters, saved.requires_grad, saved.available_adapters) == (["default"], {"default": True}, ["default"])

    model.base_model.model.lin2.modules_to_save["default"].weight.requires_grad_(False)
    assert model.get_model_status().requires_grad == {"default": "irregular"}


def test_target_parameters_and_other_methods_get_peft_type_names():
    model = pk.get_peft_model(LinearNet(), pk.LoraConfig(target_parameters=["lin1.weight"], target_modules=["lin2"]))
    assert [(s.name, s.module_type) for s in model.get_layer_status()] == [
        ("model.lin1", "lora.ParamWrapper"), ("model.lin2", "lora.Linear")]
    loha = pk.get_peft_model(LinearNet(), pk.LoHaConfig(target_modules=["lin1"]))
    assert [s.module_type for s in loha.get_layer_status()] == ["loha.Linear"]
    assert loha.get_model_status().adapter_model_type == "LoHaModel"
    ada = pk.get_peft_model(LinearNet(), pk.AdaLoraConfig(target_modules=["lin1"], total_step=10))
    assert [s.module_type for s in ada.get_layer_status()] == ["adalora.SVDLinear"]


def test_mixed_model_lists_every_layer_of_a_stack():
    model = pk.get_peft_model(LinearNet(), pk.LoraConfig(target_modules=["lin1"]), "lora", mixed=True)
    model.add_adapter("loha", pk.LoHaConfig(target_modules=["lin1"]))
    status = model.get_layer_status()
    assert sorted((s.name, s.module_type) for s in status) == [
        ("model.lin1", "loha.Linear"), ("model.lin1.base_layer", "lora.Linear")]
    assert model.get_model_status().adapter_model_type == "MixedModel"


def test_a_model_with_injected_layers_reports_relative_names():
    model = pk.inject_adapter_in_model(pk.LoraConfig(target_modules=["lin1"]), LinearNet())
    status = get_model_status(model)
    assert [s.name for s in get_layer_status(model)] == ["lin1"]
    assert (status.base_model_type, status.adapter_model_type, status.peft_types) == ("other", "None", {})


def test_a_model_without_adapter_layers_is_refused_clearly():
    with pytest.raises(pk.AdapterError, match="No adapter layers found in the model"):
        get_layer_status(nn.Linear(2, 2))
    with pytest.raises(pk.AdapterError, match="No adapter layers found in the model"):
        get_model_status(LinearNet())

