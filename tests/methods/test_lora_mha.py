"""LoRA on nn.MultiheadAttention (peftkit.methods.lora_mha)."""

from __future__ import annotations

import copy

import peft
import pytest
import torch
import torch.nn as nn
from interop_helpers import randomize_adapters, saved_tensors
from upstream_bugs import PEFT_MHA_OUT_PROJ_TWICE

import peftkit as pk
from peftkit.errors import TargetError


class Net(nn.Module):
    def __init__(self, **mha_kwargs):
        super().__init__()
        torch.manual_seed(0)
        self.mha = nn.MultiheadAttention(8, 2, batch_first=True, **mha_kwargs)
        self.lin0 = nn.Linear(8, 3)

    def forward(self, x):
        return self.lin0(self.mha(x, x, x)[0])


X = torch.randn(2, 5, 8)


def run(model):
    with torch.no_grad():
        return model(X)


def adapted(lib=pk, **kwargs):
    config = lib.LoraConfig(target_modules=["mha", "lin0"], init_lora_weights=False, **kwargs)
    return randomize_adapters(lib.get_peft_model(Net().eval(), config))


def reference(model, out_proj_times: int = 1) -> nn.Module:
    """A plain Net whose attention weights are W + dW (in_proj and out_proj), built from the adapter."""
    net = copy.deepcopy(Net().eval())
    layer = model.base_model.model.mha
    out = layer.base_layer.out_proj
    with torch.no_grad():
        net.mha.in_proj_weight += layer.scaling["default"] * layer.lora_B["default"].weight @ layer.lora_A["default"].weight
        net.mha.out_proj.weight += out_proj_times * out.scaling["default"] * out.lora_B["default"].weight @ out.lora_A["default"].weight
        lin = model.base_model.model.lin0
        net.lin0.weight += lin.scaling["default"] * lin.lora_B["default"].weight @ lin.lora_A["default"].weight
    return net


def test_output_is_attention_with_both_projections_adapted():
    model = adapted()
    torch.testing.assert_close(run(model), run(reference(model)), atol=1e-5, rtol=0)


def test_same_keys_as_peft_and_files_load_both_ways(tmp_path):
    ours, theirs = adapted(), adapted(peft)
    keys = set(saved_tensors(ours, tmp_path / "ours"))
    assert keys == set(saved_tensors(theirs, tmp_path / "theirs"))
    assert {"base_model.model.mha.lora_A.weight", "base_model.model.mha.base_layer.out_proj.lora_B.weight"} <= keys
    loaded_by_peft = peft.PeftModel.from_pretrained(Net().eval(), tmp_path / "ours")
    loaded_by_us = pk.PeftModel.from_pretrained(Net().eval(), tmp_path / "theirs")
    torch.testing.assert_close(run(loaded_by_us), run(reference(theirs)), atol=1e-5, rtol=0)
    peft_times = 2 if PEFT_MHA_OUT_PROJ_TWICE.present else 1  # upstream_bugs.py: peft adds out_proj's update twice
    torch.testing.assert_close(run(loaded_by_peft), run(reference(ours, out_proj_times=peft_times)), atol=1e-5, rtol=0)


def test_training_reaches_both_projections_only():
    model = adapted()
    model.train()
    model(X).sum().backward()
    trained = {n for n, p in model.named_parameters() if p.grad is not None}
    assert "base_model.model.mha.base_layer.out_proj.lora_A.default.weight" in trained
    assert "base_model.model.mha.lora_B.default.weight" in trained
    assert all("lora_" in n for n in trained)
    assert "in_proj_weight" not in model.base_model.model.mha.base_layer.__dict__


def test_merge_unmerge_disable_and_unload():
    model = adapted()
    expected = run(model)
    model.merge_adapter(safe_merge=True)
    torch.testing.assert_close(run(model), expected, atol=1e-5, rtol=0)
    model.unmerge_adapter()
    with model.disable_adapter():
        torch.testing.assert_close(run(model), run(Net().eval()), atol=1e-5, rtol=0)
    merged = model.merge_and_unload()
    assert type(merged.mha.out_proj) is nn.modules.linear.NonDynamicallyQuantizableLinear
    torch.testing.assert_close(run(merged), expected, atol=1e-5, rtol=0)


def test_deleting_the_last_adapter_restores_the_attention():
    model = adapted()
    model.delete_adapter("default")
    assert type(model.base_model.model.mha) is nn.MultiheadAttention
    assert type(model.base_model.model.mha.out_proj) is nn.modules.linear.NonDynamicallyQuantizableLinear


@pytest.mark.parametrize("kwargs, match", [({"use_dora": True}, "use_dora"), ({"lora_bias": True}, "lora_bias")])
def test_variants_peft_lacks_here_are_refused(kwargs, match):
    with pytest.raises(TargetError, match=match):
        pk.get_peft_model(Net(), pk.LoraConfig(target_modules=["mha"], **kwargs))


def test_separate_key_value_sizes_are_refused():
    with pytest.raises(TargetError, match="kdim == vdim"):
        pk.get_peft_model(Net(kdim=4, vdim=4), pk.LoraConfig(target_modules=["mha"]))


@pytest.mark.parametrize("bias", ["all", "lora_only"])
def test_trained_biases_include_the_wrapped_out_proj_as_in_peft(bias):
    """The out_proj LoRA layer sits inside the attention's layer: with bias="all"/"lora_only" its
    base bias trains and is saved under peft's key (it was missed, so the bias did not travel)."""
    ours, theirs = (lib.get_peft_model(Net(), lib.LoraConfig(target_modules=["mha"], bias=bias)) for lib in (pk, peft))
    key = "base_model.model.mha.base_layer.out_proj.base_layer.bias"
    assert set(pk.get_peft_model_state_dict(ours)) == set(peft.get_peft_model_state_dict(theirs))
    assert key in pk.get_peft_model_state_dict(ours)
    trainable = {n for n, p in ours.named_parameters() if p.requires_grad}
    assert trainable == {n for n, p in theirs.named_parameters() if p.requires_grad}


def test_biases_saved_with_bias_all_load_into_a_model_made_with_the_default():
    """peft loads every bias a file holds, whatever the receiving config's bias says."""
    source = adapted(bias="all")
    with torch.no_grad():
        source.base_model.model.mha.base_layer.out_proj.base_layer.bias.fill_(1.5)
        source.base_model.model.lin0.base_layer.bias.fill_(-0.5)
    target = pk.get_peft_model(Net().eval(), pk.LoraConfig(target_modules=["mha", "lin0"]))
    pk.set_peft_model_state_dict(target, pk.get_peft_model_state_dict(source))
    torch.testing.assert_close(run(target), run(source))


def test_attention_attributes_read_through_as_in_peft():
    """Code that inspects the attention (embed_dim, head_dim, out_proj, ...) sees the module's own
    values; out_proj is the original projection, as in peft (its LoRA layer: out_proj_layer)."""
    net = Net()
    original_out = net.mha.out_proj
    model = pk.get_peft_model(net, pk.LoraConfig(target_modules=["mha"]))
    layer = model.base_model.model.mha
    assert layer.out_proj is original_out
    assert isinstance(layer.out_proj_layer, pk.AdapterLayer) and layer.out_proj_layer.get_base_layer() is original_out
    for name in ("embed_dim", "kdim", "vdim", "num_heads", "head_dim", "batch_first", "dropout", "_qkv_same_embed_dim"):
        assert getattr(layer, name) == getattr(Net().mha, name), name
