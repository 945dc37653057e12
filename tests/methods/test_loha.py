"""LoHa: the adapter contract on Llama and convolution toys (flat and effective-conv factors), the
factored linear path, interop with peft both ways, training from YAML, and errors."""

from __future__ import annotations

import peft
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from contract_helpers import train_losses
from method_contract import MethodContract, assert_interop_both_ways, hf_subject, toy_subject
from tiny_models import make_model

import peftkit as pk
from peftkit.methods.loha import LoHaLayer

pytestmark = pytest.mark.usefixtures("torch_single_thread")

SETTINGS = {"conv2d_cp": dict(use_effective_conv2d=True), "conv1d_cp": dict(use_effective_conv2d=True)}


class TestLoHaContract(MethodContract):
    SUBJECTS = [hf_subject("llama", "all-linear"), toy_subject("conv1d"), toy_subject("conv2d"),
                toy_subject("conv2d", label="conv2d_cp"), toy_subject("conv1d", label="conv1d_cp")]
    marker = "hada_"

    def config(self, subject, **kw):
        # init_weights=False: every factor random (peft's option), so the adapter is not the identity
        return pk.LoHaConfig(**{"r": 2, "alpha": 4, "target_modules": subject.targets, "init_weights": False,
                                **SETTINGS.get(subject.name, {}), **kw})

    def identity_config(self, subject):
        return self.config(subject, init_weights=True)


def test_effective_conv_factors_only_for_kernels_larger_than_one():
    model = pk.get_peft_model(toy_subject("conv2d").make_base(),
                              pk.LoHaConfig(r=2, target_modules=["conv", "point"], use_effective_conv2d=True))
    net = model.get_base_model()
    assert net.conv.hada_t1["default"].shape == (2, 2, 3, 3) and net.conv.hada_w1_b["default"].shape == (2, 3)
    assert "default" not in net.point.hada_t1 and net.point.hada_w1_a["default"].shape == (5, 2)  # 1x1: flat


def test_factored_linear_path_equals_the_full_matrix():
    torch.manual_seed(0)
    layer = LoHaLayer(nn.Linear(64, 48), "a", pk.LoHaConfig(r=2, alpha=3, init_weights=False), "lin")
    assert 2 * 2 * (64 + 48) < 64 * 48  # large enough for the rank-r*r factorisation to be taken
    x = torch.randn(3, 5, 64)
    torch.testing.assert_close(layer.delta("a", x), F.linear(x, layer.delta_weight("a")), atol=1e-6, rtol=1e-5)


INTEROP = {
    "llama_all_linear": (hf_subject("llama"), dict(target_modules="all-linear")),
    "llama_patterns": (hf_subject("llama"), dict(target_modules=["q_proj", "v_proj", "up_proj"],
                                                 rank_pattern={"v_proj": 3}, alpha_pattern={"up_proj": 2})),
    "llama_layers_to_transform": (hf_subject("llama"), dict(target_modules=["q_proj", "down_proj"],
                                                            layers_to_transform=[1], layers_pattern="layers")),
    "conv2d": (toy_subject("conv2d"), dict(target_modules=["conv", "point"])),
    "conv2d_effective": (toy_subject("conv2d"), dict(target_modules=["conv", "point"], use_effective_conv2d=True)),
    "conv1d_effective": (toy_subject("conv1d"), dict(target_modules=["conv"], use_effective_conv2d=True)),
}


@pytest.mark.parametrize("case", INTEROP)
def test_interop_with_peft(case, tmp_path):
    subject, kwargs = INTEROP[case]
    assert_interop_both_ways(subject, pk.LoHaConfig, peft.LoHaConfig, dict(r=2, alpha=4, init_weights=False, **kwargs), tmp_path)


def test_training_from_yaml_lowers_the_loss(tmp_path):
    losses = train_losses(tmp_path, {"method": "loha", "r": 4, "alpha": 8, "target_modules": "all-linear"},
                          max_steps=20, lr=5e-2)
    assert losses[-1] < 0.5 * losses[0], losses


def test_bad_configs_are_refused_with_the_field_named():
    with pytest.raises(pk.ConfigError, match=r"r: must be a positive integer.*got 0"):
        pk.LoHaConfig(r=0)
    with pytest.raises(pk.ConfigError, match=r"rank_dropout: must be a probability"):
        pk.LoHaConfig(rank_dropout=1.0)
    with pytest.raises(pk.ConfigError, match=r"rank_pattern: must be a positive integer"):
        pk.LoHaConfig(rank_pattern={"q_proj": -2})
    with pytest.raises(pk.ConfigError, match="init_weights"):
        pk.LoHaConfig(init_weights="lycoris")  # LoKr has this option; LoHa does not (as in peft)


def test_unsupported_layers_are_refused_and_the_model_left_as_it_was():
    base = make_model("gpt2")
    with pytest.raises(pk.TargetError, match="c_attn.*Conv1D, which LOHA cannot adapt"):
        pk.get_peft_model(base, pk.LoHaConfig(target_modules=["c_attn"]))
    assert not any(isinstance(m, pk.AdapterLayer) for m in base.modules())
