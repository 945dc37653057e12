"""LoRA on ``nn.Parameter``s (``LoraConfig.target_parameters``; ``peft``'s ``ParamWrapper``).

Some layers are no ``nn.Linear``: the experts of a mixture-of-experts block keep every expert's
weights in one 3-D parameter (transformers' ``MixtralExperts``: ``gate_up_proj`` is
``(experts, 2 * intermediate, hidden)``, ``down_proj`` ``(experts, hidden, intermediate)``). LoRA on
such a parameter adds a low-rank update to *each expert's* matrix, and the module's own forward
runs on ``W + delta``: while it runs, the module's attribute reads the adapted tensor (an entry in
the instance ``__dict__`` shadows the registered parameter, which stays untouched), so any forward
(loops over experts, grouped matmul kernels) works unchanged and gradients reach A and B.

Layout (``peft``'s, so files move both ways). For a parameter with ``E`` experts (``E = 1`` for a
2-D ``(out, in)`` weight), ``lora_A`` is ``nn.Linear(in, r * E)`` and ``lora_B`` ``nn.Linear(r * E,
out)``; expert ``e`` uses ``A.reshape(E, r, in)[e]`` and ``B.reshape(out, r, E)[:, :, e]``. A 3-D
parameter is ``(E, out, in)`` unless its module says ``is_transposed = True`` (GPT-OSS), then
``(E, in, out)``. Several parameters of one module nest: the wrapper of the parameter met last
holds the one before as ``base_layer``, so its tensors are saved under ``<module>.base_layer.lora_A``
(the parameter order of the module decides, as in ``peft``); a further adapter joins the wrapper of
its parameter.

Like ``peft``: no dropout, DoRA, ``lora_bias`` or ``fan_in_fan_out`` (the update is a weight, the
input is never seen), and no mixed batches of different adapters.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.nn as nn

from ..errors import AdapterError, TargetError
from ..layers import AdapterLayer
from ..targets import iter_plain_modules
from ..tree import get_module, set_module
from .lora_layers import LoraLayer
from .lora_weight_patch import WeightMergeMixin, shadowed

if TYPE_CHECKING:
    from .lora import LoraConfig


class LoraParameter(WeightMergeMixin, LoraLayer):
    """LoRA on one parameter (``parameter_name``) of ``base_layer``'s innermost module.

    Example:
        >>> cfg = LoraConfig(target_parameters=["mlp.experts.gate_up_proj", "mlp.experts.down_proj"])  # doctest: +SKIP
    """

    supports_lora_bias = False
    factor_layout_refusal = "LoRA on a parameter interleaves the experts along the rank axis"
    peft_kind = "ParamWrapper"  # what status reports call it (peft's class name)

    def __init__(self, base_layer: nn.Module, adapter_name: str, config: "LoraConfig", key: str, parameter_name: str):
        self.parameter_name = parameter_name  # read by add_adapter (through the layout)
        super().__init__(base_layer, adapter_name, config, key)

    def nests_by_path(self, outer: nn.Module) -> bool:
        return isinstance(outer, LoraParameter)  # peft's ParamWrapper nesting: keys carry base_layer.

    # ------------------------------------------------------------------ the targeted parameter
    def holder(self) -> nn.Module:
        """The module that registers the parameter (below any wrappers of its other parameters)."""
        module = self.base_layer
        while isinstance(module, LoraParameter):
            module = module.base_layer
        return module

    def base_weight(self) -> torch.Tensor:
        return self.holder()._parameters[self.parameter_name]

    def base_weight_info(self) -> tuple[torch.Size, torch.dtype, torch.device]:
        p = self.base_weight()
        return p.shape, p.dtype, p.device

    def layout(self) -> tuple[int, int, int, bool]:
        """``(experts, in_features, out_features, transposed)`` of the parameter (see the module doc)."""
        shape = self.base_weight_info()[0]
        if len(shape) == 2:
            return 1, shape[1], shape[0], False
        if len(shape) == 3:
            transposed = bool(getattr(self.holder(), "is_transposed", False))
            return (shape[0], shape[1], shape[2], True) if transposed else (shape[0], shape[2], shape[1], False)
        raise TargetError(
            f"target_parameters: {self.key}.{self.parameter_name} has shape {tuple(shape)}; LoRA on parameters takes "
            "2-D (out, in) weights and 3-D (experts, out, in) expert stacks only"
        )

    # peft's ParamWrapper attributes
    @property
    def num_experts(self) -> int:
        return self.layout()[0]

    @property
    def in_features(self) -> int:
        return self.layout()[1]

    @property
    def out_features(self) -> int:
        return self.layout()[2]

    # ------------------------------------------------------------------ tensors
    def add_adapter(self, adapter_name: str, config: "LoraConfig", key: str) -> None:
        for field, value, allowed in (("lora_dropout", config.lora_dropout, 0.0), ("use_dora", config.use_dora, False),
                                      ("fan_in_fan_out", config.fan_in_fan_out, False)):
            if value != allowed:
                raise TargetError(
                    f"{field}={value!r} does not apply to LoRA on parameters ({key}.{self.parameter_name}): the update "
                    f"is added to the weight, the input is never seen (as in peft); set {field}={allowed!r}"
                )
        # rank_pattern / alpha_pattern keys match the parameter's full name ("experts.gate_up_proj"), as in peft
        super().add_adapter(adapter_name, config, f"{key}.{self.parameter_name}")

    def create_tensors(self, adapter_name: str, r: int) -> None:
        experts, in_features, out_features, _ = self.layout()
        self.lora_A[adapter_name] = nn.Linear(in_features, r * experts, bias=False)
        self.lora_B[adapter_name] = nn.Linear(r * experts, out_features, bias=False)

    def expert_factors(self, adapter_name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, A)`` per expert: ``(E, out, r)`` and ``(E, r, in)``; expert e's update is ``s * B[e] @ A[e]``."""
        experts, in_features, out_features, _ = self.layout()
        a = self.lora_A[adapter_name].weight.reshape(experts, -1, in_features)
        b = self.lora_B[adapter_name].weight.reshape(out_features, -1, experts).permute(2, 0, 1)
        return b, a

    def lowrank_weight(self, adapter_name: str) -> torch.Tensor:
        b, a = self.expert_factors(adapter_name)
        delta = torch.bmm(b, a) * self.scaling[adapter_name]  # (E, out, in)
        *_, transposed = self.layout()
        if len(self.base_weight_info()[0]) == 2:
            return delta[0]
        return delta.transpose(1, 2) if transposed else delta

    def adapted_weight(self, names: list[str]) -> torch.Tensor:
        """The parameter plus the updates of ``names``, in its dtype, differentiable in A and B."""
        weight = self.base_weight()
        *_, transposed = self.layout()
        for name in names:
            b, a = (t.to(weight.dtype) for t in self.expert_factors(name))
            s = self.scaling[name]
            if weight.dim() == 2:
                weight = torch.addmm(weight, b[0], a[0], alpha=s)
            elif transposed:  # (E, in, out) += A^T B^T
                weight = torch.baddbmm(weight, a.transpose(1, 2), b.transpose(1, 2), alpha=s)
            else:
                weight = torch.baddbmm(weight, b, a, alpha=s)
        return weight

    # ------------------------------------------------------------------ forward
    def delta(self, adapter_name: str, x: torch.Tensor, base_out: torch.Tensor | None = None) -> torch.Tensor:
        raise AdapterError(f"LoRA on {self.key}.{self.parameter_name} changes a weight; it has no additive output")

    def forward(self, *args: Any, **kwargs: Any) -> Any:  # any signature: the module's own forward runs
        names = self.adapters_to_apply(f"LoRA on parameters ({self.key}.{self.parameter_name})")
        if not names:
            return self.base_layer(*args, **kwargs)
        with shadowed(self.holder(), self.parameter_name, self.adapted_weight(names)):
            return self.base_layer(*args, **kwargs)

    def extra_repr(self) -> str:
        return (f"parameter_name={self.parameter_name!r}, num_experts={self.num_experts}, in_features={self.in_features}, "
                f"out_features={self.out_features}, {super().extra_repr()}")


