"""Any adapter with a weight change as a LoRA adapter: LoHa, LoKr, (IA)³, VeRA, AdaLoRA, DoRA
(and LoRA itself, at a lower rank) approximated by truncated SVD of each layer's change, at a
chosen rank or at the smallest rank keeping a fraction of the change's energy. Servers that load
LoRA only (vLLM, LoRAX, TGI) can then serve them; the report says how close each layer is.

Same names and arguments as ``peft.convert_to_lora`` / ``peft.save_as_lora``, for more methods
(peft 0.21 converts neither LoHa nor (IA)³, and converts DoRA without its magnitude), for every
layer type (convolutions, embeddings, GPT-2's Conv1D) and at any rank (capped at each layer's size).

Example:
    >>> lora = convert_to_lora(loha_model, 0.99)  # doctest: +SKIP
    >>> lora.report.max_error, max(lora.report.ranks.values())  # doctest: +SKIP
    (0.0995, 24)
    >>> lora.save_pretrained("out/loha-as-lora")  # doctest: +SKIP
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Optional, Union

from tqdm.auto import tqdm

from ..errors import ConfigError
from ..modules_to_save import ModulesToSaveWrapper
from . import plan as planning
from .combine import CombinationReport, Plan, lora_config
from .compute import dense_lowrank, warn_dropped_biases
from .lowrank import check_svd_options
from .standalone import HOLDER_NAME, CombinedAdapter, build_holders, state_dict

if TYPE_CHECKING:
    from ..model import PeftModel


def convert_to_lora(model: "PeftModel", rank: Union[int, float], adapter_name: str = "default",
                    progressbar: bool = False, svd_clamp: Optional[float] = None) -> CombinedAdapter:
    """Adapter ``adapter_name`` of ``model`` as a LoRA adapter (``peft.convert_to_lora``'s
    arguments): each adapted layer's weight change ``delta_weight`` cut by truncated SVD to
    ``rank`` if it is an int (capped at the layer's size), or, if it is a float in (0, 1], to the
    smallest rank keeping that fraction of the change's squared singular values (its energy). The
    model is left as it is. The result unpacks as ``(lora_config, state_dict)`` as peft's does,
    has a ``report`` (rank and relative Frobenius error of every layer; a bias change, which a
    LoRA adapter does not hold, counts as error and is warned about) and ``save_pretrained``.

    Example:
        >>> config, state_dict = convert_to_lora(loha_model, 16)  # doctest: +SKIP
        >>> convert_to_lora(loha_model, 0.99).report.max_error  # doctest: +SKIP
        0.0995
    """
    fixed, energy = _rank_or_energy(rank)
    check_svd_options(fixed, energy, svd_clamp)
    opts = planning.Options("svd", fixed, svd_clamp, svd_full_matrices=False)
    adapters, weights = planning.check_arguments(model, [adapter_name], [1.0], None)
    modules, heads = planning.collect(model, adapters, weights)
    planning.choose_kind(model, opts, modules, adapters)  # refuses layers without a weight change
    plan = Plan(adapters, weights, opts, "dense", modules, heads)
    probes = build_holders(model, _probe_config(model, plan), plan.keys)  # for each layer's row layout
    results = [dense_lowrank(m.key, m.parts, opts, probes[m.key].weight_rows, fixed, energy)
               for m in tqdm(modules, disable=not progressbar, desc="Converting to LoRA")]
    config = lora_config(model, plan, {r.key: r.rank for r in results})
    config = type(config)(**{**config.model_dump(), "bias": "none"})
    holders = build_holders(model, config, plan.keys)
    report = CombinationReport("svd")
    for result in results:
        holders[result.key].set_lowrank_factors(HOLDER_NAME, result.b, result.a)
        report.ranks[result.key], report.errors[result.key] = result.rank, result.error
    warn_dropped_biases(results)
    heads = {key: ModulesToSaveWrapper(wrapper.modules_to_save[parts[0].name], HOLDER_NAME)
             for key, wrapper, parts in plan.heads}  # modules trained in full are copied as they are
    return CombinedAdapter(config, state_dict(config, {**holders, **heads}), report)


def save_as_lora(path: str | os.PathLike, model: "PeftModel", rank: Union[int, float], adapter_name: str = "default",
                 progressbar: bool = False, svd_clamp: Optional[float] = None) -> CombinationReport:
    """:func:`convert_to_lora`, then write the adapter folder (``peft.save_as_lora``); returns the report.

    Example:
        >>> save_as_lora("out/as-lora", loha_model, 0.99).max_error  # doctest: +SKIP
    """
    converted = convert_to_lora(model, rank, adapter_name, progressbar, svd_clamp)
    converted.save_pretrained(path)
    return converted.report


def _rank_or_energy(rank: Union[int, float]) -> tuple[Optional[int], Optional[float]]:
    """peft's rule: an int is the rank, a float in (0, 1] the energy to keep."""
    if isinstance(rank, float):
        return None, rank
    if isinstance(rank, bool) or not isinstance(rank, int):
        raise ConfigError("Invalid convert_to_lora arguments:",
                          [("rank", f"must be an int (the rank) or a float in (0, 1] (the energy kept), got {rank!r}")])
    return rank, None


def _probe_config(model: "PeftModel", plan: Plan):
    """A rank-1 LoRA config over the plan's modules: layers built from it only lay out rows."""
    config = lora_config(model, plan, {key: 1 for key in plan.keys})
    return type(config)(**{**config.model_dump(), "init_lora_weights": False})
