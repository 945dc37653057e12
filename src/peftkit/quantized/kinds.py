"""Which quantized linear layers peftkit adapts, and which it refuses by name.

A :class:`QuantizedKind` describes one way of storing a linear layer's weight in fewer bits (a
bitsandbytes ``Linear4bit``, a torchao int8 tensor...): how to recognise it, its logical shape and
compute dtype, how to dequantize it into a temporary dense tensor, how to write a dense weight back
(the lossy step of an in-place merge) and how to snapshot and restore the stored bits exactly (so
``unmerge`` gives back the original quantized weight). The backends register their kinds here on
import (:mod:`peftkit.quantized.bnb`, :mod:`peftkit.quantized.torchao`).

Recognising a module never imports a backend: a module can only be a bitsandbytes layer if
bitsandbytes is already imported, so the checks look at the class's module name first.

Anything else that stores its weight in a way peftkit cannot read (optimum-quanto, HQQ, torchao
layouts without a CPU kernel, or any unknown tensor subclass) is *refused at injection*, naming the
module and the reason (:func:`refusal`), instead of being adapted as if it were a plain
``nn.Linear`` (which builds adapters from a packed weight's shape, or merges into a weight that is
re-quantized on the fly).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
import torch.nn as nn


@dataclass(frozen=True)
class QuantizedKind:
    """One supported kind of quantized linear layer; the callables take the layer module.

    Example (what a backend registers)::

        register_kind(QuantizedKind("bnb-4bit", "bitsandbytes Linear4bit (NF4/FP4)", is_linear4bit,
                                    shape=..., compute_dtype=..., dequantize=..., requantize_=...,
                                    snapshot=..., restore_=...))
    """

    name: str                     # short id used in reports: "bnb-4bit", "bnb-8bit", "torchao-int8"
    label: str                    # what error messages and factory lists call it
    matches: Callable[[nn.Module], bool]
    shape: Callable[[nn.Module], tuple[int, int]]          # (out_features, in_features)
    compute_dtype: Callable[[nn.Module], torch.dtype]      # the dtype its matmul runs in
    dequantize: Callable[[nn.Module], torch.Tensor]        # dense (out, in) weight, a fresh tensor
    requantize_: Callable[[nn.Module, torch.Tensor], None]  # store a dense (out, in) weight, lossy
    snapshot: Callable[[nn.Module], Any]                   # the stored bits, to restore exactly
    restore_: Callable[[nn.Module, Any], None]
    # Called when a layer is wrapped (and for every such layer of a model that gets adapters):
    # switches off backend behaviour that breaks training (bitsandbytes' CPU repacking).
    guard: Callable[[nn.Module], None] = lambda module: None
    bits: int = 4
    # Whether the layer's own forward is now exactly ``linear(x, dequantize(W).to(c), bias)`` in its
    # compute dtype ``c``, so that the fused LoRA kernel may compute it that way: bitsandbytes 4-bit
    # always; bitsandbytes int8 in train mode (in eval mode it also rounds the activations to int8).
    dense_forward: Callable[[nn.Module], bool] = lambda module: False

    def weight_bytes(self, module: nn.Module) -> int:
        """Bytes of the stored weight and its quantization statistics (not the bias)."""
        return sum(t.numel() * t.element_size() for t in _tensors(self.snapshot(module)))


def _tensors(obj: Any):
    if torch.is_tensor(obj):
        yield obj
    elif isinstance(obj, dict):
        for value in obj.values():
            yield from _tensors(value)
    elif isinstance(obj, (list, tuple)):
        for value in obj:
            yield from _tensors(value)


_KINDS: list[QuantizedKind] = []


def register_kind(kind: QuantizedKind) -> QuantizedKind:
    """Add a supported quantized layer kind (a backend module calls this on import)."""
    if all(k.name != kind.name for k in _KINDS):
        _KINDS.append(kind)
    return kind


def supported_kinds() -> list[QuantizedKind]:
    """Every registered kind (bitsandbytes 4-bit and 8-bit, torchao int8 weight-only).

    Example:
        >>> [kind.name for kind in supported_kinds()]
        ['bnb-4bit', 'bnb-8bit', 'torchao-int8']
    """
    from . import bnb, torchao  # noqa: F401  (they register on import; neither imports its backend)

    return list(_KINDS)


def kind_of(module: nn.Module) -> Optional[QuantizedKind]:
    """The supported kind ``module`` is, or None (a plain layer, or one peftkit refuses).

    Example:
        >>> kind_of(nn.Linear(4, 4)) is None
        True
    """
    return next((k for k in supported_kinds() if k.matches(module)), None)


def class_path(module: nn.Module) -> str:
    """``package.module.Class`` of a module, for recognising backends without importing them."""
    return f"{type(module).__module__}.{type(module).__qualname__}"


# Backends peftkit recognises but cannot adapt correctly, by the package their layer class comes
# from: (module prefix, what to call it, why, what to do instead).
_REFUSED_PACKAGES = (
    ("optimum.quanto", "an optimum-quanto layer",
     "its weight is re-quantized from a float copy on every call, so merged adapters are rounded away "
     "(measured: logits off by 1.8 after a merge)",
     "load the model with peftkit's quantization instead (model.quantization: {backend: bnb, bits: 4} or "
     "{backend: torchao, bits: 8}), or quantize after merging"),
    ("hqq", "an HQQ layer", "peftkit has no HQQ backend (its packed weight has no dense view here)",
     "use bitsandbytes (backend: bnb) or torchao int8 (backend: torchao)"),
    ("auto_gptq", "a GPTQ layer", "peftkit has no GPTQ backend", "use bitsandbytes or torchao int8"),
    ("gptqmodel", "a GPTQ layer", "peftkit has no GPTQ backend", "use bitsandbytes or torchao int8"),
    ("awq", "an AWQ layer", "peftkit has no AWQ backend", "use bitsandbytes or torchao int8"),
    ("bitsandbytes", "a bitsandbytes layer of a kind peftkit does not adapt",
     "only Linear4bit and Linear8bitLt (without fp16 weights) are supported",
     "load the model with load_in_4bit or load_in_8bit"),
)


def has_packed_weight(module: nn.Module) -> bool:
    """Whether ``module.weight`` is something other than a plain floating tensor (a tensor subclass
    such as bitsandbytes' ``Params4bit`` or torchao's ``Int8Tensor``, or an integer tensor)."""
    weight = getattr(module, "weight", None)
    if not isinstance(weight, torch.Tensor):
        return False
    return type(weight) not in (torch.Tensor, nn.Parameter) or not weight.is_floating_point()


def is_quantized_module(module: nn.Module) -> bool:
    """Whether ``module`` stores its weight quantized (supported or not): such a module is only
    ever wrapped by a factory made for quantized layers (see ``LayerFactory.quantized``).

    Example:
        >>> is_quantized_module(nn.Linear(4, 4))
        False
    """
    path = class_path(module)
    refused_package = any(path.startswith(prefix + ".") for prefix, *_ in _REFUSED_PACKAGES)
    return refused_package or has_packed_weight(module) or kind_of(module) is not None


def refusal(module: nn.Module) -> Optional[str]:
    """Why peftkit cannot adapt this quantized module and what to do instead, or None when it is
    not a quantized module or it is supported.

    Example:
        >>> refusal(nn.Linear(4, 4)) is None
        True
    """
    if not is_quantized_module(module) or kind_of(module) is not None:
        return None
    path = class_path(module)
    for prefix, what, why, instead in _REFUSED_PACKAGES:
        if path.startswith(prefix + "."):
            return f"it is {what} ({type(module).__name__}): {why}; {instead}"
    weight = module.weight
    extra = "" if not hasattr(weight, "__class__") else f" ({type(weight).__module__}.{type(weight).__name__})"
    return (f"its weight is stored as a {type(weight).__name__}{extra}, a quantized or packed format peftkit "
            "cannot read; supported: bitsandbytes 4-bit/8-bit and torchao int8 weight-only")
