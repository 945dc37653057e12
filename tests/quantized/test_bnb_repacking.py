"""bitsandbytes' CPU inference repacking, which ``peft`` leaves unguarded.

On CPUs with AVX512-BF16 (``support_avx512bf16_for_cpu``), one eval-mode forward of a ``Linear4bit``
on an input without gradient rewrites its weight into an inference layout; from then on the layer
returns no input gradient, even in training. The tests force the flag on, so they show the trap on
any CPU (on one without the instructions the repacked layer also computes wrong outputs).
"""

from __future__ import annotations

import copy

import pytest
import torch
from quantized_models import INPUT_IDS, quantized_llama

import peftkit as pk
from peftkit.quantized.bnb import is_linear4bit, is_repacked
from peftkit.quantized.loading import dequantize_model

pytestmark = pytest.mark.usefixtures("torch_single_thread")
WIDE = dict(hidden_size=64, intermediate_size=128)  # bitsandbytes repacks only rows of >= 64 values (its block)


def _force_repacking(model: torch.nn.Module) -> list[torch.nn.Module]:
    layers = [m for m in model.modules() if is_linear4bit(m)]
    for layer in layers:
        layer.support_avx512bf16_for_cpu = True  # what bitsandbytes sets on such CPUs
    return layers


def _evaluate(model: torch.nn.Module) -> None:
    model.eval()
    with torch.no_grad():
        model(INPUT_IDS)
    model.train()


def test_the_trap_is_real_without_the_guard():
    """A bare bitsandbytes layer, as bitsandbytes ships it: after one eval forward, training gets
    no input gradient (with the instructions) or wrong outputs and gradients (without them). This
    is what the guard exists for."""
    bnb = pytest.importorskip("bitsandbytes")

    dense = torch.nn.Linear(64, 128, bias=False)
    layer = bnb.nn.Linear4bit(64, 128, bias=False, compute_dtype=torch.float32, quant_type="nf4")
    layer.load_state_dict(dense.state_dict())
    layer = layer.to("cpu")  # bitsandbytes quantizes here
    weight = bnb.functional.dequantize_4bit(layer.weight.data, layer.weight.quant_state)
    layer.support_avx512bf16_for_cpu = True
    layer.eval()
    with torch.no_grad():
        layer(torch.randn(2, 64))
    assert is_repacked(layer)
    layer.train()
    x = torch.randn(2, 64, requires_grad=True)
    y = layer(x)
    if y.requires_grad:
        y.sum().backward()
    right = x.detach().requires_grad_(True)
    (right @ weight.t()).sum().backward()
    assert x.grad is None or not torch.allclose(x.grad, right.grad, atol=1e-3)


def test_evaluate_then_train_gives_the_dequantized_reference_gradients():
    quantized, reference = quantized_llama("bnb-nf4", **WIDE)
    layers = _force_repacking(quantized)  # as bitsandbytes sets it on an AVX512-BF16 CPU
    config = pk.LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)  # MLPs stay un-adapted
    model = pk.get_peft_model(quantized, config)
    ref = pk.get_peft_model(reference, config)
    pk.set_peft_model_state_dict(ref, pk.get_peft_model_state_dict(model))
    _evaluate(model)  # the exact_match evaluation a run does before training
    assert not any(is_repacked(layer) or layer.support_avx512bf16_for_cpu for layer in layers)
    for m in (model, ref):
        m.train()
        m.zero_grad()
        m(INPUT_IDS, labels=INPUT_IDS).loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    ref_grads = {n: p.grad for n, p in ref.named_parameters() if p.requires_grad}
    for name, grad in grads.items():  # layer 0's adapters see gradients through layer 1's un-adapted MLP
        assert torch.allclose(grad, ref_grads[name], rtol=1e-5, atol=1e-7), name


def test_a_layer_repacked_before_peftkit_saw_it_is_unpacked():
    """Repacking is lossy (block scales in bfloat16), so the reference is the layer as unpacked."""
    quantized, _ = quantized_llama("bnb-nf4", **WIDE)
    _force_repacking(quantized)
    _evaluate(quantized)  # an evaluation before the adapter was attached
    assert all(is_repacked(m) for m in quantized.modules() if is_linear4bit(m))
    reference = dequantize_model(copy.deepcopy(quantized))  # reads each weight unpacked
    model = pk.get_peft_model(quantized, pk.LoraConfig(r=4, target_modules=["q_proj"], init_lora_weights=False))
    assert not any(is_repacked(m) for m in model.modules() if is_linear4bit(m))
    reference = pk.get_peft_model(reference, pk.LoraConfig(r=4, target_modules=["q_proj"], init_lora_weights=False))
    pk.set_peft_model_state_dict(reference, pk.get_peft_model_state_dict(model))
    for m in (model, reference):
        m.train()
        m(INPUT_IDS, labels=INPUT_IDS).loss.backward()
    for (name, p), q in zip(((n, p) for n, p in model.named_parameters() if p.requires_grad),
                            (p for p in reference.parameters() if p.requires_grad)):
        assert torch.allclose(p.grad, q.grad, rtol=1e-5, atol=1e-7), name


def test_merging_reads_a_repacked_weight_in_its_true_layout():
    quantized, reference = quantized_llama("bnb-nf4", **WIDE)
    model = pk.get_peft_model(quantized, pk.LoraConfig(r=4, target_modules=["q_proj"], init_lora_weights=False))
    ref = pk.get_peft_model(reference, pk.LoraConfig(r=4, target_modules=["q_proj"], init_lora_weights=False))
    pk.set_peft_model_state_dict(ref, pk.get_peft_model_state_dict(model))
    _force_repacking(model)
    _evaluate(model)
    with pk.quantized.merge_tolerance(force=True), pytest.warns(UserWarning, match="merged"):
        merged = model.merge_and_unload()
    plain = ref.merge_and_unload()
    for name in ("model.layers.0.self_attn.q_proj", "model.layers.1.self_attn.q_proj"):
        got = pk.quantized.kind_of(merged.get_submodule(name)).dequantize(merged.get_submodule(name))
        exact = plain.get_submodule(name).weight
        assert (got - exact).norm() < 0.2 * exact.norm()  # within 4-bit rounding, not a scrambled layout
