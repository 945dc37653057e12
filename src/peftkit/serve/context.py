"""What every route needs: the settings, tokenizer, engine and adapter store, and the steps from a
request body to a :class:`~.jobs.Job` (which model, which prompt tokens, which sampling).

>>> ctx.resolve("contacts")    # the adapter name, or None for the base model        # doctest: +SKIP
'contacts'
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any, Callable, Optional, Union

from ..errors import AdapterError
from ..names import check_adapter_name
from ..train.commands import chat_prompt
from .errors import ServeError, invalid
from .jobs import Job, Sequence
from .metrics import ServeMetrics
from .protocol import ChatCompletionRequest, CompletionRequest, sampling_params
from .scheduler import Engine
from .settings import ServeSettings
from .store import AdapterStore
from .text import IncrementalDecoder


@dataclass
class ServeContext:
    """The server's parts, shared by the routes.

    Example:
        >>> job = ctx.chat_job(request_body, sink)      # doctest: +SKIP
        >>> ctx.engine.submit(job)                      # doctest: +SKIP
    """

    settings: ServeSettings
    tokenizer: Any
    engine: Engine
    store: AdapterStore
    metrics: ServeMetrics
    context_length: Optional[int]
    vocab_size: int
    device: Any

    def resolve(self, model: str) -> Optional[str]:
        """The adapter a request's ``model`` names (None: the base model). An invalid adapter name
        is a 400 from the one naming rule; an unknown one is OpenAI's 404."""
        if model == self.settings.base_name:
            return None
        try:
            check_adapter_name(model, field="model")
        except AdapterError as e:
            raise invalid(str(e), param="model", code="invalid_model_name") from None
        if not self.store.knows(model):
            raise ServeError(404, f"The model `{model}` does not exist.", param="model", code="model_not_found")
        return model

    def label(self, model: str) -> str:
        """``model`` as a metrics label: a served name, else ``"unknown"`` (bounded label values)."""
        return model if model == self.settings.base_name or model in self.store.names() else "unknown"

    # ------------------------------------------------------------------ prompts
    def chat_tokens(self, req: ChatCompletionRequest) -> list[int]:
        """The conversation through the tokenizer's chat template, ready for the assistant's turn."""
        text = chat_prompt(self.tokenizer, req.conversation())
        return self._encode(text, special=not getattr(self.tokenizer, "chat_template", None))

    def prompt_tokens(self, prompt: Union[str, list[int]]) -> list[int]:
        if isinstance(prompt, str):
            return self._encode(prompt, special=True)
        bad = [t for t in prompt if not 0 <= t < self.vocab_size]
        if bad:
            raise invalid(f"prompt: token id {bad[0]} is outside the vocabulary (0..{self.vocab_size - 1})", param="prompt")
        return list(prompt)

    def _encode(self, text: str, special: bool) -> list[int]:
        # a text far past the limit is refused before tokenizing it all (tokenizers rarely make fewer
        # than one token per 16 characters)
        limit = self.settings.max_prompt_tokens or self.context_length
        if limit and len(text) > 16 * limit + 1024:
            raise invalid(f"the prompt has {len(text)} characters, far more than the {limit} tokens this server "
                          "accepts", param="prompt", code="context_length_exceeded")
        return self.tokenizer(text, add_special_tokens=special)["input_ids"]

    # ------------------------------------------------------------------ jobs
    def job(self, kind: str, req: Union[ChatCompletionRequest, CompletionRequest], adapter: Optional[str],
            prompts: list[list[int]], sink: Callable[[Any], Any], default_max_tokens: Optional[int]) -> Job:
        """A job of ``req.n`` sequences per prompt, in OpenAI's choice order (prompt-major)."""
        sequences = []
        for p, prompt in enumerate(prompts):
            if not prompt:
                raise invalid("the prompt is empty (no tokens)", param="prompt")
            params = sampling_params(req, len(prompt), self.settings, self.context_length, default_max_tokens,
                                     self.vocab_size)
            for i in range(req.n):
                index = p * req.n + i
                sequences.append(Sequence(index, prompt, params, IncrementalDecoder(self.tokenizer),
                                          params.generator(self.device, offset=index)))
        return Job(f"{kind}-{uuid.uuid4().hex}", req.model, adapter, sequences, sink,
                   timeout=self.settings.request_timeout, queue_timeout=self.settings.queue_timeout,
                   prompt_tokens=sum(len(p) for p in prompts))
