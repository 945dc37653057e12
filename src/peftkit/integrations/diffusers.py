"""LoRA on diffusers models (UNets, DiT transformers, their text encoders) with peftkit, in
diffusers' own LoRA file format.

- :func:`add_adapter` is peftkit's ``model.add_adapter(config)``: it injects a peftkit adapter into
  a diffusers model in place and marks it as holding adapters, as diffusers' own method does.
- :func:`save_lora_weights` writes a pipeline's peftkit adapters through the pipeline class's own
  ``save_lora_weights`` (``pytorch_lora_weights.safetensors``: keys ``unet.<path>.lora_A.weight``
  and the adapter config as ``lora_adapter_metadata``), so ``pipe.load_lora_weights`` loads them.
- :func:`load_lora_weights` reads any file ``pipe.load_lora_weights`` reads (diffusers', peft-style,
  kohya/A1111 ones, through the pipeline class's ``lora_state_dict``) into peftkit adapters.

Importing this module also makes diffusers' own LoRA methods act on peftkit layers:
``fuse_lora`` / ``unfuse_lora`` / ``set_adapters`` / ``disable_lora`` / ``enable_lora`` /
``delete_adapters`` and the per-call scale (``cross_attention_kwargs={"scale": s}``) all walk the
model for peft's ``BaseTunerLayer``, which peftkit's layers now are (see
:mod:`peftkit.integrations.peft`). Without ``peft`` installed, diffusers refuses all of these with
"PEFT backend is required", while this module's functions keep working.

Example:
    >>> from peftkit.integrations import diffusers as pkd
    >>> pkd.add_adapter(pipe.unet, pk.LoraConfig(r=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"]))  # doctest: +SKIP
    >>> ...  # train
    >>> pkd.save_lora_weights(pipe, "out/lora")           # then: other_pipe.load_lora_weights("out/lora")  # doctest: +SKIP
"""

from __future__ import annotations

import collections
import inspect
import os
from typing import Any, Optional, Union

import diffusers
import torch
import torch.nn as nn
from diffusers.utils import convert_state_dict_to_diffusers, convert_state_dict_to_peft, convert_unet_state_dict_to_peft

from ..checkpoint import PREFIX
from ..config import PeftConfig
from ..errors import AdapterError, CheckpointError
from ..methods.lora import LoraConfig
from ..model import PeftModel
from ..peft_api import delete_injected_adapter, get_peft_model_state_dict, inject_adapter_in_model, set_peft_model_state_dict
from .peft import register_adapter_layers

LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"

register_adapter_layers()


def add_adapter(model: nn.Module, adapter_config: PeftConfig, adapter_name: str = "default") -> None:
    """Inject a new peftkit adapter into a diffusers model (or a transformers text encoder) in place
    and make it the active one: peftkit's counterpart of diffusers' ``model.add_adapter(config)``.

    Example:
        >>> add_adapter(unet, pk.LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_v"]))  # doctest: +SKIP
        >>> unet.disable_lora(); unet.enable_lora()       # diffusers' own methods see it   # doctest: +SKIP
    """
    config = adapter_config.model_copy(deep=True)
    config.base_model_name_or_path = None  # pipelines keep their own paths, as in diffusers
    inject_adapter_in_model(config, model, adapter_name)
    model._hf_peft_config_loaded = True  # diffusers' and transformers' mark of a model holding adapters


def lora_layers(model: nn.Module, adapter_name: str = "default") -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """``(tensors, config dict)`` of one peftkit adapter on a diffusers model, keyed by the model's
    own module paths as diffusers writes them (a PeftModel's ``base_model.model.`` is dropped):
    the ``<component>_lora_layers`` and ``<component>_lora_adapter_metadata`` that a pipeline
    class's ``save_lora_weights`` takes.

    Example:
        >>> layers, metadata = lora_layers(pipe.unet)                                            # doctest: +SKIP
        >>> StableDiffusionPipeline.save_lora_weights("out", unet_lora_layers=layers, unet_lora_adapter_metadata=metadata)  # doctest: +SKIP
    """
    configs = _configs(model)
    if adapter_name not in configs:
        raise AdapterError(
            f"{type(model).__name__} holds no peftkit adapter {adapter_name!r} (it has {sorted(configs)}); add one with "
            "peftkit.integrations.diffusers.add_adapter() or peftkit.inject_adapter_in_model()"
        )
    tensors = get_peft_model_state_dict(model, adapter_name=adapter_name)
    if isinstance(model, PeftModel):  # diffusers' keys are the component's own module paths
        tensors = {key.removeprefix(PREFIX): value for key, value in tensors.items()}
    return tensors, configs[adapter_name].to_dict()


