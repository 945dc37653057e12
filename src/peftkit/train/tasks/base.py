"""What a task that brings its own data handling provides (every task after sft, classification and
dpo): how rows are checked, which processor reads them, how they become examples and batches, the
model's extra settings, its loss and its metrics. ``prepare.py`` and the loop call these methods and
know nothing else about the task.
"""

from __future__ import annotations

from functools import partial
from typing import Any, Callable, Optional

import torch

from .. import data
from .catalog import TASK_INFO, TaskInfo


class ModelTask:
    """Base of the tasks in ``peftkit.train.tasks``: text in, a tokenizer as processor, ``labels`` in
    each batch and the model's own loss. Subclasses override what differs.

    Example:
        >>> class Echo(ModelTask):
        ...     name = "seq2seq"
        >>> Echo().info.auto_class
        'AutoModelForSeq2SeqLM'
    """

    name: str = ""

    @property
    def info(self) -> TaskInfo:
        return TASK_INFO[self.name]

    def validate_rows(self, rows: Any, cfg: Any, source: str) -> None:
        """Raise :class:`~peftkit.train.data.DataError` naming file, row and field of a bad row."""
        data.validate_rows(rows, cfg.data.format, source, text_field=cfg.data.text_field,
                           label_field=cfg.data.label_field)

    def load_processor(self, cfg: Any) -> Any:
        """What turns a row into model inputs: the model's tokenizer, with a pad token."""
        from ...models import load_tokenizer

        tokenizer = load_tokenizer(cfg.model.name, revision=cfg.model.revision)
        data.ensure_pad_token(tokenizer)
        return tokenizer

    def tokenizer(self, processor: Any) -> Any:
        """The tokenizer inside ``processor`` (which is one for text tasks)."""
        return getattr(processor, "tokenizer", processor)

    def examples(self, cfg: Any, rows: Any, processor: Any, source: str,
                 label_names: Optional[list[str]] = None) -> tuple[list, list[str]]:
        """Rows -> examples, and the label names (for tasks with labels; training rows define them)."""
        raise NotImplementedError

    def collate(self, processor: Any) -> Callable:
        return partial(data.collate, pad_token_id=self.tokenizer(processor).pad_token_id)

    def model_kwargs(self, label_names: list[str]) -> dict[str, Any]:
        """Extra ``from_pretrained`` arguments (a classification head's size and label names)."""
        return {}

    def eval_texts(self, cfg: Any, rows: Any) -> tuple[list[str], list[str]]:
        """The evaluation rows' inputs and reference outputs as text, for tasks that generate."""
        return [], []

    def loss(self, model: Any, batch: dict[str, torch.Tensor], beta: float) -> tuple[torch.Tensor, int]:
        out = model(**batch)
        tokens = batch["attention_mask"].sum() if "attention_mask" in batch else (batch["labels"] != data.IGNORE).sum()
        return out.loss, int(tokens)

    def scores(self, model: Any, prep: Any, cfg: Any, batches: list[dict]) -> dict[str, float]:
        """``eval.metrics`` other than loss, keyed without the ``eval_`` prefix."""
        return {}


def device_of(model: Any) -> torch.device:
    """Where the model's weights are (inside a DDP / accelerate wrapper too)."""
    return next(getattr(model, "module", model).parameters()).device


def unwrap(model: Any) -> Any:
    """The PeftModel inside a DDP / accelerate wrapper."""
    return getattr(model, "module", model)
