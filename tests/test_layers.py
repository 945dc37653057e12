"""The layer protocol's peft behaviours: ModulesToSaveWrapper's attributes and keyword-only calls,
merging what each layer computes with, and peft's "already merged" warning."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn as nn

import peftkit as pk


class _KwargsOnly(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        return self.head(input=self.lin(x))


def test_modules_to_save_wrapper_exposes_the_active_copy_and_takes_keyword_calls():
    torch.manual_seed(0)
    model = pk.get_peft_model(_KwargsOnly(), pk.LoraConfig(target_modules=["lin"], modules_to_save=["head"]))
    head = model.base_model.model.head
    with torch.no_grad():
        head.modules_to_save["default"].weight.add_(1.0)
    assert head.weight is head.modules_to_save["default"].weight
    assert head.in_features == 4
    x = torch.randn(2, 4)
    out = model(x)
    torch.testing.assert_close(head(input=torch.ones(1, 4)), head.modules_to_save["default"](torch.ones(1, 4)))
    with model.disable_adapter():
        assert head.weight is head.original_module.weight
        assert not torch.allclose(model(x), out)


def test_merge_adapter_merges_what_each_layer_computes_with():
    torch.manual_seed(0)
    base = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
    model = pk.get_peft_model(base, pk.LoraConfig(target_modules=["0", "1"], init_lora_weights=False))
    model.add_adapter("b", pk.LoraConfig(target_modules=["0", "1"], init_lora_weights=False))
    model.base_model.model[1].set_adapter(["default", "b"])  # one layer sums both adapters
    x = torch.randn(3, 4)
    expected = model(x)
    model.merge_adapter()
    torch.testing.assert_close(model(x), expected)
    assert model.base_model.model[1].merged_adapters == ["default", "b"]


def test_merging_again_warns_as_peft_does():
    model = pk.get_peft_model(nn.Sequential(nn.Linear(4, 4)), pk.LoraConfig(target_modules=["0"]))
    model.add_adapter("b", pk.LoraConfig(target_modules=["0"]))
    model.merge_adapter()
    with pytest.warns(UserWarning, match="All adapters are already merged, nothing to do"):
        model.merge_adapter()
    with pytest.warns(UserWarning, match="Already following adapters were merged default. You are now additionally merging b"):
        model.merge_adapter(["b"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.unmerge_adapter()


def test_layers_expose_in_and_out_features_for_every_kind_of_base():
    from transformers.pytorch_utils import Conv1D

    model = nn.ModuleDict({"lin": nn.Linear(3, 5), "conv": nn.Conv2d(2, 4, 3), "gpt2": Conv1D(6, 7), "emb": nn.Embedding(9, 8)})
    pk.inject_adapter_in_model(pk.LoraConfig(target_modules=["lin", "conv", "gpt2", "emb"]), model)
    sizes = {name: (layer.in_features, layer.out_features) for name, layer in model.items()}
    assert sizes == {"lin": (3, 5), "conv": (2, 4), "gpt2": (7, 6), "emb": (9, 8)}


def test_deleting_a_merged_adapter_is_refused_with_peft_words():
    model = pk.get_peft_model(nn.Sequential(nn.Linear(4, 4)), pk.LoraConfig(target_modules=["0"]))
    model.add_adapter("b", pk.LoraConfig(target_modules=["0"]))
    model.merge_adapter(["b"])
    with pytest.raises(pk.AdapterError, match=r"Cannot delete adapter\(s\) \['b'\] while they are merged"):
        model.delete_adapter("b")
    assert set(model.peft_config) == {"default", "b"}


def test_adapter_parameters_accept_plain_tensors_as_fsdp_leaves_them():
    """FSDP(use_orig_params=True) puts plain tensor views where the Parameters were (LoHa/LoKr keep
    theirs in ParameterDicts); collecting an adapter's tensors must not assume Parameters."""
    model = pk.get_peft_model(nn.Sequential(nn.Linear(4, 4)), pk.LoHaConfig(target_modules=["0"], r=2))
    layer = model.base_model.model[0]
    view = layer.hada_w1_a["default"].detach().clone()
    layer.hada_w1_a._parameters["default"] = view  # what FSDP's flat-parameter views look like
    found = dict(layer.adapter_parameters("default"))
    assert found["hada_w1_a"] is view and len(found) == 4
