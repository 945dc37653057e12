"""LoRA on ``nn.MultiheadAttention`` (``peft``'s layout and meaning).

``nn.MultiheadAttention`` has no sub-module to wrap for its input projection: the query, key and
value projections are one bare parameter, ``in_proj_weight`` ``(3 * embed, embed)``, and its
``out_proj`` is an ``nn.Linear`` whose weight it reads without calling it. Like ``peft``, one target
adapts both: ``lora_A`` / ``lora_B`` on this layer update ``in_proj_weight`` (A: ``embed -> r``,
B: ``r -> 3 * embed``), and ``base_layer.out_proj`` becomes a :class:`LoraLinear` whose tensors are
saved as ``<key>.base_layer.out_proj.lora_A.weight``. Forward runs the attention with both weights
adapted (see :mod:`peftkit.methods.lora_weight_patch`), so training, merging and saving work as for
any LoRA layer. Only the packed layout (``kdim == vdim == embed_dim``) is supported, as in ``peft``;
no DoRA and no ``lora_bias``; ``lora_dropout`` has no effect here (the weights are adapted, the
inputs are never seen), as in ``peft``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.nn as nn

from ..errors import AdapterError, TargetError
from .lora_layers import LoraLayer, LoraLinear
from .lora_weight_patch import WeightMergeMixin, shadowed

if TYPE_CHECKING:
    from .lora import LoraConfig

OUT_PROJ = "base_layer.out_proj."  # where peft saves the output projection's tensors, below this layer's key


class LoraMultiheadAttention(WeightMergeMixin, LoraLayer):
    """LoRA on ``nn.MultiheadAttention``: ``in_proj_weight`` here, ``out_proj`` as a :class:`LoraLinear`.

    Example:
        >>> model = get_peft_model(net, LoraConfig(target_modules=["mha"]))  # doctest: +SKIP
    """

    supports_lora_bias = False  # peft creates the bias but never merges it; refused here rather than half-done
    factor_layout_refusal = "LoRA on attention has two pairs of factors (in_proj and out_proj)"

    def __init__(self, base_layer: nn.MultiheadAttention, adapter_name: str, config: "LoraConfig", key: str):
        if not base_layer._qkv_same_embed_dim:
            raise TargetError(  # peft's sentence (its tests match it), then which module and the fix
                "Only same embed for query/key/value is supported as of now for MultiheadAttention. "
                f"{key!r}: LoRA needs kdim == vdim == embed_dim (one packed in_proj_weight); exclude the module "
                "with exclude_modules"
            )
        if not isinstance(base_layer.out_proj, nn.Linear):
            raise TargetError(f"{key!r}: out_proj is a {type(base_layer.out_proj).__name__}, not an nn.Linear")
        super().__init__(base_layer, adapter_name, config, key)

    @property
    def out_proj_layer(self) -> LoraLinear:
        """The LoRA layer on the output projection (its adapters are this layer's)."""
        return self.base_layer.out_proj

    @property
    def out_proj(self) -> nn.Module:
        """The attention's own output projection, as the module reads it before adaptation (peft's
        meaning: code that inspects ``mha.out_proj`` sees the original ``nn.Linear``)."""
        return self.base_layer.out_proj.get_base_layer()

    # ------------------------------------------------------------------ the in_proj weight
    def base_weight(self) -> torch.Tensor:
        return self.base_layer._parameters["in_proj_weight"]

    def base_weight_info(self) -> tuple[torch.Size, torch.dtype, torch.device]:
        w = self.base_weight()
        return w.shape, w.dtype, w.device

    def create_tensors(self, adapter_name: str, r: int) -> None:
        out_features, in_features = self.base_weight_info()[0]
        self.lora_A[adapter_name] = nn.Linear(in_features, r, bias=False)
        self.lora_B[adapter_name] = nn.Linear(r, out_features, bias=False)

    def lowrank_weight(self, adapter_name: str) -> torch.Tensor:
        return (self.lora_B[adapter_name].weight @ self.lora_A[adapter_name].weight) * self.scaling[adapter_name]

    def dora_rows(self, name: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        raise NotImplementedError  # two weights per adapter: no single B @ A for adapter arithmetic

    # ------------------------------------------------------------------ adapters (the out_proj follows)
    def add_adapter(self, adapter_name: str, config: "LoraConfig", key: str) -> None:
        """Add the adapter to ``in_proj_weight`` and to ``out_proj``."""
        super().add_adapter(adapter_name, config, key)
        out = self.base_layer.out_proj
        if isinstance(out, LoraLinear):
            out.add_adapter(adapter_name, config, f"{key}.out_proj")
        else:
            self.base_layer.out_proj = LoraLinear(out, adapter_name, config, f"{key}.out_proj")

    def adapter_parameters(self, adapter_name: str):
        yield from super().adapter_parameters(adapter_name)
        for path, p in self.out_proj_layer.adapter_parameters(adapter_name):
            yield OUT_PROJ + path, p

    def set_adapter(self, adapter_names: str | list[str], inference_mode: bool = False,
                    trainable: bool | None = None) -> None:
        self.out_proj_layer.set_adapter(adapter_names, inference_mode, trainable=trainable)
        super().set_adapter(adapter_names, inference_mode, trainable=trainable)  # last: this layer's parameters include out_proj's

    def enable_adapters(self, enabled: bool) -> None:
        self.out_proj_layer.enable_adapters(enabled)  # a tuner layer of its own, seen by code that walks modules()
        super().enable_adapters(enabled)

    def delete_adapter(self, adapter_name: str) -> None:
        super().delete_adapter(adapter_name)
        self.out_proj_layer.delete_adapter(adapter_name)

    def release_base_layer(self) -> nn.Module:
        out = self.base_layer.out_proj
        if isinstance(out, LoraLinear):
            self.base_layer.out_proj = out.base_layer  # merged adapters stay in its weight
        return self.base_layer

    def delta(self, adapter_name: str, x: torch.Tensor, base_out: torch.Tensor | None = None) -> torch.Tensor:
        raise AdapterError(f"LoRA on {self.key!r} (attention) changes its weights; it has no additive output")

    # ------------------------------------------------------------------ forward and merging
    def forward(self, query: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        names = self.adapters_to_apply(f"LoRA on attention ({self.key!r})")
        if not names:
            return self.base_layer(query, *args, **kwargs)
        in_w, out = self.base_weight(), self.out_proj_layer
        out_w = out.base_layer.weight
        for name in names:
            in_w = in_w + self.lowrank_weight(name).to(in_w.dtype)
            out_w = out_w + out.lowrank_weight(name).to(out_w.dtype)
        with shadowed(self.base_layer, "in_proj_weight", in_w), shadowed(out, "weight", out_w):
            return self.base_layer(query, *args, **kwargs)

    def merge(self, adapter_names: list[str] | None = None, safe_merge: bool = False) -> None:
        names = self.computing_adapters if adapter_names is None else list(adapter_names)
        todo = [n for n in names if n in self.adapter_names and n not in self.merged_adapters]
        if safe_merge and not all(self.out_proj_layer.merge_is_finite(n) for n in todo):
            raise AdapterError(f"NaNs detected in the merged weights. The adapter(s) {todo} seem to be broken: merging "
                               f"them into {self.key!r}.out_proj gives NaN/inf weights; nothing was merged")
        super().merge(todo, safe_merge)
        self.out_proj_layer.merge(todo)

    def unmerge(self) -> None:
        super().unmerge()
        self.out_proj_layer.unmerge()

    def merge_is_finite(self, adapter_name: str) -> bool:
        return super().merge_is_finite(adapter_name) and self.out_proj_layer.merge_is_finite(adapter_name)
