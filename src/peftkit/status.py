"""What state a model's adapters are in, layer by layer and for the whole model.

Adapters can end up in states nobody meant: one layer disabled by hand, an adapter merged into some
layers and not others, ``requires_grad`` switched off for half of an adapter's tensors, one layer
left on another adapter. :func:`get_layer_status` reports each adapter layer (and each module saved
in full), :func:`get_model_status` sums them up and answers ``"irregular"`` wherever the layers
disagree, so such a state is visible instead of silently changing outputs or training.

The fields and their meanings are ``peft``'s (``get_layer_status``, ``get_model_status``,
``TunerLayerStatus``, ``TunerModelStatus``), so code and notebooks written for ``peft`` read them
unchanged. Module names are relative to ``peft_model.base_model`` (``model.<path in your model>``),
as in ``peft``; layers a mixed model stacked on one module are all listed, the inner ones at
``<path>.base_layer``.

Example:
    >>> status = peft_model.get_model_status()  # doctest: +SKIP
    >>> status.active_adapters, status.merged_adapters, status.requires_grad  # doctest: +SKIP
    (['default'], [], {'default': True})
"""

from __future__ import annotations

import collections
import sys
from dataclasses import dataclass
from typing import Iterable, Literal, Optional, Union

import torch.nn as nn

from .errors import AdapterError
from .layers import AdapterLayer
from .modules_to_save import ModulesToSaveWrapper
from .model import PeftModel
from .registry import base_layer_kinds

Irregular = Literal["irregular"]
IRREGULAR: Irregular = "irregular"


@dataclass
class TunerLayerStatus:
    """One adapter layer (or saved module): see :func:`get_layer_status`."""

    name: str
    module_type: str
    enabled: bool
    active_adapters: list[str]
    merged_adapters: list[str]
    requires_grad: dict[str, Union[bool, Irregular]]
    available_adapters: list[str]
    devices: dict[str, list[str]]
    quantization_backend: Optional[str] = None


@dataclass
class TunerModelStatus:
    """The whole model: see :func:`get_model_status`."""

    base_model_type: str
    adapter_model_type: str
    peft_types: dict[str, str]
    trainable_params: int
    total_params: int
    num_adapter_layers: int
    enabled: Union[bool, Irregular]
    active_adapters: Union[list[str], Irregular]
    merged_adapters: Union[list[str], Irregular]
    requires_grad: dict[str, Union[bool, Irregular]]
    available_adapters: list[str]
    devices: dict[str, list[str]]
    quantization_backend: Union[str, None, Irregular] = None


def get_layer_status(model: nn.Module) -> list[TunerLayerStatus]:
    """The status of every adapter layer and saved module of ``model`` (a PeftModel, or a model
    that adapters were injected into), in module order.

    ``requires_grad[adapter]`` is True or False when all the adapter's tensors in the layer agree,
    ``"irregular"`` when they do not; ``devices[adapter]`` lists the device types its tensors are on.

    Example:
        >>> [(s.name, s.module_type, s.active_adapters) for s in get_layer_status(peft_model)]  # doctest: +SKIP
        [('model.q_proj', 'lora.Linear', ['default']), ('model.v_proj', 'lora.Linear', ['default'])]
    """
    statuses = [_layer_status(name, module) for name, module in _status_root(model).named_modules()
                if isinstance(module, (AdapterLayer, ModulesToSaveWrapper))]
    if not statuses:
        raise AdapterError(
            f"No adapter layers found in the model ({type(model).__name__}), so there is no status to report. Pass a model made "
            "by get_peft_model() or inject_adapter_in_model(); prompt-learning methods (prompt, P-, prefix tuning) "
            "change the inputs, not layers: see peft_model.peft_config and peft_model.active_adapters instead")
    return statuses


