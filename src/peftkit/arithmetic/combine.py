"""Weighted combinations of adapters: ``add_weighted_adapter`` (``peft``'s API, on the model) and
:func:`combine_adapters` (the same result as a stand-alone adapter, for any method with a weight
change, saved with ``save_pretrained``).

The result is right where ``peft``'s is not: each adapter's own scaling (rsLoRA, ``alpha_pattern``)
is folded into the factors and the result has scaling 1 whatever the sources used; DoRA adapters
enter with their true weight change (svd types) or are refused (factor types); per-module ranks
are recorded (``rank_pattern``), so the result reloads in peftkit and ``peft``; modules trained
in full (``modules_to_save``) are combined like the rest. See docs/adapter-arithmetic.md.

Example:
    >>> report = model.add_weighted_adapter(["a", "b"], [0.7, 0.3], "ab", combination_type="cat")  # doctest: +SKIP
    >>> model.set_adapter("ab")  # doctest: +SKIP
"""

from __future__ import annotations

import warnings
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Optional, Sequence

import torch

from ..errors import AdapterError
from ..registry import get_method, method_for_config
from . import plan as planning
from .compute import (ModuleResult, ShapeMismatch, affine_params, cat_factors, combined_head, dense_lowrank,
                      elementwise_factors, nominal_rank, warn_dropped_biases)
from .plan import ModuleParts, Options

if TYPE_CHECKING:
    from ..config import PeftConfig
    from ..model import PeftModel

RESULT_METHOD = "LORA"  # what factor and svd combinations produce (the format every server loads)


@dataclass
class CombinationReport:
    """What a combination did: its type, and per module the rank of the result and its relative
    Frobenius error against the weighted sum of the adapters' changes (0 for exact types, None
    where not measured: the pruning types, whose result is not meant to equal that sum)."""

    combination_type: str
    ranks: dict[str, Optional[int]] = field(default_factory=dict)
    errors: dict[str, Optional[float]] = field(default_factory=dict)

    @property
    def max_error(self) -> Optional[float]:
        measured = [e for e in self.errors.values() if e is not None]
        return max(measured) if measured else None


@dataclass
class Plan:
    adapters: list[str]
    weights: list[float]
    opts: Options
    kind: str
    modules: list[ModuleParts]
    heads: list[tuple]

    @property
    def keys(self) -> list[str]:
        return [m.key for m in self.modules]


def make_plan(model: "PeftModel", adapters: Sequence[str], weights: Sequence[float], adapter_name: Optional[str],
              opts: Options) -> Plan:
    """Check everything and decide how the combination is computed (nothing is changed);
    ``adapter_name`` None: a stand-alone result."""
    planning.check_options(opts)
    adapters, weights = planning.check_arguments(model, adapters, weights, adapter_name)
    modules, heads = planning.collect(model, adapters, weights)
    if len(adapters) == 1 and opts.combination_type is not None:
        single = Options(**{**opts.__dict__, "combination_type": "linear"})
        try:  # one adapter: the exact copy (peft switches to "linear" too), where the layers allow it
            kind = planning.choose_kind(model, single, modules, adapters)
            return Plan(adapters, weights, single, kind, modules, heads)
        except AdapterError:
            pass
    kind = planning.choose_kind(model, opts, modules, adapters)
    return Plan(adapters, weights, opts, kind, modules, heads)


