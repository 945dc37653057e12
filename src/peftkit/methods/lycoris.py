"""What LoHa and LoKr (the LyCORIS family) share: config fields, rank and module dropout, and the
layer skeleton for ``nn.Linear`` and ``nn.Conv1d/Conv2d``.

Both methods add a weight change ``delta_W`` built from small factors (a Hadamard product for LoHa,
a Kronecker product for LoKr) scaled by ``alpha / r``. A layer computes ``delta_W x`` without
materialising ``delta_W`` where the factors allow it (linear layers); convolutions build the
kernel change and convolve with it. Names, shapes and initialisations follow ``peft``'s
``lycoris_utils``, ``loha`` and ``lokr`` tuners, so checkpoints move both ways.
"""

from __future__ import annotations

import abc
from typing import Any, Union

import torch
import torch.nn as nn
from pydantic import field_validator

from ..config import TargetedConfig, finite_number, mapping_values
from ..layers import AdapterLayer
from ..quantized.layers import quantized_factories
from ..registry import LayerFactory
from ..targets import pattern_value
from .lora_layers import adapter_dtype


def _positive_int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"must be a positive integer ({what})")
    return value


class LycorisConfig(TargetedConfig):
    """Fields LoHa and LoKr share, with ``peft``'s names and defaults (``r=8, alpha=8``).

    Example:
        >>> from peftkit import LoHaConfig
        >>> LoHaConfig(r=4, alpha=8, target_modules=["q_proj"]).rank_dropout
        0.0
    """

    r: int = 8
    alpha: Union[int, float] = 8
    rank_dropout: float = 0.0
    module_dropout: float = 0.0
    use_effective_conv2d: bool = False
    init_weights: bool = True
    rank_pattern: dict[str, int] = {}
    alpha_pattern: dict[str, Union[int, float]] = {}

    @field_validator("r", mode="before")
    @classmethod
    def _rank(cls, value: Any) -> int:
        return _positive_int(value, "the adapter rank, e.g. 8")

    @field_validator("alpha", mode="before")
    @classmethod
    def _alpha(cls, value: Any) -> Any:
        return finite_number(value, "alpha")

    @field_validator("rank_dropout", "module_dropout")
    @classmethod
    def _probability(cls, value: float) -> float:
        if not 0.0 <= value < 1.0:
            raise ValueError("must be a probability in [0, 1)")
        return value

    @field_validator("rank_pattern", mode="before")
    @classmethod
    def _ranks(cls, value: Any) -> Any:
        for rank in mapping_values(value):
            _positive_int(rank, "every rank in rank_pattern")
        return {} if value is None else value

    @field_validator("alpha_pattern", mode="before")
    @classmethod
    def _alphas(cls, value: Any) -> Any:
        for alpha in mapping_values(value):
            finite_number(alpha, "alpha_pattern")
        return {} if value is None else value


def rebuild_cp(core: torch.Tensor, out_factor: torch.Tensor, in_factor: torch.Tensor) -> torch.Tensor:
    """A kernel from its Tucker/CP factors (FedPara's "Proposition 3"): ``core`` (r, r, k1, k2),
    ``out_factor`` (r, out), ``in_factor`` (r, in) -> (out, in, k1, k2)."""
    return torch.einsum("abkl,ap,bq->pqkl", core, out_factor, in_factor)


def uses_effective_conv(base: nn.Module, config: LycorisConfig) -> bool:
    """``use_effective_conv2d`` applies to convolutions whose kernel is larger than 1 (a 1x1
    kernel is a matrix product: the flat factors are cheaper, as in peft)."""
    is_conv = isinstance(base, (nn.Conv1d, nn.Conv2d))
    return config.use_effective_conv2d and is_conv and any(k != 1 for k in base.kernel_size)


