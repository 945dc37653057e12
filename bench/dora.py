"""B6: DoRA training step / frozen-base step (dropout 0 and 0.05) and its memory (GPU max
allocated; CPU bytes saved for backward), peftkit beside peft. One extra peftkit row runs peft's
dropout semantics (``dora_base_sees_dropout``: the base part of the delta sees the dropped input,
a second full matmul), to show what exact peft numbers under dropout cost."""

from __future__ import annotations

import copy
from contextlib import contextmanager

import torch
from common import TARGETS, Setup, peak_memory, timed_round_robin
from training import check_same_numbers, frozen_step, lora_step

from peftkit.methods.lora_layers import LoraLayer

PEFT_DROPOUT = "peftkit dropout=0.05, peft's dropout"


def dora_models(setup: Setup, dropout: float):
    """The same base and the same (non-trivial) DoRA weights in peft and in peftkit."""
    import peft

    import peftkit

    kw = dict(r=16, lora_alpha=32, lora_dropout=dropout, target_modules=TARGETS, init_lora_weights=False, use_dora=True)
    theirs = peft.get_peft_model(copy.deepcopy(setup.base), peft.LoraConfig(**kw))
    ours = peftkit.get_peft_model(copy.deepcopy(setup.base), peftkit.LoraConfig(**kw))
    ours.load_state_dict(theirs.state_dict())  # same parameter names, magnitudes included
    return theirs, ours


@contextmanager
def peft_dropout(on: bool):
    before = LoraLayer.dora_base_sees_dropout
    LoraLayer.dora_base_sees_dropout = on
    try:
        yield
    finally:
        LoraLayer.dora_base_sees_dropout = before


def step(model, ids, exact_dropout: bool) -> None:
    with peft_dropout(exact_dropout):
        lora_step(model, ids)


def bench_dora(setup: Setup, warmup: int, reps: int) -> list[tuple[str, float, float]]:
    ids = setup.input_ids
    frozen = copy.deepcopy(setup.base).requires_grad_(False)
    models = {}
    for dropout in (0.0, 0.05):
        theirs, ours = dora_models(setup, dropout)
        if dropout == 0.0:
            check_same_numbers(theirs, ours, ids, 1e-4 if setup.dtype == torch.float32 else 2e-2)
        models[f"peft dropout={dropout}"], models[f"peftkit dropout={dropout}"] = theirs.train(), ours.train()
    models[PEFT_DROPOUT] = models["peftkit dropout=0.05"]
    fns = {"frozen": lambda: frozen_step(frozen, ids)}
    fns.update({name: (lambda m=m, e=name == PEFT_DROPOUT: step(m, ids, e)) for name, m in models.items()})
    times = timed_round_robin(fns, setup.device, warmup, reps)
    mem_frozen = peak_memory(lambda: frozen_step(frozen, ids), setup)
    print(f"frozen step: {times['frozen'] * 1e3:.0f} ms, memory {mem_frozen / 2**20:.0f} MiB")
    rows = []
    for name, model in models.items():
        with peft_dropout(name == PEFT_DROPOUT):
            mem = peak_memory(lambda m=model: m(input_ids=ids, labels=ids).loss.backward(), setup)
        model.zero_grad(set_to_none=True)
        rows.append((name, times[name] / times["frozen"], mem / mem_frozen))
    return rows


def run(setup: Setup, warmup: int, reps: int) -> None:
    rows = bench_dora(setup, warmup, reps)
    print("\nB6  DoRA r=16 on all 7 projections, ratios to the frozen-base step")
    print(f"{'':38s} {'step time':>10s} {'memory':>8s}")
    for name, t, m in rows:
        print(f"{name:38s} {t:10.3f} {m:8.3f}")
