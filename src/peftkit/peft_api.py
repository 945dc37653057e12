"""peft's functional API: adapters injected straight into a plain module, and adapter state dicts.

``inject_adapter_in_model`` adapts a model in place and returns the model itself, not a
:class:`~peftkit.model.PeftModel` (diffusers' and transformers' own adapter support work this way).
The model then carries ``peft_config`` (adapter name -> config), as ``peft`` leaves it, and its
state-dict keys are its own parameter paths (``down_blocks.0...to_q.lora_A.weight``), without the
``base_model.model.`` prefix a PeftModel's keys have.

All of PeftModel's logic (target matching, rollback on error, checkpoint key tables and fit
checks) runs on such a module through a *view*: a PeftModel built around it for the length of one
call, holding the module's own ``peft_config`` dict, so nothing is copied and nothing differs.
"""

from __future__ import annotations

from typing import Any, Literal, NamedTuple, Optional, Union

import torch
import torch.nn as nn

from . import checkpoint
from .config import PeftConfig
from .errors import AdapterError, CheckpointError
from .layers import AdapterLayer
from .modules_to_save import ModulesToSaveWrapper
from .model import PeftModel
from .registry import method_for_config


def inject_adapter_in_model(
    peft_config: PeftConfig,
    model: nn.Module,
    adapter_name: str = "default",
    low_cpu_mem_usage: bool = False,
    state_dict: Optional[dict[str, torch.Tensor]] = None,
) -> nn.Module:
    """Inject a new adapter's layers into ``model`` in place and return ``model`` (as
    ``peft.inject_adapter_in_model``). The new adapter becomes the active one; the base weights are
    frozen. Another call with another ``adapter_name`` adds a second adapter beside it.

    ``state_dict``, if given, decides which modules are adapted (its keys' module paths replace the
    config's ``target_modules``; its values are not used), as in peft: for checkpoints whose config
    is unknown or incomplete. Load the values with :func:`set_peft_model_state_dict`. Methods
    that keep state outside their layers (prompt learning, VeRA's shared projections, bottleneck
    placement) need a PeftModel: use :func:`peftkit.get_peft_model` for them.

    Example:
        >>> import peftkit as pk
        >>> unet = pk.inject_adapter_in_model(pk.LoraConfig(r=4, target_modules=["to_q", "to_v"]), unet)  # doctest: +SKIP
        >>> list(unet.peft_config)  # doctest: +SKIP
        ['default']
    """
    if isinstance(model, PeftModel):
        raise AdapterError("inject_adapter_in_model() takes a plain model; a PeftModel adds adapters with add_adapter()")
    if not isinstance(peft_config, PeftConfig):
        raise TypeError(f"peft_config must be a peftkit config such as LoraConfig, got {type(peft_config).__name__}")
    spec = method_for_config(peft_config)
    if spec.uses_shared_state:
        raise AdapterError(
            f"{spec.peft_type} adapters keep shared state on the PeftModel (beside their layers), so they cannot be "
            "injected into a plain module; use peftkit.get_peft_model(model, config) instead"
        )
    if state_dict is not None:
        peft_config = _targeting_state_dict(peft_config, spec.layer_cls.adapter_param_names, state_dict)
    view = _view(model)
    view.add_adapter(adapter_name, peft_config, low_cpu_mem_usage=low_cpu_mem_usage)
    view.set_adapter(adapter_name)
    return model


def get_peft_model_state_dict(
    model: nn.Module,
    state_dict: Optional[dict[str, torch.Tensor]] = None,
    adapter_name: str = "default",
    unwrap_compiled: bool = False,
    save_embedding_layers: Union[bool, Literal["auto"]] = False,
) -> dict[str, torch.Tensor]:
    """The adapter's tensors under their checkpoint keys (``peft.get_peft_model_state_dict``).

    ``model`` is a PeftModel (keys ``base_model.model.<path>.lora_A.weight``) or a module with
    injected adapters (keys ``<path>.lora_A.weight``). ``state_dict`` (e.g. gathered by DeepSpeed,
    keyed by ``model``'s own parameter names) supplies the values. Unlike peft, embedding tables are
    written only with ``save_embedding_layers=True`` or ``"auto"`` (peft's default: when an
    ``embed_tokens``/``lm_head`` module is adapted or the vocabulary was resized).

    Example:
        >>> sd = pk.get_peft_model_state_dict(unet)        # doctest: +SKIP
        >>> next(iter(sd))                                 # doctest: +SKIP
        'down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight'
    """
    model = _unwrapped(model, unwrap_compiled)
    embeddings = save_embedding_layers
    if isinstance(model, PeftModel):
        return checkpoint.get_peft_model_state_dict(model, state_dict, adapter_name, save_embedding_layers=embeddings)
    view = _view(model)
    prefixed = None if state_dict is None else {checkpoint.PREFIX + k: v for k, v in state_dict.items()}
    tensors = checkpoint.get_peft_model_state_dict(view, prefixed, adapter_name, save_embedding_layers=embeddings)
    return {key.removeprefix(checkpoint.PREFIX): value for key, value in tensors.items()}