def save_lora_weights(
    pipeline: Any,
    save_directory: Union[str, os.PathLike],
    adapter_name: str = "default",
    weight_name: Optional[str] = None,
    is_main_process: bool = True,
) -> None:
    """Write the peftkit adapter ``adapter_name`` of every LoRA-loadable component of ``pipeline``
    (``unet``, ``transformer``, ``text_encoder``...) into one diffusers LoRA file, with each adapter's
    config as metadata, through the pipeline class's own ``save_lora_weights``.

    Example:
        >>> save_lora_weights(pipe, "out/lora")
        >>> fresh_pipe.load_lora_weights("out/lora")     # diffusers (with peft) or load_lora_weights() here  # doctest: +SKIP
    """
    saver = getattr(type(pipeline), "save_lora_weights", None)
    if saver is None:
        raise AdapterError(f"{type(pipeline).__name__} has no LoRA support in diffusers (no save_lora_weights)")
    accepted = set(inspect.signature(saver).parameters)
    kwargs: dict[str, Any] = {}
    for name in _lora_components(pipeline):
        component = getattr(pipeline, name, None)
        if not _holds(component, adapter_name):
            continue
        if f"{name}_lora_adapter_metadata" not in accepted:
            raise AdapterError(f"{type(pipeline).__name__}.save_lora_weights takes no {name}_lora_adapter_metadata")
        kwargs[f"{name}_lora_layers"], kwargs[f"{name}_lora_adapter_metadata"] = lora_layers(component, adapter_name)
    if not kwargs:
        raise AdapterError(
            f"no LoRA-loadable component of {type(pipeline).__name__} ({', '.join(_lora_components(pipeline))}) holds a "
            f"peftkit adapter named {adapter_name!r}"
        )
    saver(save_directory, weight_name=weight_name or LORA_WEIGHT_NAME, is_main_process=is_main_process, **kwargs)


def load_lora_weights(
    pipeline: Any,
    pretrained_model_name_or_path_or_dict: Union[str, os.PathLike, dict[str, torch.Tensor]],
    adapter_name: str = "default",
    **kwargs: Any,
) -> list[str]:
    """Load a diffusers LoRA file (or state dict) into ``pipeline``'s components as peftkit adapters
    named ``adapter_name``; returns the components that got one. ``kwargs`` (``weight_name=``,
    ``subfolder=``...) go to the pipeline class's ``lora_state_dict``, which reads the file and
    converts other LoRA formats to diffusers' keys. Nothing is changed if any part does not fit.

    Example:
        >>> load_lora_weights(pipe, "out/lora", adapter_name="style")   # doctest: +SKIP
        ['unet']
    """
    state_dict, network_alphas, metadata = _read(pipeline, pretrained_model_name_or_path_or_dict, kwargs)
    plan = []
    for name in _lora_components(pipeline):
        tensors = _with_prefix(state_dict, name)
        if tensors:
            alphas = _with_prefix(network_alphas or {}, name)
            plan.append((name, tensors, _with_prefix(metadata or {}, name) or None, alphas))
    claimed = sum(len(tensors) for _, tensors, _, _ in plan)
    if claimed != len(state_dict):
        unclaimed = sorted(k for k in state_dict if not any(k.startswith(f"{n}.") for n, *_ in plan))
        raise CheckpointError(
            f"{unclaimed[0]!r} (and {len(unclaimed) - 1} more keys) belong to no LoRA-loadable component of "
            f"{type(pipeline).__name__} ({', '.join(_lora_components(pipeline))})"
        )
    done: list[str] = []
    try:
        for name, tensors, component_metadata, alphas in plan:
            load_lora_adapter(getattr(pipeline, name), tensors, adapter_name, metadata=component_metadata, network_alphas=alphas)
            done.append(name)
    except BaseException:
        for name in done:  # leave the pipeline as it was
            _delete(getattr(pipeline, name), adapter_name)
        raise
    return done


