"""The tensor maths of one module of a combination: from the parts (adapter, weight, layer) that
meet at a module to the new adapter's tensors there. Plain functions on tensors; the layers are
only asked what the layer protocol offers (``lowrank_factors``, ``delta_weight``,
``identity_parameters``, ``weight_rows``)."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch

from .lowrank import relative_error, truncated_svd
from .merge_utils import task_arithmetic
from .plan import Options, Part


@dataclass
class ModuleResult:
    """A LoRA result at one module as ``(units, r)`` / ``(r, K)`` rows with scaling 1, or an
    affine result as tensors by parameter path; ``error`` is the relative Frobenius distance to
    the weighted sum of the parts' changes (None where not measured)."""

    key: str
    b: Optional[torch.Tensor] = None
    a: Optional[torch.Tensor] = None
    params: Optional[dict[str, torch.Tensor]] = None
    error: Optional[float] = None
    bias: Optional[torch.Tensor] = None  # a bias change the result cannot hold (counted in ``error``)

    @property
    def rank(self) -> Optional[int]:
        return None if self.a is None else self.a.shape[0]


def _weights(parts: list[Part], like: torch.Tensor) -> torch.Tensor:
    return torch.tensor([p.weight for p in parts]).to(like.device)


def nominal_rank(configs: list[Any]) -> Optional[int]:
    """The largest rank any of the configs gives a module (``r`` and ``rank_pattern``), or None."""
    ranks = [max([c.r, *(getattr(c, "rank_pattern", None) or {}).values()]) for c in configs if isinstance(getattr(c, "r", None), int)]
    return max(ranks) if ranks else None


def cat_factors(key: str, parts: list[Part]) -> ModuleResult:
    """``cat``: the parts' factors side by side, each A scaled by its weight and scaling: exact."""
    factors = [p.layer.lowrank_factors(p.name) for p in parts]
    a = torch.cat([f[1] * p.weight * f[2] for p, f in zip(parts, factors)], dim=0)
    b = torch.cat([f[0] for f in factors], dim=1)
    return ModuleResult(key, b=b, a=a, error=0.0)


def elementwise_factors(key: str, parts: list[Part], merge: Callable, measure: bool) -> ModuleResult:
    """``linear`` / ``ties`` / ``dare_*`` / ``magnitude_prune`` on the factors, as peft defines
    them: A and B merged separately with weights ``+-sqrt(|w s|)`` (the sign on A only).
    ``measure``: also the distance to the exact weighted sum (for ``linear``)."""
    factors = [p.layer.lowrank_factors(p.name) for p in parts]
    signed = [w * f[2] for w, f in zip((p.weight for p in parts), factors)]
    weights_a = torch.tensor([math.copysign(math.sqrt(abs(v)), v) if v != 0 else 0.0 for v in signed])
    weights_b = torch.tensor([math.sqrt(abs(v)) for v in signed])
    a_list, b_list = [f[1] for f in factors], [f[0] for f in factors]
    dtype = a_list[0].dtype
    a = merge(a_list, weights_a.to(a_list[0].device)).to(dtype)
    b = merge(b_list, weights_b.to(b_list[0].device)).to(dtype)
    error = None
    if measure:
        exact = sum(v * (f[0].float() @ f[1].float()) for v, f in zip(signed, factors))
        error = relative_error(exact, b.float(), a.float())
    return ModuleResult(key, b=b, a=a, error=error)