class LycorisLayer(AdapterLayer):
    """Skeleton of a LoHa/LoKr layer: per-adapter rank, alpha, scaling and dropouts; module
    dropout (the whole adapter skipped for a training step) and rank dropout (output rows of
    ``delta_W`` zeroed) as in peft. Subclasses say how to create the factors, how to build
    ``delta_W`` and how to apply it to a linear layer's input cheaply."""

    adapter_setting_names = ("r", "alpha", "scaling", "rank_dropout", "rank_dropout_scale", "module_dropout")

    def __init__(self, base_layer: nn.Module, adapter_name: str, config: LycorisConfig, key: str):
        super().__init__(base_layer, key)
        for attr in self.adapter_param_names:
            setattr(self, attr, nn.ParameterDict())
        for attr in self.adapter_setting_names:
            setattr(self, attr, {})
        self.add_adapter(adapter_name, config, key)

    @property
    def adapter_names(self) -> list[str]:
        # which factors exist depends on the layer's shape (LoKr: lokr_w1 or lokr_w1_a/b)
        names = [n for attr in self.adapter_param_names for n in getattr(self, attr).keys()]
        return list(dict.fromkeys(names))

    @property
    def is_linear(self) -> bool:
        return isinstance(self.get_base_layer(), nn.Linear)  # the module itself, also under stacked layers

    def add_adapter(self, adapter_name: str, config: LycorisConfig, key: str) -> None:
        r = pattern_value(config.rank_pattern, key, config.r)
        alpha = pattern_value(config.alpha_pattern, key, config.alpha)
        self.r[adapter_name], self.alpha[adapter_name] = r, alpha
        self.scaling[adapter_name] = alpha / r
        self.rank_dropout[adapter_name] = config.rank_dropout
        self.rank_dropout_scale[adapter_name] = self.rescales_rank_dropout(config)
        self.module_dropout[adapter_name] = config.module_dropout
        _, base_dtype, device = self.base_weight_info()
        with torch.no_grad():
            tensors = self.create_tensors(adapter_name, r, config)
        for attr, tensor in tensors.items():
            getattr(self, attr)[adapter_name] = nn.Parameter(tensor.to(device=device, dtype=adapter_dtype(base_dtype)))

    # ------------------------------------------------------------------ subclasses implement these
    @abc.abstractmethod
    def create_tensors(self, adapter_name: str, r: int, config: LycorisConfig) -> dict[str, torch.Tensor]:
        """The adapter's initialised factors by attribute name (e.g. ``{"hada_w1_a": ...}``)."""

    @abc.abstractmethod
    def linear_delta(self, adapter_name: str, x: torch.Tensor) -> torch.Tensor:
        """``x @ delta_W.T`` for a linear base layer (scaling included), ideally without building ``delta_W``."""

    @abc.abstractmethod
    def rescales_rank_dropout(self, config: LycorisConfig) -> bool:
        """Whether rank dropout divides the kept rows by the fraction kept (LoHa always; LoKr if asked)."""

    # ------------------------------------------------------------------ shared behaviour
    def _rank_mask(self, adapter_name: str, rows: int, like: torch.Tensor) -> torch.Tensor | None:
        """During training with rank dropout: a 0/1 mask over the output rows of ``delta_W``."""
        p = self.rank_dropout[adapter_name]
        if not (self.training and p > 0):
            return None
        keep = (torch.rand(rows, device=like.device) > p).to(like.dtype)
        if self.rank_dropout_scale[adapter_name]:
            keep = keep / keep.mean().clamp_min(1.0 / rows)  # all rows dropped: zeros, never NaN
        return keep

    def delta(self, adapter_name: str, x: torch.Tensor) -> torch.Tensor:
        dtype = next(p for _, p in self.adapter_parameters(adapter_name)).dtype
        x = x.to(dtype)
        if self.is_linear:
            out = self.linear_delta(adapter_name, x)
            mask = self._rank_mask(adapter_name, out.shape[-1], out)
            return out if mask is None else out * mask
        weight = self.delta_weight(adapter_name)
        mask = self._rank_mask(adapter_name, weight.shape[0], weight)
        if mask is not None:
            weight = weight * mask.view(-1, *[1] * (weight.dim() - 1))
        return self.base_layer._conv_forward(x, weight, None)  # the base's stride, padding, dilation, groups

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        dropping = self.training and any(self.module_dropout.get(n, 0.0) > 0 for n in self.computing_adapters)
        # (mixed batches, a serving feature, never skip an adapter: module dropout needs one adapter per step)
        if not dropping or self.disabled or self.row_adapters is not None or self.merged_adapters:
            return super().forward(x, *args, **kwargs)
        # module dropout: each adapter sits out a training step with probability module_dropout
        result = self.base_layer(x, *args, **kwargs)
        for name in self.computing_adapters:
            if torch.rand(()).item() > self.module_dropout[name]:
                result = result + self.delta(name, x).to(result.dtype)
        return result

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, r={self.r}"


def lycoris_factories(layer_cls: type[LycorisLayer]) -> list[LayerFactory]:
    """The layer types LoHa and LoKr adapt, as in peft: ``nn.Linear``, ``nn.Conv1d``, ``nn.Conv2d``."""
    return [
        *quantized_factories(layer_cls),
        LayerFactory("nn.Linear", lambda m: isinstance(m, nn.Linear), layer_cls),
        LayerFactory("nn.Conv1d/Conv2d", lambda m: isinstance(m, (nn.Conv1d, nn.Conv2d)), layer_cls),
    ]
