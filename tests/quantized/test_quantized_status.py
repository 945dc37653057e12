"""Status reports name a quantized base's storage (peftkit.status through the quantized kinds' storage_name)."""

from __future__ import annotations

from quantized_models import quantized_llama

import peftkit as pk


def test_quantized_base_reports_its_storage():
    model, _ = quantized_llama("bnb-nf4")
    peft_model = pk.get_peft_model(model, pk.LoraConfig(target_modules=["q_proj", "v_proj"]))
    assert {s.quantization_backend for s in peft_model.get_layer_status()} == {"bnb 4bit"}
    assert peft_model.get_model_status().quantization_backend == "bnb 4bit"


def test_int8_and_plain_layers_together_are_irregular():
    model, _ = quantized_llama("bnb-int8")
    peft_model = pk.get_peft_model(model, pk.LoraConfig(target_modules=["q_proj", "lm_head"]))
    backends = {s.name.rsplit(".", 1)[-1]: s.quantization_backend for s in peft_model.get_layer_status()}
    assert backends == {"q_proj": "bnb 8bit", "lm_head": None}
    assert peft_model.get_model_status().quantization_backend == "irregular"
