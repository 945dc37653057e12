"""torchao int8 weight-only: an ``nn.Linear`` whose weight is torchao's ``Int8Tensor`` (int8 values
with a float scale per row, made by ``quantize_(model, Int8WeightOnlyConfig())``). It runs forward
and backward on CPU with torchao >= 0.17, which is why it is peftkit's second backend.

Other torchao formats are refused at injection: int4 weight-only has no CPU kernel in torchao 0.18,
its NF4 tensor fails on some SmolLM2 shapes, and int8 with dynamic activation quantization changes
what the base computes per call (the adapter would then see a different base than a merge does).
"""

from __future__ import annotations

import sys
from typing import Any

import torch
import torch.nn as nn

from .kinds import QuantizedKind, register_kind


def _int8_tensor_cls():
    module = sys.modules.get("torchao.quantization")
    return getattr(module, "Int8Tensor", None) if module is not None else None


def is_int8_weight_only(module: nn.Module) -> bool:
    """An ``nn.Linear`` whose weight is a torchao ``Int8Tensor`` without activation quantization."""
    cls = _int8_tensor_cls()
    weight = getattr(module, "weight", None)
    return (cls is not None and isinstance(module, nn.Linear) and isinstance(weight, cls)
            and getattr(weight, "act_quant_kwargs", None) is None)


def _shape(module: nn.Module) -> tuple[int, int]:
    return tuple(module.weight.shape)  # the logical (out, in) shape


def dequantize(module: nn.Module) -> torch.Tensor:
    return module.weight.dequantize()


def _granularity(weight: Any):
    from torchao.quantization.granularity import PerRow, PerTensor

    return PerTensor() if list(weight.block_size) == list(weight.shape) else PerRow()


def requantize_(module: nn.Module, dense: torch.Tensor) -> None:
    """Quantize ``dense`` as the weight was (same granularity) and store it in the same tensor."""
    weight = module.weight
    fresh = type(weight).from_hp(dense.to(weight.dtype), _granularity(weight))
    restore_(module, {"qdata": fresh.qdata, "scale": fresh.scale, "zero_point": fresh.zero_point})


def snapshot(module: nn.Module) -> dict[str, Any]:
    weight = module.weight
    return {name: (None if getattr(weight, name) is None else getattr(weight, name).clone())
            for name in ("qdata", "scale", "zero_point")}


def restore_(module: nn.Module, saved: dict[str, Any]) -> None:
    for name, value in saved.items():
        setattr(module.weight, name, value)


def quantize_int8_weight_only(model: nn.Module, skip: set[str]) -> None:
    """Quantize every ``nn.Linear`` of ``model`` whose name is not in ``skip`` to int8 weight-only."""
    from torchao.quantization import Int8WeightOnlyConfig, quantize_

    quantize_(model, Int8WeightOnlyConfig(),
              filter_fn=lambda module, name: type(module) is nn.Linear and name not in skip)


TORCHAO_INT8 = register_kind(QuantizedKind(
    "torchao-int8", "torchao int8 weight-only (Int8Tensor)", is_int8_weight_only, _shape,
    lambda module: module.weight.dtype, dequantize, requantize_, snapshot, restore_, bits=8))
