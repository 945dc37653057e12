"""B1 (LoRA training step / frozen-base step, dropout 0 and 0.05) and B2 (peak memory: GPU max
allocated; CPU bytes saved for backward), peftkit beside peft."""

from __future__ import annotations

import copy
from contextlib import nullcontext
from typing import Callable, ContextManager

import torch
from common import Setup, lora_models, peak_memory, timed_round_robin


def frozen_step(model: torch.nn.Module, ids: torch.Tensor) -> None:
    """The floor: forward + backward to the input embeddings, every weight frozen."""
    embeds = model.get_input_embeddings()(ids).detach().requires_grad_(True)
    model(inputs_embeds=embeds, labels=ids).loss.backward()


def lora_step(model: torch.nn.Module, ids: torch.Tensor) -> None:
    model(input_ids=ids, labels=ids).loss.backward()
    model.zero_grad(set_to_none=True)


def check_same_numbers(theirs, ours, ids: torch.Tensor, tol: float) -> None:
    """Both libraries give the same loss and adapter gradients (dropout 0)."""
    a, b = theirs(input_ids=ids, labels=ids).loss, ours(input_ids=ids, labels=ids).loss
    a.backward(), b.backward()
    grads_a = {n: p.grad for n, p in theirs.named_parameters() if p.requires_grad}
    grads_b = {n: p.grad for n, p in ours.named_parameters() if p.requires_grad}
    assert grads_a.keys() == grads_b.keys()
    torch.testing.assert_close(a, b, atol=tol, rtol=tol)
    worst = max((grads_a[n] - grads_b[n]).abs().max().item() / (grads_a[n].abs().max().item() + 1e-12) for n in grads_a)
    assert worst < tol * 10, f"gradients differ (worst relative {worst:.2e})"
    theirs.zero_grad(set_to_none=True), ours.zero_grad(set_to_none=True)
    print(f"check: same loss ({a.item():.6f}) and gradients (worst relative difference {worst:.1e})")


def paired_models(setup: Setup, make_pair: Callable) -> dict[str, torch.nn.Module]:
    """``make_pair(setup, dropout)`` -> (peft model, peftkit model) at dropout 0 and 0.05, in train
    mode, named "peft dropout=0.0" etc.; the dropout-0 pair is first checked to compute the same."""
    models = {}
    for dropout in (0.0, 0.05):
        theirs, ours = make_pair(setup, dropout)
        if dropout == 0.0:
            check_same_numbers(theirs, ours, setup.input_ids, 1e-4 if setup.dtype == torch.float32 else 2e-2)
        models[f"peft dropout={dropout}"], models[f"peftkit dropout={dropout}"] = theirs.train(), ours.train()
    return models


def step_ratios(setup: Setup, models: dict[str, torch.nn.Module], warmup: int, reps: int,
                context: Callable[[str], ContextManager] = lambda name: nullcontext()) -> list[tuple[str, float, float]]:
    """``(name, step time / frozen step, memory / frozen step)`` per model; ``context(name)`` is
    entered around each of that model's steps (a setting that differs between rows)."""
    ids = setup.input_ids
    frozen = copy.deepcopy(setup.base).requires_grad_(False)

    def step(name: str, model: torch.nn.Module) -> None:
        with context(name):
            lora_step(model, ids)

    fns = {"frozen": lambda: frozen_step(frozen, ids)}
    fns.update({name: (lambda name=name, m=m: step(name, m)) for name, m in models.items()})
    times = timed_round_robin(fns, setup.device, warmup, reps)
    mem_frozen = peak_memory(lambda: frozen_step(frozen, ids), setup)
    print(f"frozen step: {times['frozen'] * 1e3:.0f} ms, memory {mem_frozen / 2**20:.0f} MiB")
    rows = []
    for name, model in models.items():
        with context(name):
            mem = peak_memory(lambda m=model: m(input_ids=ids, labels=ids).loss.backward(), setup)
        model.zero_grad(set_to_none=True)
        rows.append((name, times[name] / times["frozen"], mem / mem_frozen))
    return rows


def print_ratios(title: str, rows: list[tuple[str, float, float]]) -> None:
    width = max(len(name) for name, _, _ in rows) + 2
    print(f"\n{title}")
    print(f"{'':{width}s} {'step time':>10s} {'memory':>8s}")
    for name, t, m in rows:
        print(f"{name:{width}s} {t:10.3f} {m:8.3f}")


def run(setup: Setup, warmup: int, reps: int) -> None:
    rows = step_ratios(setup, paired_models(setup, lora_models), warmup, reps)
    print_ratios("B1/B2  LoRA r=16 on all 7 projections, ratios to the frozen-base step", rows)
