"""LoRA on convolutions, grouped ones included (peftkit.methods.lora_conv)."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from interop_helpers import assert_moves_both_ways, randomize_adapters

import peftkit as pk
from peftkit.errors import AdapterError, TargetError


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.grouped = nn.Conv2d(4, 8, 3, padding=1, groups=2)
        self.depthwise = nn.Conv1d(6, 6, 3, groups=6)
        self.plain = nn.Conv2d(8, 4, 1)

    def forward(self, img, seq):
        return self.plain(self.grouped(img)), self.depthwise(seq)


IMG, SEQ = torch.randn(2, 4, 5, 5), torch.randn(2, 6, 9)


def run(model):
    with torch.no_grad():
        return torch.cat([t.flatten() for t in model(IMG, SEQ)])


def test_grouped_layout_is_peft_s_and_moves_both_ways(tmp_path):
    saved = assert_moves_both_ways(Net, run, tmp_path, target_modules=["grouped", "depthwise", "plain"], r=6,
                                   init_lora_weights=False)
    assert saved["base_model.model.grouped.lora_A.weight"].shape == (6, 4, 3, 3)  # A sees every input channel
    assert saved["base_model.model.grouped.lora_B.weight"].shape == (8, 3, 1, 1)  # B grouped like the base


def test_a_new_adapter_changes_nothing_and_training_reaches_a_and_b():
    model = pk.get_peft_model(Net(), pk.LoraConfig(target_modules=["grouped", "depthwise"], r=6))
    torch.testing.assert_close(run(model), run(Net()))
    model(IMG, SEQ)[0].sum().backward()
    assert model.base_model.model.grouped.lora_B["default"].weight.grad.abs().sum() > 0


def test_rank_must_be_a_multiple_of_groups():
    with pytest.raises(TargetError, match="groups=6 and rank 4.*'depthwise'.*multiple of 6"):
        pk.get_peft_model(Net(), pk.LoraConfig(target_modules=["depthwise"], r=4))
    model = pk.get_peft_model(Net(), pk.LoraConfig(target_modules=["depthwise"], r=4, rank_pattern={"depthwise": 6}))
    assert model.base_model.model.depthwise.r["default"] == 6


def test_grouped_merge_is_refused_before_anything_is_merged():
    model = randomize_adapters(pk.get_peft_model(Net(), pk.LoraConfig(target_modules=["plain", "grouped"], r=4,
                                                                       init_lora_weights=False)))
    plain_weight = model.base_model.model.plain.base_layer.weight.clone()
    with pytest.raises(AdapterError, match="groups=2.*nothing was merged"):
        model.merge_and_unload()
    assert torch.equal(model.base_model.model.plain.base_layer.weight, plain_weight)
    assert not model.base_model.model.plain.merged_adapters


def test_grouped_convolution_takes_dora_and_lora_bias():
    # DoRA on grouped convolutions in detail: test_dora_conv_groups.py
    model = pk.get_peft_model(Net(), pk.LoraConfig(target_modules=["grouped", "plain"], r=4, use_dora=True))
    assert model.base_model.model.grouped.lora_magnitude_vector["default"].weight.shape == (1, 8, 1, 1)
    assert "default" in model.base_model.model.plain.lora_magnitude_vector
    grouped = pk.get_peft_model(Net(), pk.LoraConfig(target_modules=["grouped"], r=4, lora_bias=True))
    assert grouped.base_model.model.grouped.lora_B["default"].bias.shape == (8,)


def test_dilated_convolution_is_refused_by_name():
    net = nn.Sequential(nn.Conv2d(3, 3, 3, dilation=2))
    with pytest.raises(TargetError, match="dilation=1"):
        pk.get_peft_model(net, pk.LoraConfig(target_modules=["0"]))
