"""LoHa (Hyeon-Woo et al., FedPara): the weight change is the Hadamard product of two rank-``r``
products, ``delta_W = (w1_a @ w1_b) * (w2_a @ w2_b) * alpha / r``, so its rank can reach ``r**2``
for the parameters of two LoRAs. Config, tensor names and shapes mirror ``peft.LoHaConfig``.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import PeftType
from ..registry import MethodSpec, register_method
from .lycoris import LycorisConfig, LycorisLayer, lycoris_factories, rebuild_cp, uses_effective_conv


class LoHaConfig(LycorisConfig):
    """Configuration of a LoHa adapter; fields and defaults as in ``peft.LoHaConfig``.

    Example:
        >>> from peftkit import LoHaConfig
        >>> cfg = LoHaConfig(r=8, alpha=16, target_modules=["q_proj", "v_proj"], rank_dropout=0.1)
        >>> cfg.r, cfg.alpha, cfg.init_weights
        (8, 16, True)
    """

    peft_type: ClassVar[str] = PeftType.LOHA


def _kaiming(shape: tuple[int, ...]) -> torch.Tensor:
    # peft's (and FedPara's) He initialisation, as nn.Linear initialises its weight
    return nn.init.kaiming_uniform_(torch.empty(shape), a=math.sqrt(5))


class LoHaLayer(LycorisLayer):
    """LoHa on ``nn.Linear`` and ``nn.Conv1d/Conv2d``. With ``use_effective_conv2d`` a kernel
    larger than 1 is factored as two Tucker cores ``hada_t1/hada_t2`` with channel factors."""

    adapter_param_names = ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2")

    def rescales_rank_dropout(self, config: LycorisConfig) -> bool:
        return True  # peft's LoHa always divides by the fraction of rows kept

    def create_tensors(self, adapter_name: str, r: int, config: LycorisConfig) -> dict[str, torch.Tensor]:
        base, shape = self.base_layer, self.base_weight_info()[0]
        out_features = shape[0]
        in_features = math.prod(shape[1:])  # in (Linear) or in/groups * kernel (convolutions)
        if uses_effective_conv(base, config):
            kernel = tuple(base.kernel_size) + (1,) * (2 - len(base.kernel_size))  # Conv1d: (k, 1)
            in_channels = shape[1]
            shapes = {"hada_w1_a": (r, out_features), "hada_w1_b": (r, in_channels),
                      "hada_w2_a": (r, out_features), "hada_w2_b": (r, in_channels),
                      "hada_t1": (r, r, *kernel), "hada_t2": (r, r, *kernel)}
        else:
            shapes = {"hada_w1_a": (out_features, r), "hada_w1_b": (r, in_features),
                      "hada_w2_a": (out_features, r), "hada_w2_b": (r, in_features)}
        tensors = {attr: _kaiming(shape) for attr, shape in shapes.items()}
        if config.init_weights:  # one zero factor: the adapter starts as the identity
            tensors["hada_w2_b"].zero_()
        return tensors

    def _factors(self, adapter_name: str) -> tuple[torch.Tensor, ...]:
        return tuple(getattr(self, attr)[adapter_name] for attr in self.adapter_param_names[:4])

    def delta_weight(self, adapter_name: str) -> torch.Tensor:
        w1_a, w1_b, w2_a, w2_b = self._factors(adapter_name)
        if adapter_name in self.hada_t1:
            first = rebuild_cp(self.hada_t1[adapter_name], w1_a, w1_b)
            second = rebuild_cp(self.hada_t2[adapter_name], w2_a, w2_b)
        else:
            first, second = w1_a @ w1_b, w2_a @ w2_b
        return (first * second * self.scaling[adapter_name]).reshape(self.base_weight_info()[0])

    def linear_delta(self, adapter_name: str, x: torch.Tensor) -> torch.Tensor:
        w1_a, w1_b, w2_a, w2_b = self._factors(adapter_name)
        out_features, r1 = w1_a.shape
        r2, in_features = w2_b.shape
        if r1 * r2 * (in_features + out_features) >= in_features * out_features:
            return F.linear(x, self.delta_weight(adapter_name))  # small layer: the full matrix is cheaper
        # (A1 B1) * (A2 B2) = (A1 . A2)(B1 . B2): row-wise Kronecker products give a rank r1*r2
        # factorisation, applied to x without ever forming the (out x in) matrix.
        down = (w1_b[:, None, :] * w2_b[None, :, :]).reshape(r1 * r2, in_features)
        up = (w1_a[:, :, None] * w2_a[:, None, :]).reshape(out_features, r1 * r2)
        return F.linear(F.linear(x, down), up * self.scaling[adapter_name])


LOHA = register_method(
    MethodSpec(peft_type="LOHA", config_cls=LoHaConfig, layer_cls=LoHaLayer, layer_factories=lycoris_factories(LoHaLayer),
               mixable=True)
)
