"""(IA)³ (Liu et al., 2022): learned vectors rescale the outputs of chosen layers (keys, values)
and the inputs of feedforward layers; nothing else changes, so an adapter is a few thousand
numbers. The config mirrors ``peft.IA3Config``, including its per-architecture defaults for
``target_modules`` and ``feedforward_modules``; the layers live in :mod:`peftkit.methods.ia3_layers`.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar, Optional, Union

import torch.nn as nn
from pydantic import field_validator

from ..config import PeftType, TargetedConfig, _normalise_names
from ..errors import TargetError
from ..quantized.layers import quantized_factories
from ..registry import LayerFactory, MethodSpec, register_method
from ..targets import iter_adapter_modules
from .ia3_layers import IA3Conv, IA3Layer, IA3Linear
from .lora_layers import is_conv1d

# peft's defaults when target_modules / feedforward_modules are unset, by model type.
IA3_DEFAULT_TARGETS: dict[str, list[str]] = {
    "t5": ["k", "v", "wo"], "mt5": ["k", "v", "wi_1"], "gpt2": ["c_attn", "mlp.c_proj"],
    "bloom": ["query_key_value", "mlp.dense_4h_to_h"], "roberta": ["key", "value", "output.dense"],
    "opt": ["q_proj", "k_proj", "fc2"], "gptj": ["q_proj", "v_proj", "fc_out"],
    "gpt_neox": ["query_key_value", "dense_4h_to_h"], "gpt_neo": ["q_proj", "v_proj", "c_proj"],
    "bart": ["q_proj", "v_proj", "fc2"], "gpt_bigcode": ["c_attn", "mlp.c_proj"],
    "llama": ["k_proj", "v_proj", "down_proj"], "llama4": ["q_proj", "v_proj", "down_proj"],
    "mistral": ["k_proj", "v_proj", "down_proj"], "mixtral": ["k_proj", "v_proj", "w2"],
    "bert": ["key", "value", "output.dense"], "deberta-v2": ["key_proj", "value_proj", "output.dense"],
    "deberta": ["in_proj", "output.dense"], "RefinedWebModel": ["query_key_value", "dense_4h_to_h"],
    "RefinedWeb": ["query_key_value", "dense_4h_to_h"], "falcon": ["query_key_value", "dense_4h_to_h"],
    "phi": ["q_proj", "v_proj", "fc2"], "gemma": ["q_proj", "v_proj", "down_proj"],
    "gemma2": ["q_proj", "v_proj", "down_proj"], "gemma3_text": ["q_proj", "v_proj", "down_proj"],
    "qwen2": ["q_proj", "v_proj", "down_proj"], "qwen3": ["q_proj", "v_proj", "down_proj"],
}
# The feedforward module of each default: the last target above (none for mt5).
IA3_DEFAULT_FEEDFORWARD: dict[str, list[str]] = {
    model_type: [] if model_type == "mt5" else targets[-1:] for model_type, targets in IA3_DEFAULT_TARGETS.items()
}


def _covers(target_modules: list[str], name: str) -> bool:
    """A feedforward name must be one of the targets (peft's rule); a target list that peftkit
    resolved to full module paths ("all-linear") covers the names those paths end with."""
    return name in target_modules or any(t.endswith("." + name) for t in target_modules)


class IA3Config(TargetedConfig):
    """Configuration of an (IA)³ adapter; fields and defaults as in ``peft.IA3Config``
    (``layers_to_transform`` / ``layers_pattern`` are peftkit's additions).

    Example:
        >>> from peftkit import IA3Config
        >>> cfg = IA3Config(target_modules=["k_proj", "v_proj", "down_proj"], feedforward_modules=["down_proj"])
        >>> cfg.init_ia3_weights
        True
    """

    peft_type: ClassVar[str] = PeftType.IA3

    feedforward_modules: Optional[Union[str, list[str]]] = None
    fan_in_fan_out: bool = False
    init_ia3_weights: bool = True

    @field_validator("feedforward_modules", mode="before")
    @classmethod
    def _feedforward(cls, value: Any) -> Any:
        return _normalise_names(value, "feedforward_modules")

    def check(self) -> list[tuple[str, str]]:
        problems = super().check()
        ff, targets = self.feedforward_modules, self.target_modules
        if isinstance(ff, list) and isinstance(targets, list):
            missing = [name for name in ff if not _covers(targets, name)]
            if missing:
                problems.append(("feedforward_modules", f"`feedforward_modules` should be a subset of `target_modules`: "
                                 f"{missing} are not in target_modules {targets}; add them to target_modules or drop them"))
        return problems

    def fill_model_defaults(self, model: nn.Module) -> None:
        """Fill unset ``target_modules`` / ``feedforward_modules`` with peft's defaults for the
        model's architecture (called while targets are resolved)."""
        model_type = getattr(getattr(model, "config", None), "model_type", None)
        if self.target_modules is None:
            if model_type not in IA3_DEFAULT_TARGETS:
                raise TargetError(
                    f"target_modules is not set and (IA)³ has no default for model type {model_type!r}; set "
                    "target_modules (and feedforward_modules), e.g. ['k_proj', 'v_proj', 'down_proj'] and ['down_proj']"
                )
            self.target_modules = list(IA3_DEFAULT_TARGETS[model_type])
        if self.feedforward_modules is None:
            self.feedforward_modules = self._default_feedforward(IA3_DEFAULT_FEEDFORWARD.get(model_type, []))

    def _default_feedforward(self, names: list[str]) -> Union[str, list[str]]:
        targets = self.target_modules
        if not names or not isinstance(targets, list) or all(_covers(targets, n) for n in names):
            return list(names)
        # Targets chosen by hand that do not list the default names: peft still treats modules
        # ending with them as feedforward; a regex says exactly that and needs no subset check.
        return ".*(?:" + "|".join(re.escape(n) for n in names) + ")"

    def for_loading(self) -> "IA3Config":
        # (IA)³ has no costly initialisation to skip; the same object lets the defaults filled in
        # while targets are resolved reach the layers.
        return self

    def to_dict(self) -> dict[str, Any]:
        data = super().to_dict()
        for key in ("layers_to_transform", "layers_pattern"):  # peft's IA3Config has neither
            if data.get(key) is None:
                data.pop(key, None)
        return data


def _build_layer(module: nn.Module, name: str, config: IA3Config, key: str, cls: type = IA3Linear) -> IA3Layer:
    if isinstance(module, (nn.Conv2d, nn.Conv3d)):
        return IA3Conv(module, name, config, key)
    fan_in_fan_out = is_conv1d(module)  # follows the layer; the config records it, as peft's does
    if config.fan_in_fan_out != fan_in_fan_out:
        config.fan_in_fan_out = fan_in_fan_out
    return cls(module, name, config, key, fan_in_fan_out=fan_in_fan_out)


def _record_modules_for_peft(peft_model: Any, adapter_name: str, config: IA3Config) -> None:
    """Make the saved config select in peft exactly the modules adapted here. peft's IA3 knows no
    layers_to_transform and wants feedforward_modules to be a subset of target_modules, so when
    either does not hold as written, both lists become the full module paths."""
    stored = peft_model.peft_config[adapter_name]
    ff, targets = stored.feedforward_modules, stored.target_modules
    subset_as_written = not (isinstance(ff, list) and isinstance(targets, list)) or set(ff) <= set(targets)
    if stored.layers_to_transform is None and subset_as_written:
        return
    layers = [(key, m) for key, m in iter_adapter_modules(peft_model.get_base_model())
              if isinstance(m, IA3Layer) and adapter_name in m.ia3_l]
    paths = {
        "target_modules": [key for key, _ in layers],
        "feedforward_modules": [key for key, m in layers if m.is_feedforward[adapter_name]],
        "layers_to_transform": None,
        "layers_pattern": None,
    }
    # Set together: one at a time, the cross-field checks would see a half-updated config.
    vars(stored).update(paths)


IA3 = register_method(
    MethodSpec(
        peft_type="IA3",
        mixable=True,  # beyond peft, whose mixed model refuses (IA)³
        config_cls=IA3Config,
        layer_cls=IA3Layer,
        layer_factories=[
            *quantized_factories(IA3Linear, _build_layer),
            LayerFactory("nn.Linear", lambda m: isinstance(m, nn.Linear), _build_layer),
            LayerFactory("transformers Conv1D", is_conv1d, _build_layer),
            LayerFactory("nn.Conv2d/Conv3d", lambda m: isinstance(m, (nn.Conv2d, nn.Conv3d)), _build_layer),
        ],
        on_add=_record_modules_for_peft,
    )
)