def dense_lowrank(key: str, parts: list[Part], opts: Options, rows_of: Callable[[torch.Tensor], torch.Tensor],
                  rank: Optional[int], energy: Optional[float] = None) -> ModuleResult:
    """The svd types: the parts' weight changes merged densely (in the base weight's layout, as
    peft draws DARE's masks), as rows, then cut to ``rank`` (or ``energy``) by truncated SVD.
    A bias change some parts make (``delta_bias``: (IA)³ scaling a biased layer's outputs) is
    merged too and kept in ``bias``; the error counts it as lost (see :func:`drop_bias`)."""
    merge = opts.merge_fn()
    deltas = [p.layer.delta_weight(p.name) for p in parts]
    merged = merge(deltas, _weights(parts, deltas[0]))
    low = truncated_svd(rows_of(merged), rank=rank, energy=energy, clamp=opts.svd_clamp,
                        full_matrices=opts.svd_full_matrices, driver=opts.svd_driver)
    result = ModuleResult(key, b=low.b, a=low.a, error=low.error)
    biases = [getattr(p.layer, "delta_bias", lambda name: None)(p.name) for p in parts]
    if any(b is not None for b in biases):
        like = next(b for b in biases if b is not None)
        result.bias = merge([torch.zeros_like(like) if b is None else b for b in biases], _weights(parts, like))
        drop_bias(result, float(torch.linalg.norm(merged.double())))
    return result


def drop_bias(result: ModuleResult, weight_norm: float) -> None:
    """A LoRA adapter here holds no bias: count the bias change as error, relative to the whole
    change (weight and bias): ``sqrt(err_w^2 |dW|^2 + |db|^2) / sqrt(|dW|^2 + |db|^2)``."""
    bias_norm = float(torch.linalg.norm(result.bias.double()))
    total = (weight_norm ** 2 + bias_norm ** 2) ** 0.5
    if total > 0:
        result.error = ((result.error * weight_norm) ** 2 + bias_norm ** 2) ** 0.5 / total


def affine_params(key: str, parts: list[Part], merge: Callable) -> ModuleResult:
    """Methods whose change is linear in their tensors' distance from the identity (IA³): merge
    the distances, add the identity back. ``linear`` is then the exact weighted sum of changes."""
    identity = parts[0].layer.identity_parameters(parts[0].name)
    tensors = {p.name: dict(p.layer.adapter_parameters(p.name)) for p in parts}
    params = {}
    for path, neutral in identity.items():
        shapes = {name: tuple(t[path].shape) if path in t else None for name, t in tensors.items()}
        if any(shape != tuple(neutral.shape) for shape in shapes.values()):
            raise ShapeMismatch(key, path, shapes)
        offsets = [tensors[p.name][path] - neutral for p in parts]
        params[path] = neutral + merge(offsets, _weights(parts, neutral)).to(neutral.dtype)
    return ModuleResult(key, params=params, error=0.0 if merge is task_arithmetic else None)


class ShapeMismatch(Exception):
    """Adapters whose tensors at one module have different shapes (e.g. (IA)³ scaling inputs in
    one adapter and outputs in another): their changes cannot be one adapter of that method."""

    def __init__(self, key: str, path: str, shapes: dict[str, Any]):
        self.key, self.path, self.shapes = key, path, shapes
        super().__init__(f"{key}.{path}: {shapes}")


def combined_head(wrapper: Any, parts: list[Part], merge: Callable) -> dict[str, torch.Tensor]:
    """A module trained in full (``modules_to_save``): original + merged (copy - original) per
    parameter, over the adapters that hold a copy (the others leave it as it was)."""
    original = dict(wrapper.original_module.named_parameters())
    result = {}
    for path, base in original.items():
        offsets = [dict(wrapper.modules_to_save[p.name].named_parameters())[path] - base for p in parts]
        result[path] = base + merge(offsets, _weights(parts, base)).to(base.dtype)
    return result


def warn_dropped_biases(results: list[ModuleResult]) -> None:
    """Say which layers lose a bias change (the errors of the report count it)."""
    dropped = [r.key for r in results if r.bias is not None and float(r.bias.abs().max()) > 0]
    if dropped:
        more = " ..." if len(dropped) > 5 else ""
        warnings.warn(f"the adapters change the biases of {dropped[:5]}{more}, which a LoRA adapter does not hold: "
                      "that part of the change is lost (counted in the report's errors)", stacklevel=3)
