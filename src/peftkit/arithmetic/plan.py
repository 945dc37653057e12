"""What a weighted combination of adapters will do, decided (and refused) before anything changes.

The arguments are checked, every adapter layer holding one of the adapters is collected with the
adapters it holds, and the combination gets one of three *kinds* from what those layers offer
through the layer protocol (never from the method's name):

- ``"factors"`` (``cat``, ``linear``, ``ties``, ``dare_*``, ``magnitude_prune`` on LoRA): the layers
  expose ``lowrank_factors`` (``delta = scaling * B @ A``); the result is a LoRA adapter built from
  the factors, as ``peft`` builds it.
- ``"affine"`` (the element-wise types on (IA)³): the layers' change is linear in the distance of
  their tensors from ``identity_parameters``; the result is an adapter of the same method.
- ``"dense"`` (``svd`` and the ``*_svd`` types, any method with ``delta_weight``): the weighted
  deltas are merged densely and cut to a LoRA adapter by truncated SVD.

Every refusal names the adapters and modules at fault and what to use instead.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any, Callable, Optional, Sequence

from ..errors import AdapterError, ConfigError
from ..layers import AdapterLayer
from ..modules_to_save import ModulesToSaveWrapper
from ..names import check_adapter_name
from .lowrank import check_svd_options
from .merge_utils import dare_linear, dare_ties, magnitude_prune, task_arithmetic, ties

if TYPE_CHECKING:
    from ..model import PeftModel

# combination type -> the merge function applied to the task tensors (factors or dense deltas)
ELEMENTWISE_TYPES: dict[str, Callable] = {
    "linear": task_arithmetic, "ties": ties, "dare_linear": dare_linear, "dare_ties": dare_ties,
    "magnitude_prune": magnitude_prune,
}
SVD_TYPES: dict[str, Callable] = {
    "svd": task_arithmetic, "ties_svd": ties, "dare_linear_svd": dare_linear, "dare_ties_svd": dare_ties,
    "magnitude_prune_svd": magnitude_prune,
}
COMBINATION_TYPES = ("svd", "linear", "cat", "ties", "ties_svd", "dare_ties", "dare_linear", "dare_ties_svd",
                     "dare_linear_svd", "magnitude_prune", "magnitude_prune_svd")
_SIGNED = {"ties", "ties_svd", "dare_ties", "dare_ties_svd"}


@dataclass
class Options:
    """``add_weighted_adapter``'s keyword arguments, checked (see :func:`check_options`)."""

    combination_type: Optional[str] = None  # None: "linear" where exact for the layers, else "svd"
    svd_rank: Optional[int] = None
    svd_clamp: Optional[float] = None
    svd_full_matrices: bool = True
    svd_driver: Optional[str] = None
    density: Optional[float] = None
    majority_sign_method: str = "total"

    def merge_fn(self) -> Callable:
        """``fn(task_tensors, weights)`` for this combination type (cat: the plain weighted sum)."""
        fn = {**ELEMENTWISE_TYPES, **SVD_TYPES}.get(self.combination_type, task_arithmetic)
        if fn in (task_arithmetic,):
            return fn
        extra: dict[str, Any] = {"density": self.density}
        if self.combination_type in _SIGNED:
            extra["majority_sign_method"] = self.majority_sign_method
        return partial(fn, **extra)


@dataclass
class Part:
    """One adapter at one module: its name, its weight, and the layer that holds it."""

    name: str
    weight: float
    layer: Any


@dataclass
class ModuleParts:
    key: str
    parts: list[Part] = field(default_factory=list)


def check_options(opts: Options) -> None:
    """Raise :class:`ConfigError` listing every invalid option."""
    problems = []
    if opts.combination_type is not None and opts.combination_type not in COMBINATION_TYPES:
        problems.append(("combination_type", f"unknown type {opts.combination_type!r}; one of {', '.join(COMBINATION_TYPES)}"))
    needs_density = opts.combination_type not in (None, "svd", "linear", "cat")
    if needs_density and opts.density is None:
        problems.append(("density", f"combination_type={opts.combination_type!r} prunes: give density, the fraction "
                                    "of entries kept, in [0, 1] (e.g. 0.5)"))
    elif opts.density is not None and (isinstance(opts.density, bool) or not isinstance(opts.density, (int, float))
                                       or not 0.0 <= opts.density <= 1.0):
        problems.append(("density", f"must be a number in [0, 1], got {opts.density!r}"))
    if opts.majority_sign_method not in ("total", "frequency"):
        problems.append(("majority_sign_method", f"must be 'total' or 'frequency', got {opts.majority_sign_method!r}"))
    if problems:
        raise ConfigError("Invalid add_weighted_adapter arguments:", problems)
    check_svd_options(opts.svd_rank, None, opts.svd_clamp)


