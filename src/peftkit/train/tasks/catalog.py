"""What each training task needs from the run config and the model, in one table: its data formats,
the peft task type, the transformers Auto class that loads its model, the metrics it computes, and
whether it takes an encoder-decoder model. The run config's checks (``peftkit.train.config``) and the
model checks (``peftkit.train.model_check``) read this table; neither names a task in code.

This module imports nothing heavy, so reading a config never imports torch models or metric libraries.

>>> TASK_INFO["seq2seq"].auto_class
'AutoModelForSeq2SeqLM'
>>> tasks_for_metric("wer")
('speech_to_text',)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional


@dataclass(frozen=True)
class TaskInfo:
    """One training task as the config and the model checks see it.

    ``encoder_decoder``: True when the task needs an encoder-decoder model, False when it must not
    get one (a causal-LM task would load only the decoder of Whisper or T5 and train it without its
    inputs), None when either kind fits. ``inputs``: what the model reads besides text, which its
    folder must provide a processor for (``"audio"``: a feature extractor)."""

    name: str
    formats: tuple[str, ...]
    task_type: str
    auto_class: str
    metrics: tuple[str, ...] = ()  # besides "loss", which every task has
    encoder_decoder: Optional[bool] = None
    inputs: tuple[str, ...] = ("text",)
    summary: str = ""
    # adapter fields the task fills when the run config leaves them unset (shown in the resolved config)
    adapter_defaults: tuple[tuple[str, Any], ...] = ()


TASK_INFO: dict[str, TaskInfo] = {info.name: info for info in (
    TaskInfo("sft", ("chat", "prompt_completion", "text"), "CAUSAL_LM", "AutoModelForCausalLM",
             ("exact_match",), encoder_decoder=False, summary="supervised fine-tuning of a causal LM"),
    TaskInfo("classification", ("classification",), "SEQ_CLS", "AutoModelForSequenceClassification",
             ("accuracy", "f1"), summary="one label per text"),
    TaskInfo("dpo", ("preference",), "CAUSAL_LM", "AutoModelForCausalLM", encoder_decoder=False,
             summary="preference tuning of a causal LM (chosen vs rejected)"),
    TaskInfo("seq2seq", ("seq2seq",), "SEQ_2_SEQ_LM", "AutoModelForSeq2SeqLM",
             ("exact_match", "bleu", "chrf", "rouge1", "rouge2", "rougeL"), encoder_decoder=True,
             summary="source -> target text with an encoder-decoder (T5, BART, mT5)"),
    TaskInfo("token_classification", ("token_classification",), "TOKEN_CLS", "AutoModelForTokenClassification",
             ("accuracy", "precision", "recall", "f1"), summary="one tag per word (NER)"),
    TaskInfo("speech_to_text", ("speech",), "SEQ_2_SEQ_LM", "AutoModelForSpeechSeq2Seq",
             ("wer", "exact_match"), encoder_decoder=True, inputs=("text", "audio"),
             summary="audio file -> transcript (Whisper)"),
    TaskInfo("vision_sft", ("vision_chat",), "CAUSAL_LM", "AutoModelForImageTextToText", ("exact_match",),
             encoder_decoder=False, inputs=("text", "image"), summary="images + chat (LLaVA-style)",
             # the language model only: the vision encoders and projectors transformers' VLMs name so stay frozen
             adapter_defaults=(("exclude_modules",
                                r".*(vision_tower|vision_model|multi_modal_projector|visual|connector)(\..*)?"),)),
)}

TASKS = tuple(TASK_INFO)
METRICS = ("loss", *dict.fromkeys(m for info in TASK_INFO.values() for m in info.metrics))


def tasks_for_metric(metric: str) -> tuple[str, ...]:
    """The tasks that compute ``metric`` (every task computes ``loss``)."""
    return tuple(name for name, info in TASK_INFO.items() if metric == "loss" or metric in info.metrics)


def tasks_for_format(fmt: str) -> tuple[str, ...]:
    """The tasks that read rows of the data format ``fmt``."""
    return tuple(name for name, info in TASK_INFO.items() if fmt in info.formats)
