"""lora_bias on quantized bases: the bias on lora_B works like on a dense base (forward on the plain
path, merged into the base layer's own bias, restored exactly by unmerge)."""

from __future__ import annotations

import pytest
import torch
from quantized_models import BACKENDS, INPUT_IDS, quantized_llama

import peftkit as pk

pytestmark = pytest.mark.usefixtures("torch_single_thread")


def config() -> pk.LoraConfig:
    return pk.LoraConfig(r=4, target_modules=["q_proj", "v_proj"], lora_bias=True, init_lora_weights=False)


@pytest.mark.parametrize("backend", BACKENDS)
def test_lora_bias_on_a_quantized_base(backend):
    quantized, reference = quantized_llama(backend, attention_bias=True)
    q, r = pk.get_peft_model(quantized, config()), pk.get_peft_model(reference, config())
    with torch.no_grad():
        for name, p in q.named_parameters():
            if "lora_B" in name and name.endswith("bias"):
                p.normal_()
    pk.set_peft_model_state_dict(r, pk.get_peft_model_state_dict(q))
    with torch.no_grad():
        got, expected = q(INPUT_IDS).logits, r(INPUT_IDS).logits
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    layer = q.base_model.model.model.layers[0].self_attn.q_proj
    before = layer.base_layer.bias.detach().clone()
    lora_b = layer.lora_B["default"]
    q.merge_adapter()
    added = layer.scaling["default"] * lora_b.bias.detach()
    torch.testing.assert_close(layer.base_layer.bias.float(), (before.float() + added), atol=1e-3, rtol=1e-3)
    q.unmerge_adapter()
    assert torch.equal(layer.base_layer.bias, before)
