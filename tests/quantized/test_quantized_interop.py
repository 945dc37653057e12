"""Adapters trained on a quantized base (a few QLoRA steps) move between peftkit and ``peft``:

- peftkit (quantized base) saves -> ``peft`` loads on the same quantized base: same outputs;
- ``peft`` QLoRA adapter -> peftkit on the same quantized base: same outputs;
- a QLoRA adapter loads in peftkit on the full-precision base; the outputs then differ by what
  quantizing the base changed (measured and bounded here, reported in docs/quantization.md).

The quantized bases are made by peftkit's loader (in place, as for a GGUF checkpoint) with the
flags ``peft`` reads (``is_loaded_in_4bit`` ...), so ``peft`` dispatches its own bitsandbytes layers.
The same measurements on the bundled SmolLM2 with the QLoRA quick start's adapter:
``bench/qlora_interop.py`` (numbers in docs/quantization.md).
"""

from __future__ import annotations

import copy

import peft
import pytest
import torch
from quantized_models import INPUT_IDS, quantized_llama, relative_error
from tiny_models import tiny_llama

import peftkit as pk

pytestmark = pytest.mark.usefixtures("torch_single_thread")
TARGETS = ["q_proj", "v_proj", "up_proj", "down_proj"]


def logits(model) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(INPUT_IDS).logits


def train(model, steps: int = 3):
    """A few QLoRA steps: only the adapter trains, the quantized base stays as it is."""
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-2)
    for _ in range(steps):
        model(INPUT_IDS, labels=INPUT_IDS).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return model


def trained_peftkit(backend: str, **lora):
    quantized, _ = quantized_llama(backend)
    base = copy.deepcopy(quantized)
    model = train(pk.get_peft_model(quantized, pk.LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS, **lora)))
    return model, base


@pytest.mark.parametrize("backend", ["bnb-nf4", "bnb-int8"])
@pytest.mark.parametrize("dora", [False, True], ids=["lora", "dora"])
def test_peftkit_qlora_adapter_loads_in_peft_on_the_same_base(tmp_path, backend, dora):
    model, base = trained_peftkit(backend, use_dora=dora)
    model.save_pretrained(tmp_path)
    theirs = peft.PeftModel.from_pretrained(base, tmp_path)
    assert type(theirs.base_model.model.model.layers[0].self_attn.q_proj).__module__.startswith("peft.tuners.lora.bnb")
    tol = 1e-5 if backend == "bnb-nf4" else 1e-2  # bitsandbytes int8: the same kernel, but peft casts around it
    assert relative_error(logits(theirs), logits(model)) < tol


@pytest.mark.parametrize("backend", ["bnb-nf4", "bnb-int8"])
def test_peft_qlora_adapter_loads_in_peftkit(tmp_path, backend):
    quantized, _ = quantized_llama(backend)
    mine_base = copy.deepcopy(quantized)
    theirs = train(peft.get_peft_model(quantized, peft.LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS)))
    theirs.save_pretrained(tmp_path)
    mine = pk.PeftModel.from_pretrained(mine_base, tmp_path)
    assert isinstance(mine.base_model.model.model.layers[0].self_attn.q_proj, pk.quantized.QuantizedBase)
    tol = 1e-5 if backend == "bnb-nf4" else 1e-2
    assert relative_error(logits(mine), logits(theirs)) < tol


def test_qlora_adapter_on_the_full_precision_base(tmp_path):
    """The adapter was trained against the dequantized weights; on the original ones the outputs
    move by what 4-bit quantization moved them (a tiny random model: ~10% of the logits' norm;
    with the adapter or without, the gap is the same)."""
    model, _ = trained_peftkit("bnb-nf4")
    model.save_pretrained(tmp_path)
    full = pk.PeftModel.from_pretrained(tiny_llama(), tmp_path)
    with_adapter = relative_error(logits(full), logits(model))
    with model.disable_adapter(), full.disable_adapter():
        without = relative_error(logits(full), logits(model))
    assert 0.0 < with_adapter < 0.3 and with_adapter == pytest.approx(without, rel=0.5)
