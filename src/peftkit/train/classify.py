"""``peftkit classify``: the label a classification run's adapter gives each text, with its
probability and the runner-up, tokenized as in training (``train.max_seq_len`` of the run, the
same tokenizer, the label names saved with the adapter).

>>> model, tok = load_path("runs/20261122-200101-sentiment-4be1c2")          # doctest: +SKIP
>>> classify(model, tok, ["what a lovely day"], labels=["negative", "positive"])  # doctest: +SKIP
[('positive', 0.97)]
"""

from __future__ import annotations

import os
import sys
from typing import Any, Iterable, Optional, TextIO

import torch

from .commands import ADAPTER_CONFIG, CommandError, label_names, load_adapter_model, locate, run_model, run_setting


def load_classifier(path: str, model: Optional[str] = None, device: Optional[str] = None) -> tuple[Any, Any, list[str], int]:
    """``(model, tokenizer, label names, max_seq_len)`` for a SEQ_CLS run or adapter folder."""
    target = locate(path)
    if target.task_type != "SEQ_CLS":
        raise CommandError(f"task_type in {os.path.join(target.adapter_dir, ADAPTER_CONFIG)} is {target.task_type}: "
                           "classify needs a classification (SEQ_CLS) adapter; use peftkit generate for this one")
    peft_model, tokenizer = load_adapter_model(target, model, run_model(target), device=device)
    return peft_model, tokenizer, label_names(target), _max_seq_len(target.run_dir)


def _max_seq_len(run_dir: Optional[str]) -> int:
    """The run's ``train.max_seq_len`` (its config's default, 512, for an adapter outside a run)."""
    from .config import TrainSection

    value = run_setting(run_dir, "train", "max_seq_len")
    return value if isinstance(value, int) and value > 0 else TrainSection().max_seq_len


@torch.no_grad()
def classify(model: Any, tokenizer: Any, texts: list[str], labels: list[str], max_seq_len: int = 512,
             batch_size: int = 16) -> list[tuple[str, float]]:
    """``(label, probability)`` for each text: the arg-max of the classifier's softmax."""
    answers: list[tuple[str, float]] = []
    for i in range(0, len(texts), batch_size):
        enc = tokenizer(texts[i:i + batch_size], return_tensors="pt", padding=True, truncation=True,
                        max_length=max_seq_len)
        enc = {k: v.to(model.device) for k, v in enc.items() if k in ("input_ids", "attention_mask")}
        probs = torch.softmax(model(**enc).logits.float(), dim=-1)
        best = probs.max(dim=-1)
        answers += [(labels[int(j)], float(p)) for p, j in zip(best.values, best.indices)]
    return answers


def print_labels(model: Any, tokenizer: Any, texts: Iterable[str], labels: list[str], max_seq_len: int,
                 out: Optional[TextIO] = None) -> int:
    """Classify texts (one a line) and print ``label  probability  text``; returns how many."""
    out = out or sys.stdout
    lines = [t.strip() for t in texts if t.strip()]
    for text, (label, p) in zip(lines, classify(model, tokenizer, lines, labels, max_seq_len)):
        print(f"{label}\t{p:.3f}\t{text}", file=out, flush=True)
    return len(lines)
