"""The two model calls of the server: prefill new prompts, and decode one token for every row.

Both go through :class:`~peftkit.model.PeftModel`'s own ``forward`` with ``adapter_names=`` (one
adapter, or ``"__base__"``, per row): the mixed-adapter path computes each row with its adapter, so
requests for different adapters share every step. Nothing of the model's logic is copied here.

>>> runner = ModelRunner(peft_model)                                      # doctest: +SKIP
>>> logits, tensors = runner.prefill([[1, 2, 3], [4, 5]], ["a", "__base__"])  # doctest: +SKIP
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from transformers import DynamicCache

from ..compat import cache_kwarg, output_cache
from .errors import ServeError
from .kv import BatchCache, layer_tensors

from transformers.cache_utils import DynamicLayer


class ModelRunner:
    """Calls a causal-LM :class:`~peftkit.model.PeftModel` for the scheduler.

    Example:
        >>> logits = runner.decode(batch_cache, last_tokens, adapter_names)   # doctest: +SKIP
    """

    def __init__(self, model: Any, pad_id: int = 0):
        self.model = model
        self.pad_id = pad_id
        base = model.get_base_model()
        self.device = next(base.parameters()).device
        self._cache_kwarg = cache_kwarg(base)
        self._keeps_logits = "logits_to_keep" in inspect.signature(base.forward).parameters
        context = getattr(getattr(base, "config", None), "max_position_embeddings", None)
        self.context_length = int(context) if context else None

    @torch.inference_mode()
    def prefill(self, prompts: list[list[int]], adapter_names: list[str]) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
        """Run the prompts (right-padded into one batch); returns the logits after each prompt's
        last token ``(rows, vocab)`` and the cache tensors (right-padded; see :mod:`.kv`)."""
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        for row, prompt in enumerate(prompts):
            ids[row, :len(prompt)] = torch.tensor(prompt, dtype=torch.long)
        last = torch.tensor([len(p) - 1 for p in prompts])
        extra: dict[str, Any] = {}
        kept = torch.unique(last)
        if self._keeps_logits:
            extra["logits_to_keep"] = kept.to(self.device)
        out = self.model(input_ids=ids.to(self.device), use_cache=True, adapter_names=list(adapter_names),
                         **{self._cache_kwarg: DynamicCache()}, **extra)
        logits = out.logits
        column = torch.searchsorted(kept, last) if self._keeps_logits else last
        picked = logits[torch.arange(len(prompts)), column.to(logits.device)]
        return picked, self._checked(output_cache(out))

    @staticmethod
    def _checked(cache: Any) -> list[tuple[torch.Tensor, torch.Tensor]]:
        layers = getattr(cache, "layers", None)
        if not layers or any(type(layer) is not DynamicLayer for layer in layers):
            kinds = sorted({type(layer).__name__ for layer in layers or []})
            raise ServeError(500, f"this model's attention cache ({', '.join(kinds) or type(cache).__name__}) is not a "
                                  "plain full-attention cache; peftkit serve batches only such models (Llama, Qwen2, "
                                  "Mistral without sliding window, GPT-2, ...)", code="unsupported_model")
        return layer_tensors(cache)

    @torch.inference_mode()
    def decode(self, batch: BatchCache, last_tokens: list[int], adapter_names: list[str]) -> torch.Tensor:
        """One token for every row of ``batch``; returns the next-token logits ``(rows, vocab)``."""
        ids = torch.tensor(last_tokens, dtype=torch.long, device=self.device)[:, None]
        mask = batch.step_mask()
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=batch.positions()[:, None],
                         use_cache=True, adapter_names=list(adapter_names), **{self._cache_kwarg: batch.cache})
        batch.advance()
        return out.logits[:, -1]
