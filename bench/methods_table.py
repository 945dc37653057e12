"""The methods table in the README, measured: for every built-in method with its default settings
on the bundled SmolLM2-135M, the parameters it adds, the trainable share, the adapter file size,
and whether merging and mixed-adapter batches work (each tried, not looked up).

    python bench/methods_table.py             # prints a Markdown table

A few methods have a required field without a default; the values used are in ``REQUIRED``.
"""

from __future__ import annotations

import copy
import os
import sys
import tempfile

import torch

import peftkit as pk
from peftkit.models import load_model

REQUIRED = {  # fields a method needs that have no default (the same values peft's docs use)
    "ADALORA": {"total_step": 1000},
    "PROMPT_TUNING": {"num_virtual_tokens": 20},
    "P_TUNING": {"num_virtual_tokens": 20},
    "PREFIX_TUNING": {"num_virtual_tokens": 20},
    # Llama-style models have no biases, so BitFit's default (every existing bias) finds nothing:
    # it learns new biases on the linear layers instead
    "BITFIT": {"target_modules": "all-linear"},
}
PEFT_HAS = {"LORA", "ADALORA", "IA3", "VERA", "LOHA", "LOKR", "PROMPT_TUNING", "P_TUNING", "PREFIX_TUNING", "LN_TUNING"}


def works(fn) -> bool:
    try:
        fn()
        return True
    except pk.PeftkitError:
        return False


def measure(base: torch.nn.Module, peft_type: str, config_kwargs: dict, ids: torch.Tensor) -> dict:
    spec = pk.get_method(peft_type)
    base_params = sum(p.numel() for p in base.parameters())
    make = lambda: spec.config_cls(task_type="CAUSAL_LM", **config_kwargs)  # noqa: E731
    model = pk.get_peft_model(copy.deepcopy(base), make())
    trainable, total = model.get_nb_trainable_parameters()
    with tempfile.TemporaryDirectory() as folder:
        model.save_pretrained(folder)
        size = os.path.getsize(os.path.join(folder, "adapter_model.safetensors"))
    model.add_adapter("second", make())
    with torch.no_grad():
        mixed = works(lambda: model(input_ids=ids, adapter_names=["default", "second"]))
        mergeable = works(lambda: model.merge_adapter())
    return dict(added=total - base_params, trainable=trainable, share=100 * trainable / total, size=size,
                mergeable=mergeable, mixed=mixed)


def main() -> None:
    torch.manual_seed(0)
    base = load_model("smollm2-135m-instruct", dtype="float32")
    ids = torch.randint(0, base.config.vocab_size, (2, 8))
    rows = []
    cases = [(t, t.lower(), REQUIRED.get(t, {})) for t in pk.registered_methods() if not t.startswith("TEST_")]
    cases.insert(1, ("LORA", "lora (use_dora)", {"use_dora": True}))
    for peft_type, label, kwargs in cases:
        try:
            rows.append((peft_type, label, measure(base, peft_type, kwargs, ids)))
        except Exception as e:  # a method that cannot run with defaults is reported, not hidden
            print(f"{label}: {type(e).__name__}: {e}", file=sys.stderr)
    print("| method | in `peft` | parameters added | trainable % | adapter file | merge | mixed batch |")
    print("| --- | --- | ---: | ---: | ---: | --- | --- |")
    for peft_type, label, m in rows:
        print(f"| {label} | {'yes' if peft_type in PEFT_HAS else 'no'} | {m['added']:,} | "
              f"{m['share']:.3f} | {m['size'] / 1024:,.0f} KiB | {'yes' if m['mergeable'] else 'no'} | "
              f"{'yes' if m['mixed'] else 'no'} |")


if __name__ == "__main__":
    main()
