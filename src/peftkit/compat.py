"""The few places where the supported ``transformers`` releases differ in an API peftkit calls.

pyproject.toml admits transformers 5.20 up to the newest tested release, and two renames fall in
that range: 5.23 renamed ``gradient_checkpointing_enable`` to ``activation_checkpointing_enable``,
and 5.24 renamed the attention cache argument of model ``forward`` from ``past_key_values`` to
``cache``. The old names still work there but warn, and a forward given both silently uses
``cache``; so peftkit asks the model which name it takes instead of guessing by version.
"""

from __future__ import annotations

import inspect
from typing import Any

from torch import nn

_CACHE_NAMES = ("cache", "past_key_values")
_cache_kwarg_of_type: dict[type, str] = {}


def cache_kwarg(model: nn.Module) -> str:
    """The keyword under which ``model.forward`` takes its attention cache: ``"cache"`` on
    transformers >= 5.24 models, ``"past_key_values"`` before. A task model whose forward passes
    ``**kwargs`` to its backbone (BERT classifiers) answers for the backbone.

    Example::

        >>> from transformers import LlamaConfig, LlamaForCausalLM
        >>> cache_kwarg(LlamaForCausalLM(LlamaConfig(num_hidden_layers=1, hidden_size=16,
        ...     intermediate_size=32, num_attention_heads=2, vocab_size=64)))   # doctest: +SKIP
        'cache'
    """
    kind = type(model)
    if kind not in _cache_kwarg_of_type:
        _cache_kwarg_of_type[kind] = next(filter(None, map(_named_cache_parameter, model.modules())), "past_key_values")
    return _cache_kwarg_of_type[kind]


def _named_cache_parameter(module: nn.Module) -> str | None:
    try:
        params = inspect.signature(module.forward).parameters
    except (TypeError, ValueError):  # a forward without a Python signature
        return None
    return next((name for name in _CACHE_NAMES if name in params), None)


def pop_cache(kwargs: dict[str, Any]) -> Any:
    """Remove and return the attention cache from forward keyword arguments, under either name
    (``None`` when there is none). ``transformers``' ``generate`` passes it as ``cache`` on new
    releases; user code may still pass ``past_key_values``.

    Example::

        >>> kwargs = {"input_ids": None, "past_key_values": None}
        >>> pop_cache(kwargs) is None, sorted(kwargs)
        (True, ['input_ids'])
    """
    found = None
    for name in _CACHE_NAMES:
        value = kwargs.pop(name, None)
        if value is not None and found is None:
            found = value
    return found


def output_cache(outputs: Any) -> Any:
    """The attention cache a model returned (``outputs.cache`` on transformers >= 5.24,
    ``outputs.past_key_values`` before).

    Example::

        >>> cache = output_cache(model(input_ids=ids, use_cache=True))   # doctest: +SKIP
    """
    for name in _CACHE_NAMES:
        if name in outputs:
            return outputs[name]
    return None


def enable_activation_checkpointing(model: nn.Module, **checkpoint_kwargs: Any) -> None:
    """Turn on activation (gradient) checkpointing of a ``transformers`` model, through the
    current API where the installed release has it. ``checkpoint_kwargs`` go to
    ``torch.utils.checkpoint.checkpoint`` (e.g. ``use_reentrant=False``).

    Example::

        >>> enable_activation_checkpointing(model, use_reentrant=False)   # doctest: +SKIP
    """
    kwargs = checkpoint_kwargs or None
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
