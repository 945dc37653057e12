"""Prompt tuning (Lester et al., 2021): learn the embeddings of a few virtual tokens put before the
input; the model is untouched. The config mirrors ``peft.PromptTuningConfig``; the shared
machinery is in :mod:`peftkit.methods.prompt_learning`."""

from __future__ import annotations

import math
from enum import Enum
from typing import Any, ClassVar, Optional

import torch
import torch.nn as nn

from ..config import PeftType
from ..errors import ConfigError
from .prompt_learning import (
    PromptEncoderModule,
    PromptLearningConfig,
    input_embeddings,
    prepend_virtual_tokens,
    register_prompt_method,
    virtual_tokens_for_generate,
)


class PromptTuningInit(str, Enum):
    """How the virtual-token embeddings start (``peft.PromptTuningInit``)."""

    TEXT = "TEXT"
    SAMPLE_VOCAB = "SAMPLE_VOCAB"
    RANDOM = "RANDOM"


class PromptTuningConfig(PromptLearningConfig):
    """Configuration of a prompt-tuning adapter; fields and defaults as in ``peft.PromptTuningConfig``.

    ``prompt_tuning_init="TEXT"`` starts the virtual tokens from the embeddings of
    ``prompt_tuning_init_text`` (repeated or cut to ``num_virtual_tokens``), tokenized with the
    tokenizer at ``tokenizer_name_or_path``; ``"SAMPLE_VOCAB"`` from random vocabulary tokens.

    Example:
        >>> from peftkit import PromptTuningConfig
        >>> cfg = PromptTuningConfig(num_virtual_tokens=8, task_type="CAUSAL_LM", prompt_tuning_init="TEXT",
        ...                          prompt_tuning_init_text="Classify the sentiment:", tokenizer_name_or_path="gpt2")
        >>> cfg.prompt_tuning_init.value
        'TEXT'
    """

    peft_type: ClassVar[str] = PeftType.PROMPT_TUNING

    prompt_tuning_init: PromptTuningInit = PromptTuningInit.RANDOM
    prompt_tuning_init_text: Optional[str] = None
    tokenizer_name_or_path: Optional[str] = None
    tokenizer_kwargs: Optional[dict[str, Any]] = None

    def check(self) -> list[tuple[str, str]]:
        problems = super().check()
        if self.prompt_tuning_init == PromptTuningInit.TEXT:
            if not self.tokenizer_name_or_path:
                problems.append(("tokenizer_name_or_path",  # peft's sentence (its tests match it), then why
                                 "When prompt_tuning_init='TEXT', tokenizer_name_or_path can't be None (the tokenizer "
                                 "that turns the text into the prompt's initial tokens)"))
            if self.prompt_tuning_init_text is None:
                problems.append(("prompt_tuning_init_text", "When prompt_tuning_init='TEXT', prompt_tuning_init_text "
                                                            "can't be None (the text the prompt starts from)"))
        elif self.tokenizer_kwargs:
            problems.append(("tokenizer_kwargs", "is only used with prompt_tuning_init='TEXT'; remove it"))
        return problems


class PromptEmbedding(PromptEncoderModule):
    """The virtual tokens' embeddings: one row per token (and per transformer stack for
    encoder-decoders, as peft), nothing else; the rows are the prompt."""

    def __init__(self, config: PromptTuningConfig, model: nn.Module):
        rows = config.num_virtual_tokens * config.num_transformer_submodules
        super().__init__(rows, config.token_dim)
        if config.holds_prompt or config.prompt_tuning_init == PromptTuningInit.RANDOM:
            return  # N(0, 1), nn.Embedding's own initialisation (or a saved prompt to come)
        words = input_embeddings(model)
        if config.prompt_tuning_init == PromptTuningInit.SAMPLE_VOCAB:
            ids = torch.randint(0, words.num_embeddings, (rows,))
        else:
            ids = _text_token_ids(config, rows)
        with torch.no_grad():
            self.embedding.weight.copy_(words(ids.to(words.weight.device)).float())


def _text_token_ids(config: PromptTuningConfig, rows: int) -> torch.Tensor:
    """The init text's token ids, repeated or cut to exactly ``rows`` tokens."""
    from transformers import AutoTokenizer

    kwargs = dict(config.tokenizer_kwargs or {})
    kwargs.pop("trust_remote_code", None)  # an adapter config must never make us run downloaded code
    try:
        tokenizer = AutoTokenizer.from_pretrained(config.tokenizer_name_or_path, **kwargs)
    except Exception as e:
        raise ConfigError(
            "Invalid PromptTuningConfig:",
            [("tokenizer_name_or_path", f"cannot load a tokenizer from {config.tokenizer_name_or_path!r} ({type(e).__name__}: {e})")],
        ) from None
    ids = tokenizer(config.prompt_tuning_init_text)["input_ids"]
    if not ids:
        raise ConfigError("Invalid PromptTuningConfig:", [("prompt_tuning_init_text", "gives no tokens; use a non-empty text")])
    return torch.tensor((ids * math.ceil(rows / len(ids)))[:rows], dtype=torch.long)


PROMPT_TUNING = register_prompt_method(
    PromptTuningConfig, PromptEmbedding, prepend_virtual_tokens, virtual_tokens_for_generate
)
