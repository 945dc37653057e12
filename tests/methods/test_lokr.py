"""LoKr: the adapter contract on Llama (full and low-rank Kronecker factors) and convolution toys,
peft's factorisation, the Kronecker linear path, interop with peft both ways, training, errors."""

from __future__ import annotations

import peft
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from contract_helpers import train_losses
from method_contract import MethodContract, assert_interop_both_ways, hf_subject, toy_subject
from peft.tuners.lokr.layer import factorization as peft_factorization

import peftkit as pk
from peftkit.methods.lokr import LoKrLayer, factorization

pytestmark = pytest.mark.usefixtures("torch_single_thread")

# r decides which factors exist (peft's rule): r=4 keeps w1 and w2 whole on these sizes, r=1 with
# decompose_both splits both; on the conv toys r=4 gives Conv1d a 3-D w2 and r=1 the flat or
# Tucker (effective conv) w2 factors.
SETTINGS = {
    "llama_full": dict(r=4),
    "llama_lowrank": dict(r=1, decompose_both=True),
    "conv1d": dict(r=4),
    "conv2d": dict(r=1),
    "conv2d_cp": dict(r=1, use_effective_conv2d=True),
}


class TestLoKrContract(MethodContract):
    SUBJECTS = [hf_subject("llama", "all-linear", label="llama_full"),
                hf_subject("llama", "all-linear", label="llama_lowrank"),
                toy_subject("conv1d"), toy_subject("conv2d"), toy_subject("conv2d", label="conv2d_cp")]
    marker = "lokr_"

    def config(self, subject, **kw):
        # init_weights=False: every factor random (peft's option), so the adapter is not the identity
        return pk.LoKrConfig(**{"alpha": 2, "target_modules": subject.targets, "init_weights": False,
                                **SETTINGS[subject.name], **kw})

    def identity_config(self, subject):
        return self.config(subject, init_weights=True)


@pytest.mark.parametrize("init", [True, "lycoris"])
def test_both_identity_initialisations(init):
    subject = toy_subject("conv2d")
    model = pk.get_peft_model(subject.make_base(), pk.LoKrConfig(r=1, target_modules=["conv", "point"], init_weights=init))
    assert torch.equal(subject.run(model), subject.run(subject.make_base()))
    zero = "lokr_w1" if init is True else "lokr_w2_b"
    assert all(not p.any() for n, p in model.named_parameters() if zero + "." in n)


def test_factorization_is_peft_s():
    for dim in range(1, 400):
        for factor in (-1, 1, 2, 3, 4, 8, 16, 50):
            assert factorization(dim, factor) == peft_factorization(dim, factor), (dim, factor)


@pytest.mark.parametrize("settings", [dict(r=8), dict(r=2), dict(r=1, decompose_both=True)],
                         ids=["full", "lowrank_w2", "lowrank_both"])
def test_kronecker_linear_path_equals_the_full_matrix(settings):
    torch.manual_seed(0)
    layer = LoKrLayer(nn.Linear(24, 36), "a", pk.LoKrConfig(alpha=3, init_weights=False, **settings), "lin")
    x = torch.randn(3, 5, 24)
    torch.testing.assert_close(layer.delta("a", x), F.linear(x, layer.delta_weight("a")), atol=1e-6, rtol=1e-5)


INTEROP = {
    "llama_full": (hf_subject("llama"), dict(r=4, target_modules="all-linear")),
    "llama_decompose_both": (hf_subject("llama"), dict(r=1, decompose_both=True, target_modules="all-linear")),
    "llama_factor_and_patterns": (hf_subject("llama"), dict(r=2, decompose_factor=4, target_modules=["q_proj", "up_proj"],
                                                            rank_pattern={"up_proj": 8}, alpha_pattern={"q_proj": 3})),
    "conv1d_3d_kernel_factor": (toy_subject("conv1d"), dict(r=4, target_modules=["conv"])),
    "conv2d": (toy_subject("conv2d"), dict(r=1, target_modules=["conv", "point"])),
    "conv2d_effective": (toy_subject("conv2d"), dict(r=1, target_modules=["conv", "point"], use_effective_conv2d=True)),
}


@pytest.mark.parametrize("case", INTEROP)
def test_interop_with_peft(case, tmp_path):
    subject, kwargs = INTEROP[case]
    assert_interop_both_ways(subject, pk.LoKrConfig, peft.LoKrConfig, dict(alpha=2, init_weights=False, **kwargs), tmp_path)


def test_training_from_yaml_lowers_the_loss(tmp_path):
    losses = train_losses(tmp_path, {"method": "lokr", "r": 4, "alpha": 8, "target_modules": "all-linear"},
                          max_steps=20, lr=5e-2)
    assert losses[-1] < 0.5 * losses[0], losses


def test_bad_configs_are_refused_with_the_field_named():
    with pytest.raises(pk.ConfigError, match=r"r: must be a positive integer.*got -1"):
        pk.LoKrConfig(r=-1)
    with pytest.raises(pk.ConfigError, match=r"decompose_factor: must be -1 .* or a positive integer"):
        pk.LoKrConfig(decompose_factor=0)
    with pytest.raises(pk.ConfigError, match="init_weights"):
        pk.LoKrConfig(init_weights="kaiming")
    with pytest.raises(pk.ConfigError, match="module_dropout: must be a probability"):
        pk.LoKrConfig(module_dropout=-0.1)


def test_unsupported_layers_are_refused_and_the_model_left_as_it_was():
    base = nn.Sequential(nn.Conv3d(2, 4, 3), nn.Flatten(), nn.LazyLinear(2))
    with pytest.raises(pk.TargetError, match=r"'0'.*Conv3d, which LOKR cannot adapt.*nn.Conv1d/Conv2d"):
        pk.get_peft_model(base, pk.LoKrConfig(target_modules=["0"]))
    assert isinstance(base[0], nn.Conv3d)
    with pytest.raises(pk.TargetError, match="no default for model type"):
        pk.get_peft_model(nn.Sequential(nn.Linear(2, 2)), pk.LoKrConfig())