def check_arguments(model: "PeftModel", adapters: Sequence[str], weights: Sequence[float],
                    adapter_name: Optional[str]) -> tuple[list[str], list[float]]:
    """The adapters (known, distinct) and weights (finite numbers, one each) as lists."""
    if isinstance(adapters, str) or not isinstance(adapters, Sequence) or not adapters:
        raise ConfigError("Invalid add_weighted_adapter arguments:", [("adapters", "must be a non-empty list of adapter names")])
    adapters = model._check_names(list(adapters), field="adapters")
    if len(set(adapters)) != len(adapters):
        raise ConfigError("Invalid add_weighted_adapter arguments:", [("adapters", f"names an adapter twice: {adapters}")])
    if isinstance(weights, (str, bytes)) or not isinstance(weights, Sequence) or len(weights) != len(adapters):
        raise ConfigError("Invalid add_weighted_adapter arguments:",
                          [("weights", f"needs one number per adapter ({len(adapters)}), got {weights!r}")])
    numbers = []
    for w in weights:
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w):
            raise ConfigError("Invalid add_weighted_adapter arguments:", [("weights", f"must be finite numbers, got {w!r}")])
        numbers.append(float(w))
    if adapter_name is None:  # a stand-alone result (combine_adapters): no name to check
        return adapters, numbers
    check_adapter_name(adapter_name)
    if adapter_name in model.peft_config:
        raise AdapterError(f"an adapter named {adapter_name!r} already exists; pick another name for the combination "
                           "or delete_adapter() the old one first (peft silently keeps the old one)")
    return adapters, numbers


def collect(model: "PeftModel", adapters: list[str], weights: list[float]
            ) -> tuple[list[ModuleParts], list[tuple[str, ModulesToSaveWrapper, list[Part]]]]:
    """Adapter layers and saved-module wrappers holding any of ``adapters``, in model order."""
    by_key: dict[str, ModuleParts] = {}
    heads = []
    for key, module in model._adapter_modules():
        parts = [Part(n, w, module) for n, w in zip(adapters, weights) if n in module.adapter_names]
        if not parts:
            continue
        if isinstance(module, AdapterLayer):  # a mixed model may hold them in several layers stacked at one key
            by_key.setdefault(key, ModuleParts(key)).parts.extend(parts)
        elif isinstance(module, ModulesToSaveWrapper):
            heads.append((key, module, parts))
    layers = list(by_key.values())
    for module in layers:  # in the order the adapters were given, wherever their layers sit
        module.parts.sort(key=lambda part: adapters.index(part.name))
    if not layers and not heads:
        raise AdapterError(f"adapters {adapters} adapt no module of this model")
    return layers, heads


def _defines(layer: Any, method: str) -> bool:
    """Whether the layer's class implements ``method`` (beyond AdapterLayer's refusing default)."""
    impl = getattr(type(layer), method, None)
    return impl is not None and impl is not getattr(AdapterLayer, method, None)


def _has_factors(part: Part) -> bool:
    return _defines(part.layer, "lowrank_factors") and part.layer.lowrank_factors(part.name) is not None


def _why_no_factors(part: Part) -> str:
    if _defines(part.layer, "lowrank_factors"):
        return ("a DoRA adapter, or one with lora_bias, or on a layer kind without one B @ A (grouped convolution, "
                "attention, parameters): its change is no product B @ A alone")
    return f"a {type(part.layer).__name__}, which has no LoRA factors A and B"


