"""VeRA (Kopiczko et al., 2024): one pair of frozen random matrices shared by every adapted layer,
and per layer only two trainable scaling vectors:

    y = W x + lambda_b * (B[:out] @ (lambda_d * (A[:, :in] @ x)))

``A`` (r x max_in) and ``B`` (max_out x r) are drawn once per adapter from ``projection_prng_key``
(Kaiming-uniform from a seeded ``torch.Generator``, drawn exactly as ``peft`` draws them), sized
for the largest adapted layer; each layer uses the top-left slice that fits it. They live on the
model (``base_model.vera_A`` / ``base_model.vera_B``, frozen buffers), are saved only with
``save_projection=True`` and are otherwise regenerated from the key when the adapter loads.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import field_validator

from ..config import PeftConfig, TargetedConfig, finite_number, PeftType
from ..layers import AdapterLayer
from ..quantized.layers import quantized_factories
from ..registry import LayerFactory, MethodSpec, register_method
from .lora_layers import adapter_dtype, is_conv1d

if TYPE_CHECKING:
    from ..model import PeftModel

PROJECTION_KEYS = ("base_model.vera_A", "base_model.vera_B")  # checkpoint keys, as peft writes them


class VeraConfig(TargetedConfig):
    """Configuration of a VeRA adapter; fields and defaults as in ``peft.VeraConfig``.

    Example:
        >>> from peftkit import VeraConfig
        >>> cfg = VeraConfig(r=256, target_modules=["q_proj", "v_proj"], projection_prng_key=0)
        >>> cfg.r, cfg.d_initial, cfg.save_projection
        (256, 0.1, True)
    """

    peft_type: ClassVar[str] = PeftType.VERA
    peft_only_keys: ClassVar[dict[str, Any]] = dict(PeftConfig.peft_only_keys)

    r: int = 256
    projection_prng_key: int = 0
    save_projection: bool = True
    vera_dropout: float = 0.0
    d_initial: float = 0.1
    fan_in_fan_out: bool = False
    bias: Literal["none", "all", "vera_only"] = "none"
    init_weights: bool = True

    @field_validator("r", mode="before")
    @classmethod
    def _positive_rank(cls, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError("must be a positive integer (VeRA uses larger ranks than LoRA, e.g. 256)")
        return value

    @field_validator("vera_dropout")
    @classmethod
    def _dropout(cls, value: float) -> float:
        if not 0.0 <= value < 1.0:
            raise ValueError("must be a probability in [0, 1)")
        return value

    @field_validator("d_initial", mode="before")
    @classmethod
    def _d_initial(cls, value: Any) -> float:
        return finite_number(value, "d_initial")

    def to_dict(self) -> dict[str, Any]:
        data = super().to_dict()
        if data.get("exclude_modules") is None:
            del data["exclude_modules"]  # peft's VeraConfig has no such field and warns when it reads one
        return data


def kaiming_uniform(shape: tuple[int, int], generator: torch.Generator) -> torch.Tensor:
    """Kaiming-uniform (gain sqrt(2), fan-in = shape[1]) drawn from ``generator``: the same
    numbers, bit for bit, as ``peft``'s VeRA initialisation for the same generator state."""
    bound = math.sqrt(3.0) * (math.sqrt(2) / math.sqrt(shape[1]))
    return torch.empty(shape).uniform_(-bound, bound, generator=generator)