# ---------------------------------------------------------------------------------- injection
def parameter_targets(config: "LoraConfig") -> list[str]:
    """The parameter names ``config`` asks for (``target_parameters``)."""
    return list(getattr(config, "target_parameters", None) or [])


def _matches(key: str, wanted: list[str]) -> bool:
    # peft's rule: the full name, or a tail of it after a dot
    return key in wanted or any(key.endswith(f".{name}") for name in wanted)


def _wrapper_of(module: nn.Module, parameter_name: str) -> LoraParameter | None:
    while isinstance(module, LoraParameter):
        if module.parameter_name == parameter_name:
            return module
        module = module.base_layer
    return None


def find_parameters(model: nn.Module, config: "LoraConfig", required: bool = True) -> list[tuple[str, str]]:
    """``(module key, parameter name)`` of every parameter ``config.target_parameters`` names, in
    model order and each module's parameter order (which decides the nesting, as in ``peft``); a
    :class:`TargetError` when one cannot be wrapped, or when there is none and ``required``
    (``target_modules`` may still have matched: then the caller only warns). Changes nothing.

    Example:
        >>> find_parameters(mixtral, LoraConfig(target_parameters=["experts.gate_up_proj"]))[:1]  # doctest: +SKIP
        [('model.layers.0.mlp.experts', 'gate_up_proj')]
    """
    wanted = parameter_targets(config)
    root_hits = [name for name, _ in model.named_parameters(recurse=False) if _matches(name, wanted)]
    if root_hits:
        raise TargetError(f"target_parameters: {root_hits[0]!r} belongs to the model itself, not to a sub-module; "
                          "LoRA can only wrap parameters of sub-modules (neither can peft)")
    found: list[tuple[str, str]] = []
    for key, module in iter_plain_modules(model):
        if key.endswith(".base_layer") and isinstance(module, LoraParameter):
            continue  # an inner wrapper: its module is handled at the outer key
        holder = module.holder() if isinstance(module, LoraParameter) else getattr(module, "base_layer", module)
        names = [name for name, _ in holder.named_parameters(recurse=False) if _matches(f"{key}.{name}", wanted)]
        if names and isinstance(module, AdapterLayer) and not isinstance(module, LoraParameter):
            raise TargetError(  # peft's sentence (its tests match it), then why and the fix
                f"Trying to wrap an `nn.Parameter` of layer {key!r} of type {type(holder).__name__}, which is not a "
                f"valid target. target_parameters: {key}.{names[0]} belongs to {key!r}, which target_modules already adapts; "
                "target the module or its parameters, not both (e.g. target_modules=[] to adapt only parameters)"
            )
        found += [(key, name) for name in names]
    if not found and required:
        raise TargetError(
            f"target_parameters={wanted!r} matched no parameter of {type(model).__name__}; give full names or "
            "dotted tails such as 'mlp.experts.gate_up_proj' (see model.named_parameters())"
        )
    return found


def inject_parameters(model: nn.Module, adapter_name: str, config: "LoraConfig") -> list[str]:
    """Wrap every parameter ``config.target_parameters`` names with :class:`LoraParameter` (adding
    ``adapter_name`` to an existing wrapper of that parameter); returns the parameter keys adapted.

    Example:
        >>> inject_parameters(model, "default", LoraConfig(target_parameters=["experts.gate_up_proj"]))  # doctest: +SKIP
        ['model.layers.0.mlp.experts.gate_up_proj', 'model.layers.1.mlp.experts.gate_up_proj']
    """
    found = find_parameters(model, config)
    for key, name in found:
        current = get_module(model, key)
        existing = _wrapper_of(current, name)
        if existing is not None:
            existing.add_adapter(adapter_name, config, key)
        else:
            set_module(model, key, LoraParameter(current, adapter_name, config, key, name))
    return [f"{key}.{name}" for key, name in found]
