"""The bottleneck adapter layer: wraps a whole block (an attention or feed-forward module) and
changes its output ``h`` by ``scaling * up(act(down(z)))``, where ``z`` is ``h`` itself for a
sequential adapter (Houlsby, Pfeiffer) or the block's input for a parallel one (He et al.).

``bottleneck_up`` starts at zero, so a new adapter leaves the block's output unchanged. A block
that returns a tuple (attention returns ``(hidden, weights, ...)``) has only its first element
adapted. Adapters are nonlinear in their input, so they cannot be merged into base weights.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import AdapterError
from ..layers import BASE_ADAPTER, AdapterLayer
from ..row_batches import group_rows
from .lora_layers import adapter_dtype

if TYPE_CHECKING:
    from .bottleneck import BottleneckConfig

ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "relu": F.relu,
    "gelu": F.gelu,
    "gelu_tanh": lambda t: F.gelu(t, approximate="tanh"),
    "silu": F.silu,
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
    "leaky_relu": F.leaky_relu,
    "identity": lambda t: t,
}


def block_input(args: tuple, kwargs: dict) -> torch.Tensor:
    """The hidden states a block was called with: the first positional tensor, else
    ``hidden_states=`` (Llama's attention is called with keywords only), else the first tensor keyword."""
    for value in (*args, kwargs.get("hidden_states"), *kwargs.values()):
        if isinstance(value, torch.Tensor):
            return value
    raise AdapterError("a parallel bottleneck adapter needs the block's input, but the block was called without a tensor")


class BottleneckLayer(AdapterLayer):
    """Bottleneck adapters around one block. ``in_features`` is what a parallel adapter reads
    (the block's input), ``out_features`` the width of the block's output."""

    adapter_param_names = ("bottleneck_down", "bottleneck_up")
    adapter_setting_names = ("bottleneck_parallel", "bottleneck_scaling", "bottleneck_act")
    mergeable = False

    def __init__(self, base_layer: nn.Module, key: str, in_features: int, out_features: int):
        super().__init__(base_layer, key)
        self.in_features, self.out_features = in_features, out_features
        self.bottleneck_down = nn.ModuleDict()
        self.bottleneck_up = nn.ModuleDict()
        self.bottleneck_parallel: dict[str, bool] = {}
        self.bottleneck_scaling: dict[str, float] = {}
        self.bottleneck_act: dict[str, str] = {}

    def add_adapter(self, adapter_name: str, config: "BottleneckConfig", key: str, parallel: bool = False) -> None:
        size = config.size_for(self.out_features)
        ref = next(self.base_layer.parameters(), None)
        dtype = adapter_dtype(ref) if ref is not None else torch.float32
        down = nn.Linear(self.in_features if parallel else self.out_features, size)
        up = nn.Linear(size, self.out_features)
        if config.init_weights:
            nn.init.zeros_(up.weight)  # identity at start: the adapter adds nothing until trained
            nn.init.zeros_(up.bias)
        self.bottleneck_down[adapter_name] = down.to(device=ref.device if ref is not None else None, dtype=dtype)
        self.bottleneck_up[adapter_name] = up.to(device=ref.device if ref is not None else None, dtype=dtype)
        self.bottleneck_parallel[adapter_name] = parallel
        self.bottleneck_scaling[adapter_name] = config.scaling
        self.bottleneck_act[adapter_name] = config.non_linearity

    def delta(self, adapter_name: str, x: torch.Tensor) -> torch.Tensor:
        """``scaling * up(act(down(x)))``: what the adapter adds, from its input ``x``."""
        down, up = self.bottleneck_down[adapter_name], self.bottleneck_up[adapter_name]
        if x.shape[-1] != down.in_features:
            where = "input" if self.bottleneck_parallel[adapter_name] else "output"
            raise AdapterError(
                f"bottleneck adapter {adapter_name!r} at {self.key!r} expects the block's {where} to have "
                f"{down.in_features} features, got {x.shape[-1]}: the block's width was guessed wrong; target a "
                "module whose output is the model's hidden states"
            )
        hidden = ACTIVATIONS[self.bottleneck_act[adapter_name]](down(x.to(down.weight.dtype)))
        return up(hidden) * self.bottleneck_scaling[adapter_name]

    def _adapt(self, names: list[str], h: torch.Tensor, x: torch.Tensor | None) -> torch.Tensor:
        """Parallel adapters read the block input; sequential ones chain on the output, in order."""
        for name in names:
            source = x if self.bottleneck_parallel[name] else h
            h = h + self.delta(name, source).to(h.dtype)
        return h

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        out = self.base_layer(*args, **kwargs)
        if self.disabled:
            return out
        if self.row_adapters is None and not self.computing_adapters:
            return out
        h = out[0] if isinstance(out, (tuple, list)) else out
        if not isinstance(h, torch.Tensor):
            raise AdapterError(
                f"bottleneck adapters need {self.key!r} to return a tensor or a tuple starting with one, "
                f"got {type(out).__name__}; target the block's attention or feed-forward module instead"
            )
        uses_input = any(self.bottleneck_parallel[n] for n in self.adapter_names)
        x = block_input(args, kwargs) if uses_input else None
        if self.row_adapters is None:
            h = self._adapt(self.computing_adapters, h, x)
        else:
            h = self._adapt_rows(h, x)
        if isinstance(out, (tuple, list)):
            return type(out)((h, *out[1:]))
        return h

    def _adapt_rows(self, h: torch.Tensor, x: torch.Tensor | None) -> torch.Tensor:
        for name, rows in group_rows(self.row_adapters, h.shape[0], h.device).items():
            if name == BASE_ADAPTER or name not in self.adapter_names:
                continue
            part = self._adapt([name], h.index_select(0, rows), None if x is None else x.index_select(0, rows))
            h = h.index_copy(0, rows, part)
        return h

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, " + super().extra_repr()
