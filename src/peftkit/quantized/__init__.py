"""Quantized frozen bases (QLoRA): adapters on 4-bit and 8-bit linear layers.

Supported kinds (:mod:`.kinds`): bitsandbytes ``Linear4bit`` (NF4/FP4, double quant) and
``Linear8bitLt`` (:mod:`.bnb`), and torchao int8 weight-only (:mod:`.torchao`). Every method that
adapts linear layers lists one factory per kind (:func:`.layers.quantized_factories`); its layers then
compute the adapter path in their own dtype over the quantized base, and read the base weight only
through a temporary dequantized copy. Quantized layers of other libraries are refused by name.

What this package adds around that:

- loading: :class:`QuantizationConfig` (``model.quantization`` of a run config) and
  :func:`quantize_model` (in place, for GGUF checkpoints), :func:`dequantize_model`;
- training: :func:`prepare_model_for_kbit_training` (``peft``'s meaning);
- merging in place only within a measured tolerance (:mod:`.merging`), with an exact ``unmerge``.

>>> from peftkit.quantized import QuantizationConfig, quantize_model      # doctest: +SKIP
>>> quantize_model(model, QuantizationConfig(backend="bnb", bits=4))      # doctest: +SKIP
"""

from __future__ import annotations

import torch.nn as nn

from ..registry import BaseLayerKind, register_base_layer_kind
from .kinds import QuantizedKind, is_quantized_module, kind_of, refusal, supported_kinds
from .layers import QuantizedBase, quantized_factories, quantized_variant
from .merging import DEFAULT_MAX_ERROR, MergeReport, check_merge, merge_report, merge_tolerance


def guard_model(model: nn.Module) -> None:
    """Switch off backend behaviour that breaks training in every supported quantized layer of
    ``model``, adapted or not (bitsandbytes' CPU repacking would stop input gradients in an
    un-adapted layer too, and with them every adapter before it).

    Example:
        >>> guard_model(model)   # doctest: +SKIP
    """
    for module in model.modules():
        kind = kind_of(module)
        if kind is not None:
            kind.guard(module)


def storage_name(module: nn.Module) -> str | None:
    """The quantized kind's name as status reports give it (peft's spelling: ``"bnb 4bit"``).

    Example:
        >>> storage_name(model.q_proj.base_layer)  # doctest: +SKIP
        'bnb 4bit'
    """
    kind = kind_of(module)
    return kind.name.replace("-", " ") if kind is not None else None


register_base_layer_kind(BaseLayerKind(
    "quantized", claims=is_quantized_module, refusal=refusal, prepare_model=guard_model, check_merge=check_merge,
    storage_name=storage_name))


__all__ = [
    "DEFAULT_MAX_ERROR",
    "MergeReport",
    "QuantizedBase",
    "QuantizedKind",
    "guard_model",
    "is_quantized_module",
    "kind_of",
    "merge_report",
    "merge_tolerance",
    "quantized_factories",
    "quantized_variant",
    "refusal",
    "supported_kinds",
]
