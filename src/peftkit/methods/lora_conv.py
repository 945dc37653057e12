"""LoRA on ``nn.Conv1d/2d/3d``, grouped convolutions included (``peft``'s layout).

``lora_A`` is a convolution with the base kernel, stride and padding from all input channels down
to ``r``; ``lora_B`` a pointwise convolution back up to the output channels, with the base layer's
``groups``. For a grouped base (``groups > 1``, depthwise ones too) ``r`` must be a multiple of
``groups``, and the adapter cannot be merged: A mixes every input channel, so ``B * A`` has no
grouped kernel that the base weight could absorb (``peft`` refuses it too).

DoRA on a grouped base follows ``peft`` 0.21 number for number. Lacking a grouped kernel of the
update, ``peft`` takes each output channel's norm of ``W + s L`` with ``L`` built by reading B's
weight as ``(out / groups, r)`` rows, multiplying by A's ``(r, in * kernel)`` and reshaping the
product to the base weight's shape, so output channel ``o`` pairs B's row ``o // groups`` with the
``o % groups``-th chunk of A's flattened columns. That is not the norm of the weight the layer
applies, but it is what ``peft`` initialises the magnitude from and divides by in every forward,
and adapters move between the two libraries only if both do it. :meth:`LoraConv.dora_rows` writes
``L`` as a row product (a block-diagonal ``(out, groups * r)`` B against A's chunks stacked as
``(groups * r, in / groups * kernel)``); the forward is the usual DoRA forward on the real
``lora_B(lora_A(x))``. Merging stays refused, for DoRA as for LoRA.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn as nn

from ..errors import AdapterError, TargetError
from .lora_layers import LoraLayer

if TYPE_CHECKING:
    from .lora import LoraConfig


class LoraConv(LoraLayer):
    """LoRA on ``nn.Conv1d/2d/3d`` (see the module docstring for grouped convolutions)."""

    def __init__(self, base_layer: nn.Module, adapter_name: str, config: "LoraConfig", key: str):
        if any(d != 1 for d in base_layer.dilation) or isinstance(base_layer.padding, str):
            raise TargetError(
                f"LoRA supports convolutions with dilation=1 and numeric padding; {key!r} "
                f"({base_layer}) is not one: exclude it with exclude_modules"
            )
        self.grouped = base_layer.groups > 1
        if self.grouped:
            # the grouped DoRA rows are fresh tensors on every call, which the norm cache (keyed on
            # storage) cannot track; form W + s L directly, as peft does
            self.dora_norm_by_identity = False
        super().__init__(base_layer, adapter_name, config, key)

    @property
    def factor_layout_refusal(self) -> str | None:
        return "a grouped convolution's lora_B holds r / groups channels per group" if self.grouped else None

    @property
    def rank_blocks(self) -> int:
        return self.base_layer.groups  # lora_B is grouped like the base: one block of A's channels per group

    @property
    def hotswap_refusal(self) -> str | None:
        return None  # the grouped layout is rank_blocks, which hotswap and rank padding follow (as peft does)

    supports_dora = True  # one magnitude per output channel, shaped (1, out, 1, ...) as peft

    def create_tensors(self, adapter_name: str, r: int) -> None:
        conv = self.base_layer
        if r % conv.groups:
            raise TargetError(  # peft's sentences (its tests match them), then the fix
                f"Targeting a {type(conv).__name__} with groups={conv.groups} and rank {r}. Currently, support is "
                "limited to conv layers where the rank is divisible by groups. Either choose a different rank or do "
                f"not target this specific layer. ({self.key!r}: set r, or rank_pattern for this module, to a "
                f"multiple of {conv.groups}, or exclude the module with exclude_modules)"
            )
        conv_cls = type(conv)
        ones = (1,) * (conv.weight.dim() - 2)
        self.lora_A[adapter_name] = conv_cls(conv.in_channels, r, conv.kernel_size, conv.stride, conv.padding, bias=False)
        self.lora_B[adapter_name] = conv_cls(r, conv.out_channels, ones, ones, groups=conv.groups,
                                             bias=self.lora_bias[adapter_name])

    def _grouped_refusal(self, what: str) -> str | None:
        if not self.grouped:
            return None
        return (f"{what} is not available for {self.key!r}, a convolution with groups={self.base_layer.groups}: "
                "its LoRA update has no grouped kernel (peft refuses this too); keep the adapter unmerged")

    def _refuse_grouped(self, what: str) -> None:
        reason = self._grouped_refusal(what)
        if reason:
            raise AdapterError(reason)

    def merge_refusal(self, adapter_name: str) -> str | None:
        return self._grouped_refusal("merging") or super().merge_refusal(adapter_name)

    def merge(self, adapter_names: list[str] | None = None, safe_merge: bool = False) -> None:
        if any(n in self.adapter_names for n in (self.computing_adapters if adapter_names is None else adapter_names)):
            self._refuse_grouped("merging")
        super().merge(adapter_names, safe_merge)

    def delta_weight(self, adapter_name: str) -> torch.Tensor:
        self._refuse_grouped("a merged weight (merge, delta_weight, adapter arithmetic)")
        return super().delta_weight(adapter_name)

    def lowrank_factors(self, adapter_name: str) -> tuple[torch.Tensor, torch.Tensor, float] | None:
        # grouped dora_rows describe peft's DoRA norm, not the update the layer applies
        return None if self.grouped else super().lowrank_factors(adapter_name)

    def lowrank_weight(self, adapter_name: str) -> torch.Tensor:
        self._refuse_grouped("a merged weight (merge, delta_weight, adapter arithmetic)")
        a = self.lora_A[adapter_name].weight  # (r, in, *kernel)
        b = self.lora_B[adapter_name].weight.flatten(1)  # (out, r)
        return torch.einsum("or,ri...->oi...", b, a) * self.scaling[adapter_name]

    def dora_rows(self, name: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        w, a, b = self.base_layer.weight.flatten(1), self.lora_A[name].weight, self.lora_B[name].weight
        if not self.grouped:
            return w, a.flatten(1), b.flatten(1)
        return (w, *self._grouped_dora_factors(a, b))

    def _grouped_dora_factors(self, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """peft's DoRA ``L`` for a grouped base (module docstring) as ``B_rows @ A_rows``.

        Example (groups=2, r=2, out=4): channel 3 gets B's flat row 1 times A's second column chunk.
        """
        groups, r, out = self.base_layer.groups, a.shape[0], b.shape[0]
        b_read = b.reshape(out // groups, r)  # B's numbers in peft's (out / groups, r) reading
        a_rows = a.reshape(r, groups, -1).transpose(0, 1).reshape(groups * r, -1)  # chunk c at rows c*r..
        # row o = (o // groups) * groups + c takes b_read[o // groups] in column block c only
        eye = torch.eye(groups, dtype=b.dtype, device=b.device)
        b_rows = (b_read[:, None, None, :] * eye[None, :, :, None]).reshape(out, groups * r)
        return a_rows, b_rows

    def dora_unit_view(self, vec: torch.Tensor) -> torch.Tensor:
        return vec.reshape(1, -1, *([1] * (self.base_layer.weight.dim() - 2)))

    def dora_weight_layout(self, rows: torch.Tensor) -> torch.Tensor:
        return rows.reshape(self.base_layer.weight.shape)

    def weight_rows(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor.flatten(1)

    def dora_base(self, x: torch.Tensor) -> torch.Tensor:
        return self.base_layer._conv_forward(x, self.base_layer.weight.to(x.dtype), None)
