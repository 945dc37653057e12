"""Adapter layers on quantized bases: a method's own layer class, with the base weight read through
its :class:`~peftkit.quantized.kinds.QuantizedKind`.

:func:`quantized_variant` gives, for a method's layer class (``LoraLinear``, ``IA3Linear``...), the
subclass ``Quantized<Name>`` that puts :class:`QuantizedBase` first. The method's maths is untouched:

- its forward only calls ``base_layer(x)`` (the quantized module computes in its compute dtype) and
  adds the adapter's own path, in the adapter's dtype (float32 on half-precision compute);
- the base weight is read through :meth:`~peftkit.layers.AdapterLayer.base_weight`, which here
  dequantizes into a temporary (DoRA's weight norms): no persistent dense copy is ever kept;
- merging runs the method's own merge on a *dense stand-in* of the base (a plain ``nn.Linear``
  holding the dequantized weight), then quantizes the result back into the layer's storage and
  measures what that rounding cost (:mod:`peftkit.quantized.merging` decides whether to allow it).
  The original quantized bits are kept (they are small), so ``unmerge`` restores them exactly.

:func:`quantized_factories` builds the ``LayerFactory`` entries a method lists for every supported kind.
"""

from __future__ import annotations

import copy
import sys
from contextlib import contextmanager
from functools import lru_cache, partial
from typing import Any, Callable, Iterator, Optional

import torch
import torch.nn as nn

from ..errors import TargetError
from ..layers import warn_if_merged_already
from ..registry import LayerFactory
from .kinds import QuantizedKind, kind_of, supported_kinds


class DequantizedWeight:
    """A quantized layer's weight as the fused LoRA kernel takes it: ``dense()`` dequantizes into a
    fresh tensor each time (forward and again in backward), so nothing weight-sized is kept."""

    def __init__(self, kind: QuantizedKind, module: nn.Module, dtype: torch.dtype):
        self.kind, self.module, self.dtype = kind, module, dtype
        self.shape = torch.Size(kind.shape(module))

    def dense(self) -> torch.Tensor:
        return self.kind.dequantize(self.module).to(self.dtype)


