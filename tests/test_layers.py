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


# ---------------------------------------------------------------------------------- peft's layer API
class _Deep(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 8)
        self.mha = nn.MultiheadAttention(8, 2)

    def forward(self, x):
        return self.c(self.b(self.a(x)))


def _both(config_kwargs0, config_kwargs1, base=_Deep):
    """The same two adapters on the same model in peft and in peftkit."""
    import peft

    models = []
    for lib in (peft, pk):
        torch.manual_seed(0)
        model = lib.get_peft_model(base(), lib.LoraConfig(**config_kwargs0))
        model.add_adapter("other", lib.LoraConfig(**config_kwargs1))
        models.append(model)
    return models


def test_layer_active_adapters_are_the_selection_as_in_peft():
    theirs, ours = _both({"target_modules": ["a", "b"]}, {"target_modules": ["b", "c"]})
    for name in (["other"], ["default"], ["default", "other"]):
        theirs.base_model.set_adapter(name)
        ours.base_model.set_adapter(name)
        for key in ("a", "b", "c"):
            mine, peft_layer = getattr(ours.base_model.model, key), getattr(theirs.base_model.model, key)
            assert mine.active_adapters == peft_layer.active_adapters == name
        # what a layer computes with is what it holds of the selection
        assert ours.base_model.model.a.computing_adapters == [n for n in name if n == "default"]


def test_layer_peft_attribute_names_and_set_adapter_keywords():
    _, ours = _both({"target_modules": ["a"]}, {"target_modules": ["a"]})
    layer = ours.base_model.model.a
    assert set(layer.adapter_layer_names) >= {"lora_A", "lora_B"}
    for attr in layer.adapter_layer_names + layer.other_param_names:
        assert "other" in getattr(layer, attr) or attr == "lora_magnitude_vector"
    layer.set_adapter("other", inference_mode=True)
    assert layer.active_adapters == ["other"] and not any(p.requires_grad for _, p in layer.adapter_parameters("other"))
    layer.set_requires_grad("other")
    assert all(p.requires_grad for _, p in layer.adapter_parameters("other"))


def test_layers_print_as_peft_s():
    theirs, ours = _both({"target_modules": ["a", "mha"]}, {"target_modules": ["a"]})
    for key in ("a", "mha"):
        mine, peft_layer = repr(getattr(ours.base_model.model, key)), repr(getattr(theirs.base_model.model, key))
        assert mine.split("(")[0] == peft_layer.split("(")[0]  # lora.Linear, lora.MultiheadAttention
    assert ours.base_model.model.a.peft_name == "lora.Linear"


def test_mha_layers_expose_peft_s_in_and_out_features():
    theirs, ours = _both({"target_modules": ["mha"]}, {"target_modules": ["mha"]})
    mine, peft_layer = ours.base_model.model.mha, theirs.base_model.model.mha
    assert (mine.in_features, mine.out_features) == (peft_layer.in_features, peft_layer.out_features) == (8, 24)


def _trainable(model):
    return sorted(n for n, p in model.named_parameters() if p.requires_grad)


def test_disabling_freezes_and_restores_trainability_as_peft():
    theirs, ours = _both({"target_modules": ["a", "mha"], "modules_to_save": ["c"]}, {"target_modules": ["b"]})
    for model in (theirs, ours):
        model.set_adapter("other")
        model.set_adapter("default")
    expected = _trainable(theirs)
    assert _trainable(ours) == expected
    with theirs.disable_adapter(), ours.disable_adapter():
        assert _trainable(ours) == _trainable(theirs) == []
        assert all(m.disable_adapters for m in ours.modules() if hasattr(m, "adapter_layer_names"))
    assert _trainable(ours) == expected
    ours.disable_adapter_layers()
    assert _trainable(ours) == []
    ours.enable_adapter_layers()
    assert _trainable(ours) == expected


def test_disable_adapter_restores_each_layer_and_warns_on_irregular_states():
    _, ours = _both({"target_modules": ["a", "b"]}, {"target_modules": ["b"]})
    ours.base_model.model.a.enable_adapters(False)
    with pytest.warns(UserWarning, match="some adapter layers that are enabled and others that are disabled"):
        with ours.disable_adapter():
            assert ours.base_model.model.b.disable_adapters
    # peftkit gives each layer its own state back (peft enables them all here)
    assert ours.base_model.model.a.disable_adapters and not ours.base_model.model.b.disable_adapters


def test_inference_mode_keyword_of_set_adapter():
    _, ours = _both({"target_modules": ["a"]}, {"target_modules": ["a"]})
    ours.set_adapter("other", inference_mode=True)
    assert _trainable(ours) == []
    ours.set_adapter("other", inference_mode=False)
    assert _trainable(ours) == ["base_model.model.a.lora_A.other.weight", "base_model.model.a.lora_B.other.weight"]