def set_peft_model_state_dict(
    model: nn.Module,
    peft_model_state_dict: dict[str, torch.Tensor],
    adapter_name: str = "default",
    ignore_mismatched_sizes: bool = False,
    low_cpu_mem_usage: bool = False,
) -> checkpoint.LoadResult:
    """Copy saved adapter tensors into ``adapter_name`` of ``model`` (``peft.set_peft_model_state_dict``),
    keyed as :func:`get_peft_model_state_dict` writes them for that kind of model.

    Every key and shape is checked before anything is copied: a tensor without a module, a shape
    that differs or a missing adapter tensor raises :class:`~peftkit.CheckpointError` and changes
    nothing (peft loads what fits and lists the rest). So ``ignore_mismatched_sizes=True`` is refused.

    Example:
        >>> pk.set_peft_model_state_dict(unet, load_file("adapter.safetensors"))  # doctest: +SKIP
    """
    if ignore_mismatched_sizes:
        raise AdapterError(
            "set_peft_model_state_dict(ignore_mismatched_sizes=True) would leave some adapter tensors unloaded; "
            "peftkit loads a checkpoint whole or not at all. Fix the checkpoint or the adapter's config instead"
        )
    model = _unwrapped(model, unwrap_compiled=False)
    if isinstance(model, PeftModel):
        return checkpoint.set_peft_model_state_dict(model, peft_model_state_dict, adapter_name)
    view = _view(model)
    prefixed = {checkpoint.PREFIX + k: v for k, v in peft_model_state_dict.items()}
    return checkpoint.set_peft_model_state_dict(view, prefixed, adapter_name)


def delete_injected_adapter(model: nn.Module, adapter_name: str) -> None:
    """Remove an adapter that :func:`inject_adapter_in_model` added (layers left without adapters get
    their original module back; ``model.peft_config`` loses the entry).

    Example:
        >>> delete_injected_adapter(unet, "style")   # doctest: +SKIP
    """
    _view(model).delete_adapter(adapter_name)


def _view(model: nn.Module) -> PeftModel:
    """A PeftModel around ``model`` that shares its ``peft_config`` dict (created empty if absent) and
    takes its active adapters from the layers, so PeftModel's methods work on the module in place."""
    view = PeftModel(model, None)
    if not isinstance(getattr(model, "peft_config", None), dict):
        model.peft_config = {}
    view.peft_config = model.peft_config
    layers = [m for m in model.modules() if isinstance(m, AdapterLayer)]
    active = {name for layer in layers for name in layer.active_adapters}
    view._active = [name for name in view.peft_config if name in active]
    return view


def _targeting_state_dict(config: PeftConfig, attributes: tuple[str, ...], state_dict: dict[str, torch.Tensor]) -> PeftConfig:
    """``config`` with ``target_modules`` set to the module paths that ``state_dict``'s keys name
    (``<path>.<adapter attribute>[.<sub>]``, e.g. ``mid.to_q.lora_A.weight`` -> ``mid.to_q``)."""
    if "target_modules" not in type(config).model_fields:
        raise AdapterError(f"{type(config).__name__} has no target_modules, so a state_dict cannot choose its targets")
    paths = set()
    for key in state_dict:
        parts = key.split(".")
        at = next((i for i, part in enumerate(parts) if part in attributes), None)
        if at:
            paths.add(".".join(parts[:at]))
    if not paths:
        raise AdapterError(
            f"state_dict names no {type(config).__name__} tensor (none of its keys has a part {list(attributes)}); "
            "pass the state_dict of an adapter of this method"
        )
    config = config.model_copy(deep=True)
    config.target_modules = sorted(paths)
    return config


