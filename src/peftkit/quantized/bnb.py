"""bitsandbytes: ``Linear4bit`` (NF4 / FP4, optionally double-quantized statistics) and
``Linear8bitLt`` (LLM.int8() row-wise int8, without fp16 weights). Both run forward and backward
on CPU with bitsandbytes >= 0.49.

Two behaviours of bitsandbytes are handled here:

- **CPU inference repacking.** On CPUs with AVX512-BF16, a ``Linear4bit`` evaluated in eval mode
  on an input without gradient rewrites its weight, in place, into a layout for a fast inference
  kernel. From then on the layer goes through that kernel in training too, which is not an
  autograd function: the layer returns no input gradient, so every adapter before it trains on
  wrong gradients (and a merge reads the weight in the wrong layout; on CPUs without the
  instructions, forcing the repacking gives wrong outputs too). The repacking is also lossy: it
  stores the block scales in bfloat16, so one evaluation silently changes the base weights (by
  ~0.2% here) and a run that evaluates first trains a different model. ``peft`` leaves this alone.
  :func:`guard_4bit` switches it off (``support_avx512bf16_for_cpu = False``, at the cost of that
  inference kernel) and undoes a repacking that happened before peftkit saw the layer.
- **The int8 cast warning.** ``Linear8bitLt`` on CPU logs "inputs will be cast ... to float16" on
  every call of every layer; it is let through once.

Nothing here imports bitsandbytes unless a module already is one of its layers (or a model is
being quantized with it).
"""

from __future__ import annotations

import copy
import logging
import sys
from typing import Any

import torch
import torch.nn as nn

from .kinds import QuantizedKind, register_kind


def _bnb_nn():
    # a None entry in sys.modules marks a package that must not be imported (a blocked import)
    package = sys.modules.get("bitsandbytes")
    return getattr(package, "nn", None) if package is not None else None


def is_linear4bit(module: nn.Module) -> bool:
    """A bitsandbytes ``Linear4bit`` (or its ``LinearNF4`` / ``LinearFP4`` subclasses)."""
    bnb_nn = _bnb_nn()
    return bnb_nn is not None and isinstance(module, bnb_nn.Linear4bit)


def is_linear8bit(module: nn.Module) -> bool:
    """A bitsandbytes ``Linear8bitLt`` holding int8 weights (``has_fp16_weights=False``); with fp16
    weights the layer re-quantizes a float copy on every call and is refused."""
    bnb_nn = _bnb_nn()
    return (bnb_nn is not None and isinstance(module, bnb_nn.Linear8bitLt)
            and not module.state.has_fp16_weights and module.weight.dtype == torch.int8)


def _shape(module: nn.Module) -> tuple[int, int]:
    return module.out_features, module.in_features


# ------------------------------------------------------------------------------------------- 4-bit
def _functional():
    import bitsandbytes.functional as bnb_functional

    return bnb_functional


def is_repacked(module: nn.Module) -> bool:
    """Whether bitsandbytes has rewritten this layer's weight into its CPU inference layout."""
    return bool(getattr(getattr(module.weight, "quant_state", None), "packing_format_for_cpu", False))


def unpack_(module: nn.Module) -> None:
    """Undo bitsandbytes' CPU inference repacking (nothing when the weight is in its usual layout)."""
    if is_repacked(module):
        data, state = _functional()._convert_weight_packed_for_cpu_inverse(module.weight.data, module.weight.quant_state)
        module.weight.data, module.weight.quant_state, module.quant_state = data, state, state


def guard_4bit(module: nn.Module) -> None:
    """Switch the CPU inference repacking off (see the module docstring), undoing it if it happened."""
    module.support_avx512bf16_for_cpu = False
    unpack_(module)


def _quant_state(module: nn.Module):
    state = getattr(module.weight, "quant_state", None) or getattr(module, "quant_state", None)
    if state is None:
        raise ValueError(f"{type(module).__name__} holds no quantized weight yet (bitsandbytes quantizes on .to(device))")
    return state


def compute_dtype_4bit(module: nn.Module) -> torch.dtype:
    """``compute_dtype`` when set, else the dtype the weight was quantized from."""
    return module.compute_dtype or _quant_state(module).dtype


def dequantize_4bit(module: nn.Module) -> torch.Tensor:
    """The (out, in) weight in the dtype it was quantized from."""
    unpack_(module)  # a repacked weight is in another layout
    return _functional().dequantize_4bit(module.weight.data, _quant_state(module))


def requantize_4bit_(module: nn.Module, dense: torch.Tensor) -> None:
    """Quantize ``dense`` with the layer's own settings and store it in place (same Parameter)."""
    old = _quant_state(module)
    data, state = _functional().quantize_4bit(
        dense.to(old.dtype).contiguous(), blocksize=old.blocksize, compress_statistics=old.nested,
        quant_type=old.quant_type, quant_storage=module.weight.data.dtype)
    module.weight.data, module.weight.quant_state, module.quant_state = data, state, state


def snapshot_4bit(module: nn.Module) -> dict[str, Any]:
    unpack_(module)
    return {"data": module.weight.data.clone(), "quant_state": copy.deepcopy(_quant_state(module))}


