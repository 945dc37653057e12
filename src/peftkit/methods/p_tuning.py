"""P-tuning (Liu et al., 2021, "GPT Understands, Too"): virtual tokens whose embeddings come out
of a small MLP (or bidirectional LSTM + MLP) over learned inputs, which trains more stably than
the raw embeddings. The config mirrors ``peft.PromptEncoderConfig``. As in peft, the checkpoint
holds the computed prompt, so a loaded adapter runs (and trains further) without the encoder."""

from __future__ import annotations

import warnings
from enum import Enum
from typing import ClassVar, Optional

import torch
import torch.nn as nn
from pydantic import field_validator

from ..config import PeftType
from .prompt_learning import (
    Positive,
    PromptEncoderModule,
    PromptLearningConfig,
    prepend_virtual_tokens,
    register_prompt_method,
    virtual_tokens_for_generate,
)


class PromptEncoderReparameterizationType(str, Enum):
    """The encoder that makes the prompt (``peft.PromptEncoderReparameterizationType``)."""

    MLP = "MLP"
    LSTM = "LSTM"


class PromptEncoderConfig(PromptLearningConfig):
    """Configuration of a P-tuning adapter; fields and defaults as in ``peft.PromptEncoderConfig``.

    ``encoder_hidden_size`` defaults to the model's hidden size; ``encoder_num_layers`` and
    ``encoder_dropout`` apply to the LSTM (the MLP always has three linear layers, as in peft).

    Example:
        >>> from peftkit import PromptEncoderConfig
        >>> cfg = PromptEncoderConfig(num_virtual_tokens=10, encoder_hidden_size=128, task_type="CAUSAL_LM")
        >>> cfg.encoder_reparameterization_type.value
        'MLP'
    """

    peft_type: ClassVar[str] = PeftType.P_TUNING

    encoder_reparameterization_type: PromptEncoderReparameterizationType = PromptEncoderReparameterizationType.MLP
    encoder_hidden_size: Optional[Positive] = None
    encoder_num_layers: Positive = 2
    encoder_dropout: float = 0.0

    @field_validator("encoder_dropout")
    @classmethod
    def _probability(cls, value: float) -> float:
        if not 0.0 <= value < 1.0:
            raise ValueError("must be a probability in [0, 1)")
        return value


class PromptEncoder(PromptEncoderModule):
    """Embedding rows through ``mlp_head`` (MLP) or ``lstm_head`` then ``mlp_head`` (LSTM), with
    peft's attribute names; no head when the embedding holds a saved prompt."""

    def __init__(self, config: PromptEncoderConfig, model: Optional[nn.Module] = None):
        # ``model`` is unused (the registry passes it to every encoder); optional as in peft.
        dim, hidden = config.token_dim, config.encoder_hidden_size or config.token_dim  # unset: as wide as a token
        super().__init__(config.num_virtual_tokens * config.num_transformer_submodules, dim)
        self.use_lstm = config.encoder_reparameterization_type == PromptEncoderReparameterizationType.LSTM
        if config.holds_prompt:
            return
        self.has_head = True
        if self.use_lstm:
            self.lstm_head = nn.LSTM(dim, hidden, num_layers=config.encoder_num_layers, dropout=config.encoder_dropout,
                                     bidirectional=True, batch_first=True)
            self.mlp_head = nn.Sequential(nn.Linear(2 * hidden, 2 * hidden), nn.ReLU(), nn.Linear(2 * hidden, dim))
        else:
            if config.encoder_num_layers != type(config).model_fields["encoder_num_layers"].default:
                # peft's exact words (its tests compare them); "2 MLP layers": two hidden layers
                warnings.warn("for MLP, the argument `encoder_num_layers` is ignored. Exactly 2 MLP layers are used.",
                              stacklevel=2)
            self.mlp_head = nn.Sequential(
                nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, dim)
            )

    def encode(self, rows: torch.Tensor) -> torch.Tensor:
        if self.use_lstm:
            return self.mlp_head(self.lstm_head(rows.unsqueeze(0))[0]).squeeze(0)
        return self.mlp_head(rows)


P_TUNING = register_prompt_method(PromptEncoderConfig, PromptEncoder, prepend_virtual_tokens, virtual_tokens_for_generate)
