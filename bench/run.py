"""Side-by-side benchmarks: peftkit vs Hugging Face peft, in one process, on identical models and
adapter weights. Every benchmark first checks that both libraries compute the same numbers, then
times with warm-up and medians, and prints ratios.

    python bench/run.py --suite cpu            # SmolLM2-135M shape, fp32, batch 4 x 256
    python bench/run.py --suite cpu --quick    # fewer layers and repeats, for a smoke test
    python bench/run.py --suite gpu            # Llama 1B shape, bf16, batch 8 x 1024 (needs CUDA)

Benchmarks so far: B1 (LoRA training step / frozen-base step, dropout 0 and 0.05), B2 (peak
memory: GPU max allocated; CPU bytes saved for backward) and B5 (adapter load, switch, merge).
"""

from __future__ import annotations

import argparse
import copy
import gc
import statistics
import time
from dataclasses import dataclass
from typing import Callable

import torch
from transformers import LlamaConfig, LlamaForCausalLM

SHAPES = {
    # SmolLM2-135M: 30 layers, hidden 576, 9 heads / 3 kv heads, MLP 1536, vocab 49152
    "cpu": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                num_key_value_heads=3, vocab_size=49152, batch=4, seq=256, dtype=torch.float32),
    # Llama-3.2-1B-like: 16 layers, hidden 2048, 32 / 8 heads, MLP 8192, vocab 128256
    "gpu": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                num_key_value_heads=8, vocab_size=128256, batch=8, seq=1024, dtype=torch.bfloat16),
}
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass
class Setup:
    base: LlamaForCausalLM
    input_ids: torch.Tensor
    device: torch.device
    dtype: torch.dtype


def make_setup(suite: str, quick: bool) -> Setup:
    shape = dict(SHAPES[suite])
    batch, seq, dtype = shape.pop("batch"), shape.pop("seq"), shape.pop("dtype")
    if quick:
        shape["num_hidden_layers"] = 4
    device = torch.device("cuda" if suite == "gpu" else "cpu")
    torch.manual_seed(0)
    cfg = LlamaConfig(**shape, max_position_embeddings=4096, attn_implementation="sdpa")
    base = LlamaForCausalLM(cfg).to(device=device, dtype=dtype)
    ids = torch.randint(0, cfg.vocab_size, (batch, seq), device=device)
    return Setup(base, ids, device, dtype)


def lora_models(setup: Setup, dropout: float):
    """The same base and the same (non-trivial) adapter weights in peft and in peftkit."""
    import peft

    import peftkit

    kw = dict(r=16, lora_alpha=32, lora_dropout=dropout, target_modules=TARGETS, init_lora_weights=False)
    theirs = peft.get_peft_model(copy.deepcopy(setup.base), peft.LoraConfig(**kw))
    ours = peftkit.get_peft_model(copy.deepcopy(setup.base), peftkit.LoraConfig(**kw))
    ours.load_state_dict(theirs.state_dict())  # same parameter names, same values
    return theirs, ours


def frozen_step(model: torch.nn.Module, ids: torch.Tensor) -> None:
    """The floor: forward + backward to the input embeddings, every weight frozen."""
    embeds = model.get_input_embeddings()(ids).detach().requires_grad_(True)
    model(inputs_embeds=embeds, labels=ids).loss.backward()


def lora_step(model: torch.nn.Module, ids: torch.Tensor) -> None:
    model(input_ids=ids, labels=ids).loss.backward()
    model.zero_grad(set_to_none=True)


