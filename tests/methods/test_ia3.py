"""(IA)³: the adapter contract on Llama, GPT-2 (Conv1D) and convolution toys; peft's
per-architecture defaults; interop with peft both ways; merging details; training from YAML; errors."""

from __future__ import annotations

import json

import peft
import pytest
import torch
import torch.nn as nn
from contract_helpers import train_losses
from method_contract import MethodContract, Subject, assert_interop_both_ways, hf_subject, toy_subject
from tiny_models import make_model

import peftkit as pk
from peftkit.methods.ia3 import IA3_DEFAULT_FEEDFORWARD, IA3_DEFAULT_TARGETS
from peftkit.methods.ia3_layers import IA3Layer

pytestmark = pytest.mark.usefixtures("torch_single_thread")

# feedforward modules of the toys (the transformers models use peft's defaults)
FEEDFORWARD = {"conv2d": ["point"], "gpt2_conv1d": ["c_proj"]}


class GroupedConv(nn.Module):
    """A grouped 3x3 convolution: an input-channel scale merges differently per group."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 6, 3, padding=1, groups=2)
        self.head = nn.Linear(6, 2)

    def forward(self, x):
        return self.head(self.conv(x).mean((-1, -2)))


class Conv3dNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv3d(2, 4, 3, padding=1)
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        return self.head(torch.relu(self.conv(x)).mean((-1, -2, -3)))


def _seeded(cls):
    def make():
        torch.manual_seed(0)
        return cls().eval()
    return make


GROUPED = Subject("grouped_conv", _seeded(GroupedConv), ["conv"],
                  lambda b: torch.randn(b, 4, 5, 5, generator=torch.Generator().manual_seed(1)))
CONV3D = Subject("conv3d", _seeded(Conv3dNet), ["conv"],
                 lambda b: torch.randn(b, 2, 4, 4, 4, generator=torch.Generator().manual_seed(1)))


class TestIA3Contract(MethodContract):
    SUBJECTS = [hf_subject("llama"), hf_subject("gpt2"), toy_subject("conv2d"), toy_subject("gpt2_conv1d")]
    marker = "ia3_l"

    def config(self, subject, **kw):
        # init_ia3_weights=False draws the vectors from N(0, 1): far from the identity, as after training
        return pk.IA3Config(**{"target_modules": subject.targets, "feedforward_modules": FEEDFORWARD.get(subject.name),
                               "init_ia3_weights": False, **kw})

    def identity_config(self, subject):
        return self.config(subject, init_ia3_weights=True)

    def combine(self, layer, x, base, out_a, out_b):
        # (IA)³ multiplies: two active adapters scale by the product of their vectors
        v = (layer.ia3_l["a"] * layer.ia3_l["b"]).flatten()[None]
        if layer.is_feedforward["a"]:
            return layer.base_layer(x * layer.broadcast(v, x.dim()))
        return base * layer.broadcast(v, base.dim())


# ---------------------------------------------------------------------------------------------- defaults
@pytest.mark.parametrize("family", ["llama", "gpt2", "t5", "bert"])
def test_default_targets_and_feedforward_modules_match_peft(family):
    ours = pk.get_peft_model(make_model(family), pk.IA3Config())
    theirs = peft.get_peft_model(make_model(family), peft.IA3Config())
    got = {k: m.is_feedforward["default"] for k, m in ours.get_base_model().named_modules() if isinstance(m, IA3Layer)}
    want = {k: m.is_feedforward for k, m in theirs.get_base_model().named_modules()
            if isinstance(m, peft.tuners.ia3.IA3Layer)}
    assert got == want and any(got.values()) and not all(got.values())
    cfg = ours.peft_config["default"]
    assert set(cfg.feedforward_modules) <= set(cfg.target_modules)  # peft reloads the saved config


def test_default_tables_are_peft_s():
    from peft.utils.constants import (
        TRANSFORMERS_MODELS_TO_IA3_FEEDFORWARD_MODULES_MAPPING as PEFT_FF,
    )
    from peft.utils.constants import (
        TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING as PEFT_TARGETS,
    )

    assert IA3_DEFAULT_TARGETS == PEFT_TARGETS
    assert IA3_DEFAULT_FEEDFORWARD == PEFT_FF


# ---------------------------------------------------------------------------------------------- interop
INTEROP = {
    "llama_defaults": (hf_subject("llama"), {}),
    "gpt2_defaults_conv1d": (hf_subject("gpt2"), {}),
    "llama_all_linear": (hf_subject("llama"), dict(target_modules="all-linear", feedforward_modules=["down_proj"])),
    # peft makes down_proj feedforward by default although the targets spell it differently
    "llama_hand_targets": (hf_subject("llama"), dict(target_modules=["q_proj", "mlp.down_proj"])),
    "conv2d": (toy_subject("conv2d"), dict(target_modules=["conv", "point"], feedforward_modules=["point"])),
    "grouped_conv_feedforward": (GROUPED, dict(target_modules=["conv"], feedforward_modules=["conv"])),
    "conv3d": (CONV3D, dict(target_modules=["conv"], feedforward_modules=[])),
}


@pytest.mark.parametrize("case", INTEROP)
def test_interop_with_peft(case, tmp_path):
    subject, kwargs = INTEROP[case]
    assert_interop_both_ways(subject, pk.IA3Config, peft.IA3Config, dict(init_ia3_weights=False, **kwargs), tmp_path)


def test_layers_to_transform_is_saved_so_that_peft_adapts_the_same_modules(tmp_path):
    subject = hf_subject("llama")
    model = pk.get_peft_model(subject.make_base(), pk.IA3Config(layers_to_transform=[1], init_ia3_weights=False))
    keys = [k for k, m in model.get_base_model().named_modules() if isinstance(m, IA3Layer)]
    assert keys == [f"model.layers.1.{m}" for m in ("self_attn.k_proj", "self_attn.v_proj", "mlp.down_proj")]
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "adapter_config.json").read_text())
    assert "layers_to_transform" not in saved and sorted(saved["target_modules"]) == sorted(keys)
    assert saved["feedforward_modules"] == ["model.layers.1.mlp.down_proj"]
    theirs = peft.PeftModel.from_pretrained(subject.make_base(), tmp_path)
    torch.testing.assert_close(subject.run(theirs), subject.run(model), atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------------------------- layer details
def test_vectors_have_peft_shapes():
    model = pk.get_peft_model(make_model("gpt2"), pk.IA3Config(target_modules=["c_attn", "mlp.c_proj"],
                                                                feedforward_modules=["mlp.c_proj"]))
    layers = dict(model.get_base_model().transformer.h[0].named_modules())
    assert layers["attn.c_attn"].ia3_l["default"].shape == (96, 1)  # output features of Conv1D(32 -> 96)
    assert layers["mlp.c_proj"].ia3_l["default"].shape == (1, 128)  # input features of Conv1D(128 -> 32)
    assert model.peft_config["default"].fan_in_fan_out  # recorded, as peft does for Conv1D


def test_feedforward_scales_the_input_and_others_the_output():
    conv = toy_subject("conv2d")
    model = pk.get_peft_model(conv.make_base(), pk.IA3Config(target_modules=["conv", "point"],
                                                             feedforward_modules=["point"], init_ia3_weights=False))
    net = model.get_base_model()
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        v_out, v_in = net.conv.ia3_l["default"], net.point.ia3_l["default"]
        torch.testing.assert_close(net.conv(x), net.conv.base_layer(x) * v_out)
        h = torch.randn(2, 6, 4, 4)
        torch.testing.assert_close(net.point(h), net.point.base_layer(h * v_in))


def test_merge_with_a_zero_scale_unmerges_exactly():
    subject = hf_subject("gpt2")
    model = pk.get_peft_model(subject.make_base(), pk.IA3Config(init_ia3_weights=False))
    layer = model.get_base_model().transformer.h[0].attn.c_attn
    with torch.no_grad():
        layer.ia3_l["default"][:5] = 0.0
    before = {k: v.clone() for k, v in layer.base_layer.state_dict().items()}
    expected = subject.run(model)
    model.merge_adapter()
    torch.testing.assert_close(subject.run(model), expected, atol=1e-5, rtol=0)
    assert (layer.base_layer.bias[:5] == 0).all()  # the output scale reaches the bias
    model.unmerge_adapter()
    assert all(torch.equal(layer.base_layer.state_dict()[k], v) for k, v in before.items())


def test_safe_merge_refuses_non_finite_scales_and_changes_nothing():
    model = pk.get_peft_model(make_model("llama"), pk.IA3Config())
    layer = model.get_base_model().model.layers[0].self_attn.k_proj
    layer.ia3_l["default"].data[0] = float("inf")
    before = layer.base_layer.weight.clone()
    with pytest.raises(pk.AdapterError, match="NaN/inf"):
        model.merge_adapter(safe_merge=True)
    assert torch.equal(layer.base_layer.weight, before) and not layer.merged_adapters


def test_adapters_may_disagree_on_which_modules_are_feedforward():
    subject = toy_subject("conv2d")
    model = pk.get_peft_model(subject.make_base(), pk.IA3Config(target_modules=["point"], feedforward_modules=["point"]))
    model.add_adapter("out", pk.IA3Config(target_modules=["point"]))
    point = model.get_base_model().point
    assert point.ia3_l["default"].shape == (1, 6, 1, 1) and point.ia3_l["out"].shape == (1, 5, 1, 1)


# ---------------------------------------------------------------------------------------------- training and errors
def test_training_from_yaml_lowers_the_loss(tmp_path):
    losses = train_losses(tmp_path, {"method": "ia3", "target_modules": "all-linear", "feedforward_modules": ["down_proj"]},
                          max_steps=20, lr=5e-2)
    assert losses[-1] < 0.8 * losses[0], losses


def test_bad_configs_are_refused_with_the_field_named():
    with pytest.raises(pk.ConfigError, match=r"feedforward_modules.*\['down_proj'\] are not in target_modules"):
        pk.IA3Config(target_modules=["k_proj", "v_proj"], feedforward_modules=["down_proj"])
    with pytest.raises(pk.ConfigError, match="init_ia3_weights"):
        pk.IA3Config(init_ia3_weights="sometimes")
    with pytest.raises(pk.ConfigError, match="unknown field for IA3Config; did you mean 'feedforward_modules'"):
        pk.IA3Config(feedforward_module=["x"])


def test_unsupported_layers_and_unknown_architectures_are_refused():
    base = make_model("llama")
    with pytest.raises(pk.TargetError, match="embed_tokens.*Embedding.*IA3 cannot adapt"):
        pk.get_peft_model(base, pk.IA3Config(target_modules=["embed_tokens", "k_proj"]))
    assert not any(isinstance(m, pk.AdapterLayer) for m in base.modules())  # left as it was
    with pytest.raises(pk.TargetError, match="no default for model type None"):
        pk.get_peft_model(toy_subject("conv2d").make_base(), pk.IA3Config())