def make_projections(key: int, r: int, in_features: int, out_features: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The shared ``(vera_A, vera_B)`` for an adapter: A (r x in) first, then B (out x r), from one
    CPU generator seeded with ``key``.

    Example:
        >>> a, b = make_projections(0, 4, 32, 64)
        >>> tuple(a.shape), tuple(b.shape)
        ((4, 32), (64, 4))
    """
    generator = torch.Generator(device="cpu").manual_seed(key)
    vera_A = kaiming_uniform((r, in_features), generator)
    vera_B = kaiming_uniform((out_features, r), generator)
    return vera_A, vera_B


class BufferDict(nn.Module):
    """Frozen tensors keyed by adapter name, registered as buffers (so ``.to()`` moves them and
    nothing trains them)."""

    def __getitem__(self, name: str) -> torch.Tensor:
        return self._buffers[name]

    def __setitem__(self, name: str, tensor: torch.Tensor) -> None:
        self.register_buffer(name, tensor)

    def __delitem__(self, name: str) -> None:
        del self._buffers[name]

    def __contains__(self, name: object) -> bool:
        return name in self._buffers

    def __len__(self) -> int:
        return len(self._buffers)


class VeraLinear(AdapterLayer):
    """VeRA on ``nn.Linear``, or on GPT-2's ``Conv1D`` with ``fan_in_fan_out=True``. The shared
    projections are handed over by the model (:func:`_on_add`) and read at each call, so moving
    the model moves them too."""

    adapter_param_names = ("vera_lambda_b", "vera_lambda_d")
    adapter_setting_names = ("r", "vera_dropout", "projections")

    def __init__(self, base_layer: nn.Module, adapter_name: str, config: VeraConfig, key: str, fan_in_fan_out: bool = False):
        super().__init__(base_layer, key)
        self.fan_in_fan_out = fan_in_fan_out
        self.vera_lambda_b = nn.ParameterDict()
        self.vera_lambda_d = nn.ParameterDict()
        self.vera_dropout = nn.ModuleDict()
        self.r: dict[str, int] = {}
        # adapter name -> (vera_A, vera_B) BufferDicts owned by the model; a plain dict, so the
        # shared tensors are not registered (and saved) once per layer
        self.projections: dict[str, tuple[BufferDict, BufferDict]] = {}
        self.add_adapter(adapter_name, config, key)

    @property
    def in_out(self) -> tuple[int, int]:
        shape = self.base_weight_info()[0]
        return (shape[0], shape[1]) if self.fan_in_fan_out else (shape[1], shape[0])

    def add_adapter(self, adapter_name: str, config: VeraConfig, key: str) -> None:
        _, base_dtype, device = self.base_weight_info()
        out_features = self.in_out[1]
        self.r[adapter_name] = config.r
        self.vera_dropout[adapter_name] = nn.Dropout(config.vera_dropout) if config.vera_dropout > 0 else nn.Identity()
        if config.init_weights:  # lambda_b = 0: the adapter starts as the identity
            lambda_b, lambda_d = torch.zeros(out_features), torch.full((config.r,), config.d_initial)
        else:  # non-trivial values from the start (tests, as peft's init_weights=False)
            lambda_b, lambda_d = torch.ones(out_features), torch.randn(config.r)
        kind = dict(device=device, dtype=adapter_dtype(base_dtype))
        self.vera_lambda_b[adapter_name] = nn.Parameter(lambda_b.to(**kind))
        self.vera_lambda_d[adapter_name] = nn.Parameter(lambda_d.to(**kind))

    def sliced_projections(self, adapter_name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """This layer's slices of the shared ``vera_A`` (r x in) and ``vera_B`` (out x r)."""
        vera_A, vera_B = self.projections[adapter_name]
        in_features, out_features = self.in_out
        return vera_A[adapter_name][:, :in_features], vera_B[adapter_name][:out_features, :]

    def delta(self, adapter_name: str, x: torch.Tensor) -> torch.Tensor:
        lambda_b, lambda_d = self.vera_lambda_b[adapter_name], self.vera_lambda_d[adapter_name]
        # the shared projections stay float32 while the lambdas may follow a half-precision base
        # (autocast_adapter_dtype=False): compute in the lambdas' dtype, as peft does
        vera_A, vera_B = (p.to(lambda_d.dtype) for p in self.sliced_projections(adapter_name))
        x = self.vera_dropout[adapter_name](x.to(lambda_d.dtype))
        return lambda_b * F.linear(lambda_d * F.linear(x, vera_A), vera_B)

    def delta_weight(self, adapter_name: str) -> torch.Tensor:
        lambda_b, lambda_d = self.vera_lambda_b[adapter_name], self.vera_lambda_d[adapter_name]
        vera_A, vera_B = (p.to(lambda_d.dtype) for p in self.sliced_projections(adapter_name))
        delta = (lambda_b[:, None] * vera_B) @ (lambda_d[:, None] * vera_A)
        return delta.T if self.fan_in_fan_out else delta


# ---------------------------------------------------------------------------------- model-level state
def _layers_of(peft_model: "PeftModel", adapter_name: str) -> list[VeraLinear]:
    return [m for m in peft_model._adapter_layers() if isinstance(m, VeraLinear) and adapter_name in m.adapter_names]


def _on_add(peft_model: "PeftModel", adapter_name: str, config: VeraConfig) -> None:
    """Draw the adapter's shared projections, sized for its largest layer, and hand them to its layers."""
    holder = peft_model.base_model
    layers = _layers_of(peft_model, adapter_name)
    in_max = max(layer.in_out[0] for layer in layers)
    out_max = max(layer.in_out[1] for layer in layers)
    vera_A, vera_B = make_projections(config.projection_prng_key, config.r, in_max, out_max)
    _, base_dtype, device = layers[0].base_weight_info()
    kind = dict(device=device, dtype=adapter_dtype(base_dtype))
    for attr in ("vera_A", "vera_B"):
        if attr not in holder._modules:
            holder.add_module(attr, BufferDict())
    holder.vera_A[adapter_name] = vera_A.to(**kind)
    holder.vera_B[adapter_name] = vera_B.to(**kind)
    for layer in layers:
        layer.projections[adapter_name] = (holder.vera_A, holder.vera_B)


def _on_delete(peft_model: "PeftModel", adapter_name: str) -> None:
    for attr in ("vera_A", "vera_B"):
        shared = peft_model.base_model._modules.get(attr)
        if shared is not None and adapter_name in shared:
            del shared[adapter_name]


def _model_tensors(peft_model: "PeftModel", adapter_name: str) -> dict[str, torch.Tensor]:
    if not peft_model.peft_config[adapter_name].save_projection:
        return {}  # regenerated from projection_prng_key on load
    holder = peft_model.base_model
    return dict(zip(PROJECTION_KEYS, (holder.vera_A[adapter_name], holder.vera_B[adapter_name])))


def _linear_factory(module: nn.Module, name: str, config: VeraConfig, key: str, cls: type = VeraLinear) -> VeraLinear:
    # as for LoRA: the layer decides fan_in_fan_out and the model's copy of the config records it
    fan_in_fan_out = is_conv1d(module)
    if config.fan_in_fan_out != fan_in_fan_out:
        config.fan_in_fan_out = fan_in_fan_out
    return cls(module, name, config, key, fan_in_fan_out=fan_in_fan_out)


VERA = register_method(
    MethodSpec(
        peft_type="VERA",
        config_cls=VeraConfig,
        layer_cls=VeraLinear,
        layer_factories=[
            *quantized_factories(VeraLinear, _linear_factory),
            LayerFactory("nn.Linear", lambda m: isinstance(m, nn.Linear), _linear_factory),
            LayerFactory("transformers Conv1D", is_conv1d, _linear_factory),
        ],
        on_add=_on_add,
        on_delete=_on_delete,
        model_tensors=_model_tensors,
        uses_shared_state=True,
    )
)