def get_base_model_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The base model's state dict under the keys it had before adapters were added
    (``peft.get_base_model_state_dict``): ``<path>.base_layer.weight`` reads ``<path>.weight``,
    a saved module's frozen ``original_module`` its own keys, and adapter tensors are left out.

    Example:
        >>> sd = pk.get_base_model_state_dict(peft_model)   # doctest: +SKIP
        >>> "model.layers.0.self_attn.q_proj.weight" in sd   # doctest: +SKIP
        True
    """
    base, wrappers = _wrapper_paths(model)
    result = {}
    for key, value in base.state_dict().items():
        original = _key_without_wrappers(key, wrappers)
        if original is not None:
            result[original] = value
    return result


def _key_without_wrappers(key: str, wrappers: dict[str, Any]) -> Optional[str]:
    """``key`` with every wrapper's ``base_layer`` / ``original_module`` step removed, deepest
    wrapper first (LoRA on attention holds a LoRA layer on its out_proj); None for an adapter's own
    tensor (``lora_A``, a saved module's trained copy)."""
    for path, wrapper in wrappers.items():  # deepest first
        if key.startswith(path + "."):
            rest, inner = key[len(path) + 1:], wrapper._wrapped_attr + "."
            if not rest.startswith(inner):
                return None
            key = f"{path}.{rest[len(inner):]}"
    return key


def _key_with_wrappers(key: str, wrappers: dict[str, Any]) -> str:
    """The inverse of :func:`_key_without_wrappers`: the step into each wrapper on the way, the
    outermost first."""
    for path, wrapper in reversed(wrappers.items()):  # shallowest first
        if key.startswith(path + "."):
            key = f"{path}.{wrapper._wrapped_attr}.{key[len(path) + 1:]}"
    return key


def set_base_model_state_dict(model: nn.Module, state_dict: dict[str, torch.Tensor], strict: bool = True) -> Any:
    """Load a state dict keyed as the base model was before adapters were added into the base
    model's tensors of ``model`` (``peft.set_base_model_state_dict``; the counterpart of
    :func:`get_base_model_state_dict`). ``strict``: every base tensor must be given, and nothing else.

    Example:
        >>> pk.set_base_model_state_dict(peft_model, original_model.state_dict())   # doctest: +SKIP
    """
    base, wrappers = _wrapper_paths(model)
    translated = {_key_with_wrappers(key, wrappers): value for key, value in state_dict.items()}
    expected = set(get_base_model_state_dict(model))
    missing, unexpected = sorted(expected - set(state_dict)), sorted(set(state_dict) - expected)
    if strict and (missing or unexpected):
        raise CheckpointError(f"set_base_model_state_dict(strict=True): missing keys {missing[:5]}, unexpected keys "
                              f"{unexpected[:5]}; pass the base model's own state dict, or strict=False")
    base.load_state_dict(translated, strict=False)
    # keys as the caller names them: the adapters' own tensors are never "missing" from a base state dict
    return BaseKeys(missing, unexpected)


class BaseKeys(NamedTuple):
    """What :func:`set_base_model_state_dict` did not find, in the base model's own key names
    (the fields of ``torch.nn.Module.load_state_dict``'s result)."""

    missing_keys: list[str]
    unexpected_keys: list[str]


def _wrapper_paths(model: nn.Module) -> tuple[nn.Module, dict[str, Any]]:
    """The user's model inside ``model`` and its adapter wrappers by path (deepest paths first)."""
    model = _unwrapped(model, unwrap_compiled=True)
    base = model.get_base_model() if isinstance(model, PeftModel) else model
    found = {key: m for key, m in base.named_modules() if isinstance(m, (AdapterLayer, ModulesToSaveWrapper)) and key}
    return base, dict(sorted(found.items(), key=lambda item: -len(item[0])))



def _unwrapped(model: nn.Module, unwrap_compiled: bool) -> nn.Module:
    """The module inside FSDP's wrappers (its parameters are the model's own with
    ``use_orig_params=True``; keys then carry no ``_fsdp_wrapped_module.``, as peft writes them) and,
    when asked (as peft), inside ``torch.compile``'s wrapper; else ``model``."""
    while isinstance(getattr(model, "_fsdp_wrapped_module", None), nn.Module):
        model = model._fsdp_wrapped_module
    return getattr(model, "_orig_mod", model) if unwrap_compiled else model


__all__ = ["delete_injected_adapter", "get_base_model_state_dict", "get_peft_model_state_dict", "inject_adapter_in_model",
           "set_base_model_state_dict", "set_peft_model_state_dict"]
