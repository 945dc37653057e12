"""B3: a batch that mixes adapters row by row (``adapter_names=``) vs the same batch through one
adapter, for peftkit and peft, with 4 and 32 distinct adapters."""

from __future__ import annotations

import copy

import torch
from common import TARGETS, Setup, timed_round_robin

ROWS, TOKENS = 64, 16  # the shape in the issue (peft: 1.37x one adapter on CPU at this shape)


def adapter_models(setup: Setup, count: int):
    """``count`` LoRA adapters with distinct random weights, identical in peft and peftkit."""
    import peft

    import peftkit

    kw = dict(r=16, lora_alpha=32, target_modules=TARGETS, init_lora_weights=False)
    theirs = peft.get_peft_model(copy.deepcopy(setup.base), peft.LoraConfig(**kw), adapter_name="a0")
    ours = peftkit.get_peft_model(copy.deepcopy(setup.base), peftkit.LoraConfig(**kw), adapter_name="a0")
    for i in range(1, count):
        theirs.add_adapter(f"a{i}", peft.LoraConfig(**kw))
        ours.add_adapter(f"a{i}", peftkit.LoraConfig(**kw))
    ours.load_state_dict(theirs.state_dict())
    return theirs.eval(), ours.eval()


def run(setup: Setup, warmup: int, reps: int) -> None:
    count = 32
    theirs, ours = adapter_models(setup, count)
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, setup.base.config.vocab_size, (ROWS, TOKENS), generator=gen).to(setup.device)
    layouts = {n: [f"a{i % n}" for i in range(ROWS)] for n in (4, 32)}
    with torch.no_grad():
        for names in layouts.values():  # same numbers first
            a = theirs(input_ids=ids, adapter_names=names).logits
            b = ours(input_ids=ids, adapter_names=names).logits
            torch.testing.assert_close(a, b, atol=1e-3 if setup.dtype == torch.float32 else 5e-2, rtol=1e-3)
        print(f"check: mixed-batch logits agree (max difference {(a - b).abs().max().item():.1e})")
        fns = {}
        for lib, model in (("peft", theirs), ("peftkit", ours)):
            fns[f"{lib} one"] = lambda m=model: m(input_ids=ids)
            for n, names in layouts.items():
                fns[f"{lib} mixed {n}"] = lambda m=model, names=names: m(input_ids=ids, adapter_names=names)
        times = timed_round_robin(fns, setup.device, warmup, reps)
    print(f"\nB3  mixed-adapter batch forward, {ROWS} rows x {TOKENS} tokens, ratio to one adapter (ms in brackets)")
    print(f"{'':12s} {'peft':>16s} {'peftkit':>16s} {'peftkit/peft':>13s}")
    for label in ("one", "mixed 4", "mixed 32"):
        a, b = times[f"peft {label}"], times[f"peftkit {label}"]
        ra, rb = a / times["peft one"], b / times["peftkit one"]
        print(f"{label:12s} {ra:7.2f} ({a * 1e3:6.1f}) {rb:7.2f} ({b * 1e3:6.1f}) {b / a:13.2f}")
