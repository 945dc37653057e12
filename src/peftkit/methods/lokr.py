"""LoKr (LyCORIS): the weight change is a Kronecker product ``delta_W = kron(w1, w2) * alpha / r``
of two small matrices whose shapes factor the layer's output and input sizes (``factorization``);
either factor may itself be a rank-``r`` product. Config, tensor names and shapes mirror
``peft.LoKrConfig``.
"""

from __future__ import annotations

import math
from typing import ClassVar, Literal, Union

import torch
import torch.nn as nn
from pydantic import field_validator

from ..config import PeftType
from ..registry import MethodSpec, register_method
from .lycoris import LycorisConfig, LycorisLayer, lycoris_factories, rebuild_cp, uses_effective_conv


class LoKrConfig(LycorisConfig):
    """Configuration of a LoKr adapter; fields and defaults as in ``peft.LoKrConfig``.

    Example:
        >>> from peftkit import LoKrConfig
        >>> cfg = LoKrConfig(r=4, alpha=8, target_modules="all-linear", decompose_both=True)
        >>> cfg.decompose_factor, cfg.rank_dropout_scale
        (-1, False)
    """

    peft_type: ClassVar[str] = PeftType.LOKR

    decompose_both: bool = False
    decompose_factor: int = -1
    rank_dropout_scale: bool = False
    init_weights: Union[bool, Literal["lycoris"]] = True

    @field_validator("decompose_factor")
    @classmethod
    def _factor(cls, value: int) -> int:
        if value != -1 and value <= 0:
            raise ValueError("must be -1 (factor near the square root) or a positive integer")
        return value


def factorization(dimension: int, factor: int = -1) -> tuple[int, int]:
    """Split ``dimension`` into ``(m, n)`` with ``m * n == dimension``, as peft's LoKr does:
    ``factor`` itself if it divides ``dimension`` (``(factor, dimension // factor)``), otherwise the
    pair closest to a square whose smaller side is at most ``factor`` (-1: no limit), smaller first.

    Example:
        >>> factorization(128), factorization(127), factorization(128, 4)
        ((8, 16), (1, 127), (4, 32))
    """
    if factor > 0 and dimension % factor == 0:
        return factor, dimension // factor
    limit = dimension if factor == -1 else factor
    m = 1
    for d in range(2, dimension + 1):  # divisors in increasing order, until the pair is square-ish
        if dimension % d:
            continue
        if d > limit:
            break
        m = d
        if d >= dimension // d:
            break
    return min(m, dimension // m), max(m, dimension // m)


def _kaiming(shape: tuple[int, ...]) -> torch.Tensor:
    return nn.init.kaiming_uniform_(torch.empty(shape), a=math.sqrt(5))


class LoKrLayer(LycorisLayer):
    """LoKr on ``nn.Linear`` and ``nn.Conv1d/Conv2d``: ``w1`` is (out_l, in_m), ``w2`` is
    (out_k, in_n[, kernel]); a linear layer applies ``kron(w1, w2)`` to its input as
    ``w1 @ X @ w2.T`` on the input reshaped to (in_m, in_n), never forming the full matrix."""

    adapter_param_names = ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2")

    def rescales_rank_dropout(self, config: LoKrConfig) -> bool:
        return config.rank_dropout_scale

    def create_tensors(self, adapter_name: str, r: int, config: LoKrConfig) -> dict[str, torch.Tensor]:
        base, shape = self.base_layer, self.base_weight_info()[0]
        out_l, out_k = factorization(shape[0], config.decompose_factor)
        in_m, in_n = factorization(shape[1], config.decompose_factor)  # in / groups for convs
        kernel = tuple(shape[2:])
        shapes: dict[str, tuple[int, ...]] = {}
        if config.decompose_both and r < max(out_l, in_m) / 2:
            shapes.update(lokr_w1_a=(out_l, r), lokr_w1_b=(r, in_m))
        else:
            shapes.update(lokr_w1=(out_l, in_m))
        if r >= max(out_k, in_n) / 2:
            shapes.update(lokr_w2=(out_k, in_n, *kernel))
        elif uses_effective_conv(base, config):
            core = kernel + (1,) * (2 - len(kernel))  # Conv1d: (k, 1)
            shapes.update(lokr_t2=(r, r, *core), lokr_w2_a=(r, out_k), lokr_w2_b=(r, in_n))
        else:
            shapes.update(lokr_w2_a=(out_k, r), lokr_w2_b=(r, in_n * math.prod(kernel)))
        tensors = {attr: _kaiming(shape) for attr, shape in shapes.items()}
        # one factor of the product starts at zero so that the adapter starts as the identity:
        # w1 (or w1_a) by default, w2 (or w2_b) with "lycoris"; False keeps every factor random
        if config.init_weights == "lycoris":
            tensors.get("lokr_w2", tensors.get("lokr_w2_b")).zero_()
        elif config.init_weights:
            tensors.get("lokr_w1", tensors.get("lokr_w1_a")).zero_()
        return tensors

    def _w1(self, adapter_name: str) -> torch.Tensor:
        if adapter_name in self.lokr_w1:
            return self.lokr_w1[adapter_name]
        return self.lokr_w1_a[adapter_name] @ self.lokr_w1_b[adapter_name]

    def delta_weight(self, adapter_name: str) -> torch.Tensor:
        w1 = self._w1(adapter_name)
        if adapter_name in self.lokr_w2:
            w2 = self.lokr_w2[adapter_name]
        elif adapter_name in self.lokr_t2:
            w2 = rebuild_cp(self.lokr_t2[adapter_name], self.lokr_w2_a[adapter_name], self.lokr_w2_b[adapter_name])
        else:
            w2 = self.lokr_w2_a[adapter_name] @ self.lokr_w2_b[adapter_name]
        if w2.dim() == 4:
            w1 = w1[:, :, None, None]
        # torch.kron on these exact shapes, then a reshape to the kernel: peft's layout, so that
        # checkpoints mean the same thing in both libraries
        weight = torch.kron(w1, w2.contiguous()) * self.scaling[adapter_name]
        return weight.reshape(self.base_weight_info()[0])

    def linear_delta(self, adapter_name: str, x: torch.Tensor) -> torch.Tensor:
        w1 = self._w1(adapter_name) * self.scaling[adapter_name]
        out_l, in_m = w1.shape
        lead = x.shape[:-1]
        grid = x.reshape(*lead, in_m, x.shape[-1] // in_m)  # x[j * in_n + l] -> grid[j, l]
        if adapter_name in self.lokr_w2:
            mixed = grid @ self.lokr_w2[adapter_name].T
        else:
            mixed = (grid @ self.lokr_w2_b[adapter_name].T) @ self.lokr_w2_a[adapter_name].T
        out = torch.matmul(w1, mixed)  # (..., out_l, out_k): kron(w1, w2) @ x, reshaped
        return out.reshape(*lead, out_l * out.shape[-1])


LOKR = register_method(
    MethodSpec(peft_type="LOKR", config_cls=LoKrConfig, layer_cls=LoKrLayer, layer_factories=lycoris_factories(LoKrLayer),
               mixable=True)
)
