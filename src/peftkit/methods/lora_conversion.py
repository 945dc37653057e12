"""Turn a trained PiSSA / OLoRA adapter into a plain LoRA adapter for the ORIGINAL base weights.

PiSSA and OLoRA start the adapter from the base weight itself: ``W = W_res + s B0 A0``, and the
base keeps only the residual ``W_res``. After training the model computes ``W_res + s B A``, which
equals ``W + s (B A - B0 A0)``, and that difference is a LoRA adapter of twice the rank:

    A' = [A ; A0]   (rows stacked)      B' = [B | -B0]   (columns side by side)

with the same scaling ``s``, so the saved config doubles ``r`` and ``lora_alpha`` (by sqrt(2)
with rsLoRA, where ``s = alpha / sqrt(r)``), and every ``rank_pattern`` / ``alpha_pattern``
entry the same way. ``A0`` and ``B0`` come from the adapter saved right after initialisation.
This is what ``peft``'s ``save_pretrained(path_initial_model_for_weight_conversion=...)`` writes.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Union

import torch

from ..errors import CheckpointError

if TYPE_CHECKING:
    from ..config import PeftConfig
    from .lora import LoraConfig

LORA_A, LORA_B = ".lora_A.weight", ".lora_B.weight"


def mutates_base(init: Union[bool, str]) -> bool:
    """Whether ``init_lora_weights`` moves part of the base weight into the adapter (PiSSA, OLoRA)."""
    return isinstance(init, str) and (init == "olora" or init.startswith("pissa"))


def convert_mutated_init(
    config: "LoraConfig",
    trained: dict[str, torch.Tensor],
    initial_config: "PeftConfig",
    initial: dict[str, torch.Tensor],
    where: str,
) -> tuple["LoraConfig", dict[str, torch.Tensor]]:
    """The plain-LoRA config and tensors equivalent to a trained PiSSA/OLoRA adapter on the
    original base. ``trained``/``initial`` are checkpoint state dicts (the adapter now, and as saved
    right after initialisation); tensors other than ``lora_A``/``lora_B`` (trained biases, copies
    of ``modules_to_save``) are kept as they are, since they apply to the original base unchanged.
    ``where`` names the initial adapter in error messages. Nothing is modified in place.

    Example:
        >>> cfg, tensors = convert_mutated_init(cfg, trained_sd, init_cfg, init_sd, "pissa_init")  # doctest: +SKIP
        >>> cfg.r, cfg.init_lora_weights  # doctest: +SKIP
        (16, True)
    """
    _check_applies(config, initial_config, where)
    _check_same_modules(trained, initial, where)
    converted = dict(trained)
    for key, a in trained.items():
        if key.endswith(LORA_A):
            converted[key] = torch.cat([a, initial[key].to(a.dtype)], dim=0)
        elif key.endswith(LORA_B):
            converted[key] = torch.cat([a, -initial[key].to(a.dtype)], dim=1)
    return _doubled_rank(config), converted


def _check_applies(config: "LoraConfig", initial_config: "PeftConfig", where: str) -> None:
    if config.peft_type != "LORA":  # e.g. AdaLoRA, whose config extends LoRA's
        raise CheckpointError(f"{where}: only LoRA adapters can be converted, not {config.peft_type} adapters")
    if initial_config.peft_type != "LORA":
        raise CheckpointError(
            f"{where}: the initial adapter is a {initial_config.peft_type} adapter; "
            "path_initial_model_for_weight_conversion must name the LoRA adapter saved right after get_peft_model()"
        )
    if config.use_dora or initial_config.use_dora:
        raise CheckpointError(
            f"{where}: a DoRA adapter (use_dora=True) cannot be converted: its magnitude is normalised by the "
            "modified base weight, so no plain LoRA adapter on the original weights computes the same"
        )
    if not (mutates_base(config.init_lora_weights) or mutates_base(initial_config.init_lora_weights)):
        raise CheckpointError(
            f"{where}: path_initial_model_for_weight_conversion converts adapters initialised with PiSSA or OLoRA "
            "(which modify the base weights), but neither this adapter nor the initial one has init_lora_weights "
            f"'pissa'/'olora' (got {config.init_lora_weights!r} and {initial_config.init_lora_weights!r}); "
            "save without it, or set init_lora_weights back to the PiSSA/OLoRA value the adapter was made with"
        )


def _check_same_modules(trained: dict[str, torch.Tensor], initial: dict[str, torch.Tensor], where: str) -> None:
    def lora_keys(sd: dict[str, torch.Tensor]) -> set[str]:
        return {k for k in sd if k.endswith((LORA_A, LORA_B))}

    mine, theirs = lora_keys(trained), lora_keys(initial)
    if mine != theirs:
        only = sorted(mine - theirs) or sorted(theirs - mine)
        side = "this adapter" if mine - theirs else "the initial adapter"
        raise CheckpointError(
            f"{where}: the initial adapter does not match this one: only {side} has {only[0]!r} "
            f"({len(only)} tensor(s) differ). Was it saved from the same model with the same target_modules?"
        )
    for key in sorted(mine):
        if trained[key].shape != initial[key].shape:
            raise CheckpointError(
                f"{where}: {key!r} has shape {tuple(initial[key].shape)} in the initial adapter but "
                f"{tuple(trained[key].shape)} in this one; the initial adapter must have the same ranks"
            )


def _doubled_rank(config: "LoraConfig") -> "LoraConfig":
    """Rank doubled, scaling unchanged: alpha doubles too (times sqrt(2) with rsLoRA)."""
    factor = math.sqrt(2) if config.use_rslora else 2
    return config.model_copy(
        update={
            "init_lora_weights": True,
            "r": 2 * config.r,
            "lora_alpha": config.lora_alpha * factor,
            "rank_pattern": {k: 2 * v for k, v in config.rank_pattern.items()},
            "alpha_pattern": {k: v * factor for k, v in config.alpha_pattern.items()},
        },
        deep=True,
    )
