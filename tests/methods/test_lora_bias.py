"""LoraConfig.lora_bias: a trainable bias on lora_B (peftkit.methods.lora_bias)."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from interop_helpers import assert_moves_both_ways, randomize_adapters

import peftkit as pk
from peftkit.errors import AdapterError, ConfigError, TargetError


class Net(nn.Module):
    def __init__(self, bias: bool = True):
        super().__init__()
        torch.manual_seed(0)
        self.lin0 = nn.Linear(10, 12, bias=bias)
        self.lin1 = nn.Linear(12, 4, bias=True)
        self.conv = nn.Conv2d(3, 4, 3, padding=1, bias=bias)
        self.emb = nn.Embedding(20, 10)

    def forward(self, x, img):
        return self.lin1(torch.relu(self.lin0(x))), self.conv(img)


X, IMG = torch.randn(3, 10), torch.randn(3, 3, 5, 5)


def run(model):
    with torch.no_grad():
        return torch.cat([t.flatten() for t in model(X, IMG)])


def biased(targets=("lin0", "conv"), base_bias: bool = True, **kwargs) -> pk.PeftModel:
    config = pk.LoraConfig(target_modules=list(targets), lora_bias=True, lora_alpha=16, **kwargs)
    return pk.get_peft_model(Net(base_bias), config)


def test_lora_b_gets_a_bias_that_starts_at_zero():
    model = biased()
    lin, conv = model.base_model.model.lin0, model.base_model.model.conv
    assert lin.lora_B["default"].bias.shape == (12,) and conv.lora_B["default"].bias.shape == (4,)
    assert not lin.lora_B["default"].bias.any() and lin.lora_B["default"].bias.requires_grad
    torch.testing.assert_close(run(model), run(Net()))


def test_output_adds_the_scaled_bias_on_every_path():
    model = randomize_adapters(biased(init_lora_weights=False))
    layer = model.base_model.model.lin0
    a, b = layer.lora_A["default"], layer.lora_B["default"]
    expected = layer.base_layer(X) + layer.scaling["default"] * (X @ a.weight.T @ b.weight.T + b.bias)
    with torch.no_grad():
        torch.testing.assert_close(layer(X), expected)  # the fused kernel has no bias term: plain path
    model.add_adapter("other", pk.LoraConfig(target_modules=["lin0", "conv"], lora_bias=True, init_lora_weights=False))
    randomize_adapters(model, seed=1)
    names = ["default", "other", pk.BASE_ADAPTER]
    with torch.no_grad():
        mixed = model(X, IMG, adapter_names=names)[0]
        for i, name in enumerate(names):
            if name == pk.BASE_ADAPTER:
                with model.disable_adapter():
                    row = model(X[i : i + 1], IMG[i : i + 1])[0]
            else:
                model.set_adapter(name)
                row = model(X[i : i + 1], IMG[i : i + 1])[0]
            torch.testing.assert_close(mixed[i : i + 1], row, atol=1e-6, rtol=0)


def test_saved_as_lora_b_bias_and_moves_both_ways_with_peft(tmp_path):
    saved = assert_moves_both_ways(Net, run, tmp_path, target_modules=["lin0", "conv"], lora_bias=True,
                                   init_lora_weights=False, lora_alpha=16)
    assert {"base_model.model.lin0.lora_B.bias", "base_model.model.conv.lora_B.bias"} <= set(saved)


@pytest.mark.parametrize("safe_merge", [False, True])
def test_merge_adds_the_bias_and_unmerge_takes_it_out(safe_merge):
    model = randomize_adapters(biased(init_lora_weights=False))
    before = {k: v.clone() for k, v in Net().state_dict().items()}
    expected = run(model)
    model.merge_adapter(safe_merge=safe_merge)
    torch.testing.assert_close(run(model), expected, atol=1e-5, rtol=0)
    layer = model.base_model.model.lin0
    assert not torch.allclose(layer.base_layer.bias, before["lin0.bias"])
    model.unmerge_adapter()
    torch.testing.assert_close(layer.base_layer.bias, before["lin0.bias"], atol=1e-6, rtol=0)
    merged = model.merge_and_unload()
    assert isinstance(merged.lin0, nn.Linear)
    torch.testing.assert_close(run(merged), expected, atol=1e-5, rtol=0)


def test_safe_merge_refuses_a_non_finite_bias_and_changes_nothing():
    model = biased()
    with torch.no_grad():
        model.base_model.model.lin0.lora_B["default"].bias[0] = float("inf")
    state = {k: v.clone() for k, v in model.get_base_model().state_dict().items()}
    with pytest.raises(AdapterError, match="NaN/inf"):
        model.merge_adapter(safe_merge=True)
    after = model.get_base_model().state_dict()
    assert all(torch.equal(state[k], after[k]) for k in state)


def test_base_without_bias_warns_then_merge_is_refused_before_anything_changes():
    with pytest.warns(pk.PeftWarning, match="of type Linear has no bias"):
        model = randomize_adapters(biased(targets=("lin0", "lin1"), base_bias=False, init_lora_weights=False))
    weights = {k: v.clone() for k, v in model.get_base_model().state_dict().items()}
    # a MergeError is an AdapterError and, as peft's error there, a RuntimeError
    with pytest.raises(RuntimeError, match="base layer has no bias: adapter 'default' on 'lin0'") as caught:
        model.merge_adapter()
    assert isinstance(caught.value, AdapterError)
    after = model.get_base_model().state_dict()
    assert all(torch.equal(weights[k], after[k]) for k in weights)  # lin1 (which has a bias) untouched too
    assert not model.base_model.model.lin1.merged_adapters


def test_embedding_refuses_lora_bias_by_name():
    with pytest.raises(TargetError, match="lora_bias=True is not supported for Embedding \\('emb'\\)"):
        pk.get_peft_model(Net(), pk.LoraConfig(target_modules=["emb"], lora_bias=True))


@pytest.mark.parametrize("kwargs, field", [
    ({"init_lora_weights": "pissa"}, "lora_bias"),
    ({"init_lora_weights": "gaussian"}, "lora_bias"),
    ({"use_dora": True}, "lora_bias"),
])
def test_config_refuses_what_peft_refuses(kwargs, field):
    with pytest.raises(ConfigError) as info:
        pk.LoraConfig(target_modules=["lin0"], lora_bias=True, **kwargs)
    assert [p for p, _ in info.value.problems] == [field]


def test_adalora_refuses_lora_bias():
    with pytest.raises(ConfigError, match="lora_bias"):
        pk.AdaLoraConfig(target_modules=["lin0"], lora_bias=True, total_step=10)


def test_adapter_arithmetic_refuses_a_biased_adapter():
    model = biased()
    model.add_adapter("b", pk.LoraConfig(target_modules=["lin0", "conv"], lora_bias=True))
    with pytest.raises(Exception, match="lora_bias"):
        model.add_weighted_adapter(["default", "b"], [1.0, 1.0], "sum", combination_type="cat")


def test_gpt2_conv1d_moves_both_ways_and_merges(tmp_path):
    from tiny_models import example_inputs, tiny_gpt2

    inputs = example_inputs("gpt2", batch_size=2, with_labels=False)

    def gpt2_logits(model):
        with torch.no_grad():
            return model(**inputs).logits

    assert_moves_both_ways(tiny_gpt2, gpt2_logits, tmp_path, target_modules=["c_attn", "c_fc"], lora_bias=True,
                           init_lora_weights=False)
    model = randomize_adapters(pk.get_peft_model(tiny_gpt2(), pk.LoraConfig(target_modules=["c_attn"], lora_bias=True)))
    expected = gpt2_logits(model)
    torch.testing.assert_close(gpt2_logits(model.merge_and_unload()), expected, atol=1e-4, rtol=0)


def test_the_bias_trains():
    model = biased()
    model(X, IMG)[0].sum().backward()
    assert model.base_model.model.lin0.lora_B["default"].bias.grad.abs().sum() > 0
