"""Prompt learning: methods that learn virtual tokens instead of changing the model's layers.

Prompt tuning, P-tuning and prefix tuning keep one prompt encoder per adapter on the PeftModel,
at peft's path ``prompt_encoder.<adapter>`` (an ``nn.ModuleDict``), and rewrite the wrapped model's
inputs on every call (``MethodSpec.prepare_inputs``): virtual-token embeddings before the input
embeddings, or a key/value prefix in the attention cache. This module holds what the three share:
the config fields, the encoder's protocol, attaching and saving it, and the input bookkeeping
(attention mask, labels, position and token type ids).

The checkpoint holds one tensor, ``prompt_embeddings``: the prompt the encoder *computes* (peft's
format). An adapter loaded from it (or made with ``inference_mode=True``) keeps that prompt as its
embedding and no head, exactly as peft does, so adapters move both ways with the same outputs.
"""

from __future__ import annotations

import warnings
from typing import Annotated, Any, Callable, Optional

import torch
import torch.nn as nn
from pydantic import BeforeValidator, PrivateAttr, field_validator

from ..compat import cache_kwarg
from ..config import PeftConfig, TaskType
from ..errors import AdapterError, ConfigError
from ..layers import AdapterLayer
from ..registry import MethodSpec, register_method

PROMPT_KEY = "prompt_embeddings"
MERGE_ERROR = "prompt-learning adapters add virtual tokens, they cannot be merged into the base weights"
# Tasks whose labels line up with the (decoder-only or encoder) input tokens: virtual tokens get -100.
TOKEN_ALIGNED_LABELS = (TaskType.CAUSAL_LM, TaskType.TOKEN_CLS)


