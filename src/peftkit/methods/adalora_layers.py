"""AdaLoRA layers: LoRA in SVD form, ``W x + B (E * A x) * scaling / (ranknum + 1e-5)``.

``lora_A`` (r x in) and ``lora_B`` (out x r) play the singular vectors, ``lora_E`` (r x 1) the
singular values. Training zeroes the least important entries of ``E`` (see
:mod:`peftkit.methods.adalora_allocator`); once the ranks are final the layer drops those
triplets for good (:meth:`AdaLoraLinear.keep_ranks`). ``ranknum`` stays the initial rank, so
pruning never changes the output. Tensor names and shapes are ``peft``'s.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

import torch
import torch.nn as nn

from ..layers import AdapterLayer
from .lora_layers import adapter_dtype

if TYPE_CHECKING:
    from .adalora import AdaLoraConfig

EPS = 1e-5  # peft's guard in scaling / (ranknum + eps)


def kept_ranks(rank_pattern: Optional[dict[str, list[bool]]], key: str) -> Optional[list[bool]]:
    """The saved mask of module ``key`` in a ``rank_pattern`` (``"<key>.lora_E"``, as peft saves
    it; a key that still carries an adapter name, ``"<key>.lora_E.<name>"``, is read too)."""
    if not rank_pattern:
        return None
    for name, kept in rank_pattern.items():
        if name == f"{key}.lora_E" or name.startswith(f"{key}.lora_E."):
            return list(kept)
    return None


class AdaLoraLinear(AdapterLayer):
    """AdaLoRA on ``nn.Linear``, or on GPT-2's ``Conv1D`` with ``fan_in_fan_out=True``."""

    adapter_param_names = ("lora_A", "lora_B", "lora_E")
    peft_kind = "SVDLinear"  # what status reports call it (peft's class name)
    adapter_setting_names = ("r", "lora_alpha", "scaling", "ranknum", "lora_dropout")

    def __init__(self, base_layer: nn.Module, adapter_name: str, config: "AdaLoraConfig", key: str, fan_in_fan_out: bool = False):
        super().__init__(base_layer, key)
        self.fan_in_fan_out = fan_in_fan_out
        self.lora_A = nn.ParameterDict()
        self.lora_B = nn.ParameterDict()
        self.lora_E = nn.ParameterDict()
        self.lora_dropout = nn.ModuleDict()
        self.r: dict[str, int] = {}
        self.lora_alpha: dict[str, float] = {}
        self.scaling: dict[str, float] = {}
        self.ranknum: dict[str, float] = {}
        self.add_adapter(adapter_name, config, key)

    @property
    def in_out(self) -> tuple[int, int]:
        shape = self.base_weight_info()[0]
        return (shape[0], shape[1]) if self.fan_in_fan_out else (shape[1], shape[0])

    def add_adapter(self, adapter_name: str, config: "AdaLoraConfig", key: str) -> None:
        """``init_r`` triplets, or as many as a saved ``rank_pattern`` kept for this module."""
        kept = kept_ranks(config.rank_pattern, key)
        r = config.init_r if kept is None else sum(bool(k) for k in kept)
        in_features, out_features = self.in_out
        self.r[adapter_name] = r
        self.lora_alpha[adapter_name] = config.lora_alpha
        self.scaling[adapter_name] = config.lora_alpha if config.lora_alpha > 0 else float(r)
        self.ranknum[adapter_name] = float(config.init_r)  # unchanged by pruning, as in peft
        self.lora_dropout[adapter_name] = nn.Dropout(config.lora_dropout) if config.lora_dropout > 0 else nn.Identity()
        a, e, b = torch.randn(r, in_features), torch.randn(r, 1), torch.randn(out_features, r)
        if config.init_lora_weights:  # E = 0: the adapter starts as the identity
            nn.init.normal_(a, std=0.02)
            nn.init.zeros_(e)
            nn.init.normal_(b, std=0.02)
        _, base_dtype, device = self.base_weight_info()
        kind = dict(device=device, dtype=adapter_dtype(base_dtype))
        self.lora_A[adapter_name] = nn.Parameter(a.to(**kind))
        self.lora_E[adapter_name] = nn.Parameter(e.to(**kind))
        self.lora_B[adapter_name] = nn.Parameter(b.to(**kind))

    def delta(self, adapter_name: str, x: torch.Tensor) -> torch.Tensor:
        a, e, b = self.lora_A[adapter_name], self.lora_E[adapter_name], self.lora_B[adapter_name]
        x = self.lora_dropout[adapter_name](x.to(a.dtype))
        return (x @ (a * e).T @ b.T) * self.scaling[adapter_name] / (self.ranknum[adapter_name] + EPS)

    def delta_weight(self, adapter_name: str) -> torch.Tensor:
        a, e, b = self.lora_A[adapter_name], self.lora_E[adapter_name], self.lora_B[adapter_name]
        delta = b @ (a * e) * self.scaling[adapter_name] / (self.ranknum[adapter_name] + EPS)
        return delta.T if self.fan_in_fan_out else delta

    @torch.no_grad()
    def keep_ranks(self, adapter_name: str, kept: list[bool]) -> None:
        """Drop the triplets ``kept`` marks False (their ``E`` is already zero, so the output does
        not change). New parameter objects replace the old ones: an optimizer built before must be
        rebuilt, which is why this runs when training ends."""
        index = torch.tensor([bool(k) for k in kept], device=self.lora_E[adapter_name].device)
        if index.numel() != self.r[adapter_name]:
            raise ValueError(f"{self.key}: rank mask has {index.numel()} entries but the layer has rank {self.r[adapter_name]}")
        for attr, rows in (("lora_A", index), ("lora_E", index)):
            holder = getattr(self, attr)
            old = holder[adapter_name]
            holder[adapter_name] = nn.Parameter(old[rows].clone(), requires_grad=old.requires_grad)
        old = self.lora_B[adapter_name]
        self.lora_B[adapter_name] = nn.Parameter(old[:, index].clone(), requires_grad=old.requires_grad)
        self.r[adapter_name] = int(index.sum())
