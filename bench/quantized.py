"""B8: LoRA on quantized bases (QLoRA), peftkit beside peft on the same base and adapter weights.

For each base (float32, bfloat16, bitsandbytes NF4 with double quantization, bitsandbytes int8,
torchao int8 weight-only): the bytes of the seven projections' weights (what quantization
shrinks; the embeddings and head stay as loaded), and for peft and peftkit the LoRA training step
time and the memory kept for backward, both as ratios to peftkit's step on the float32 base.
Every base runs with ``lora_dropout=0`` (the two libraries then compute the same matmuls, and the
base's own matmuls are ~96% of them at r=16); the float32, NF4 and int8 bases also run with
``lora_dropout=0.05`` (B1's setting, and QLoRA's for models of this size), where the libraries differ.
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
# (base, lora_dropout) pairs measured; dropout > 0 is checked for equal numbers at dropout 0 only
ROWS = [(name, 0.0) for name in BASES] + [("float32", 0.05), ("nf4", 0.05), ("bnb int8", 0.05)]
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


def pair(base: torch.nn.Module, dropout: float = 0.0):
    """peft and peftkit models on two copies of ``base`` with the same (non-trivial) adapter."""
    import peft

    import peftkit

    kw = dict(r=16, lora_alpha=32, lora_dropout=dropout, target_modules=TARGETS, init_lora_weights=False)
    theirs = peft.get_peft_model(copy.deepcopy(base), peft.LoraConfig(**kw))
    ours = peftkit.get_peft_model(copy.deepcopy(base), peftkit.LoraConfig(**kw))
    peftkit.set_peft_model_state_dict(ours, peft.get_peft_model_state_dict(theirs))
    return theirs.train(), ours.train()


def timed_steps(models: dict[tuple, torch.nn.Module], setup: Setup, warmup: int, reps: int) -> dict:
    """Seconds per training step of every model, timed round-robin so that load changes hit all alike.
    bfloat16 is emulated on CPUs without AVX512-BF16 (many times slower), so it runs its own rounds
    (one repeat) beside peftkit on float32, and is scaled to the main rounds by that step."""
    ids = setup.input_ids
    emulated = setup.device.type == "cpu"
    main = {key: m for key, m in models.items() if not (emulated and key[0] == "bfloat16")}
    times = timed_round_robin({key: (lambda m=m: lora_step(m, ids)) for key, m in main.items()},
                              setup.device, warmup, reps)
    slow = {key: m for key, m in models.items() if key not in main}
    if slow:
        anchor = ANCHOR
        extra = timed_round_robin({key: (lambda m=m: lora_step(m, ids)) for key, m in {**slow, anchor: models[anchor]}.items()},
                                  setup.device, 0, 1)
        times.update({key: extra[key] * times[anchor] / extra[anchor] for key in slow})
    return times


# every ratio is to peftkit's step (and memory) on the float32 base without dropout
ANCHOR = ("float32", 0.0, "peftkit")


def run(setup: Setup, warmup: int, reps: int, rows: Optional[list[tuple[str, float]]] = None) -> None:
    """Print the B8 table for ``rows`` ((base, lora_dropout) pairs; default :data:`ROWS`)."""
    ids = setup.input_ids
    rows = list(dict.fromkeys([ANCHOR[:2]] + list(rows or ROWS)))
    models, sizes = {}, {}
    for name, dropout in rows:
        base = make_base(setup, *BASES[name])
        theirs, ours = pair(base, dropout)
        if dropout == 0.0:  # with dropout the two draw different masks
            check_same_numbers(theirs, ours, ids, TOLERANCE[name])
        sizes[name], models[(name, dropout, "peft")], models[(name, dropout, "peftkit")] = projection_bytes(base), theirs, ours
        del base
    times = timed_steps(models, setup, warmup, reps)
    memory = {}
    for key, model in models.items():
        memory[key] = peak_memory(lambda m=model: m(input_ids=ids, labels=ids).loss.backward(), setup)
        model.zero_grad(set_to_none=True)
    weights, step, kept = sizes["float32"], times[ANCHOR], memory[ANCHOR]
    print(f"\nB8  LoRA r=16 on all 7 projections over quantized bases; float32 base: projections "
          f"{weights / 2**20:.0f} MiB, peftkit step {step * 1e3:.0f} ms, kept for backward {kept / 2**20:.0f} MiB")
    print(f"{'base':14s} {'dropout':>7s} {'weights':>8s} {'peft step':>10s} {'peftkit':>8s} {'kit/peft':>9s} "
          f"{'peft mem':>9s} {'peftkit':>8s} {'kit/peft':>9s}")
    for name, dropout in rows:
        t = times[(name, dropout, "peft")], times[(name, dropout, "peftkit")]
        m = memory[(name, dropout, "peft")], memory[(name, dropout, "peftkit")]
        print(f"{name:14s} {dropout:7.2f} {sizes[name] / weights:8.3f} {t[0] / step:10.3f} {t[1] / step:8.3f} "
              f"{t[1] / t[0]:9.3f} {m[0] / kept:9.3f} {m[1] / kept:8.3f} {m[1] / m[0]:9.3f}")