def _positive_int(value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError("must be a positive integer")
    return value


# A count or size field: a positive int (not a bool, not a float).
Positive = Annotated[int, BeforeValidator(_positive_int)]


class PromptLearningConfig(PeftConfig):
    """Fields shared by prompt tuning, P-tuning and prefix tuning (``peft.PromptLearningConfig``).
    ``token_dim``, ``num_attention_heads``, ``num_layers`` and ``num_transformer_submodules`` are read
    from the model when left unset, and written into the saved config.

    Example:
        >>> from peftkit import PromptTuningConfig
        >>> PromptTuningConfig(num_virtual_tokens=20, task_type="CAUSAL_LM").num_virtual_tokens
        20
    """

    num_virtual_tokens: Optional[Positive] = None
    token_dim: Optional[Positive] = None
    num_transformer_submodules: Optional[Positive] = None
    num_attention_heads: Optional[Positive] = None
    num_layers: Optional[Positive] = None
    modules_to_save: Optional[list[str]] = None
    # Set by for_loading(): the encoder is built to receive a saved prompt (no head, no text init).
    _loading: bool = PrivateAttr(default=False)

    @field_validator("modules_to_save", mode="before")
    @classmethod
    def _save_names(cls, value: Any) -> Any:
        names = [value] if isinstance(value, str) else value
        return None if names is None else list(dict.fromkeys(names))  # peft writes the task heads twice

    def check(self) -> list[tuple[str, str]]:
        problems = super().check()
        if self.num_transformer_submodules not in (None, 1, 2):
            problems.append(("num_transformer_submodules", "must be 1 (decoder or encoder only) or 2 (encoder-decoder)"))
        return problems

    def for_loading(self) -> "PromptLearningConfig":
        copy = self.model_copy(deep=True)
        copy._loading = True
        return copy

    @property
    def holds_prompt(self) -> bool:
        """Whether the encoder keeps the final prompt itself (loaded or inference adapters), as peft."""
        return self.inference_mode or self._loading

    # ------------------------------------------------------------------ reading the model
    def fill_from_model(self, model: nn.Module) -> None:
        """Set the unset model-shape fields from ``model.config``, as ``peft`` does when adding the
        adapter; raises :class:`ConfigError` naming a field that can be neither read nor guessed."""
        config = getattr(model, "config", None)
        values = config.to_dict() if hasattr(config, "to_dict") else dict(vars(config)) if config is not None else {}
        values = values.get("text_config") or values  # a vision-language model: its language model
        if self.num_layers is None:
            self.num_layers = _first(config, values, "num_hidden_layers", "num_layers", "n_layer", field="num_layers")
        if self.token_dim is None:
            self.token_dim = _first(None, values, "hidden_size", "n_embd", "d_model", field="token_dim")
        if self.num_attention_heads is None:
            self.num_attention_heads = _first(
                None, values, "num_attention_heads", "n_head", "num_heads", "encoder_attention_heads",
                field="num_attention_heads",
            )
        self.fit_model_shape(values)
        if "encoder_hidden_size" in type(self).model_fields and getattr(self, "encoder_hidden_size") is None:
            self.encoder_hidden_size = self.token_dim
        if self.num_transformer_submodules is None:
            self.num_transformer_submodules = 2 if self.task_type == TaskType.SEQ_2_SEQ_LM else 1

    def fit_model_shape(self, values: dict[str, Any]) -> None:
        """Method-specific adjustments to the model's shape (prefix tuning: grouped-query attention)."""


def _first(config: Any, values: dict[str, Any], *keys: str, field: str) -> int:
    if config is not None and isinstance(getattr(config, keys[0], None), int):
        return getattr(config, keys[0])  # an attribute alias (T5's num_hidden_layers) is not in to_dict()
    for key in keys:
        if values.get(key) is not None:
            return values[key]
    raise ConfigError(
        "Cannot read the model's shape for prompt learning:",
        [(field, f"the model config has none of {', '.join(keys)}; set {field} in the adapter config")],
    )


# ---------------------------------------------------------------------------------------------- encoders


class PromptEncoderModule(nn.Module):
    """One adapter's encoder. ``embedding`` (peft's name) holds one row per virtual token; a
    subclass may add a head that maps the rows to the prompt while training. Without a head the
    embedding rows *are* the prompt, which is what a checkpoint stores.

    Subclasses set ``has_head`` and implement :meth:`encode` (rows -> prompt) when they have one.
    """

    has_head: bool = False

    def __init__(self, rows: int, dim: int):
        super().__init__()
        self.embedding = nn.Embedding(rows, dim)

    def encode(self, rows: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, indices: torch.Tensor) -> torch.Tensor:
        """The prompt rows for virtual-token ``indices`` (``(tokens,)`` or ``(batch, tokens)``), as
        peft's encoders compute them; peftkit itself calls :meth:`prompt`.

        Example::

            >>> encoder(torch.arange(config.num_virtual_tokens)).shape  # doctest: +SKIP
            torch.Size([20, 768])
        """
        rows = self.embedding(indices)
        if not self.has_head:
            return rows
        # encode() maps one sequence of rows (the LSTM reads them in order): one call per batch row
        return self.encode(rows) if rows.dim() == 2 else torch.stack([self.encode(r) for r in rows])

    def prompt(self) -> torch.Tensor:
        """The prompt, ``(rows, width)``: the same for every batch row, so it is computed once."""
        rows = self.embedding.weight
        return self.encode(rows) if self.has_head else rows

    def saved_prompt(self) -> torch.Tensor:
        """What the checkpoint stores: the live embedding when it is the prompt, else the prompt
        computed without dropout (an exact, reproducible value)."""
        if not self.has_head:
            return self.embedding.weight
        training = self.training
        self.eval()
        try:
            with torch.no_grad():
                return self.prompt().detach()
        finally:
            self.train(training)


def prompt_encoder(peft_model: nn.Module, adapter_name: str) -> PromptEncoderModule:
    return peft_model.prompt_encoder[adapter_name]


def _attach(build: Callable[[PromptLearningConfig, nn.Module], PromptEncoderModule]) -> Callable[..., None]:
    def on_add(peft_model: nn.Module, adapter_name: str, config: PromptLearningConfig) -> None:
        stored = peft_model.peft_config[adapter_name]
        model = peft_model.get_base_model()
        if stored.num_virtual_tokens is None:  # a config may be built without it (as in peft), not used
            raise ConfigError(f"Invalid {type(stored).__name__}:",
                              [("num_virtual_tokens", "is required: how many virtual tokens to learn, e.g. 20")])
        if stored.task_type is None:
            raise ConfigError(
                f"Invalid {type(stored).__name__}:",
                [("task_type", "is required for prompt learning (CAUSAL_LM, SEQ_CLS, SEQ_2_SEQ_LM, ...): it decides "
                               "how the inputs, attention mask and labels are extended")],
            )
        stored.fill_from_model(model)
        for name in ("num_layers", "token_dim", "num_attention_heads", "num_transformer_submodules", "encoder_hidden_size"):
            if name in type(stored).model_fields and getattr(config, name) != getattr(stored, name):
                setattr(config, name, getattr(stored, name))
        encoder = build(config, model).to(_device(model))
        if "prompt_encoder" not in peft_model._modules:
            peft_model.prompt_encoder = nn.ModuleDict()
        peft_model.prompt_encoder[adapter_name] = encoder

    return on_add


def _detach(peft_model: nn.Module, adapter_name: str) -> None:
    encoders = peft_model._modules.get("prompt_encoder")
    if encoders is not None and adapter_name in encoders:
        del encoders[adapter_name]


def _saved_tensors(peft_model: nn.Module, adapter_name: str) -> dict[str, torch.Tensor]:
    return {PROMPT_KEY: prompt_encoder(peft_model, adapter_name).saved_prompt()}


def _parameters(peft_model: nn.Module, adapter_name: str) -> list[nn.Parameter]:
    return list(prompt_encoder(peft_model, adapter_name).parameters())


def _device(model: nn.Module) -> torch.device:
    first = next(model.parameters(), None)
    return first.device if first is not None else torch.device("cpu")


def input_embeddings(model: nn.Module) -> nn.Module:
    """The wrapped model's token embedding table (``get_input_embeddings()``); an embedding table
    itself is returned as is (peft's encoders take the table, peftkit's registry passes the model)."""
    if isinstance(model, nn.Embedding):
        return model
    table = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if table is None:
        raise AdapterError(f"{type(model).__name__} has no get_input_embeddings(); prompt learning needs the token embeddings")
    return table


def register_prompt_method(
    config_cls: type[PromptLearningConfig],
    build: Callable[[PromptLearningConfig, nn.Module], PromptEncoderModule],
    prepare_inputs: Callable[..., dict],
    prepare_generate: Optional[Callable[..., dict]] = None,
) -> MethodSpec:
    """Register a prompt-learning method: ``build(config, model)`` makes its encoder and
    ``prepare_inputs`` rewrites the model's inputs with it."""
    return register_method(
        MethodSpec(
            peft_type=config_cls.peft_type,
            config_cls=config_cls,
            layer_cls=AdapterLayer,  # no layer is ever wrapped
            on_add=_attach(build),
            on_delete=_detach,
            model_tensors=_saved_tensors,
            model_parameters=_parameters,
            prepare_inputs=prepare_inputs,
            prepare_generate=prepare_generate,
            max_active_adapters=1,
            merge_error=MERGE_ERROR,
            uses_shared_state=True,
            key_prefix="base_model.",
        )
    )


# ---------------------------------------------------------------------------------------------- inputs


def is_encoder_decoder(model: nn.Module) -> bool:
    return bool(getattr(getattr(model, "config", None), "is_encoder_decoder", False))


def batch_size(kwargs: dict[str, Any]) -> int:
    for key in ("input_ids", "inputs_embeds", "decoder_input_ids", "decoder_inputs_embeds"):
        if kwargs.get(key) is not None:
            return kwargs[key].shape[0]
    raise AdapterError("prompt learning needs input_ids or inputs_embeds to know the batch size")


def cache_is_empty(cache: Any) -> bool:
    """Whether this call starts a sequence (no attention cache, or an empty one): the prompt goes in
    only then; later decoding steps already hold it in the cache."""
    return cache is None or (hasattr(cache, "get_seq_length") and cache.get_seq_length() == 0)


def extend_mask(kwargs: dict[str, Any], key: str, n: int) -> None:
    """Prepend ``n`` attended positions to the 2-D mask ``kwargs[key]`` (if given)."""
    mask = kwargs.get(key)
    if mask is None:
        return
    if mask.dim() != 2:
        raise AdapterError(f"prompt learning extends a 2-D {key} (batch, length); got {mask.dim()}-D")
    kwargs[key] = torch.cat((mask.new_ones(mask.shape[0], n), mask), dim=1)


def pad_front(kwargs: dict[str, Any], key: str, n: int, value: int) -> None:
    """Prepend ``n`` columns of ``value`` to ``kwargs[key]`` (if given): labels the virtual tokens
    do not predict (-100), token type 0."""
    tensor = kwargs.get(key)
    if tensor is not None:
        kwargs[key] = torch.cat((tensor.new_full((tensor.shape[0], n), value), tensor), dim=1)


def drop_token_type_ids(config: PromptLearningConfig, kwargs: dict[str, Any]) -> None:
    """Causal LMs get no token type ids with a prompt (as peft); other tasks keep them."""
    if config.task_type == TaskType.CAUSAL_LM and kwargs.get("token_type_ids") is not None:
        warnings.warn("token_type_ids are ignored with prompt learning for causal LMs (as in peft)", stacklevel=4)
        kwargs["token_type_ids"] = None


def prepend_virtual_tokens(peft_model: nn.Module, adapter_name: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """``prepare_inputs`` of prompt tuning and P-tuning: the prompt goes before the input embeddings
    (of the encoder, for encoder-decoders), the attention mask grows by the virtual tokens, and
    labels aligned with the tokens get -100 there. Position ids are dropped (peft does the same:
    the model numbers the longer sequence itself)."""
    config = peft_model.peft_config[adapter_name]
    model = peft_model.get_base_model()
    n = config.num_virtual_tokens
    if is_encoder_decoder(model) and kwargs.get("encoder_outputs") is not None:
        return kwargs  # the encoder already ran, on prompted inputs (see virtual_tokens_for_generate)
    if kwargs.get("position_ids") is not None:
        kwargs["position_ids"] = None
    drop_token_type_ids(config, kwargs)
    extend_mask(kwargs, "attention_mask", n)
    if not is_encoder_decoder(model) and not cache_is_empty(kwargs.get(cache_kwarg(model))):
        return kwargs  # a decoding step: the prompt is in the cache already
    embeds = kwargs.pop("inputs_embeds", None)
    ids = kwargs.pop("input_ids", None)
    if embeds is None:
        if ids is None:
            raise AdapterError("prompt learning needs input_ids or inputs_embeds")
        embeds = input_embeddings(model)(ids)
    prompt = prompt_encoder(peft_model, adapter_name).prompt()[:n].to(embeds.dtype)
    kwargs["inputs_embeds"] = torch.cat((prompt.expand(embeds.shape[0], -1, -1), embeds), dim=1)
    pad_front(kwargs, "token_type_ids", n, 0)
    if config.task_type in TOKEN_ALIGNED_LABELS:
        pad_front(kwargs, "labels", n, -100)
    return kwargs


def virtual_tokens_for_generate(peft_model: nn.Module, adapter_name: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """``prepare_generate`` of prompt tuning and P-tuning: an encoder-decoder's ``generate`` runs
    the encoder itself, so the prompt goes into generate's own inputs; decoder-only models get it
    at the first step instead (``prepare_inputs``)."""
    if not is_encoder_decoder(peft_model.get_base_model()):
        return kwargs
    if "inputs" in kwargs:
        kwargs["input_ids"] = kwargs.pop("inputs")
    if kwargs.pop("encoder_outputs", None) is not None:
        warnings.warn("encoder_outputs passed to generate() are ignored: the encoder must see the prompt", stacklevel=4)
    return prepend_virtual_tokens(peft_model, adapter_name, kwargs)
