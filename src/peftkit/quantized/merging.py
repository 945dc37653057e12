"""Merging adapters into quantized weights in place: measured, and refused when it loses too much.

Merging into a 4-bit weight means dequantize, add the adapter's change, quantize again; the second
rounding is as large as the first, and an adapter's change is small next to the weight. Measured on
a 512 x 512 NF4 layer with an adapter of 1% of the weight's norm, the merged weight lands 1.37 times
the adapter's own change away from the exact ``W + delta``: the merge mostly replaces the adapter by
noise. ``peft`` merges anyway and warns. peftkit measures it for every layer before anything is
merged, as the *rounding error relative to the adapter's change*

    error = ||Q(W + delta) - (W + delta)||  /  ||delta||     (Frobenius norms over every merged layer)

(against the unmerged model's weights, so also against its outputs for inputs of any direction),
and refuses above ``max_error`` (0.5 by default: bitsandbytes int8 merges, NF4 does not) unless
forced. The lossless way to deploy a QLoRA adapter is a 16-bit merged export
(``peftkit merge``, or :func:`~peftkit.quantized.dequantize_model` then ``merge_and_unload``).

>>> with merge_tolerance(max_error=2.0):           # doctest: +SKIP
...     merged = peft_model.merge_and_unload()
>>> print(merge_report(peft_model))                 # doctest: +SKIP
"""

from __future__ import annotations

import contextvars
import math
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator, Optional

from ..errors import AdapterError
from .layers import QuantizedBase

DEFAULT_MAX_ERROR = 0.5


@dataclass(frozen=True)
class Tolerance:
    max_error: float = DEFAULT_MAX_ERROR
    force: bool = False


_TOLERANCE: contextvars.ContextVar[Tolerance] = contextvars.ContextVar("peftkit_quantized_merge", default=Tolerance())


@contextmanager
def merge_tolerance(max_error: float = DEFAULT_MAX_ERROR, force: bool = False) -> Iterator[None]:
    """Inside, merging into quantized weights is allowed up to ``max_error`` (rounding error over
    the adapter's change, see the module docstring), or whatever it costs with ``force=True``.

    Example:
        >>> with merge_tolerance(force=True):   # doctest: +SKIP
        ...     peft_model.merge_adapter()
    """
    if not (max_error >= 0 and math.isfinite(max_error)):
        raise ValueError(f"max_error must be a finite number >= 0, got {max_error!r}")
    token = _TOLERANCE.set(Tolerance(max_error, force))
    try:
        yield
    finally:
        _TOLERANCE.reset(token)


@dataclass(frozen=True)
class MergeReport:
    """What merging into quantized weights costs: the relative rounding error over all merged
    layers, the worst layer, and how many layers of which kinds."""

    error: float
    worst_layer: str
    worst_error: float
    layers: int
    kinds: tuple[str, ...]

    def __str__(self) -> str:
        return (f"re-quantizing the merged weights of {self.layers} {'/'.join(self.kinds)} layer(s) moves them "
                f"{self.error:.3g}x the adapter's own change away from the exact merge "
                f"(worst: {self.worst_layer}, {self.worst_error:.3g}x)")


def _summarise(errors: dict[str, tuple[float, float]], kinds: set[str]) -> Optional[MergeReport]:
    changed = {key: (e, c) for key, (e, c) in errors.items() if c > 0}
    if not changed:
        return None
    total = math.sqrt(sum(e * e for e, _ in changed.values())) / math.sqrt(sum(c * c for _, c in changed.values()))
    worst = max(changed, key=lambda key: changed[key][0] / changed[key][1])
    return MergeReport(total, worst, changed[worst][0] / changed[worst][1], len(changed), tuple(sorted(kinds)))


def merge_report(peft_model: Any) -> Optional[MergeReport]:
    """The rounding cost of the adapters merged into the model's quantized layers (None when none is).

    Example:
        >>> merge_report(peft_model).error   # doctest: +SKIP
        0.39
    """
    errors: dict[str, tuple[float, float]] = {}
    kinds = set()
    for layer in peft_model._adapter_layers():
        if isinstance(layer, QuantizedBase) and layer.merge_errors:
            error, change = (math.sqrt(sum(v * v for v in values)) for values in zip(*layer.merge_errors))
            errors[layer.key] = (error, change)
            kinds.add(layer.kind.name)
    return _summarise(errors, kinds)


def check_merge(peft_model: Any, layers: list, adapter_names: list[str]) -> None:
    """Before merging ``adapter_names``: measure the rounding every quantized layer would suffer and
    refuse (raise, nothing merged) above the tolerance; warn with the measured cost otherwise. The
    registry's base-layer hook that ``merge_adapter`` calls.

    Example:
        >>> check_merge(peft_model, list(peft_model._adapter_layers()), ["default"])   # doctest: +SKIP
    """
    quantized = [layer for layer in layers if isinstance(layer, QuantizedBase)]
    if not quantized:
        return
    report = _summarise({layer.key: layer.trial_merge(adapter_names) for layer in quantized},
                        {layer.kind.name for layer in quantized})
    if report is None:
        return
    tolerance = _TOLERANCE.get()
    if report.error > tolerance.max_error and not tolerance.force:
        raise AdapterError(
            f"merging {adapter_names} into quantized weights in place would lose most of the adapter: {report}; "
            f"the limit is {tolerance.max_error:g}. Nothing was merged. Export a 16-bit merged model instead "
            "(`peftkit merge RUN OUT`, or peftkit.quantized.dequantize_model(model) and then merge_and_unload()), "
            "or merge anyway inside `with peftkit.quantized.merge_tolerance(force=True):`"
        )
    warnings.warn(f"merged {adapter_names} into quantized weights in place: {report}. unmerge_adapter() restores "
                  "the original quantized weights exactly", stacklevel=3)