def choose_kind(model: "PeftModel", opts: Options, modules: list[ModuleParts], adapters: list[str]) -> str:
    """Resolve the combination type and say how it is computed; refuse undefined combinations."""
    parts = [p for m in modules for p in m.parts]
    affine = all(_defines(p.layer, "identity_parameters") for p in parts)
    if opts.combination_type is None:
        opts.combination_type = "linear" if affine else "svd"
    ctype = opts.combination_type
    if ctype in SVD_TYPES:
        return _dense(modules, ctype)
    methods = {n: model.peft_config[n].peft_type for n in adapters}
    if len(set(methods.values())) > 1:
        raise AdapterError(
            f"combination_type={ctype!r} combines the adapters' own tensors, which needs adapters of one method; got "
            f"{methods}. Use an svd type (svd, ties_svd, ...): it combines their weight changes into a LoRA adapter")
    if affine and ctype != "cat":
        return "affine"
    for module in modules:
        for part in module.parts:
            if not _has_factors(part):
                raise AdapterError(
                    f"combination_type={ctype!r} needs LoRA factors, but adapter {part.name!r} at module {module.key!r} "
                    f"is {_why_no_factors(part)}. Use an svd type (svd, ties_svd, ...), which combines weight changes")
    if ctype != "cat":
        _check_aligned(modules, adapters, ctype)
    return "factors"


def _dense(modules: list[ModuleParts], ctype: str) -> str:
    for module in modules:
        for part in module.parts:
            refusal = getattr(part.layer, "factor_layout_refusal", None)  # e.g. MoE experts, attention
            if refusal:
                raise AdapterError(f"combination_type={ctype!r} cannot combine adapter {part.name!r} at module "
                                   f"{module.key!r}: {refusal}, so its change is no single LoRA update of one weight")
            if not _defines(part.layer, "delta_weight"):
                raise AdapterError(f"combination_type={ctype!r} needs each adapter's weight change, but adapter "
                                   f"{part.name!r} at module {module.key!r} ({type(part.layer).__name__}) has none")
            if part.layer.merged_adapters:
                raise AdapterError(f"module {module.key!r} has merged adapters {part.layer.merged_adapters}, which change "
                                   "the weight the changes are taken from; call unmerge_adapter() first")
    return "dense"


def _check_aligned(modules: list[ModuleParts], adapters: list[str], ctype: str) -> None:
    """Element-wise types pair the adapters' A and B position by position: same modules, same ranks."""
    partial_modules = {m.key: sorted(p.name for p in m.parts) for m in modules if len(m.parts) != len(adapters)}
    if partial_modules:
        shown = dict(list(partial_modules.items())[:5])
        more = f" (and {len(partial_modules) - 5} more)" if len(partial_modules) > 5 else ""
        raise AdapterError(
            f"combination_type={ctype!r} adds the adapters' A and B factors entry by entry, which needs every adapter "
            f"on the same modules; adapters {adapters} differ: these modules hold only {shown}{more}. "
            "Use 'cat' (exact) or 'svd'")
    for module in modules:
        ranks = {p.name: p.layer.lowrank_factors(p.name)[1].shape[0] for p in module.parts}
        if len(set(ranks.values())) > 1:
            raise AdapterError(
                f"combination_type={ctype!r} adds the adapters' A and B factors entry by entry, which needs one rank per "
                f"module; at {module.key!r} the ranks are {ranks}. Use 'cat' (exact) or 'svd' (svd_rank=...)")


def unified_names(values: list[Any]) -> Any:
    """Several configs' module-name fields as one: the union of lists, regexes joined with ``|``."""
    present = [v for v in values if v]
    if not present:
        return values[0] if values else None
    if any(isinstance(v, str) for v in present):
        return "|".join(f"({v})" if isinstance(v, str) else "|".join(f"(.*\\.)?{n}$" for n in v) for v in present)
    return sorted({n for v in present for n in v})


def result_fields(model: "PeftModel", adapters: list[str], keys: list[str], result_cls: type) -> dict[str, Any]:
    """Fields every combined adapter (of config class ``result_cls``) gets: it adapts exactly
    ``keys`` (by full path, which peft matches too), and saved modules and the other module lists
    it has are the union of the sources'."""
    configs = [model.peft_config[n] for n in adapters]
    fields: dict[str, Any] = {"target_modules": list(keys), "exclude_modules": None,
                              "layers_to_transform": None, "layers_pattern": None}
    for name in result_cls.model_fields:
        if name.endswith("_modules") and name not in fields or name == "modules_to_save":
            fields[name] = unified_names([getattr(c, name, None) for c in configs])
    return fields