def restore_4bit_(module: nn.Module, saved: dict[str, Any]) -> None:
    module.weight.data, module.weight.quant_state, module.quant_state = saved["data"], saved["quant_state"], saved["quant_state"]


def quantize_linear_4bit(linear: nn.Linear, quant_type: str = "nf4", double_quant: bool = True,
                         compute_dtype: torch.dtype | None = None) -> nn.Module:
    """A ``Linear4bit`` holding ``linear``'s weight quantized (quantizing a loaded model in place:
    GGUF checkpoints, which transformers will not load with a quantization config)."""
    import bitsandbytes as bnb

    weight = linear.weight.detach()
    layer = bnb.nn.Linear4bit(linear.in_features, linear.out_features, bias=linear.bias is not None,
                              compute_dtype=compute_dtype, compress_statistics=double_quant, quant_type=quant_type,
                              device="meta")
    layer.weight = bnb.nn.Params4bit(weight.contiguous(), requires_grad=False, compress_statistics=double_quant,
                                     quant_type=quant_type, module=layer)._quantize(weight.device)
    if linear.bias is not None:
        layer.bias = nn.Parameter(linear.bias.detach().clone(), requires_grad=False)
    guard_4bit(layer)
    return layer


# ------------------------------------------------------------------------------------------- 8-bit
class _Once(logging.Filter):
    """Lets a message through the first time only."""

    def __init__(self, fragment: str):
        super().__init__()
        self.fragment, self.seen = fragment, False

    def filter(self, record: logging.LogRecord) -> bool:
        if self.fragment not in str(record.msg):
            return True
        seen, self.seen = self.seen, True
        return not seen


_CAST_WARNING = _Once("inputs will be cast")


def guard_8bit(module: nn.Module) -> None:
    logger = logging.getLogger("bitsandbytes.autograd._functions")
    if _CAST_WARNING not in logger.filters:
        logger.addFilter(_CAST_WARNING)


def _scales_8bit(module: nn.Module) -> torch.Tensor:
    # the row scales sit on the weight until the first forward, then on the layer's state
    scb = getattr(module.weight, "SCB", None)
    return scb if scb is not None else module.state.SCB


def dequantize_8bit(module: nn.Module) -> torch.Tensor:
    """The (out, in) weight in float32: int8 rows times their absmax / 127 (bitsandbytes' own
    expression in training, so the fused path computes its numbers exactly)."""
    return module.weight.data.to(torch.float32).mul_(_scales_8bit(module).unsqueeze(1).mul(1.0 / 127.0))


def requantize_8bit_(module: nn.Module, dense: torch.Tensor) -> None:
    import bitsandbytes.functional as bnb_functional

    cb, scb, _ = bnb_functional.int8_vectorwise_quant(dense.to(torch.float16).contiguous())
    _store_8bit(module, cb, scb)


def _store_8bit(module: nn.Module, cb: torch.Tensor, scb: torch.Tensor) -> None:
    # the layout the layer has after its first forward (Linear8bitLt.init_8bit_state)
    module.weight.data = cb
    module.weight.CB = module.weight.SCB = None
    module.state.CB, module.state.SCB = cb, scb


def snapshot_8bit(module: nn.Module) -> dict[str, torch.Tensor]:
    return {"CB": module.weight.data.clone(), "SCB": _scales_8bit(module).clone()}


def restore_8bit_(module: nn.Module, saved: dict[str, torch.Tensor]) -> None:
    _store_8bit(module, saved["CB"], saved["SCB"])


def quantize_linear_8bit(linear: nn.Linear) -> nn.Module:
    """A ``Linear8bitLt`` (int8 weights, no outlier threshold) holding ``linear``'s weight."""
    import bitsandbytes as bnb

    weight = linear.weight.detach()
    layer = bnb.nn.Linear8bitLt(linear.in_features, linear.out_features, bias=linear.bias is not None,
                                has_fp16_weights=False, threshold=0.0, device="meta")
    layer.weight = bnb.nn.Int8Params(weight.contiguous(), requires_grad=False, has_fp16_weights=False)._quantize(
        weight.device)
    if linear.bias is not None:
        layer.bias = nn.Parameter(linear.bias.detach().clone(), requires_grad=False)
    guard_8bit(layer)
    return layer


BNB_4BIT = register_kind(QuantizedKind(
    "bnb-4bit", "bitsandbytes Linear4bit (NF4/FP4)", is_linear4bit, _shape, compute_dtype_4bit, dequantize_4bit,
    requantize_4bit_, snapshot_4bit, restore_4bit_, guard=guard_4bit, bits=4, dense_forward=lambda module: True))
BNB_8BIT = register_kind(QuantizedKind(
    "bnb-8bit", "bitsandbytes Linear8bitLt (int8)", is_linear8bit, _shape, lambda module: torch.float32,
    dequantize_8bit, requantize_8bit_, snapshot_8bit, restore_8bit_, guard=guard_8bit, bits=8,
    dense_forward=lambda module: module.training))
