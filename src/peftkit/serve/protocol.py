"""The request bodies of OpenAI's API (the parts this server implements), as pydantic models.

Fields follow OpenAI's names, types and ranges. A field the server does not implement (tools,
logprobs, response_format, ...) is refused with a 400 that names it rather than silently ignored,
and so is a misspelt one (OpenAI's "Unrecognized request argument"); a few that change nothing
here (``user``, ``metadata``, ...) are accepted. ``ignore_eos`` is vLLM's extension (benchmarks).

>>> ChatCompletionRequest(model="m", messages=[{"role": "user", "content": "Hi"}]).temperature
1.0
"""

from __future__ import annotations

from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, model_validator

from .errors import invalid
from .sampling import SamplingParams
from .settings import ServeSettings

# Accepted and ignored: they describe the caller or ask for storage, not for different output.
IGNORED = {"user", "metadata", "store", "service_tier", "parallel_tool_calls", "prompt_cache_key",
           "safety_identifier", "lora_int_id"}
# Known to OpenAI's API but not implemented here: refused by name unless left at a value that asks
# for nothing (the values listed).
UNSUPPORTED = {"tools": [None, []], "tool_choice": [None, "none"], "functions": [None, []], "function_call": [None, "none"],
               "response_format": [None, {"type": "text"}], "logprobs": [None, False], "top_logprobs": [None, 0],
               "audio": [None], "modalities": [None, ["text"]], "prediction": [None], "reasoning_effort": [None],
               "web_search_options": [None], "suffix": [None, ""], "best_of": [None, 1], "verbosity": [None]}


class _Request(BaseModel):
    model_config = ConfigDict(extra="allow")

    @model_validator(mode="after")
    def _known_fields(self) -> "_Request":
        for name, value in (self.model_extra or {}).items():
            if name in IGNORED:
                continue
            if name in UNSUPPORTED:
                if value in UNSUPPORTED[name]:
                    continue
                raise invalid(f"{name} is not supported by peftkit serve", param=name, code="unsupported_parameter")
            raise invalid(f"Unrecognized request argument supplied: {name}", param=name, code="unknown_parameter")
        return self


class _Sampling(_Request):
    model: str = Field(min_length=1)
    max_tokens: Optional[int] = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    n: int = Field(default=1, ge=1)
    stop: Union[str, list[str], None] = None
    seed: Optional[int] = None
    presence_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    logit_bias: Optional[dict[str, float]] = None
    stream: bool = False
    stream_options: Optional[dict[str, Any]] = None
    ignore_eos: bool = False

    @property
    def include_usage(self) -> bool:
        return bool((self.stream_options or {}).get("include_usage"))

    def requested_max_tokens(self) -> Optional[int]:
        return self.max_tokens


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Union[str, list[dict[str, Any]], None] = None

    def text(self, index: int) -> str:
        """The message's text; content parts must all be ``{"type": "text", "text": ...}``."""
        if self.content is None or isinstance(self.content, str):
            return self.content or ""
        pieces = []
        for part in self.content:
            if part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise invalid(f"messages[{index}].content: only text parts are supported, got type "
                              f"{str(part.get('type'))[:40]!r}", param=f"messages.{index}.content")
            pieces.append(part["text"])
        return "".join(pieces)


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: Optional[int] = Field(default=None, ge=1)

    def requested_max_tokens(self) -> Optional[int]:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    def conversation(self) -> list[dict[str, str]]:
        """The messages as ``{"role", "content"}`` for a chat template (``developer`` as ``system``)."""
        return [{"role": "system" if m.role == "developer" else m.role, "content": m.text(i)}
                for i, m in enumerate(self.messages)]


class CompletionRequest(_Sampling):
    prompt: Union[str, list[str], list[int], list[list[int]]]
    echo: bool = False

    def prompts(self) -> list[Union[str, list[int]]]:
        """Each prompt: text, or token ids."""
        p = self.prompt
        if isinstance(p, str):
            return [p]
        if not p:
            raise invalid("prompt is empty", param="prompt")
        if all(isinstance(x, int) for x in p):
            return [list(p)]  # type: ignore[arg-type]
        return list(p)  # type: ignore[arg-type]


class LoadLoraRequest(_Request):
    lora_name: str
    lora_path: str


class UnloadLoraRequest(_Request):
    lora_name: str


def sampling_params(req: _Sampling, prompt_length: int, settings: ServeSettings, context: Optional[int],
                    default_max_tokens: Optional[int], vocab_size: int) -> SamplingParams:
    """Check ``req`` against the server's limits and the model's context; 400s name the field."""
    if req.n > settings.max_n:
        raise invalid(f"n is {req.n}; this server allows at most {settings.max_n}", param="n")
    stops = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
    if len(stops) > settings.max_stop or any(len(s) > 200 for s in stops):
        raise invalid(f"stop: at most {settings.max_stop} stop sequences of up to 200 characters each", param="stop")
    limit = settings.max_prompt_tokens or ((context - 1) if context else None)
    if limit is not None and prompt_length > limit:
        raise invalid(f"the prompt has {prompt_length} tokens; this server accepts at most {limit}", param="messages"
                      if isinstance(req, ChatCompletionRequest) else "prompt", code="context_length_exceeded")
    room = (context - prompt_length) if context else None
    asked = req.requested_max_tokens()
    if asked is not None and asked > settings.max_tokens:
        raise invalid(f"max_tokens is {asked}; this server allows at most {settings.max_tokens}", param="max_tokens")
    if asked is not None and room is not None and asked > room:
        raise invalid(f"this model's context is {context} tokens; the prompt takes {prompt_length}, so at most {room} "
                      f"new tokens fit, but max_tokens is {asked}", param="max_tokens", code="context_length_exceeded")
    fallback = min(x for x in (default_max_tokens, settings.max_tokens, room) if x is not None)
    return SamplingParams(max_tokens=asked or max(1, fallback), temperature=req.temperature, top_p=req.top_p,
                          stop=stops, seed=req.seed, presence_penalty=req.presence_penalty,
                          frequency_penalty=req.frequency_penalty, logit_bias=_logit_bias(req.logit_bias, vocab_size),
                          ignore_eos=req.ignore_eos)


def _logit_bias(bias: Optional[dict[str, float]], vocab_size: int) -> dict[int, float]:
    out: dict[int, float] = {}
    for key, value in (bias or {}).items():
        if not key.isdigit() or int(key) >= vocab_size or not -100 <= value <= 100:
            raise invalid(f"logit_bias: {key[:20]!r} -> {value}: keys are token ids below {vocab_size}, values "
                          "between -100 and 100", param="logit_bias")
        out[int(key)] = float(value)
    return out
