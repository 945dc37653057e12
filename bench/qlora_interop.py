"""A QLoRA adapter between peftkit and ``peft``, measured on a real model: how far the outputs move
when the adapter a QLoRA run trained (``make demo-qlora``) is loaded

- in ``peft`` on the same quantized base (peft's own bitsandbytes layers), against peftkit;
- back in peftkit from the copy ``peft`` saves (its writer, its file), against ``peft``;
- in peftkit on the full-precision base, against the quantized base it was trained on, beside the
  gap the base alone has (what quantizing it moved).

    python bench/qlora_interop.py runs/<quickstart-qlora run>   [--rows 20]

Inputs are the run's eval conversations (prompt and answer, right-padded); the logits of every
real token are compared: relative Frobenius error, largest absolute difference over the largest
logit, and how often the top token agrees.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import tempfile

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))


def compare(got: torch.Tensor, expected: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
    """Differences between two logits tensors on the positions ``mask`` keeps."""
    got, expected = got[mask].float(), expected[mask].float()
    return {"relative": float((got - expected).norm() / expected.norm()),
            "max_abs/max": float((got - expected).abs().max() / expected.abs().max()),
            "top1_agree": float((got.argmax(-1) == expected.argmax(-1)).float().mean())}


def logits(model: torch.nn.Module, batch: dict) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(**batch).logits


def eval_batch(run_dir: str, tokenizer, rows: int) -> dict:
    from peftkit.train.config import load_run_config
    from peftkit.train.tokenize import ensure_pad_token

    cfg = load_run_config(os.path.join(run_dir, "config.yaml"))
    with open(cfg.data.eval or cfg.data.train, encoding="utf-8") as f:
        conversations = [json.loads(line)["messages"] for line in f if line.strip()][:rows]
    ensure_pad_token(tokenizer)
    tokenizer.padding_side = "right"
    texts = [tokenizer.apply_chat_template(c, tokenize=False) for c in conversations]
    return tokenizer(texts, return_tensors="pt", padding=True)


def measure(run_dir: str, rows: int) -> dict[str, dict[str, float]]:
    import peft

    import peftkit as pk
    from peftkit.models import load_model, load_tokenizer
    from peftkit.train.commands import locate, run_model

    target = locate(run_dir)
    name, _, quantization = run_model(target)
    if quantization is None:
        raise SystemExit(f"{run_dir} is not a QLoRA run (its config has no model.quantization)")
    tokenizer = load_tokenizer(name)
    batch = eval_batch(run_dir, tokenizer, rows)
    mask = batch["attention_mask"].bool()
    quantized = load_model(name, quantization=quantization)
    ours = pk.PeftModel.from_pretrained(copy.deepcopy(quantized), target.adapter_dir)
    theirs = peft.PeftModel.from_pretrained(copy.deepcopy(quantized), target.adapter_dir)
    ours_logits, theirs_logits = logits(ours, batch), logits(theirs, batch)
    with tempfile.TemporaryDirectory() as saved:
        theirs.save_pretrained(saved)  # peft's own file of the adapter
        back = pk.PeftModel.from_pretrained(copy.deepcopy(quantized), saved)
        back_logits = logits(back, batch)
    full = pk.PeftModel.from_pretrained(load_model(name), target.adapter_dir)
    full_logits = logits(full, batch)
    with ours.disable_adapter(), full.disable_adapter():
        base_gap = compare(logits(full, batch), logits(ours, batch), mask)
    return {
        "peft on the same quantized base vs peftkit": compare(theirs_logits, ours_logits, mask),
        "peftkit from peft's saved file vs peft": compare(back_logits, theirs_logits, mask),
        "peftkit on the float32 base vs quantized base": compare(full_logits, ours_logits, mask),
        "  the bases alone (adapter disabled)": base_gap,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", help="a QLoRA run folder (runs/<id>)")
    parser.add_argument("--rows", type=int, default=20, help="eval conversations to compare on")
    args = parser.parse_args()
    torch.manual_seed(0)
    results = measure(args.run, args.rows)
    print(f"\nQLoRA adapter interop, {args.run}, {args.rows} eval conversations (logits of every real token)")
    print(f"{'comparison':48s} {'relative':>9s} {'max/max':>9s} {'top-1 agree':>12s}")
    for label, r in results.items():
        print(f"{label:48s} {r['relative']:9.2e} {r['max_abs/max']:9.2e} {r['top1_agree']:12.4f}")


if __name__ == "__main__":
    main()
