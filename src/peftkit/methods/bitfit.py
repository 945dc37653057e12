"""BitFit (Ben Zaken et al., 2022): fine-tune the bias terms only, as an adapter.

Each adapter holds one learned bias *delta* per targeted module, ``bitfit_bias[name]`` (one value
per output feature), added to the module's output along its feature dimension. The base biases
stay frozen, so BitFit adapters behave like every other adapter: several side by side, switched,
disabled, mixed in one batch, saved small (only the deltas) and merged (delta added to the bias).

* Default targets: every module that owns a bias and that BitFit can adapt (``nn.Linear``, GPT-2's
  ``Conv1D``, ``nn.LayerNorm``, ``nn.Conv1d/2d/3d``, batch/group/instance norms). Llama-style
  models have no biases: name modules (e.g. ``target_modules="all-linear"``) to learn new ones.
* A targeted module without a bias learns a new one. Merging then creates the bias parameter on
  the base module (zeros + delta, frozen) and unmerging removes it again, so the base module is
  restored exactly; ``merge_and_unload()`` leaves the created biases in the returned model.
* Checkpoint: ``base_model.model.<module path>.bitfit_bias``, shape ``(out_features,)``; see
  ``docs/formats.md``.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn as nn

from ..config import TargetedConfig, PeftType
from ..errors import AdapterError, TargetError
from ..layers import BASE_ADAPTER, AdapterLayer, warn_if_merged_already
from ..row_batches import group_rows, merged_batch_error
from ..registry import LayerFactory, MethodSpec, register_method
from ..targets import compact_names, iter_plain_modules
from .lora_layers import adapter_dtype, is_conv1d

# Modules whose features lie on dim 1 (N, C, ...): convolutions and per-channel norms.
_CHANNEL_FIRST = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d,
                  nn.GroupNorm, nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)


class BitFitConfig(TargetedConfig):
    """Configuration of a BitFit adapter: which modules get a learned bias delta.

    ``target_modules`` left unset means every module that has a bias; otherwise the usual
    peft-style names, a regex, or ``"all-linear"`` (which on bias-free models learns new biases).

    Example:
        >>> from peftkit import BitFitConfig
        >>> BitFitConfig(target_modules=["c_attn", "c_fc"]).peft_type
        'BITFIT'
    """

    peft_type: ClassVar[str] = PeftType.BITFIT

    def default_target_modules(self, model: nn.Module) -> list[str]:
        """Names of the modules with a bias that BitFit can adapt (called when target_modules is unset)."""
        keys = [key for key, m in iter_plain_modules(model) if _has_adaptable_bias(m)]
        if not keys:
            raise TargetError(
                f"BitFit found no module with a bias in {type(model).__name__} (Llama-style models have none). "
                "Set target_modules to learn new biases, e.g. target_modules='all-linear' or ['q_proj', 'v_proj']"
            )
        return compact_names(model, keys)


def _num_features(module: nn.Module) -> int:
    if isinstance(module, nn.Linear):
        return module.out_features
    if is_conv1d(module):
        return module.nf
    if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        return module.out_channels
    if isinstance(module, nn.LayerNorm):
        return module.normalized_shape[-1]
    return module.num_features if hasattr(module, "num_features") else module.num_channels


class BitFitLayer(AdapterLayer):
    """Adds ``bitfit_bias[name]`` to the wrapped module's output along its feature dimension."""

    adapter_param_names = ("bitfit_bias",)

    def __init__(self, base_layer: nn.Module, adapter_name: str, config: BitFitConfig, key: str):
        super().__init__(base_layer, key)
        self.feature_dim = 1 if isinstance(base_layer, _CHANNEL_FIRST) else -1
        self.num_features = _num_features(base_layer)
        self.bitfit_bias = nn.ParameterDict()
        self.created_bias = False  # merging made a bias the base module did not have
        self.add_adapter(adapter_name, config, key)

    def add_adapter(self, adapter_name: str, config: BitFitConfig, key: str) -> None:
        ref = self._base_bias() if self._base_bias() is not None else getattr(self.base_layer, "weight", None)
        dtype = adapter_dtype(ref) if isinstance(ref, torch.Tensor) else torch.float32
        device = ref.device if isinstance(ref, torch.Tensor) else None
        self.bitfit_bias[adapter_name] = nn.Parameter(torch.zeros(self.num_features, dtype=dtype, device=device))

    def _base_bias(self) -> torch.Tensor | None:
        bias = getattr(self.base_layer, "bias", None)
        return bias if isinstance(bias, torch.Tensor) else None

    def delta(self, adapter_name: str, x: torch.Tensor) -> torch.Tensor:
        """The bias delta, shaped to broadcast over the output (which has as many dims as ``x``)."""
        bias = self.bitfit_bias[adapter_name]
        return bias if self.feature_dim == -1 else bias.reshape(self.num_features, *([1] * (x.dim() - 2)))

    def _forward_mixed(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        if self.merged_adapters:
            raise merged_batch_error()
        result = self.base_layer(x, *args, **kwargs)
        per_row = None
        for name, rows in group_rows(self.row_adapters, result.shape[0], result.device).items():
            if name == BASE_ADAPTER or name not in self.adapter_names:
                continue
            bias = self.bitfit_bias[name]
            if per_row is None:
                per_row = bias.new_zeros(result.shape[0], self.num_features)
            per_row = per_row.index_copy(0, rows, bias.expand(len(rows), -1))
        if per_row is None:
            return result
        if self.feature_dim == -1:
            per_row = per_row.reshape(result.shape[0], *([1] * (result.dim() - 2)), self.num_features)
        else:
            per_row = per_row.reshape(result.shape[0], self.num_features, *([1] * (result.dim() - 2)))
        return result + per_row.to(result.dtype)

    # ------------------------------------------------------------------ merging into the base bias
    def merge_is_finite(self, adapter_name: str) -> bool:
        delta = self.bitfit_bias[adapter_name].detach()
        bias = self._base_bias()
        return bool(torch.isfinite(delta if bias is None else bias.detach() + delta.to(bias.dtype)).all())

    def delta_weight(self, adapter_name: str) -> torch.Tensor:
        """BitFit never changes ``weight``; what it merges is ``bitfit_bias`` into the bias."""
        return torch.zeros_like(self.base_layer.weight)

    def merge(self, adapter_names: list[str] | None = None, safe_merge: bool = False) -> None:
        names = self.computing_adapters if adapter_names is None else adapter_names
        warn_if_merged_already(self, names)
        for name in names:
            if name not in self.adapter_names or name in self.merged_adapters:
                continue
            if safe_merge and not self.merge_is_finite(name):
                raise AdapterError(f"merging adapter {name!r} into {self.key!r} gives a NaN/inf bias; it was left as it was")
            bias = self._base_bias()
            if bias is None:  # a bias-free module gets a (frozen) one; unmerge() removes it again
                delta = self.bitfit_bias[name]
                self.base_layer.bias = nn.Parameter(delta.new_zeros(self.num_features), requires_grad=False)
                self.created_bias = True
                bias = self.base_layer.bias
            with torch.no_grad():
                bias += self.bitfit_bias[name].to(bias.dtype)
            self.merged_adapters.append(name)

    def unmerge(self) -> None:
        bias = self._base_bias()
        with torch.no_grad():
            while self.merged_adapters:
                bias -= self.bitfit_bias[self.merged_adapters.pop()].to(bias.dtype)
        if self.created_bias:
            self.base_layer.bias = None
            self.created_bias = False


def _has_adaptable_bias(module: nn.Module) -> bool:
    if isinstance(module, BitFitLayer):  # adapted by an earlier adapter: look at the original
        module = module.base_layer
    return isinstance(module._parameters.get("bias"), nn.Parameter) and any(f.matches(module) for f in _FACTORIES)


def _layer_norm_1d(module: nn.Module) -> bool:
    return isinstance(module, nn.LayerNorm) and len(module.normalized_shape) == 1


def _channel_norm(module: nn.Module) -> bool:
    return isinstance(module, _CHANNEL_FIRST[3:]) and getattr(module, "affine", True) is not False


_FACTORIES = [
    LayerFactory("nn.Linear", lambda m: isinstance(m, nn.Linear), BitFitLayer),
    LayerFactory("transformers Conv1D", is_conv1d, BitFitLayer),
    LayerFactory("nn.LayerNorm over the last dimension", _layer_norm_1d, BitFitLayer),
    LayerFactory("nn.Conv1d/Conv2d/Conv3d", lambda m: isinstance(m, _CHANNEL_FIRST[:3]), BitFitLayer),
    LayerFactory("nn.BatchNorm/GroupNorm/InstanceNorm", _channel_norm, BitFitLayer),
]


BITFIT = register_method(MethodSpec(peft_type="BITFIT", config_cls=BitFitConfig, layer_cls=BitFitLayer,
                                    layer_factories=_FACTORIES))
