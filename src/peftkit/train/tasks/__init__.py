"""What each task trains on and how it is scored.

A task turns a collated batch into a loss, and scores a model on evaluation data. The training
loop knows nothing else about tasks. ``sft``, ``classification`` and ``dpo`` are :class:`Task` s
whose data handling lives in ``peftkit.train.data``; the others (``seq2seq``,
``token_classification``, ``speech_to_text``, ``vision_sft``) are :class:`~peftkit.train.tasks.base.ModelTask` s
that bring their own, one module each. What the config and the model checks know of every task
(formats, model class, metrics) is in :mod:`peftkit.train.tasks.catalog`.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Optional

import torch
import torch.nn.functional as F

from .base import ModelTask
from .base import unwrap as _unwrap
from .metrics import exact_match
from .seq2seq import Seq2SeqTask
from .speech import SpeechToTextTask
from .token_classification import TokenClassificationTask
from .vision import VisionSftTask


def sequence_logprob(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Sum of log-probabilities of the labelled tokens (labels != -100), one value per row."""
    # the last input_ids.shape[1] positions: a prompt-learning adapter puts virtual tokens in front
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, -input_ids.shape[1] : -1].float()
    targets = labels[:, 1:]
    mask = targets != -100
    logp = torch.gather(F.log_softmax(logits, -1), 2, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (logp * mask).sum(-1)


def sft_loss(model: Any, batch: dict[str, torch.Tensor], beta: float) -> tuple[torch.Tensor, int]:
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"])
    return out.loss, int(batch["attention_mask"].sum())


def classification_loss(model: Any, batch: dict[str, torch.Tensor], beta: float) -> tuple[torch.Tensor, int]:
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"])
    return out.loss, int(batch["attention_mask"].sum())


def dpo_loss(model: Any, batch: dict[str, torch.Tensor], beta: float) -> tuple[torch.Tensor, int]:
    """DPO (Rafailov et al., 2023). The reference model is the same model with its adapter
    disabled, so no second copy of the weights is held in memory. It runs in eval mode: the
    reference is the fixed base model, not a dropout sample of it (with an adapter that starts as
    identity and no dropout elsewhere, the first loss is exactly log 2)."""

    def both() -> tuple[torch.Tensor, torch.Tensor]:
        chosen = sequence_logprob(model, batch["chosen_input_ids"], batch["chosen_attention_mask"], batch["chosen_labels"])
        rejected = sequence_logprob(model, batch["rejected_input_ids"], batch["rejected_attention_mask"], batch["rejected_labels"])
        return chosen, rejected

    policy_chosen, policy_rejected = both()
    with torch.no_grad(), _unwrap(model).disable_adapter(), _eval_mode(model):
        ref_chosen, ref_rejected = both()
    margin = (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected)
    tokens = int(batch["chosen_attention_mask"].sum() + batch["rejected_attention_mask"].sum())
    return -F.logsigmoid(beta * margin).mean(), tokens


@contextmanager
def _eval_mode(model: Any) -> Iterator[None]:
    """Every module in eval mode inside, each back in its own mode after."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


@torch.no_grad()
def mean_loss(model: Any, batches: Iterable[dict[str, torch.Tensor]], loss_fn: Callable, beta: float) -> float:
    losses = [float(loss_fn(model, batch, beta)[0]) for batch in batches]
    return sum(losses) / max(len(losses), 1)


@torch.no_grad()
def classification_scores(model: Any, batches: Iterable[dict[str, torch.Tensor]], num_labels: int) -> dict[str, float]:
    """Accuracy and macro-F1 over the evaluation batches."""
    preds, golds = [], []
    for batch in batches:
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        preds.append(logits.argmax(-1).cpu())
        golds.append(batch["labels"].cpu())
    p, g = torch.cat(preds), torch.cat(golds)
    f1s = []
    for c in range(num_labels):
        tp = int(((p == c) & (g == c)).sum())
        fp, fn = int(((p == c) & (g != c)).sum()), int(((p != c) & (g == c)).sum())
        f1s.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 1.0)
    return {"accuracy": float((p == g).float().mean()), "f1": sum(f1s) / len(f1s)}


@torch.no_grad()
def generate_answers(model: Any, tokenizer: Any, prompts: list[str], max_new_tokens: int, batch_size: int = 8,
                     progress: Optional[str] = None) -> list[str]:
    """Greedy completions of already-templated prompt strings (left padding for generation); a
    progress bar titled ``progress`` counts the batches (none without it)."""
    from ...progress import bar

    answers: list[str] = []
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    starts = range(0, len(prompts), batch_size)
    try:
        for i in bar(starts, progress or "", enabled=progress is not None):
            enc = tokenizer(prompts[i : i + batch_size], return_tensors="pt", padding=True, add_special_tokens=False)
            enc = {k: v.to(_unwrap(model).device) for k, v in enc.items()}
            out = _unwrap(model).generate(
                **enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id
            )
            answers += tokenizer.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
    finally:
        tokenizer.padding_side = side
    return answers


@dataclass(frozen=True)
class Task:
    name: str
    loss: Callable[[Any, dict[str, torch.Tensor], float], tuple[torch.Tensor, int]]


TASKS = {
    "sft": Task("sft", sft_loss),
    "classification": Task("classification", classification_loss),
    "dpo": Task("dpo", dpo_loss),
    "seq2seq": Seq2SeqTask(),
    "token_classification": TokenClassificationTask(),
    "speech_to_text": SpeechToTextTask(),
    "vision_sft": VisionSftTask(),
}


def model_task(name: str) -> Optional[ModelTask]:
    """The task ``name`` when it brings its own data handling (None for sft, classification, dpo)."""
    task = TASKS.get(name)
    return task if isinstance(task, ModelTask) else None


__all__ = ["TASKS", "Task", "ModelTask", "model_task", "exact_match", "generate_answers", "mean_loss",
           "classification_scores", "sequence_logprob", "sft_loss", "dpo_loss", "classification_loss"]
