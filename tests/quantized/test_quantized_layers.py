"""Every method that adapts linear layers, on every supported quantized kind, against the same
adapter on the dequantized weights (the backends × methods matrix of the docs):

- injection wraps each quantized projection in the method's ``Quantized<Layer>`` and builds the
  adapter from the layer's logical shape (not the packed weight's);
- forward and backward (loss, every adapter gradient, the input-embedding gradient) match the
  reference, where the base computes with exactly the dequantized weight;
- the base weights stay quantized and frozen, and nothing weight-sized is added to the model;
- mixed-adapter batches give each row its own adapter's output.
"""

from __future__ import annotations

import pytest
import torch
from quantized_models import BACKENDS, INPUT_IDS, RTOL, quantized_llama, relative_error

import peftkit as pk
from peftkit.quantized import QuantizedBase, kind_of

pytestmark = pytest.mark.usefixtures("torch_single_thread")

TARGETS = ["q_proj", "v_proj", "o_proj", "gate_proj", "down_proj"]
METHODS = {
    "lora": lambda: pk.LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS, init_lora_weights=False),
    "lora_rslora_all_linear": lambda: pk.LoraConfig(r=4, target_modules="all-linear", use_rslora=True,
                                                    init_lora_weights="gaussian"),
    "dora": lambda: pk.LoraConfig(r=4, target_modules=TARGETS, use_dora=True, init_lora_weights=False),
    "ia3": lambda: pk.IA3Config(target_modules=["k_proj", "v_proj", "down_proj"], feedforward_modules=["down_proj"],
                                init_ia3_weights=False),
    "loha": lambda: pk.LoHaConfig(r=4, target_modules=TARGETS, init_weights=False),
    "lokr": lambda: pk.LoKrConfig(r=4, target_modules=TARGETS, init_weights=False),
    "vera": lambda: pk.VeraConfig(r=4, target_modules=["q_proj", "o_proj"], init_weights=False),
    "adalora": lambda: pk.AdaLoraConfig(init_r=4, target_r=2, total_step=10, target_modules=TARGETS,
                                        init_lora_weights=False),
}


def adapted_pair(backend: str, method: str):
    quantized, reference = quantized_llama(backend)
    q = pk.get_peft_model(quantized, METHODS[method]())
    r = pk.get_peft_model(reference, METHODS[method]())
    pk.set_peft_model_state_dict(r, pk.get_peft_model_state_dict(q))
    return q, r


def loss_and_grads(model):
    model.train()
    model.zero_grad()
    embeds = model.get_input_embeddings()(INPUT_IDS).detach().requires_grad_(True)
    loss = model(inputs_embeds=embeds, labels=INPUT_IDS).loss
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    return loss.detach(), grads, embeds.grad


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_matches_the_dequantized_reference(backend, method):
    q, r = adapted_pair(backend, method)
    layers = [m for m in q.modules() if isinstance(m, pk.AdapterLayer)]
    assert layers and all(isinstance(m, QuantizedBase) and kind_of(m.base_layer) for m in layers)
    assert all(not m.base_layer.weight.requires_grad for m in layers)
    tol = RTOL[backend]
    q.eval(), r.eval()
    with torch.no_grad():
        assert relative_error(q(INPUT_IDS).logits, r(INPUT_IDS).logits) < tol
    q_loss, q_grads, q_input_grad = loss_and_grads(q)
    r_loss, r_grads, r_input_grad = loss_and_grads(r)
    assert abs(float(q_loss - r_loss)) < tol * float(r_loss)
    assert q_grads.keys() == r_grads.keys() and q_grads
    for name in q_grads:  # int8 activations round the gradients too: a looser bound there
        assert relative_error(q_grads[name], r_grads[name]) < max(tol, 1e-4) * (20 if backend == "bnb-int8" else 1), name
    assert relative_error(q_input_grad, r_input_grad) < max(tol, 1e-4) * (20 if backend == "bnb-int8" else 1)


@pytest.mark.parametrize("backend", BACKENDS)
def test_adds_no_dense_copy_of_the_base(backend):
    quantized, _ = quantized_llama(backend)
    before = {n: (t.dtype, t.numel()) for n, t in quantized.state_dict().items()}
    model = pk.get_peft_model(quantized, METHODS["lora"]())
    after = {n.replace(".base_layer", ""): (t.dtype, t.numel()) for n, t in model.get_base_model().state_dict().items()
             if "lora_" not in n}
    assert after == before  # the same stored tensors, still quantized; only adapter tensors were added
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)


@pytest.mark.parametrize("backend", ["bnb-nf4", "torchao-int8"])
def test_mixed_batch_rows_get_their_own_adapter(backend):
    quantized, _ = quantized_llama(backend)
    model = pk.get_peft_model(quantized, METHODS["lora"]())
    model.add_adapter("other", METHODS["lora"]())
    model.eval()
    with torch.no_grad():
        mixed = model(INPUT_IDS, adapter_names=["other", "default"]).logits
        model.set_adapter("other")
        first = model(INPUT_IDS[:1]).logits
        model.set_adapter("default")
        second = model(INPUT_IDS[1:]).logits
    assert torch.allclose(mixed[0], first[0], atol=1e-5) and torch.allclose(mixed[1], second[0], atol=1e-5)


@pytest.mark.parametrize("backend", ["bnb-nf4", "bnb-int8"])
def test_fused_path_matches_the_plain_path(backend):
    """bitsandbytes 4-bit, and int8 in train mode, take the fused LoRA node (dequantize in forward
    and again in backward); the plain path (the quantized module, then the adapter) gives the same numbers."""
    from peftkit.methods.lora_layers import LoraLinear

    quantized, _ = quantized_llama(backend)
    model = pk.get_peft_model(quantized, METHODS["lora"]())
    fused = loss_and_grads(model)
    LoraLinear.use_fused = False
    try:
        plain = loss_and_grads(model)
    finally:
        LoraLinear.use_fused = True
    assert torch.allclose(fused[0], plain[0], atol=1e-6)
    for name in fused[1]:
        assert torch.allclose(fused[1][name], plain[1][name], atol=1e-6), name
    assert torch.allclose(fused[2], plain[2], atol=1e-6)