def get_model_status(model: nn.Module) -> TunerModelStatus:
    """The status of ``model``'s adapters as a whole: each field is the layers' common value, or
    ``"irregular"`` when they disagree (a state that usually means something was changed on one
    layer by hand: fix it with ``set_adapter`` / ``merge_adapter`` / ``unmerge_adapter``).

    Example:
        >>> status = get_model_status(peft_model)  # doctest: +SKIP
        >>> status.enabled, status.merged_adapters, status.trainable_params  # doctest: +SKIP
        (True, [], 1327104)
    """
    layers = get_layer_status(model)
    # a PeftModel names its method and base class; a plain module with injected layers is "other" (peft's word)
    is_peft_model = isinstance(model, PeftModel)
    configs = model.peft_config if is_peft_model else {}
    base = model.get_base_model() if is_peft_model else model
    base_type = type(base).__name__ if configs or _is_transformers_model(base) else "other"
    params = list(model.parameters())
    merged_anywhere = sorted({name for s in layers for name in s.merged_adapters})
    partly_merged = any((set(s.available_adapters) - set(s.merged_adapters)) & set(merged_anywhere) for s in layers)
    requires_grad: dict[str, list] = collections.defaultdict(list)
    devices: dict[str, set[str]] = collections.defaultdict(set)
    for s in layers:
        for name, value in s.requires_grad.items():
            requires_grad[name].append(value)
        for name, kinds in s.devices.items():
            devices[name].update(kinds)
    return TunerModelStatus(
        base_model_type=base_type,
        adapter_model_type=_adapter_model_type(configs),
        peft_types={name: str(config.peft_type) for name, config in configs.items()},
        trainable_params=sum(p.numel() for p in params if p.requires_grad),
        total_params=sum(p.numel() for p in params),
        num_adapter_layers=len(layers),
        enabled=_common(s.enabled for s in layers),
        active_adapters=_common_list(s.active_adapters for s in layers),
        merged_adapters=IRREGULAR if partly_merged else merged_anywhere,
        requires_grad={name: _agreement(values) for name, values in requires_grad.items()},
        available_adapters=sorted({name for s in layers for name in s.available_adapters}),
        devices={name: sorted(kinds) for name, kinds in devices.items()},
        quantization_backend=_common(s.quantization_backend for s in layers),
    )


def _is_transformers_model(model: nn.Module) -> bool:
    """Without importing transformers: a model can only be one of its classes once it is imported."""
    transformers = sys.modules.get("transformers")
    return transformers is not None and isinstance(model, transformers.PreTrainedModel)


def _status_root(model: nn.Module) -> nn.Module:
    """What names are relative to: ``base_model`` for a PeftModel (``model.<path>``, peft's names)."""
    return model.base_model if isinstance(model, PeftModel) else model


def _layer_status(name: str, module: nn.Module) -> TunerLayerStatus:
    available = sorted(module.adapter_names)
    if isinstance(module, ModulesToSaveWrapper):
        module_type, active, merged = "ModulesToSaveWrapper", [module.active_adapter] if module.active_adapter else [], []
        base = module.original_module
    else:
        active = list(module.active_adapters)  # the selection the layer follows (peft's meaning)
        module_type, merged = _module_type(module), list(module.merged_adapters)
        base = module.get_base_layer()
    requires_grad, devices = {}, {}
    for adapter in available:
        tensors = [p for _, p in module.adapter_parameters(adapter)]
        requires_grad[adapter] = _agreement([bool(p.requires_grad) for p in tensors])
        devices[adapter] = sorted({p.device.type for p in tensors})
    return TunerLayerStatus(
        name=name, module_type=module_type, enabled=not module.disabled, active_adapters=active,
        merged_adapters=merged, requires_grad=requires_grad, available_adapters=available, devices=devices,
        quantization_backend=_storage_name(base),
    )


def _module_type(layer: AdapterLayer) -> str:
    """``<method>.<kind>`` as peft names its layers (see :attr:`AdapterLayer.peft_name`)."""
    return layer.peft_name


def _storage_name(module: nn.Module) -> Optional[str]:
    """How the wrapped module stores its weight when a base-layer kind says (``"bnb 4bit"``), else None."""
    for kind in base_layer_kinds():
        if kind.claims(module):
            return kind.storage_name(module)
    return None


def _agreement(values: list[bool]) -> Union[bool, Irregular]:
    if all(v is True for v in values):
        return True
    if all(v is False for v in values):
        return False
    return IRREGULAR


def _common(values: Iterable):
    distinct = set(values)
    return distinct.pop() if len(distinct) == 1 else IRREGULAR


def _common_list(values: Iterable[list[str]]) -> Union[list[str], Irregular]:
    distinct = {tuple(v) for v in values}
    return list(distinct.pop()) if len(distinct) == 1 else IRREGULAR


def _adapter_model_type(configs: dict) -> str:
    """peft's tuner class name for the model's method (``LoraModel``, ``IA3Model``), ``MixedModel``
    when adapters of several methods share the model, ``"None"`` without a PeftModel (as peft)."""
    kinds = {type(config).__name__.removesuffix("Config") for config in configs.values()}
    if not kinds:
        return "None"
    return f"{kinds.pop()}Model" if len(kinds) == 1 else "MixedModel"
