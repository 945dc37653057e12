"""AdaLoRA on ``nn.Conv2d`` (``peft``'s ``SVDConv2d``).

The kernel is treated as a matrix ``(out_channels, in_channels * kh * kw)``: ``lora_A`` holds
``r`` right singular vectors over the flattened kernel ``(r, in * kh * kw)``, ``lora_E`` the
singular values, ``lora_B`` the left ones ``(out, r)``, with ``peft``'s names and shapes. The
update ``B (E * A) * scaling / (ranknum + eps)`` reshaped to the kernel is applied as a second
convolution with the base layer's stride, padding and dilation, and merges by plain addition.
Rank allocation, pruning and saving are :class:`~peftkit.methods.adalora_layers.AdaLoraLinear`'s.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import TargetError
from .adalora_layers import EPS, AdaLoraLinear

if TYPE_CHECKING:
    from .adalora import AdaLoraConfig


class AdaLoraConv2d(AdaLoraLinear):
    """AdaLoRA on an ungrouped ``nn.Conv2d`` with zero padding.

    Example:
        >>> model = get_peft_model(net, AdaLoraConfig(target_modules=["conv"], total_step=100))  # doctest: +SKIP
    """

    def __init__(self, base_layer: nn.Conv2d, adapter_name: str, config: "AdaLoraConfig", key: str):
        if base_layer.groups != 1 or base_layer.padding_mode != "zeros":
            raise TargetError(
                f"AdaLoRA supports nn.Conv2d with groups=1 and padding_mode='zeros'; {key!r} ({base_layer}) is not "
                "one: exclude it with exclude_modules"
            )
        super().__init__(base_layer, adapter_name, config, key)

    @property
    def in_out(self) -> tuple[int, int]:
        out_channels, in_channels, *kernel = self.base_weight_info()[0]
        return in_channels * math.prod(kernel), out_channels

    def delta_weight(self, adapter_name: str) -> torch.Tensor:
        a, e, b = self.lora_A[adapter_name], self.lora_E[adapter_name], self.lora_B[adapter_name]
        delta = b @ (a * e) * self.scaling[adapter_name] / (self.ranknum[adapter_name] + EPS)
        return delta.reshape(self.base_layer.weight.shape)

    def delta(self, adapter_name: str, x: torch.Tensor) -> torch.Tensor:
        conv = self.base_layer
        dtype = self.lora_A[adapter_name].dtype
        x = self.lora_dropout[adapter_name](x.to(dtype))
        return F.conv2d(x, self.delta_weight(adapter_name), None, conv.stride, conv.padding, conv.dilation)