def load_lora_adapter(
    model: nn.Module,
    state_dict: dict[str, torch.Tensor],
    adapter_name: str = "default",
    metadata: Optional[dict[str, Any]] = None,
    network_alphas: Optional[dict[str, float]] = None,
) -> None:
    """Load one component's LoRA tensors (keys without the component prefix, in peft's or diffusers'
    naming) as a new peftkit adapter. The config is ``metadata`` when the file had it, else inferred
    as diffusers does: each module's rank from its tensors, alpha from ``network_alphas`` or equal to
    the rank (scale 1).

    Example:
        >>> load_lora_adapter(unet, tensors_without_unet_prefix, adapter_name="style")   # doctest: +SKIP
    """
    tensors = _peft_names(model, state_dict)
    # alphas are keyed like the tensors they scale (``<path>.lora.down.weight.alpha`` and so on)
    alphas = _peft_names(model, {key.removesuffix(".alpha"): value for key, value in (network_alphas or {}).items()})
    config = _config(metadata, tensors, {key.split(".lora_")[0]: value for key, value in alphas.items()})
    add_adapter(model, config, adapter_name)
    try:
        set_peft_model_state_dict(model, tensors, adapter_name)
    except BaseException:
        _delete(model, adapter_name)
        raise


def _read(pipeline: Any, source: Any, kwargs: dict) -> tuple[dict, Optional[dict], Optional[dict]]:
    reader = getattr(type(pipeline), "lora_state_dict", None)
    if reader is None:
        raise AdapterError(f"{type(pipeline).__name__} has no LoRA support in diffusers (no lora_state_dict)")
    source = dict(source) if isinstance(source, dict) else source  # diffusers pops from dicts it is given
    result = reader(source, return_lora_metadata=True, **kwargs)
    # (state_dict, metadata) or (state_dict, network_alphas, metadata), by pipeline family
    state_dict, metadata = result[0], result[-1]
    network_alphas = result[1] if len(result) == 3 else None
    return state_dict, network_alphas, metadata


def _lora_components(pipeline: Any) -> list[str]:
    return list(getattr(pipeline, "_lora_loadable_modules", []))


def _holds(component: Any, adapter_name: str) -> bool:
    return adapter_name in _configs(component)


def _configs(model: Any) -> dict[str, PeftConfig]:
    """The peftkit adapter configs of a PeftModel or of a module with injected peftkit adapters."""
    configs = getattr(model, "peft_config", None) or {}
    return {name: c for name, c in configs.items() if isinstance(c, PeftConfig)} if isinstance(configs, dict) else {}


def _with_prefix(tensors: dict, component: str) -> dict:
    prefix = component + "."
    return {key[len(prefix):]: value for key, value in tensors.items() if key.startswith(prefix)}


def _peft_names(model: nn.Module, tensors: dict[str, Any]) -> dict[str, Any]:
    """Keys in peft's naming (``lora_A`` / ``lora_B``), converting diffusers' older ones as diffusers does."""
    if not tensors or all(".lora_A." in k or ".lora_B." in k or "lora_magnitude_vector" in k for k in tensors):
        return dict(tensors)
    if isinstance(model, diffusers.ModelMixin):
        return convert_unet_state_dict_to_peft(dict(tensors))
    return convert_state_dict_to_peft(convert_state_dict_to_diffusers(dict(tensors)))


def _config(metadata: Optional[dict], tensors: dict[str, torch.Tensor], alphas: dict[str, float]) -> PeftConfig:
    """The adapter's config: the file's metadata, or else ranks from the tensors and ``alphas``
    (module path -> alpha; a module without one has alpha = rank, diffusers' convention)."""
    if metadata:
        return PeftConfig.from_dict({"peft_type": "LORA", **metadata}, source="the LoRA file's metadata")
    ranks = {k.split(".lora_B.")[0]: v.shape[1] for k, v in tensors.items() if ".lora_B." in k and v.ndim > 1}
    if not ranks:
        raise CheckpointError("the LoRA state dict holds no lora_B weight, so its rank cannot be read")
    per_module_alpha = {path: float(alphas.get(path, rank)) for path, rank in ranks.items()}
    r = collections.Counter(ranks.values()).most_common(1)[0][0]
    alpha = collections.Counter(per_module_alpha.values()).most_common(1)[0][0]
    return LoraConfig(
        r=r, lora_alpha=alpha, target_modules=sorted(ranks),
        rank_pattern={path: rank for path, rank in ranks.items() if rank != r},
        alpha_pattern={path: a for path, a in per_module_alpha.items() if a != alpha},
        use_dora=any("lora_magnitude_vector" in k for k in tensors),
    )


def _delete(model: nn.Module, adapter_name: str) -> None:
    if adapter_name in (getattr(model, "peft_config", None) or {}):
        delete_injected_adapter(model, adapter_name)
    if not getattr(model, "peft_config", None):
        model._hf_peft_config_loaded = False


__all__ = ["add_adapter", "load_lora_adapter", "load_lora_weights", "lora_layers", "save_lora_weights"]
