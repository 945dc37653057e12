"""Getting a quantized model ready to train adapters: :func:`prepare_model_for_kbit_training`,
with ``peft``'s meaning (same name and arguments), which ``peftkit train`` applies to every run
with ``model.quantization``."""

from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn as nn

from ..compat import enable_activation_checkpointing
from .kinds import is_quantized_module, kind_of


def _empty_accelerator_caches() -> None:
    """Hand the caching allocators' unused blocks back (CUDA, XPU), where such a device is usable."""
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    xpu = getattr(torch, "xpu", None)
    if xpu is not None and xpu.is_available():
        xpu.empty_cache()


def prepare_model_for_kbit_training(model: nn.Module, use_gradient_checkpointing: bool = True,
                                    gradient_checkpointing_kwargs: Optional[dict[str, Any]] = None,
                                    auto_clear_cache: bool = True) -> nn.Module:
    """Prepare a quantized ``transformers`` model for adapter training, as ``peft``'s function of the
    same name does: freeze every parameter, keep the parameters that are not quantized (norms,
    embeddings, the output head) in float32 where they were half precision, for a stable loss, and
    optionally turn on gradient checkpointing, making the input embeddings' output require grad
    when the checkpointing is re-entrant (which otherwise gives adapters no gradient). With
    ``auto_clear_cache`` (the default, as in ``peft``), the accelerator's cached memory is released
    after parameters were cast to float32 (the half-precision copies stay cached otherwise, which
    matters where host and accelerator share memory).

    Two differences from ``peft``, both deliberate: gradient checkpointing defaults to the
    non-reentrant kind (``{"use_reentrant": False}``, torch's recommendation, which needs no input
    hook); and bitsandbytes' CPU inference repacking is switched off in every 4-bit layer (see
    :mod:`peftkit.quantized.bnb`). Returns ``model``.

    Example:
        >>> model = prepare_model_for_kbit_training(load_model("smollm2", quantization={"bits": 4}))  # doctest: +SKIP
    """
    for param in model.parameters():
        param.requires_grad_(False)
    quantized_params = {id(p) for m in model.modules() if is_quantized_module(m) for p in m.parameters(recurse=False)}
    cast = False
    for param in model.parameters():
        if param.dtype in (torch.float16, torch.bfloat16) and id(param) not in quantized_params:
            param.data = param.data.to(torch.float32)
            cast = True
    if cast and auto_clear_cache:
        _empty_accelerator_caches()
    for module in model.modules():
        kind = kind_of(module)
        if kind is not None:
            kind.guard(module)
    if use_gradient_checkpointing:
        kwargs = {"use_reentrant": False} if gradient_checkpointing_kwargs is None else dict(gradient_checkpointing_kwargs)
        if kwargs.get("use_reentrant", True) and hasattr(model, "enable_input_require_grads"):
            model.enable_input_require_grads()
        enable_activation_checkpointing(model, **kwargs)
        if getattr(model, "config", None) is not None:
            model.config.use_cache = False
    return model
