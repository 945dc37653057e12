"""Quantized layers peftkit cannot adapt correctly are refused at injection, by module name, with
the reason and what to do instead, and the model is left untouched. Before this, a bitsandbytes
layer was adapted as a plain ``nn.Linear`` (adapters built from the packed weight's shape) and
optimum-quanto layers merged into a weight re-quantized on every call."""

from __future__ import annotations

import pytest
import torch
from quantized_models import quantized_llama
from tiny_models import tiny_llama

import peftkit as pk

pytestmark = pytest.mark.usefixtures("torch_single_thread")


def _refused(model: torch.nn.Module, config, *fragments: str) -> None:
    before = {n: type(m) for n, m in model.named_modules()}
    with pytest.raises(pk.TargetError) as raised:
        pk.get_peft_model(model, config)
    message = str(raised.value)
    for fragment in fragments:
        assert fragment in message, message
    assert {n: type(m) for n, m in model.named_modules()} == before  # nothing was wrapped


def test_optimum_quanto_layers_are_refused():
    pytest.importorskip("optimum.quanto")
    from optimum.quanto import qint8, quantize

    model = tiny_llama()
    quantize(model, weights=qint8)
    _refused(model, pk.LoraConfig(target_modules=["q_proj"]),
             "'model.layers.0.self_attn.q_proj'", "optimum-quanto", "re-quantized", "backend: bnb")


def test_torchao_with_activation_quantization_is_refused():
    pytest.importorskip("torchao")
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_

    model = tiny_llama()
    quantize_(model, Int8DynamicActivationInt8WeightConfig())
    _refused(model, pk.LoraConfig(target_modules=["v_proj"]), "'model.layers.0.self_attn.v_proj'", "Int8Tensor",
             "torchao int8 weight-only")


def test_bitsandbytes_8bit_with_fp16_weights_is_refused():
    bnb = pytest.importorskip("bitsandbytes")

    model = tiny_llama()
    dense = model.model.layers[0].mlp.up_proj
    layer = bnb.nn.Linear8bitLt(dense.in_features, dense.out_features, bias=False, has_fp16_weights=True)
    model.model.layers[0].mlp.up_proj = layer
    _refused(model, pk.LoraConfig(target_modules=["up_proj"]), "'model.layers.0.mlp.up_proj'", "bitsandbytes",
             "Linear4bit and Linear8bitLt")


def test_an_unknown_packed_weight_is_refused():
    class Packed(torch.nn.Module):  # e.g. a GPTQ-style layer storing int32 words as "weight"
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.zeros(32, 4, dtype=torch.int32), requires_grad=False)

        def forward(self, x):
            return x

    model = tiny_llama()
    model.model.layers[1].self_attn.o_proj = Packed()
    _refused(model, pk.LoraConfig(target_modules=["o_proj"]), "'model.layers.1.self_attn.o_proj'",
             "quantized or packed format")


@pytest.mark.parametrize("config", [
    pk.BitFitConfig(target_modules=["q_proj"]),
    pk.LNTuningConfig(target_modules=["q_proj"]),
], ids=["bitfit", "ln_tuning"])
def test_methods_without_a_quantized_factory_refuse_quantized_layers(config):
    quantized, _ = quantized_llama("bnb-nf4")
    _refused(quantized, config, "'model.layers.0.self_attn.q_proj'", "Linear4bit")


@pytest.mark.parametrize("init", ["pissa", "olora"])
def test_initialisations_that_rewrite_the_base_are_refused(init):
    quantized, _ = quantized_llama("bnb-nf4")
    with pytest.raises(pk.TargetError, match="quantized .*pissa.*rounded away"):
        pk.get_peft_model(quantized, pk.LoraConfig(r=4, target_modules=["q_proj"], init_lora_weights=init))
    assert not any(isinstance(m, pk.AdapterLayer) for m in quantized.modules())


def test_adapters_get_the_logical_shape_not_the_packed_one():
    """The bug the issue opens with: on a 4-bit base peft-style dispatch built lora_A (r, 1)."""
    quantized, _ = quantized_llama("bnb-nf4")
    model = pk.get_peft_model(quantized, pk.LoraConfig(r=8, target_modules=["gate_proj"]))
    layer = model.base_model.model.model.layers[0].mlp.gate_proj
    assert layer.base_layer.weight.shape[1] == 1  # packed
    assert layer.lora_A["default"].weight.shape == (8, 32) and layer.lora_B["default"].weight.shape == (64, 8)
