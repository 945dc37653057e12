"""What every benchmark shares: the model shapes, identical peft / peftkit models, timing and
memory measurement."""

from __future__ import annotations

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