def timed_round_robin(fns: dict[str, Callable[[], None]], device: torch.device, warmup: int, reps: int) -> dict[str, float]:
    """Median seconds per call. Candidates run in turn within each repeat, so a machine that gets
    slower or faster during the run shifts all of them alike and the ratios stay fair."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for rep in range(warmup + reps):
        for name, fn in fns.items():
            if device.type == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize()
            if rep >= warmup:
                times[name].append(time.perf_counter() - t)
    return {name: statistics.median(ts) for name, ts in times.items()}


def saved_bytes(fn: Callable[[], torch.Tensor]) -> int:
    """Bytes of tensors autograd keeps for backward (CPU memory proxy), counted once per storage."""
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor):
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = fn()
    del loss
    return sum(seen.values())


def peak_memory(fn: Callable[[], None], setup: Setup) -> int:
    gc.collect()
    if setup.device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        fn()
        return torch.cuda.max_memory_allocated()
    return saved_bytes(fn)


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


def bench_training(setup: Setup, warmup: int, reps: int) -> list[tuple[str, float, float]]:
    ids = setup.input_ids
    frozen = copy.deepcopy(setup.base).requires_grad_(False)
    models = {}
    for dropout in (0.0, 0.05):
        theirs, ours = lora_models(setup, dropout)
        if dropout == 0.0:
            check_same_numbers(theirs, ours, ids, 1e-4 if setup.dtype == torch.float32 else 2e-2)
        models[f"peft dropout={dropout}"], models[f"peftkit dropout={dropout}"] = theirs.train(), ours.train()
    fns = {"frozen": lambda: frozen_step(frozen, ids)}
    fns.update({name: (lambda m=m: lora_step(m, ids)) for name, m in models.items()})
    times = timed_round_robin(fns, setup.device, warmup, reps)
    mem_frozen = peak_memory(lambda: frozen_step(frozen, ids), setup)
    print(f"frozen step: {times['frozen'] * 1e3:.0f} ms, memory {mem_frozen / 2**20:.0f} MiB")
    rows = []
    for name, model in models.items():
        mem = peak_memory(lambda m=model: m(input_ids=ids, labels=ids).loss.backward(), setup)
        model.zero_grad(set_to_none=True)
        rows.append((name, times[name] / times["frozen"], mem / mem_frozen))
    return rows


def bench_adapter_ops(setup: Setup, reps: int) -> list[tuple[str, float, float]]:
    """B5: load an adapter onto a base, switch between two adapters, merge+unmerge; ms per op."""
    import tempfile

    import peft

    import peftkit

    theirs, ours = lora_models(setup, 0.0)
    folder = tempfile.mkdtemp()
    theirs.save_pretrained(folder)
    libs = {"peft": (peft, theirs), "peftkit": (peftkit, ours)}
    for lib, model in libs.values():
        model.load_adapter(folder, adapter_name="second")
    rows = []
    # fresh base copies made beforehand, so that loading is timed without the copy
    bases = {name: [copy.deepcopy(setup.base) for _ in range(reps + 1)] for name in libs}
    ops = {
        "load adapter": lambda name, lib, m: lib.PeftModel.from_pretrained(bases[name].pop(), folder),
        "set_adapter x2": lambda name, lib, m: (m.set_adapter("second"), m.set_adapter("default")),
        "merge+unmerge": lambda name, lib, m: (m.merge_adapter(), m.unmerge_adapter()),
    }
    for op, fn in ops.items():
        fns = {name: (lambda name=name, lib=lib, m=m: fn(name, lib, m)) for name, (lib, m) in libs.items()}
        times = timed_round_robin(fns, setup.device, 1, reps)
        rows.append((op, times["peft"] * 1e3, times["peftkit"] * 1e3))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", choices=sorted(SHAPES), default="cpu")
    parser.add_argument("--quick", action="store_true", help="4 layers, 1 warm-up, 3 repeats")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--only", nargs="+", default=["b1", "b5"], choices=["b1", "b5"], help="benchmarks to run")
    args = parser.parse_args()
    if args.suite == "gpu" and not torch.cuda.is_available():
        raise SystemExit("--suite gpu needs a CUDA device")
    setup = make_setup(args.suite, args.quick)
    warmup, reps = (1, 3) if args.quick else (2, args.reps)
    print(f"suite {args.suite}: {sum(p.numel() for p in setup.base.parameters()) / 1e6:.0f}M parameters, "
          f"batch {tuple(setup.input_ids.shape)}, {setup.dtype}, torch {torch.__version__}, threads {torch.get_num_threads()}")
    if "b1" in args.only:
        rows = bench_training(setup, warmup, reps)
        print("\nB1/B2  LoRA r=16 on all 7 projections, ratios to the frozen-base step")
        print(f"{'':24s} {'step time':>10s} {'memory':>8s}")
        for name, t, m in rows:
            print(f"{name:24s} {t:10.3f} {m:8.3f}")
    if "b5" in args.only:
        rows = bench_adapter_ops(setup, reps)
        print("\nB5  adapter operations (ms, median)")
        print(f"{'':16s} {'peft':>9s} {'peftkit':>9s} {'ratio':>7s}")
        for op, a, b in rows:
            print(f"{op:16s} {a:9.1f} {b:9.1f} {b / a:7.2f}")


if __name__ == "__main__":
    main()
