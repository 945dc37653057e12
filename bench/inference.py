"""B4: unmerged single-adapter inference vs the base model alone: prefill (the whole prompt) and
one decode step (one new token per row against the prompt's KV cache), peftkit beside peft."""

from __future__ import annotations

import copy

import torch
from common import Setup, lora_models, timed_round_robin

from peftkit.compat import cache_kwarg, output_cache


def decode_step(model: torch.nn.Module, token: torch.Tensor, cache) -> None:
    model(input_ids=token, use_cache=True, **{cache_kwarg(model): cache})
    cache.crop(-token.shape[1])  # back to the prompt, so every repeat decodes the same step


def run(setup: Setup, warmup: int, reps: int) -> None:
    theirs, ours = lora_models(setup, 0.0)
    models = {"base": copy.deepcopy(setup.base).eval(), "peft": theirs.eval(), "peftkit": ours.eval()}
    ids = setup.input_ids
    token = ids[:, -1:]
    with torch.no_grad():
        a, b = theirs(input_ids=ids).logits, ours(input_ids=ids).logits
        torch.testing.assert_close(a, b, atol=1e-3 if setup.dtype == torch.float32 else 5e-2, rtol=1e-3)
        print(f"check: prefill logits agree (max difference {(a - b).abs().max().item():.1e})")
        caches = {name: output_cache(m(input_ids=ids, use_cache=True)) for name, m in models.items()}
        prefill = timed_round_robin({n: (lambda m=m: m(input_ids=ids, use_cache=False)) for n, m in models.items()},
                                    setup.device, warmup, reps)
        decode = timed_round_robin(
            {n: (lambda m=m, c=caches[n]: decode_step(m, token, c)) for n, m in models.items()},
            setup.device, warmup, reps * 4)
    print(f"\nB4  unmerged LoRA inference / base inference, batch {tuple(ids.shape)} (ms in brackets)")
    print(f"{'':10s} {'peft':>16s} {'peftkit':>16s} {'peftkit/peft':>13s}")
    for label, times in (("prefill", prefill), ("decode", decode)):
        base, a, b = times["base"], times["peft"], times["peftkit"]
        print(f"{label:10s} {a / base:7.3f} ({a * 1e3:6.1f}) {b / base:7.3f} ({b * 1e3:6.1f}) {b / a:13.2f}")
