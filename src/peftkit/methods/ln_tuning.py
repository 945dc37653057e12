"""LayerNorm tuning (Zhao et al., 2023): train a copy of each normalisation layer's parameters.

Same names, format and behaviour as ``peft.LNTuningConfig`` (peft_type ``"LN_TUNING"``), so
adapters move both ways: each adapter holds a full trainable copy of the wrapped module in
``ln_tuning_layers[name]``, and the active adapter's copy runs *instead of* the original.
Checkpoint keys are the copy's parameters: ``base_model.model.<path>.ln_tuning_layers.weight``
(and ``.bias`` where the norm has one), each shaped like the original.

Unlike peft, adapters mix in one batch (rows use their own copy, ``"__base__"`` the original),
and merging copies the tuned values into the original module (unmerging restores them exactly).
Only one adapter can be active or merged at a time: copies replace, they do not add up.
"""

from __future__ import annotations

import copy
import re
from typing import Any, ClassVar

import torch
import torch.nn as nn

from ..config import TargetedConfig, PeftType
from ..errors import AdapterError, TargetError
from ..layers import BASE_ADAPTER, AdapterLayer, warn_if_merged_already
from ..row_batches import group_rows, merged_batch_error
from ..registry import LayerFactory, MethodSpec, register_method
from ..targets import compact_names, iter_plain_modules

# peft's defaults per model type (facts from peft's constants), used when target_modules is unset.
LN_DEFAULT_TARGETS: dict[str, list[str]] = {
    "llama": ["input_layernorm", "post_attention_layernorm", "norm"],
    "mistral": ["input_layernorm", "post_attention_layernorm", "norm"],
    "gemma": ["input_layernorm", "post_attention_layernorm", "norm"],
    "qwen2": ["post_attention_layernorm"],
    "qwen3": ["post_attention_layernorm"],
    "bloom": ["input_layernorm", "post_attention_layernorm", "ln_f"],
    "falcon": ["input_layernorm", "post_attention_layernorm", "ln_f"],
    "gpt2": ["ln_1", "ln_2", "ln_f"],
    "gptj": ["ln_1", "ln_f"],
    "phi": ["input_layernorm", "final_layernorm"],
    "t5": ["layer_norm", "final_layer_norm"],
    "mt5": ["layer_norm", "final_layer_norm"],
    "bart": ["self_attn_layer_norm", "encoder_attn_layer_norm", "final_layer_norm"],
}

