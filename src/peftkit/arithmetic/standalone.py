"""Adapters computed beside a model rather than in it: the result of :func:`combine_adapters` (and
of :func:`~peftkit.arithmetic.convert.convert_to_lora`) as a config plus tensors under ``peft``'s
checkpoint keys, which ``save_pretrained`` writes as an ordinary adapter folder.

The tensors are laid out by layers of the result's own method, built around the model's base
modules through the registry (``MethodSpec.factory_for``) but never put into the model: so the
keys and shapes are exactly what loading that adapter onto the model expects.

Example:
    >>> combined = combine_adapters(model, ["a", "b"], [1.0, -0.5], combination_type="svd", svd_rank=8)  # doctest: +SKIP
    >>> combined.save_pretrained("out/a-minus-half-b")  # doctest: +SKIP
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional, Sequence

import torch

from .. import checkpoint
from ..errors import AdapterError
from ..modules_to_save import ModulesToSaveWrapper
from ..registry import method_for_config
from ..staging import staged_folder
from .combine import Plan, affine_config, fill, lora_config, make_plan, planned_ranks
from .plan import Options

if TYPE_CHECKING:
    from ..config import PeftConfig
    from ..model import PeftModel

HOLDER_NAME = "combined"  # the adapter name inside the stand-alone layers (never saved: keys drop it)


@dataclass
class CombinedAdapter:
    """A computed adapter: ``config``, ``tensors`` (checkpoint key -> tensor, as ``peft`` saves
    them) and ``report`` (ranks and relative errors per module)."""

    config: "PeftConfig"
    tensors: dict[str, torch.Tensor]
    report: Any

    def __iter__(self):
        """Unpacks as ``(config, state_dict)``, as ``peft.convert_to_lora`` returns."""
        return iter((self.config, self.tensors))

    def save_pretrained(self, save_directory: str | os.PathLike) -> None:
        """Write ``adapter_config.json`` and ``adapter_model.safetensors`` into ``save_directory``
        (moved in only when complete); peftkit and ``peft`` load it onto the base model."""
        config = self.config.model_copy(deep=True)
        config.inference_mode = True
        with staged_folder(save_directory) as stage:
            checkpoint.save_adapter_weights(self.tensors, stage)
            config.save_pretrained(stage)

    def load_into(self, model: "PeftModel", adapter_name: str) -> None:
        """Add this adapter to ``model`` (same base model, a PeftModel that can hold its method)."""
        model.add_adapter(adapter_name, self.config.for_loading())
        try:
            checkpoint.set_peft_model_state_dict(model, self.tensors, adapter_name=adapter_name)
        except BaseException:
            model.delete_adapter(adapter_name)
            raise


def build_holders(model: "PeftModel", config: "PeftConfig", keys: Sequence[str]) -> dict[str, Any]:
    """Layers of ``config``'s method around the model's base modules at ``keys`` (model order),
    holding adapter :data:`HOLDER_NAME`; their initialisation draws from torch's generator as
    injecting the adapter would."""
    spec = method_for_config(config)
    modules = dict(model._adapter_modules())
    holders = {}
    for key in keys:
        base = modules[key].get_base_layer()
        factory = spec.factory_for(base, config)
        if factory is None:
            raise AdapterError(f"module {key!r} is a {type(base).__name__}, which a {spec.peft_type} adapter cannot hold "
                               f"(it adapts: {', '.join(f.label for f in spec.layer_factories)})")
        holders[key] = factory.build(base, HOLDER_NAME, config.model_copy(deep=True), key)
    return holders


def state_dict(config: "PeftConfig", holders: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The holders' tensors under checkpoint keys: ``<prefix><module path>.<attribute path>`` (the
    rule :func:`peftkit.checkpoint.adapter_tensors` applies to a model's own layers)."""
    prefix = checkpoint.key_prefix(config)
    return {f"{prefix}{key}.{path}": p.detach().clone()
            for key, holder in holders.items() for path, p in holder.adapter_parameters(HOLDER_NAME)}


def combine_adapters(model: "PeftModel", adapters: Sequence[str], weights: Sequence[float],
                     combination_type: Optional[str] = None, svd_rank: Optional[int] = None,
                     svd_clamp: Optional[float] = None, svd_full_matrices: bool = True,
                     svd_driver: Optional[str] = None, density: Optional[float] = None,
                     majority_sign_method: str = "total") -> CombinedAdapter:
    """The weighted combination of ``adapters`` (arguments as ``add_weighted_adapter``) as a
    stand-alone adapter; ``model`` is left unchanged. Works whatever the adapters' method: the svd
    types give a LoRA adapter from the weight changes of LoHa, LoKr, (IA)³, VeRA or LoRA/DoRA
    adapters. The result trains no base-model biases (``bias="none"``).

    Example:
        >>> combined = combine_adapters(loha_model, ["a", "b"], [0.5, 0.5], "svd", svd_rank=16)  # doctest: +SKIP
        >>> combined.report.max_error  # doctest: +SKIP
        0.031
        >>> combined.save_pretrained("out/ab-lora")  # doctest: +SKIP
    """
    opts = Options(combination_type, svd_rank, svd_clamp, svd_full_matrices, svd_driver, density, majority_sign_method)
    plan: Plan = make_plan(model, adapters, weights, None, opts)
    ranks = planned_ranks(model, plan) if plan.kind != "affine" else {}
    config = affine_config(model, plan) if plan.kind == "affine" else lora_config(model, plan, ranks)
    if hasattr(config, "bias"):
        config = type(config)(**{**config.model_dump(), "bias": "none"})
    holders = build_holders(model, config, plan.keys)
    holders.update({key: ModulesToSaveWrapper(wrapper.original_module, HOLDER_NAME) for key, wrapper, _ in plan.heads})
    report = fill(model, plan, holders, HOLDER_NAME, ranks)
    return CombinedAdapter(config, state_dict(config, holders), report)
