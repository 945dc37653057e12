"""B6: DoRA training step / frozen-base step (dropout 0 and 0.05) and its memory (GPU max
allocated; CPU bytes saved for backward), peftkit beside peft. One extra peftkit row runs peft's
dropout semantics (``dora_base_sees_dropout``: the base part of the delta sees the dropped input,
a second full matmul), to show what exact peft numbers under dropout cost."""

from __future__ import annotations

import copy
from contextlib import contextmanager

from common import TARGETS, Setup
from training import paired_models, print_ratios, step_ratios

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


def run(setup: Setup, warmup: int, reps: int) -> None:
    models = paired_models(setup, dora_models)
    models[PEFT_DROPOUT] = models["peftkit dropout=0.05"]  # the same model, run with peft's semantics
    rows = step_ratios(setup, models, warmup, reps, context=lambda name: peft_dropout(name == PEFT_DROPOUT))
    print_ratios("B6  DoRA r=16 on all 7 projections, ratios to the frozen-base step", rows)
