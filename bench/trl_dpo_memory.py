"""B7: the memory of DPO's reference model under TRL, peftkit vs peft.

With ``ref_model=None`` and an adapter, TRL computes the reference log-probabilities with the
adapter disabled, so no second model is held. Each variant runs in its own process (so peak RSS
is its own) on the same saved model (SmolLM2-135M's shape, random weights):

- ``peft``: ``trl.DPOTrainer`` with ``peft_config=peft.LoraConfig(...)``;
- ``peftkit``: ``peftkit.integrations.trl.DPOTrainer`` with ``peft_config=peftkit.LoraConfig(...)``;
- ``peftkit, TRL alone``: ``trl.DPOTrainer`` on a peftkit model without the integration, which is
  what TRL did before it: it does not see an adapter model and loads a second copy from disk as the
  reference (construction only: its training step fails on the fused LM head).

Reported: parameter memory the trainer holds (policy and reference, each tensor counted once),
the RSS the trainer's construction adds over the loaded model (a reference copy shows here), and
the peak RSS over the loaded model through construction and the DPO steps.

    python bench/trl_dpo_memory.py            # SmolLM2-135M shape, 2 DPO steps
    python bench/trl_dpo_memory.py --quick    # 4 layers
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile

VARIANTS = ("peft", "peftkit", "peftkit, TRL alone")
MB = 2**20


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        kb = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    return kb / 1024


def byte_tokenizer():
    """A byte-level tokenizer (every byte one token) with an end-of-text token: no hub needed."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    core = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(alphabet)}, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<|end|>", pad_token="<|end|>")


def held_parameter_mb(*models) -> float:
    seen, total = set(), 0
    for model in models:
        for p in model.parameters() if model is not None else ():
            key = p.untyped_storage().data_ptr()
            if key not in seen:
                seen.add(key)
                total += p.untyped_storage().nbytes()
    return total / MB


def measure(variant: str, model_dir: str, steps: int) -> dict:
    """One variant, in this process: build the DPO trainer, train ``steps`` steps, report memory."""
    import datasets
    import torch
    import trl
    from transformers import LlamaForCausalLM

    torch.set_num_threads(1)
    tok = byte_tokenizer()
    pairs = datasets.Dataset.from_list(
        [{"prompt": f"Question {i}: is it good?", "chosen": " Yes, it is.", "rejected": " No."} for i in range(8)]
    )
    model = LlamaForCausalLM.from_pretrained(model_dir)
    before = rss_mb()
    args = trl.DPOConfig(output_dir=tempfile.mkdtemp(), max_steps=steps, per_device_train_batch_size=2, report_to=[],
                         use_cpu=True, bf16=False, disable_tqdm=True, save_strategy="no", max_length=64)
    kwargs = dict(args=args, train_dataset=pairs, processing_class=tok)
    if variant == "peft":
        import peft

        trainer = trl.DPOTrainer(model=model, peft_config=peft.LoraConfig(r=16, target_modules="all-linear"), **kwargs)
    else:
        import peftkit as pk

        config = pk.LoraConfig(r=16, target_modules="all-linear")
        if variant == "peftkit":
            from peftkit.integrations.trl import DPOTrainer

            trainer = DPOTrainer(model=model, peft_config=config, **kwargs)
        else:
            trainer = trl.DPOTrainer(model=pk.get_peft_model(model, config), **kwargs)
    held = held_parameter_mb(trainer.model, trainer.ref_model)
    built = rss_mb() - before
    if variant != "peftkit, TRL alone":
        trainer.train()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"variant": variant, "reference": type(trainer.ref_model).__name__, "held_mb": held, "built_mb": built,
            "added_peak_mb": peak - before if variant != "peftkit, TRL alone" else float("nan")}


def save_model(folder: str, quick: bool) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=576, intermediate_size=1536, num_hidden_layers=4 if quick else 30,
                         num_attention_heads=9, num_key_value_heads=3, vocab_size=49152, max_position_embeddings=256,
                         tie_word_embeddings=True, eos_token_id=256, pad_token_id=256)
    LlamaForCausalLM(config).save_pretrained(folder)


def run(quick: bool = False, steps: int = 2) -> list[dict]:
    """Every variant in its own process; prints the table and returns the rows."""
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        save_model(folder, quick)
        for variant in VARIANTS:
            command = [sys.executable, os.path.abspath(__file__), "--variant", variant, "--model", folder, "--steps", str(steps)]
            done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
            if done.returncode != 0:
                raise RuntimeError(f"variant {variant!r} failed:\n{done.stderr[-3000:]}")
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    print(f"{'B7 DPO reference':<20} {'reference':>16} {'params held MB':>15} {'RSS +init MB':>13} {'RSS +peak MB':>13}")
    for row in rows:
        peak = "(no step)" if row["added_peak_mb"] != row["added_peak_mb"] else f"{row['added_peak_mb']:.1f}"
        print(f"{row['variant']:<20} {row['reference']:>16} {row['held_mb']:>15.1f} {row['built_mb']:>13.1f} {peak:>13}")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(measure(args.variant, args.model, args.steps)))
    else:
        run(args.quick, args.steps)


if __name__ == "__main__":
    main()
