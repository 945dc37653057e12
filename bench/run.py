"""Side-by-side benchmarks: peftkit vs Hugging Face peft, in one process, on identical models and
adapter weights. Every benchmark first checks that both libraries compute the same numbers, then
times with warm-up and medians, and prints ratios.

    python bench/run.py --suite cpu            # SmolLM2-135M shape, fp32, batch 4 x 256
    python bench/run.py --suite cpu --quick    # fewer layers and repeats, for a smoke test
    python bench/run.py --suite gpu            # Llama 1B shape, bf16, batch 8 x 1024 (needs CUDA)
    python bench/run.py --only b3 b4           # a subset

B1 LoRA training step / frozen-base step (dropout 0 and 0.05) and B2 its peak memory
(training.py); B3 mixed-adapter batches (mixed.py); B4 unmerged inference / base inference
(inference.py); B5 adapter load, switch, merge (adapter_ops.py); B6 DoRA training step and
memory (dora.py); B8 LoRA on quantized bases (QLoRA): weight bytes, step time, memory
(quantized.py). Each module has one
``run(setup, warmup, reps)`` that prints its own table. B9, ``peftkit serve`` under load against a
naive ``peft`` server, starts servers and has its own script: ``python bench/serve.py``.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # the sibling modules

from common import SHAPES, make_setup  # noqa: E402

BENCHMARKS = {  # name -> module with run(setup, warmup, reps)
    "b1": "training",  # B1 and B2 come from the same runs
    "b3": "mixed",
    "b4": "inference",
    "b5": "adapter_ops",
    "b6": "dora",
    "b8": "quantized",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", choices=sorted(SHAPES), default="cpu")
    parser.add_argument("--quick", action="store_true", help="4 layers, 1 warm-up, 3 repeats")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--only", nargs="+", default=list(BENCHMARKS), choices=list(BENCHMARKS), help="benchmarks to run")
    args = parser.parse_args()
    if args.suite == "gpu" and not torch.cuda.is_available():
        raise SystemExit("--suite gpu needs a CUDA device")
    setup = make_setup(args.suite, args.quick)
    warmup, reps = (1, 3) if args.quick else (2, args.reps)
    print(f"suite {args.suite}: {sum(p.numel() for p in setup.base.parameters()) / 1e6:.0f}M parameters, "
          f"batch {tuple(setup.input_ids.shape)}, {setup.dtype}, torch {torch.__version__}, threads {torch.get_num_threads()}")
    import importlib

    for name in args.only:
        importlib.import_module(BENCHMARKS[name]).run(setup, warmup, reps)


if __name__ == "__main__":
    main()
