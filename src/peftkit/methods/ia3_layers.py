"""(IA)³ layers: a learned vector ``ia3_l`` rescales a layer's output features, or, for
feedforward modules, its input features (``peft``'s names and shapes: ``(out, 1)`` and
``(1, in)`` for linear layers, ``(1, C, 1, ...)`` for convolutions).

(IA)³ multiplies rather than adds, so these layers replace the additive forward of
:class:`~peftkit.layers.AdapterLayer`: several active adapters multiply their vectors, a mixed
batch scales each row by its own adapter's vectors (``"__base__"`` rows by ones), and merging
multiplies the base weight (and, for output scaling, the bias) in place.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Optional

import torch
import torch.nn as nn

from ..errors import AdapterError
from ..layers import BASE_ADAPTER, AdapterLayer, warn_if_merged_already
from ..row_batches import group_rows, merged_batch_error
from .lora_layers import adapter_dtype

if TYPE_CHECKING:
    from .ia3 import IA3Config


def is_feedforward_key(key: str, config: "IA3Config") -> bool:
    """Whether the module ``key`` is one of ``config.feedforward_modules``: peft's rule, a regex
    matching the whole key, or a name the key ends with (no dot boundary: peft compares tails)."""
    modules = config.feedforward_modules
    if modules is None:
        return False
    if isinstance(modules, str):
        return re.fullmatch(modules, key) is not None
    return any(key.endswith(name) for name in modules)


def _all_finite(*tensors: Optional[torch.Tensor]) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in tensors if t is not None)


class IA3Layer(AdapterLayer):
    """Shared (IA)³ behaviour; subclasses say how a feature vector lines up with the input,
    the output and the weight of their base layer."""

    adapter_param_names = ("ia3_l",)
    adapter_setting_names = ("is_feedforward",)
    additive = False  # rescales: applies to what stacked layers inside it add, too

    def __init__(self, base_layer: nn.Module, adapter_name: str, config: "IA3Config", key: str):
        super().__init__(base_layer, key)
        self.ia3_l = nn.ParameterDict()
        self.is_feedforward: dict[str, bool] = {}
        # Base weights (and biases) kept while an adapter with a zero scale is merged: dividing
        # by zero cannot restore them.
        self._zero_scale_backup: dict[str, tuple[torch.Tensor, Optional[torch.Tensor]]] = {}
        self.add_adapter(adapter_name, config, key)

    # ------------------------------------------------------------------ layer geometry
    in_features: int
    out_features: int

    def vector_shape(self, feedforward: bool) -> tuple[int, ...]:
        """Shape of ``ia3_l`` for this layer (peft's)."""
        raise NotImplementedError

    def broadcast(self, rows: torch.Tensor, ndim: int) -> torch.Tensor:
        """A (batch, features) table of scales shaped to multiply an activation with ``ndim`` dims."""
        raise NotImplementedError

    def weight_scale(self, adapter_name: str) -> torch.Tensor:
        """The adapter's vector shaped to multiply ``base_layer.weight``."""
        raise NotImplementedError

    # ------------------------------------------------------------------ adapters
    def add_adapter(self, adapter_name: str, config: "IA3Config", key: str) -> None:
        # per adapter (peft fixes it per layer with the first adapter): adapters may disagree
        is_feedforward = self.is_feedforward[adapter_name] = is_feedforward_key(key, config)
        shape = self.vector_shape(is_feedforward)
        # ones: the identity; init_ia3_weights=False draws N(0, 1) as peft does (for tests)
        values = torch.ones(shape) if config.init_ia3_weights else torch.randn(shape)
        _, dtype, device = self.base_weight_info()
        self.ia3_l[adapter_name] = nn.Parameter(values.to(device=device, dtype=adapter_dtype(dtype)))

    def delta(self, adapter_name: str, x: torch.Tensor) -> torch.Tensor:
        raise AdapterError("(IA)³ rescales activations; it has no additive delta")

    def _vector(self, adapter_name: str) -> torch.Tensor:
        return self.ia3_l[adapter_name].flatten()

    # ------------------------------------------------------------------ adapter arithmetic
    def delta_weight(self, adapter_name: str) -> torch.Tensor:
        """``W * (scale - 1)``: the change merging makes to the base weight (not to its bias, see
        :meth:`delta_bias`)."""
        weight = self.base_layer.weight
        return weight * (self.weight_scale(adapter_name).to(weight.dtype) - 1)

    def delta_bias(self, adapter_name: str) -> Optional[torch.Tensor]:
        """``bias * (scale - 1)`` for an output-scaling adapter on a layer with a bias, else None."""
        if not self._scales_bias(adapter_name):
            return None
        return self.base_layer.bias * (self._bias_scale(adapter_name) - 1)

    def identity_parameters(self, adapter_name: str) -> dict[str, torch.Tensor]:
        """The values at which the adapter changes nothing (ones). The change is linear in the
        distance from them, so a weighted sum of those distances is the weighted sum of changes."""
        return {path: torch.ones_like(p) for path, p in self.adapter_parameters(adapter_name)}

    # ------------------------------------------------------------------ forward
    def _scales(self, names: list[str], feedforward: bool) -> Optional[torch.Tensor]:
        """Product of the vectors of ``names`` that scale the input (or the output), or None."""
        product = None
        for name in names:
            if name in self.ia3_l and self.is_feedforward[name] == feedforward:
                v = self._vector(name)
                product = v if product is None else product * v
        return product

    def _row_scales(self, groups: dict[str, torch.Tensor], batch: int, feedforward: bool) -> Optional[torch.Tensor]:
        """(batch, features) scales for a mixed batch: each row its adapter's vector, others ones."""
        rows_scaled = {n: r for n, r in groups.items() if n != BASE_ADAPTER and n in self.ia3_l
                       and self.is_feedforward[n] == feedforward}
        if not rows_scaled:
            return None
        first = self._vector(next(iter(rows_scaled)))
        table = first.new_ones(batch, first.numel())
        for name, rows in rows_scaled.items():
            v = self._vector(name)
            table = table.index_copy(0, rows, v.expand(len(rows), v.numel()))
        return table

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if self.disabled or (self.merged_adapters and self.row_adapters is None):
            return super().forward(x, *args, **kwargs)  # base output (unmerging first when disabled)
        if self.row_adapters is not None:
            if self.merged_adapters:
                raise merged_batch_error()
            groups = group_rows(self.row_adapters, x.shape[0], x.device)
            s_in, s_out = (self._row_scales(groups, x.shape[0], ff) for ff in (True, False))
        else:  # one row of scales for the whole batch
            s_in, s_out = (None if s is None else s[None]
                           for s in (self._scales(self.computing_adapters, ff) for ff in (True, False)))
        if s_in is not None:
            s_in = self.broadcast(s_in, x.dim())
            x = (x.to(s_in.dtype) * s_in).to(x.dtype)
        result = self.base_layer(x, *args, **kwargs)
        if s_out is None:
            return result
        return (result * self.broadcast(s_out, result.dim())).to(result.dtype)

    # ------------------------------------------------------------------ merging
    def _merged(self, adapter_name: str) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """The base weight and bias (None when untouched) with the adapter's scales multiplied in."""
        base = self.base_layer
        weight = base.weight.data * self.weight_scale(adapter_name).to(base.weight.dtype)
        return weight, base.bias.data * self._bias_scale(adapter_name) if self._scales_bias(adapter_name) else None

    def merge_is_finite(self, adapter_name: str) -> bool:
        return _all_finite(*self._merged(adapter_name))

    def merge(self, adapter_names: Optional[list[str]] = None, safe_merge: bool = False) -> None:
        """Multiply the adapters' scales into ``base_layer.weight`` (and its bias when the
        output is scaled). ``safe_merge`` refuses a result with NaN/inf and changes nothing."""
        names = self.computing_adapters if adapter_names is None else adapter_names
        warn_if_merged_already(self, names)
        base = self.base_layer
        for name in names:
            if name not in self.ia3_l or name in self.merged_adapters:
                continue
            weight, bias = self._merged(name)
            if safe_merge and not _all_finite(weight, bias):
                part = "weights" if not _all_finite(weight) else "bias"  # peft's sentence names the part
                raise AdapterError(f"NaNs detected in the merged {part}. The adapter {name!r} seems to be broken: "
                                   f"merging it into {self.key!r} gives NaN/inf values; the layer was left as it was")
            if (self.ia3_l[name] == 0).any():
                self._zero_scale_backup[name] = (base.weight.data.clone(), None if bias is None else base.bias.data.clone())
            base.weight.data.copy_(weight)
            if bias is not None:
                base.bias.data.copy_(bias)
            self.merged_adapters.append(name)

    def unmerge(self) -> None:
        """Divide the merged scales out again (exact restore where a scale is zero)."""
        base = self.base_layer
        while self.merged_adapters:
            name = self.merged_adapters.pop()
            if name in self._zero_scale_backup:
                weight, bias = self._zero_scale_backup.pop(name)
                base.weight.data.copy_(weight)
                if bias is not None:
                    base.bias.data.copy_(bias)
                continue
            base.weight.data.div_(self.weight_scale(name).to(base.weight.dtype))
            if self._scales_bias(name):
                base.bias.data.div_(self._bias_scale(name))

    def _scales_bias(self, adapter_name: str) -> bool:
        return not self.is_feedforward[adapter_name] and getattr(self.base_layer, "bias", None) is not None

    def _bias_scale(self, adapter_name: str) -> torch.Tensor:
        return self._vector(adapter_name).to(self.base_layer.bias.dtype)

    def delete_adapter(self, adapter_name: str) -> None:
        super().delete_adapter(adapter_name)
        self._zero_scale_backup.pop(adapter_name, None)


class IA3Linear(IA3Layer):
    """(IA)³ on ``nn.Linear``, or on GPT-2's ``Conv1D`` (weight stored (in, out): ``fan_in_fan_out``)."""

    def __init__(self, base_layer: nn.Module, adapter_name: str, config: "IA3Config", key: str,
                 fan_in_fan_out: bool = False):
        self.fan_in_fan_out = fan_in_fan_out
        super().__init__(base_layer, adapter_name, config, key)

    @property
    def in_features(self) -> int:
        return self._in_out()[0]

    @property
    def out_features(self) -> int:
        return self._in_out()[1]

    def _in_out(self) -> tuple[int, int]:
        shape = self.base_weight_info()[0]  # the logical shape, also of a quantized base
        return (shape[0], shape[1]) if self.fan_in_fan_out else (shape[1], shape[0])

    def vector_shape(self, feedforward: bool) -> tuple[int, ...]:
        return (1, self.in_features) if feedforward else (self.out_features, 1)

    def broadcast(self, rows: torch.Tensor, ndim: int) -> torch.Tensor:
        return rows.view(rows.shape[0], *[1] * (ndim - 2), rows.shape[1]) if ndim >= 2 else rows.view(-1)

    def weight_scale(self, adapter_name: str) -> torch.Tensor:
        v = self._vector(adapter_name)
        # the weight is (out, in), or (in, out) for Conv1D; the vector scales in- or out-features
        along_rows = self.is_feedforward[adapter_name] == self.fan_in_fan_out
        return v[:, None] if along_rows else v[None, :]


class IA3Conv(IA3Layer):
    """(IA)³ on ``nn.Conv2d`` / ``nn.Conv3d``: one scale per input (feedforward) or output channel."""

    def __init__(self, base_layer: nn.Module, adapter_name: str, config: "IA3Config", key: str):
        self.in_features, self.out_features = base_layer.in_channels, base_layer.out_channels
        super().__init__(base_layer, adapter_name, config, key)

    def vector_shape(self, feedforward: bool) -> tuple[int, ...]:
        spatial = (1,) * (self.base_layer.weight.dim() - 2)
        return (1, self.in_features if feedforward else self.out_features, *spatial)

    def broadcast(self, rows: torch.Tensor, ndim: int) -> torch.Tensor:
        # batched (N, C, ...) input; an unbatched (C, ...) one has a single row
        if ndim == self.base_layer.weight.dim():
            return rows.view(rows.shape[0], rows.shape[1], *[1] * (ndim - 2))
        return rows.view(rows.shape[1], *[1] * (ndim - 1))

    def weight_scale(self, adapter_name: str) -> torch.Tensor:
        v = self._vector(adapter_name)
        conv = self.base_layer
        spatial = [1] * (conv.weight.dim() - 2)
        if not self.is_feedforward[adapter_name]:
            return v.view(-1, 1, *spatial)
        # weight is (out, in / groups, ...): output channel o reads input channels of its group
        groups, per_group_in = conv.groups, conv.in_channels // conv.groups
        per_out = v.view(groups, 1, per_group_in).expand(groups, conv.out_channels // groups, per_group_in)
        return per_out.reshape(conv.out_channels, per_group_in, *spatial)
