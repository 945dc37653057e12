"""An example third-party peftkit method: a learned gain per output feature of a linear layer,
``y = W x * (1 + g) + b``. Installing this package is enough for peftkit to find it (entry point
``peftkit.methods``): ``get_peft_model``, ``peftkit train`` with ``adapter: {method: toy_gain}``,
saving, loading and merging all work without any change to peftkit.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn as nn

from peftkit import AdapterLayer, LayerFactory, MethodSpec
from peftkit.config import TargetedConfig


class ToyGainConfig(TargetedConfig):
    """Which linear layers get a gain, and its starting value (0: the adapter starts as identity)."""

    peft_type: ClassVar[str] = "TOY_GAIN"
    init_gain: float = 0.0


class ToyGainLinear(AdapterLayer):
    """``toy_gain[name]`` (one value per output feature) scales the layer's ``W x``."""

    adapter_param_names = ("toy_gain",)

    def __init__(self, base_layer: nn.Linear, adapter_name: str, config: ToyGainConfig, key: str):
        super().__init__(base_layer, key)
        self.toy_gain = nn.ParameterDict()
        self.add_adapter(adapter_name, config, key)

    def add_adapter(self, adapter_name: str, config: ToyGainConfig, key: str) -> None:
        weight = self.base_layer.weight
        self.toy_gain[adapter_name] = nn.Parameter(
            torch.full((self.base_layer.out_features,), float(config.init_gain), dtype=weight.dtype, device=weight.device)
        )

    def delta(self, adapter_name: str, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x, self.base_layer.weight) * self.toy_gain[adapter_name]

    def delta_weight(self, adapter_name: str) -> torch.Tensor:
        return self.base_layer.weight * self.toy_gain[adapter_name][:, None]


SPEC = MethodSpec(
    peft_type="TOY_GAIN",
    config_cls=ToyGainConfig,
    layer_cls=ToyGainLinear,
    layer_factories=[LayerFactory("nn.Linear", lambda m: isinstance(m, nn.Linear), ToyGainLinear)],
)
