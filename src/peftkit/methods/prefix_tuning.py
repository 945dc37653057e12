"""Prefix tuning (Li & Liang, 2021; P-tuning v2): learned keys and values for a few virtual
positions in every attention layer, given to the model as its attention cache
(``past_key_values``: a ``transformers`` ``DynamicCache``, or an ``EncoderDecoderCache`` whose
decoder self-attention holds the prefix). The config mirrors ``peft.PrefixTuningConfig``."""

from __future__ import annotations

from typing import Any, ClassVar, Literal, Optional

import torch
import torch.nn as nn

from ..config import PeftType
from ..compat import cache_kwarg, pop_cache
from ..errors import AdapterError, ConfigError
from .prompt_learning import (
    Positive,
    PromptEncoderModule,
    PromptLearningConfig,
    batch_size,
    cache_is_empty,
    drop_token_type_ids,
    extend_mask,
    input_embeddings,
    is_encoder_decoder,
    prompt_encoder,
    register_prompt_method,
)


class PrefixTuningConfig(PromptLearningConfig):
    """Configuration of a prefix-tuning adapter; fields and defaults as in ``peft.PrefixTuningConfig``.

    ``prefix_projection=True`` makes the prefix with a two-layer MLP (hidden ``encoder_hidden_size``)
    over ``num_virtual_tokens`` learned vectors; ``init_weights="zero"`` starts the prefix at zero.
    For grouped-query attention ``token_dim`` / ``num_attention_heads`` are the key/value width and
    heads (filled from the model, as peft).

    Example:
        >>> from peftkit import PrefixTuningConfig
        >>> PrefixTuningConfig(num_virtual_tokens=16, prefix_projection=True, task_type="CAUSAL_LM").prefix_projection
        True
    """

    peft_type: ClassVar[str] = PeftType.PREFIX_TUNING

    init_weights: Optional[Literal["zero"]] = None
    encoder_hidden_size: Optional[Positive] = None
    prefix_projection: bool = False

    def fit_model_shape(self, values: dict[str, Any]) -> None:
        # Grouped-query attention caches fewer key/value heads than it has query heads: the prefix
        # is as wide as the cache (peft does the same, so the saved shapes agree).
        if values.get("num_key_value_heads") is None:
            return
        head_dim = values.get("head_dim") or self.token_dim // self.num_attention_heads
        self.token_dim = head_dim * values["num_key_value_heads"]
        self.num_attention_heads = values["num_key_value_heads"]


class PrefixEncoder(PromptEncoderModule):
    """One row per virtual token holding every layer's keys and values (``2 * num_layers *
    token_dim``), or, with ``prefix_projection``, ``token_dim`` per row through ``transform``."""

    def __init__(self, config: PrefixTuningConfig, model: Optional[nn.Module] = None):
        width = config.num_layers * 2 * config.token_dim
        project = config.prefix_projection and not config.holds_prompt
        super().__init__(config.num_virtual_tokens, config.token_dim if project else width)
        if project:
            self.has_head = True
            self.transform = nn.Sequential(
                nn.Linear(config.token_dim, config.encoder_hidden_size), nn.Tanh(), nn.Linear(config.encoder_hidden_size, width)
            )
        if config.init_weights == "zero" and not config.holds_prompt:
            last = self.transform[-1] if project else self.embedding
            nn.init.zeros_(last.weight)
            if project:
                nn.init.zeros_(last.bias)

    def encode(self, rows: torch.Tensor) -> torch.Tensor:
        return self.transform(rows)


def _build(config: PrefixTuningConfig, model: nn.Module) -> PrefixEncoder:
    if config.token_dim % config.num_attention_heads:
        raise ConfigError(
            "Invalid PrefixTuningConfig:",
            [("token_dim", f"{config.token_dim} is not a multiple of num_attention_heads={config.num_attention_heads}")],
        )
    _refuse_checkpointing(model)
    return PrefixEncoder(config, model)


def _refuse_checkpointing(model: nn.Module) -> None:
    if any(getattr(m, "gradient_checkpointing", False) is True for m in model.modules()):
        raise AdapterError(
            "prefix tuning does not work with gradient checkpointing (the recomputed layers would extend the prefix "
            "cache twice); call activation_checkpointing_disable() or set train.gradient_checkpointing: false"
        )


def prefix_cache(prompt: torch.Tensor, config: PrefixTuningConfig, batch: int, encoder_decoder: bool) -> Any:
    """The attention cache holding the prefix for ``batch`` rows.

    ``prompt`` is ``(virtual tokens, num_layers * 2 * token_dim)``; layer ``i`` takes rows ``2i``
    (keys) and ``2i + 1`` (values) of its ``num_layers * 2`` slices. For encoder-decoders, peft
    doubles the slices and steps through them four at a time (self-attention keys and values, then
    the cross-attention ones it discards); the same layout keeps checkpoints interchangeable.
    """
    from transformers import DynamicCache, EncoderDecoderCache

    n, heads = config.num_virtual_tokens, config.num_attention_heads
    kv = prompt.view(n, -1, heads, config.token_dim // heads).permute(1, 2, 0, 3)  # (2 * layers, heads, n, head_dim)
    step = 2
    if encoder_decoder:
        kv, step = torch.cat((kv, kv)), 4
    kv = kv.unsqueeze(1).expand(-1, batch, -1, -1, -1)
    pairs = [(kv[step * i], kv[step * i + 1]) for i in range(config.num_layers)]
    if encoder_decoder:
        # the encoder sees no prefix, so cross-attention is computed afresh from its output
        return EncoderDecoderCache(DynamicCache(pairs), DynamicCache())
    return DynamicCache(pairs)


def prepend_prefix(peft_model: nn.Module, adapter_name: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """``prepare_inputs`` of prefix tuning: on the first call of a sequence the cache starts with
    the prefix; every call attends to it (mask) and numbers its tokens after it (position ids)."""
    config = peft_model.peft_config[adapter_name]
    model = peft_model.get_base_model()
    n = config.num_virtual_tokens
    encoder_decoder = is_encoder_decoder(model)
    extend_mask(kwargs, "decoder_attention_mask" if encoder_decoder else "attention_mask", n)
    if kwargs.get("position_ids") is not None:
        kwargs["position_ids"] = kwargs["position_ids"] + n
    drop_token_type_ids(config, kwargs)
    cache = pop_cache(kwargs)
    if cache_is_empty(cache):
        _refuse_checkpointing(model)
        prompt = prompt_encoder(peft_model, adapter_name).prompt().to(input_embeddings(model).weight.dtype)
        cache = prefix_cache(prompt, config, batch_size(kwargs), encoder_decoder)
    kwargs[cache_kwarg(model)] = cache
    return kwargs


PREFIX_TUNING = register_prompt_method(PrefixTuningConfig, _build, prepend_prefix)
