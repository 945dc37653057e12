"""DoRA on grouped convolutions (peftkit.methods.lora_conv): peft's numbers, training, disabling,
the merge refusal and deleting an adapter."""

from __future__ import annotations

import peft
import pytest
import torch
import torch.nn as nn
from interop_helpers import assert_moves_both_ways, randomize_adapters

import peftkit as pk
from peftkit.errors import AdapterError
from peftkit.methods.dora import init_magnitude

TARGETS = ["conv2d", "conv1d"]


class GroupedNet(nn.Module):
    """A Conv2d and a Conv1d with groups=2, and a 3x3 kernel where a 1x1 would hide layout mistakes."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv2d = nn.Conv2d(4, 6, 3, padding=1, groups=2)
        self.conv1d = nn.Conv1d(4, 8, 3, groups=2, bias=False)

    def forward(self, img, seq):
        return self.conv2d(img), self.conv1d(seq)


IMG, SEQ = torch.randn(3, 4, 5, 5), torch.randn(3, 4, 7)


def run(model):
    with torch.no_grad():
        return torch.cat([t.flatten() for t in model(IMG, SEQ)])


def dora_config(lib, **kwargs):
    return lib.LoraConfig(target_modules=TARGETS, r=4, lora_alpha=8, use_dora=True, **kwargs)


def test_outputs_equal_peft_s_both_ways(tmp_path):
    saved = assert_moves_both_ways(GroupedNet, run, tmp_path, target_modules=TARGETS, r=4, lora_alpha=8,
                                   use_dora=True, init_lora_weights=False)
    assert saved["base_model.model.conv2d.lora_magnitude_vector"].shape == (1, 6, 1, 1)
    assert saved["base_model.model.conv1d.lora_magnitude_vector"].shape == (1, 8, 1)


def test_magnitude_starts_at_peft_s_norm_and_outputs_match_untouched():
    reference = peft.get_peft_model(GroupedNet(), dora_config(peft, init_lora_weights=False))
    model = pk.get_peft_model(GroupedNet(), dora_config(pk, init_lora_weights=False))
    theirs = dict(reference.named_parameters())
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_A" in name or "lora_B" in name:
                p.copy_(theirs[name])
    for key in TARGETS:
        layer = getattr(model.base_model.model, key)
        init_magnitude(layer, "default", torch.float32)  # from the copied A and B
        ours = layer.lora_magnitude_vector["default"].weight
        expected = theirs[f"base_model.model.{key}.lora_magnitude_vector.default.weight"]
        torch.testing.assert_close(ours, expected, atol=1e-6, rtol=0)
    model.eval(), reference.eval()
    torch.testing.assert_close(run(model), run(reference), atol=1e-6, rtol=0)


def test_a_new_adapter_changes_nothing_and_training_moves_the_magnitude():
    model = pk.get_peft_model(GroupedNet(), dora_config(pk))
    torch.testing.assert_close(run(model), run(GroupedNet()), atol=1e-6, rtol=0)
    layer = model.base_model.model.conv2d
    before = layer.lora_magnitude_vector["default"].weight.detach().clone()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model.train()
    for _ in range(2):  # B starts at zero: the first step moves B, the second also m's direction
        optimizer.zero_grad()
        sum(out.square().mean() for out in model(IMG, SEQ)).backward()
        optimizer.step()
    assert not torch.equal(layer.lora_magnitude_vector["default"].weight, before)
    assert layer.lora_B["default"].weight.abs().sum() > 0


def test_disabled_adapter_gives_the_base_output():
    model = randomize_adapters(pk.get_peft_model(GroupedNet(), dora_config(pk, init_lora_weights=False))).eval()
    assert not torch.allclose(run(model), run(GroupedNet()))
    with model.disable_adapter():
        torch.testing.assert_close(run(model), run(GroupedNet()), atol=0, rtol=0)


def test_merge_is_refused_like_peft_and_leaves_everything_as_it_was():
    model = randomize_adapters(pk.get_peft_model(GroupedNet(), dora_config(pk, init_lora_weights=False))).eval()
    expected, weight = run(model), model.base_model.model.conv2d.base_layer.weight.clone()
    with pytest.raises(AdapterError, match="groups=2"):
        model.merge_and_unload()
    with pytest.raises(AdapterError, match="groups=2"):
        model.base_model.model.conv1d.delta_weight("default")
    assert torch.equal(model.base_model.model.conv2d.base_layer.weight, weight)
    assert not model.base_model.model.conv2d.merged_adapters
    torch.testing.assert_close(run(model), expected, atol=0, rtol=0)
    reference = peft.get_peft_model(GroupedNet(), dora_config(peft))
    with pytest.raises(NotImplementedError, match="groups > 1"):  # peft refuses it too
        reference.merge_and_unload()


def test_deleting_a_dora_adapter_leaves_the_other():
    model = randomize_adapters(pk.get_peft_model(GroupedNet(), dora_config(pk, init_lora_weights=False)))
    model.add_adapter("other", dora_config(pk, init_lora_weights=False))
    randomize_adapters(model, seed=1).eval()
    model.set_adapter("other")
    only_other = run(model)
    model.delete_adapter("default")
    layer = model.base_model.model.conv2d
    assert "default" not in layer.lora_magnitude_vector and "default" not in layer.lora_A
    torch.testing.assert_close(run(model), only_other, atol=0, rtol=0)
    assert not any(".default" in name for name in model.state_dict())
