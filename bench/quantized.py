"""B7: LoRA on quantized bases (QLoRA), peftkit beside peft on the same base and adapter weights.

For each base (float32, bfloat16, bitsandbytes NF4 with double quantization, bitsandbytes int8,
torchao int8 weight-only): the bytes of the seven projections' weights (what quantization
shrinks; the embeddings and head stay as loaded), and for peft and peftkit the LoRA training step
time and the memory kept for backward, both as ratios to peftkit's step on the float32 base.
4-bit compute runs in float32 (``compute_dtype``): bfloat16 matmuls are only fast on CPUs with
AVX512-BF16, which the development box lacks (its bfloat16 row shows what that costs).
"""

from __future__ import annotations

import copy
from typing import Optional

import torch
from common import TARGETS, Setup, peak_memory, timed_round_robin
from training import check_same_numbers, lora_step

BASES: dict[str, tuple[torch.dtype, Optional[dict]]] = {
    "float32": (torch.float32, None),
    "bfloat16": (torch.bfloat16, None),
    "nf4": (torch.float32, dict(backend="bnb", bits=4, quant_type="nf4", double_quant=True, compute_dtype="float32")),
    "bnb int8": (torch.float32, dict(backend="bnb", bits=8)),
    "torchao int8": (torch.float32, dict(backend="torchao", bits=8)),
}
# how closely peft and peftkit agree before timing: int8 bitsandbytes rounds activations per call
TOLERANCE = {"float32": 1e-4, "bfloat16": 2e-2, "nf4": 1e-4, "bnb int8": 2e-2, "torchao int8": 1e-4}


def make_base(setup: Setup, dtype: torch.dtype, quantization: Optional[dict]) -> torch.nn.Module:
    from peftkit.quantized.loading import QuantizationConfig, quantize_model

    base = copy.deepcopy(setup.base).to(dtype)
    return base if quantization is None else quantize_model(base, QuantizationConfig(**quantization))


def projection_bytes(model: torch.nn.Module) -> int:
    """Bytes of the adapted projections' stored weights (quantized: values plus statistics)."""
    from peftkit.quantized import kind_of

    total = 0
    for name, module in model.named_modules():
        if name.split(".")[-1] in TARGETS:
            kind = kind_of(module)
            total += kind.weight_bytes(module) if kind else module.weight.numel() * module.weight.element_size()
    return total


def pair(base: torch.nn.Module):
    """peft and peftkit models on two copies of ``base`` with the same (non-trivial) adapter."""
    import peft

    import peftkit

    kw = dict(r=16, lora_alpha=32, lora_dropout=0.0, target_modules=TARGETS, init_lora_weights=False)
    theirs = peft.get_peft_model(copy.deepcopy(base), peft.LoraConfig(**kw))
    ours = peftkit.get_peft_model(copy.deepcopy(base), peftkit.LoraConfig(**kw))
    peftkit.set_peft_model_state_dict(ours, peft.get_peft_model_state_dict(theirs))
    return theirs.train(), ours.train()


def run(setup: Setup, warmup: int, reps: int) -> None:
    ids = setup.input_ids
    rows, reference = [], None
    for name, (dtype, quantization) in BASES.items():
        base = make_base(setup, dtype, quantization)
        theirs, ours = pair(base)
        check_same_numbers(theirs, ours, ids, TOLERANCE[name])
        # bfloat16 is emulated on CPUs without AVX512-BF16: one repeat, no warm-up
        slow = name == "bfloat16" and setup.device.type == "cpu"
        times = timed_round_robin({"peft": lambda: lora_step(theirs, ids), "peftkit": lambda: lora_step(ours, ids)},
                                  setup.device, 0 if slow else warmup, 1 if slow else reps)
        memory = {label: peak_memory(lambda m=m: m(input_ids=ids, labels=ids).loss.backward(), setup)
                  for label, m in (("peft", theirs), ("peftkit", ours))}
        theirs.zero_grad(set_to_none=True), ours.zero_grad(set_to_none=True)
        reference = reference or (projection_bytes(base), times["peftkit"], memory["peftkit"])
        rows.append((name, projection_bytes(base), times, memory))
        del base, theirs, ours
    weights, step, kept = reference
    print(f"\nB7  LoRA r=16 on all 7 projections over quantized bases; float32 base: projections "
          f"{weights / 2**20:.0f} MiB, peftkit step {step * 1e3:.0f} ms, kept for backward {kept / 2**20:.0f} MiB")
    print(f"{'base':14s} {'weights':>8s} {'peft step':>10s} {'peftkit':>8s} {'kit/peft':>9s} "
          f"{'peft mem':>9s} {'peftkit':>8s} {'kit/peft':>9s}")
    for name, size, times, memory in rows:
        print(f"{name:14s} {size / weights:8.3f} {times['peft'] / step:10.3f} {times['peftkit'] / step:8.3f} "
              f"{times['peftkit'] / times['peft']:9.3f} {memory['peft'] / kept:9.3f} {memory['peftkit'] / kept:8.3f} "
              f"{memory['peftkit'] / memory['peft']:9.3f}")