def planned_ranks(model: "PeftModel", plan: Plan) -> dict[str, int]:
    """The result's rank at each module, known before any tensor is computed (LoRA results)."""
    if plan.kind == "factors":
        factors = {m.key: [p.layer.lowrank_factors(p.name)[1].shape[0] for p in m.parts] for m in plan.modules}
        combine = sum if plan.opts.combination_type == "cat" else max
        return {key: combine(ranks) for key, ranks in factors.items()}
    rank = plan.opts.svd_rank or nominal_rank([model.peft_config[n] for n in plan.adapters])
    if rank is None:
        raise AdapterError(f"adapters {plan.adapters} have no rank (r) to give the svd result; pass svd_rank=...")
    ranks = {}
    for module in plan.modules:
        w = module.parts[0].layer.get_base_layer().weight
        ranks[module.key] = min(rank, w.shape[0], w.numel() // w.shape[0])  # the change's smaller side
    return ranks


def lora_config(model: "PeftModel", plan: Plan, ranks: dict[str, int]) -> "PeftConfig":
    """The result's LoraConfig: the first adapter's settings (if it is LoRA), its exact modules,
    per-module ranks with alpha equal to rank (scaling 1), no rsLoRA, no DoRA."""
    first = model.peft_config[plan.adapters[0]]
    lora_cls = get_method(RESULT_METHOD).config_cls
    shared = ("task_type", "base_model_name_or_path", "revision", "inference_mode")
    if isinstance(first, lora_cls):  # a subclass (AdaLoRA) keeps only the fields LoRA has
        data = {k: v for k, v in first.model_dump().items() if k in lora_cls.model_fields}
    else:
        data = {k: getattr(first, k) for k in shared}
    r = Counter(ranks.values()).most_common(1)[0][0] if ranks else 1
    odd = {key: rank for key, rank in sorted(ranks.items(), key=lambda kv: -len(kv[0])) if rank != r}
    data.update(planning.result_fields(model, plan.adapters, list(ranks), lora_cls), r=r, lora_alpha=r, rank_pattern=odd,
                alpha_pattern=dict(odd), use_rslora=False, use_dora=False, init_lora_weights=True)
    return lora_cls(**data)


def affine_config(model: "PeftModel", plan: Plan) -> "PeftConfig":
    first = model.peft_config[plan.adapters[0]]
    data = first.model_dump()
    data.update(planning.result_fields(model, plan.adapters, plan.keys, type(first)))
    return type(first)(**data)


@torch.no_grad()
def compute_module(model: "PeftModel", plan: Plan, module: ModuleParts, holder: Any, rank: Optional[int]) -> ModuleResult:
    """The new adapter's tensors at one module; ``holder`` is the layer that will hold them."""
    opts, ctype = plan.opts, plan.opts.combination_type
    try:
        if plan.kind == "affine":
            return affine_params(module.key, module.parts, opts.merge_fn())
        if plan.kind == "dense":
            return dense_lowrank(module.key, module.parts, opts, holder.weight_rows, rank)
        if ctype == "cat":
            return cat_factors(module.key, module.parts)
        return elementwise_factors(module.key, module.parts, opts.merge_fn(), measure=ctype == "linear")
    except ShapeMismatch as e:
        raise AdapterError(f"adapters {plan.adapters} cannot be combined at module {e.key!r}: their {e.path!r} tensors "
                           f"have shapes {e.shapes} (e.g. one scales the layer's inputs and another its outputs). "
                           "Use an svd type (svd, ...), which combines their weight changes into a LoRA adapter") from None


def write_result(holder: Any, adapter_name: str, result: ModuleResult) -> None:
    if result.params is not None:
        live = dict(holder.adapter_parameters(adapter_name))
        with torch.no_grad():
            for path, value in result.params.items():
                live[path].copy_(value)
    else:
        holder.set_lowrank_factors(adapter_name, result.b, result.a)


def write_heads(plan: Plan, adapter_name: str, wrappers: dict[str, Any]) -> None:
    """Modules trained in full: each gets original + merged (copy - original), see compute.combined_head."""
    merge = plan.opts.merge_fn()
    for key, wrapper, parts in plan.heads:
        values = combined_head(wrapper, parts, merge)
        target = dict(wrappers[key].modules_to_save[adapter_name].named_parameters())
        with torch.no_grad():
            for path, value in values.items():
                target[path].copy_(value)


def warn_shared_biases(model: "PeftModel", adapters: list[str]) -> None:
    trained = [n for n in adapters if getattr(model.peft_config[n], "bias", "none") != "none"]
    if trained:
        warnings.warn(f"adapters {trained} trained base-model biases (bias != 'none'); those live in the base model "
                      "and all adapters share them (the last one loaded wins), so the combination cannot weight them",
                      stacklevel=3)


def add_weighted_adapter(model: "PeftModel", adapters: Sequence[str], weights: Sequence[float], adapter_name: str,
                         combination_type: Optional[str] = None, svd_rank: Optional[int] = None,
                         svd_clamp: Optional[float] = None, svd_full_matrices: bool = True,
                         svd_driver: Optional[str] = None, density: Optional[float] = None,
                         majority_sign_method: str = "total") -> CombinationReport:
    """Add adapter ``adapter_name`` to ``model``: the weighted combination of ``adapters`` (see
    :meth:`peftkit.PeftModel.add_weighted_adapter` for the arguments). The new adapter is added
    inactive; everything is checked first and a failure removes it again."""
    opts = Options(combination_type, svd_rank, svd_clamp, svd_full_matrices, svd_driver, density, majority_sign_method)
    plan = make_plan(model, adapters, weights, adapter_name, opts)
    warn_shared_biases(model, plan.adapters)
    ranks = planned_ranks(model, plan) if plan.kind != "affine" else {}
    config = affine_config(model, plan) if plan.kind == "affine" else lora_config(model, plan, ranks)
    if method_for_config(config).peft_type != model._method().peft_type and not getattr(model, "_nests_methods", False):
        raise AdapterError(
            f"combination_type={plan.opts.combination_type!r} of {model._method().peft_type} adapters gives a "
            f"{method_for_config(config).peft_type} adapter, which this model (holding {model._method().peft_type} "
            "adapters) cannot hold. Use peftkit.arithmetic.combine_adapters(...).save_pretrained(folder), or "
            "`peftkit combine`, and load the result on its own")
    model.add_adapter(adapter_name, config)  # injected before any draw, as peft does: same seed, same DARE masks
    try:
        # the modules holding the new adapter (in a mixed model, of its method among stacked layers)
        layers = {key: m for key, m in model._adapter_modules() if adapter_name in m.adapter_names}
        report = fill(model, plan, layers, adapter_name, ranks)
    except BaseException:
        model.delete_adapter(adapter_name)
        raise
    return report


def fill(model: "PeftModel", plan: Plan, holders: dict[str, Any], adapter_name: str,
         ranks: dict[str, int]) -> CombinationReport:
    """Compute every module in model order (DARE's draws in peft's order) into ``holders``
    (module path -> layer holding ``adapter_name``), saved modules last."""
    report = CombinationReport(plan.opts.combination_type)
    results = []
    for module in plan.modules:
        result = compute_module(model, plan, module, holders[module.key], ranks.get(module.key))
        write_result(holders[module.key], adapter_name, result)
        report.ranks[module.key], report.errors[module.key] = result.rank, result.error
        results.append(result)
    write_heads(plan, adapter_name, holders)
    warn_dropped_biases(results)
    return report