class QuantizedBase:
    """Mixin for an adapter layer whose ``base_layer`` is a quantized linear (see the module docstring).

    Example:
        >>> layer = quantized_variant(LoraLinear)(linear4bit, "default", LoraConfig(r=8), "q_proj")  # doctest: +SKIP
    """

    def __init__(self, base_layer: nn.Module, *args: Any, **kwargs: Any):
        kind = kind_of(base_layer)
        if kind is None:
            raise TargetError(f"{type(base_layer).__name__} is not a supported quantized layer")
        self.kind = kind  # a plain attribute, set before nn.Module.__init__ as LoraLinear does
        self._standing_in = False
        self._original: Optional[tuple[Any, Optional[torch.Tensor]]] = None  # stored bits and bias before merging
        self.merge_errors: list[tuple[float, float]] = []  # per merge: (rounding error, adapter change) norms
        kind.guard(base_layer)
        super().__init__(base_layer, *args, **kwargs)

    # ------------------------------------------------------------------ the base weight
    def base_weight(self) -> torch.Tensor:
        if self._standing_in:
            return super().base_weight()
        return self.kind.dequantize(self.base_layer)

    def base_weight_info(self) -> tuple[torch.Size, torch.dtype, torch.device]:
        if self._standing_in:
            return super().base_weight_info()
        module = self.base_layer
        return torch.Size(self.kind.shape(module)), self.kind.compute_dtype(module), module.weight.device

    def set_base_weight(self, weight: torch.Tensor) -> None:
        raise TargetError(
            f"{self.key!r} is a quantized {self.kind.label}: an initialisation that rewrites the base weight "
            "(init_lora_weights='pissa'/'olora') would be rounded away; initialise with True or 'gaussian', "
            "or on the full-precision model before quantizing"
        )

    def fused_weight(self) -> Optional[tuple[Any, Optional[torch.Tensor]]]:
        """``(weight source, bias)`` for the fused LoRA kernel, when the base's own forward is exactly
        ``linear(x, dequantize(W), bias)`` (bitsandbytes 4-bit); None otherwise."""
        module = self.base_layer
        # Only when autograd needs the node: in inference the layer's own forward is as fast or
        # faster (bitsandbytes has inference kernels that never dequantize the whole weight).
        if self._standing_in or not torch.is_grad_enabled() or not self.kind.dense_forward(module):
            return None
        dtype = self.kind.compute_dtype(module)
        if module.bias is not None and module.bias.dtype != dtype:
            return None  # the layer casts its bias per call; the plain path does the same
        return DequantizedWeight(self.kind, module, dtype), module.bias

    # ------------------------------------------------------------------ merging
    @contextmanager
    def _stand_in(self, dense: torch.Tensor) -> Iterator[nn.Linear]:
        """Inside, ``base_layer`` is a plain ``nn.Linear`` holding ``dense`` and a copy of the bias,
        so the method's own merge maths runs unchanged."""
        real = self.base_layer
        stand_in = nn.Linear(dense.shape[1], dense.shape[0], bias=real.bias is not None, device="meta")
        stand_in.weight = nn.Parameter(dense, requires_grad=False)
        if real.bias is not None:
            stand_in.bias = nn.Parameter(real.bias.detach().float().clone(), requires_grad=False)
        self._modules["base_layer"], self._standing_in = stand_in, True
        try:
            yield stand_in
        finally:
            self._modules["base_layer"], self._standing_in = real, False

    def _merged_dense(self, names: list[str], safe_merge: bool) -> tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
        """``(weight before, weight after, bias after)`` of merging ``names`` (dense, float32); the
        layer's bookkeeping is updated as by a merge, the stored bits are not touched."""
        before = self.kind.dequantize(self.base_layer).float()
        with self._stand_in(before.clone()) as dense:
            super().merge(names, safe_merge)
            return before, dense.weight.detach(), None if dense.bias is None else dense.bias.detach()

    def trial_merge(self, names: list[str]) -> tuple[float, float]:
        """``(rounding error, adapter change)`` Frobenius norms that merging ``names`` would give, with
        nothing changed: the error is how far the re-quantized weight lands from the exact merged
        one, the change is how far the exact merged weight is from the current one."""
        todo = self._todo(names)
        if not todo:
            return 0.0, 0.0
        saved = {name: copy.copy(getattr(self, name)) for name in self.merge_bookkeeping}
        try:
            before, after, _ = self._merged_dense(todo, safe_merge=False)
        finally:
            for name, value in saved.items():
                setattr(self, name, value)
        return self._rounding(before, after)[1:]

    def _rounding(self, before: torch.Tensor, after: torch.Tensor) -> tuple[Any, float, float]:
        """Quantize ``after`` as this layer stores weights: ``(stored bits, error norm, change norm)``."""
        module, kind = self.base_layer, self.kind
        change = float((after - before).norm())
        if change == 0.0:
            return None, 0.0, 0.0
        current = kind.snapshot(module)
        try:
            kind.requantize_(module, after)
            error = float((kind.dequantize(module).float() - after).norm())
            stored = kind.snapshot(module)
        finally:
            kind.restore_(module, current)
        return stored, error, change

    def _todo(self, names: list[str]) -> list[str]:
        return [n for n in names if n in self.adapter_names and n not in self.merged_adapters]

    def merge(self, adapter_names: Optional[list[str]] = None, safe_merge: bool = False) -> None:
        """Merge into the quantized weight in place (the error is recorded in ``merge_errors``;
        :meth:`~peftkit.model.PeftModel.merge_adapter` checks it against the allowed tolerance first)."""
        if self._standing_in:  # a method's merge calling back into merge/unmerge: dense maths
            return super().merge(adapter_names, safe_merge)
        warn_if_merged_already(self, self.computing_adapters if adapter_names is None else list(adapter_names))
        todo = self._todo(self.computing_adapters if adapter_names is None else list(adapter_names))
        if not todo:
            return
        module = self.base_layer
        original = (self.kind.snapshot(module), None if module.bias is None else module.bias.detach().clone())
        before, after, bias = self._merged_dense(todo, safe_merge)
        stored, error, change = self._rounding(before, after)
        if stored is not None:
            self.kind.restore_(module, stored)
        if bias is not None:
            module.bias.data.copy_(bias.to(module.bias.dtype))
        if self._original is None:
            self._original = original
        self.merge_errors.append((error, change))

    def unmerge(self) -> None:
        """Restore the quantized weight (and bias) exactly as they were before the first merge."""
        if self._standing_in:
            return super().unmerge()
        if not self.merged_adapters:
            return
        shape, _, device = self.base_weight_info()
        with self._stand_in(torch.zeros(shape, device=device)):
            super().unmerge()  # the method's bookkeeping; the dense result is not used
        stored, bias = self._original
        self.kind.restore_(self.base_layer, stored)
        if bias is not None:
            self.base_layer.bias.data.copy_(bias)
        self._original = None
        self.merge_errors.clear()

    def merge_is_finite(self, adapter_name: str) -> bool:
        saved = {name: copy.copy(getattr(self, name)) for name in self.merge_bookkeeping}
        try:
            _, after, bias = self._merged_dense([adapter_name], safe_merge=False)
        finally:
            for name, value in saved.items():
                setattr(self, name, value)
        return bool(torch.isfinite(after).all()) and (bias is None or bool(torch.isfinite(bias).all()))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, base={self.kind.name}"


@lru_cache(maxsize=None)
def quantized_variant(layer_cls: type) -> type:
    """``Quantized<LayerClass>``: ``layer_cls`` on a quantized base (made once per class, and
    reachable by name in this module so that pickling a model finds it).

    Example:
        >>> from peftkit.methods.lora_layers import LoraLinear
        >>> quantized_variant(LoraLinear).__name__
        'QuantizedLoraLinear'
    """
    name = f"Quantized{layer_cls.__name__}"
    cls = type(name, (QuantizedBase, layer_cls), {
        "__module__": __name__, "__qualname__": name,
        "__doc__": f"{layer_cls.__name__} on a quantized base layer (see peftkit.quantized.layers).",
    })
    setattr(sys.modules[__name__], name, cls)
    return cls


def quantized_factories(layer_cls: type, build: Optional[Callable[..., Any]] = None) -> list[LayerFactory]:
    """One factory per supported quantized kind for a method whose linear layer class is ``layer_cls``.
    ``build(module, name, config, key, cls=...)`` is the method's own linear factory (given the
    quantized class to make); without it the class is called directly.

    Example:
        >>> factories = quantized_factories(LoraLinear, _linear_factory)  # doctest: +SKIP
    """
    variant = quantized_variant(layer_cls)
    make = variant if build is None else partial(build, cls=variant)
    return [LayerFactory(kind.label, kind.matches, make, quantized=True) for kind in supported_kinds()]
