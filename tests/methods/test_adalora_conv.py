"""AdaLoRA on nn.Conv2d (peftkit.methods.adalora_conv)."""

from __future__ import annotations

import peft
import pytest
import torch
import torch.nn as nn
from interop_helpers import assert_moves_both_ways, randomize_adapters

import peftkit as pk
from peftkit.errors import TargetError
from peftkit.methods.adalora import apply_rank_pattern

SCHEDULE = dict(init_r=6, target_r=2, tinit=1, tfinal=2, deltaT=1, total_step=8, orth_reg_weight=0.0)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 6, 3, stride=2, padding=1)
        self.conv2 = nn.Conv2d(6, 4, 2, dilation=2)
        self.lin = nn.Linear(4, 2)

    def forward(self, img):
        return self.lin(self.conv2(torch.relu(self.conv(img))).mean((2, 3)))


IMG = torch.randn(2, 3, 9, 9)


def run(model):
    with torch.no_grad():
        return model(IMG)


def test_svd_layout_is_peft_s_and_moves_both_ways(tmp_path):
    saved = assert_moves_both_ways(Net, run, tmp_path, config="AdaLoraConfig", atol=1e-5,
                                   target_modules=["conv", "conv2", "lin"], init_lora_weights=False, **SCHEDULE)
    assert saved["base_model.model.conv.lora_A"].shape == (6, 3 * 3 * 3)  # (r, in * kh * kw)
    assert saved["base_model.model.conv.lora_B"].shape == (6, 6)
    assert saved["base_model.model.conv.lora_E"].shape == (6, 1)


def test_new_adapter_is_a_no_op_and_merging_keeps_outputs():
    model = pk.get_peft_model(Net(), pk.AdaLoraConfig(target_modules=["conv", "conv2"], **SCHEDULE))
    torch.testing.assert_close(run(model), run(Net()))
    randomize_adapters(model)
    expected = run(model)
    merged = model.merge_and_unload(safe_merge=True)
    assert type(merged.conv) is nn.Conv2d
    torch.testing.assert_close(run(merged), expected, atol=1e-5, rtol=0)


def test_rank_allocation_and_pruning_match_peft(tmp_path):
    def build(lib):
        model = lib.get_peft_model(Net(), lib.AdaLoraConfig(target_modules=["conv", "conv2"], **SCHEDULE))
        return randomize_adapters(model, seed=4)

    theirs, ours = build(peft), build(pk)
    opts = [torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.05) for m in (theirs, ours)]
    for step in range(SCHEDULE["total_step"]):
        for model, opt in zip((theirs, ours), opts):
            model(IMG).square().sum().backward()
            opt.step()
            model.base_model.update_and_allocate(step)
            opt.zero_grad()
    their_pattern = {k.removesuffix(".default"): v for k, v in theirs.peft_config["default"].rank_pattern.items()}
    assert ours.base_model.rank_allocators["default"].rank_pattern == their_pattern
    expected = run(ours)
    apply_rank_pattern(ours)
    torch.testing.assert_close(run(ours), expected, atol=1e-6, rtol=0)
    ours.save_pretrained(tmp_path)
    loaded = peft.PeftModel.from_pretrained(Net(), tmp_path)
    torch.testing.assert_close(run(loaded), expected, atol=1e-5, rtol=0)


def test_grouped_or_padded_convolutions_are_refused_by_name():
    net = nn.Sequential(nn.Conv2d(4, 4, 3, groups=2), nn.Conv2d(4, 4, 3, padding=1, padding_mode="reflect"))
    for name in ("0", "1"):
        with pytest.raises(TargetError, match="groups=1 and padding_mode='zeros'"):
            pk.get_peft_model(net, pk.AdaLoraConfig(target_modules=[name], total_step=10))