_NORM_CLASSES = (nn.LayerNorm, nn.RMSNorm, nn.GroupNorm, nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def is_norm(module: nn.Module) -> bool:
    """A normalisation layer with a learned scale: torch's norms, or a leaf module whose class name
    ends in "Norm" (``LlamaRMSNorm``, ``T5LayerNorm``, ``LayerNorm2d``) and that holds a 1-D weight.
    The class name is the test (not "a weight of hidden size", which bias-like vectors share)."""
    if any(True for _ in module.children()):
        return False
    weight = module._parameters.get("weight")
    if not isinstance(weight, nn.Parameter) or weight.dim() != 1:
        return False
    return isinstance(module, _NORM_CLASSES) or re.search(r"Norm(\d+d)?$", type(module).__name__) is not None


class LNTuningConfig(TargetedConfig):
    """Configuration of LayerNorm tuning; fields as in ``peft.LNTuningConfig``.

    With ``target_modules`` unset: peft's list for known model types, otherwise every
    normalisation layer (see :func:`is_norm`).

    Example:
        >>> from peftkit import LNTuningConfig
        >>> LNTuningConfig(target_modules=["input_layernorm"], task_type="CAUSAL_LM").peft_type
        'LN_TUNING'
    """

    peft_type: ClassVar[str] = PeftType.LN_TUNING

    def default_target_modules(self, model: nn.Module) -> list[str]:
        """peft's per-architecture names, or every norm layer of an architecture peft does not know."""
        model_type = getattr(getattr(model, "config", None), "model_type", None)
        if model_type in LN_DEFAULT_TARGETS:
            return list(LN_DEFAULT_TARGETS[model_type])
        keys = [key for key, m in iter_plain_modules(model)
                if is_norm(m.base_layer if isinstance(m, LNTuningLayer) else m)]
        if not keys:
            raise TargetError(
                f"LN tuning found no normalisation layer in {type(model).__name__} (none is an nn.LayerNorm/RMSNorm "
                "or a class named '...Norm' with a 1-D weight); set target_modules to the modules to tune"
            )
        return compact_names(model, keys)

    def to_dict(self) -> dict[str, Any]:
        # peft's LNTuningConfig has no layer filters; leave them out unless used, so peft reads the file silently
        data = super().to_dict()
        for key in ("layers_to_transform", "layers_pattern"):
            if data.get(key) is None:
                data.pop(key, None)
        return data


class LNTuningLayer(AdapterLayer):
    """Runs the active adapter's trained copy of the module in place of the original."""

    adapter_param_names = ("ln_tuning_layers",)

    def __init__(self, base_layer: nn.Module, adapter_name: str, config: LNTuningConfig, key: str):
        super().__init__(base_layer, key)
        self.ln_tuning_layers = nn.ModuleDict()
        self._unmerged_state: dict[str, torch.Tensor] = {}  # the original values while one adapter is merged
        self.add_adapter(adapter_name, config, key)

    def add_adapter(self, adapter_name: str, config: LNTuningConfig, key: str) -> None:
        tuned = copy.deepcopy(self.base_layer)
        if self._unmerged_state:  # start from the original values, not a merged adapter's
            tuned.load_state_dict(self._unmerged_state)
        self.ln_tuning_layers[adapter_name] = tuned

    def delta(self, adapter_name: str, x: torch.Tensor) -> torch.Tensor:
        return self.ln_tuning_layers[adapter_name](x) - self.base_layer(x)

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        if self.disabled:
            if self.merged_adapters:
                self.unmerge()
            return self.base_layer(x, *args, **kwargs)
        if self.row_adapters is not None:
            return self._forward_mixed(x, *args, **kwargs)
        if self.merged_adapters or not self.computing_adapters:
            return self.base_layer(x, *args, **kwargs)
        if len(self.computing_adapters) > 1:
            raise AdapterError(
                f"LN tuning runs one adapter at a time ({self.key!r} has {self.computing_adapters} active): each replaces "
                "the norm's parameters. Call set_adapter() with one name, or use adapter_names=... to mix rows"
            )
        return self.ln_tuning_layers[self.computing_adapters[0]](x, *args, **kwargs)

    def _forward_mixed(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if self.merged_adapters:
            raise merged_batch_error()
        result = self.base_layer(x, *args, **kwargs)
        for name, rows in group_rows(self.row_adapters, x.shape[0], x.device).items():
            if name != BASE_ADAPTER and name in self.adapter_names:
                part = self.ln_tuning_layers[name](x.index_select(0, rows), *args, **kwargs)
                result = result.index_copy(0, rows, part.to(result.dtype))
        return result

    # ------------------------------------------------------------------ merging: copy the tuned values in
    def merge_is_finite(self, adapter_name: str) -> bool:
        return all(bool(torch.isfinite(p).all()) for p in self.ln_tuning_layers[adapter_name].parameters())

    def delta_weight(self, adapter_name: str) -> torch.Tensor:
        return self.ln_tuning_layers[adapter_name].weight - self.base_layer.weight

    def merge(self, adapter_names: list[str] | None = None, safe_merge: bool = False) -> None:
        names = self.computing_adapters if adapter_names is None else adapter_names
        warn_if_merged_already(self, names)
        names = [n for n in names if n in self.adapter_names and n not in self.merged_adapters]
        if not names:
            return
        if len(names) > 1 or self.merged_adapters:
            raise AdapterError(
                f"LN tuning merges one adapter at a time (asked for {names}, merged {self.merged_adapters} at "
                f"{self.key!r}): a merged copy replaces the norm's values. Unmerge first, or merge one name"
            )
        name = names[0]
        if safe_merge and not self.merge_is_finite(name):
            raise AdapterError(f"adapter {name!r} has NaN/inf values at {self.key!r}; nothing was merged")
        self._unmerged_state = {k: v.detach().clone() for k, v in self.base_layer.state_dict().items()}
        self.base_layer.load_state_dict(self.ln_tuning_layers[name].state_dict())
        self.merged_adapters.append(name)

    def unmerge(self) -> None:
        if self.merged_adapters:
            self.base_layer.load_state_dict(self._unmerged_state)
            self._unmerged_state = {}
            self.merged_adapters.clear()


def _tunable(module: nn.Module) -> bool:
    return not any(True for _ in module.children()) and any(True for _ in module.parameters(recurse=False))


LN_TUNING = register_method(MethodSpec(
    peft_type="LN_TUNING", config_cls=LNTuningConfig, layer_cls=LNTuningLayer,
    layer_factories=[LayerFactory("any module with parameters and no submodules (a norm layer)", _tunable, LNTuningLayer)],
))
