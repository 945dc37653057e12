"""LoRA (Hu et al., 2021): ``W x + (alpha / r) * B A x``, with rsLoRA scaling, DoRA and PiSSA /
OLoRA / Gaussian initialisations. The config mirrors ``peft.LoraConfig``; the layers live in
:mod:`peftkit.methods.lora_layers`."""

from __future__ import annotations

import re
import warnings
from typing import Any, ClassVar, Literal, Optional, Union

import torch.nn as nn
from pydantic import field_validator
from pydantic_core import PydanticCustomError

from ..config import ANY_VALUE, PeftConfig, TargetedConfig, finite_number, mapping_values, PeftType
from ..quantized.layers import quantized_factories
from ..registry import LayerFactory, MethodSpec, register_method
from .lora_conversion import convert_mutated_init, mutates_base
from .lora_conv import LoraConv
from .lora_layers import LoraEmbedding, LoraLayer, LoraLinear, is_conv1d
from .lora_mha import LoraMultiheadAttention
from .lora_parameters import find_parameters, inject_parameters, parameter_targets
from .lora_tying import tie_lora_adapter

InitLoraWeights = Union[bool, str]


class LoraConfig(TargetedConfig):
    """Configuration of a LoRA adapter; fields and defaults as in ``peft.LoraConfig``.

    Example:
        >>> from peftkit import LoraConfig
        >>> cfg = LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM")
        >>> cfg.r, cfg.lora_alpha
        (16, 32)
    """

    peft_type: ClassVar[str] = PeftType.LORA
    # peft LoRA features peftkit does not implement: accepted only at their "unused" value.
    peft_only_keys: ClassVar[dict[str, Any]] = {
        **PeftConfig.peft_only_keys,
        "megatron_core": ANY_VALUE,
        "qalora_group_size": ANY_VALUE,
        "use_qalora": False,
        **{k: None for k in (
            "megatron_config", "trainable_token_indices", "loftq_config", "eva_config", "corda_config",
            "lora_ga_config", "velora_config", "alora_invocation_tokens", "monteclora_config",
            "layer_replication", "use_bdlora", "arrow_config", "kasa_config",
        )},
    }

    r: int = 8
    lora_alpha: Union[int, float] = 8
    lora_dropout: float = 0.0
    fan_in_fan_out: bool = False
    bias: Literal["none", "all", "lora_only"] = "none"
    use_rslora: bool = False
    # DoRA (peftkit.methods.dora): a trained magnitude per output unit beside A and B
    use_dora: bool = False
    init_lora_weights: InitLoraWeights = True
    rank_pattern: dict[str, int] = {}
    alpha_pattern: dict[str, Union[int, float]] = {}
    # a trainable bias on lora_B, merged into the base bias (peftkit.methods.lora_bias)
    lora_bias: bool = False
    # LoRA on nn.Parameters, e.g. 3-D MoE expert weights (peftkit.methods.lora_parameters)
    target_parameters: Optional[list[str]] = None
    # tied input embedding and LM head: one shared adapter for both (peftkit.weight_tying)
    ensure_weight_tying: bool = False

    @field_validator("r", mode="before")
    @classmethod
    def _positive_rank(cls, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError("must be a positive integer (the adapter rank, e.g. 8 or 16)")
        return value

    @field_validator("lora_alpha", mode="before")
    @classmethod
    def _alpha(cls, value: float) -> float:
        return finite_number(value, "lora_alpha")

    @field_validator("lora_dropout")
    @classmethod
    def _dropout(cls, value: float) -> float:
        if not 0.0 <= value < 1.0:
            raise ValueError("must be a probability in [0, 1)")
        return value

    @field_validator("init_lora_weights", mode="before")
    @classmethod
    def _init(cls, value: Any) -> Any:
        if isinstance(value, bool):
            return value
        if isinstance(value, str):
            low = value.lower()
            if low in ("gaussian", "pissa", "olora") or re.fullmatch(r"pissa_niter_\d+", low):
                return low
        raise ValueError("must be True, False, 'gaussian', 'pissa', 'pissa_niter_<n>' or 'olora'")

    @field_validator("target_parameters", mode="before")
    @classmethod
    def _parameter_list(cls, value: Any) -> Any:
        if isinstance(value, str):  # an easy slip, since target_modules takes a string: peft's words, then ours
            raise PydanticCustomError("list_type", "`target_parameters` must be a list of strings or None; for one "
                                                   "parameter, put it in a list")
        return value

    @field_validator("alpha_pattern", mode="before")
    @classmethod
    def _alphas(cls, value: dict[str, float]) -> dict[str, float]:
        for alpha in mapping_values(value):
            finite_number(alpha, "alpha_pattern")
        return {} if value is None else value  # peft writes null for "none" at times

    @field_validator("rank_pattern")
    @classmethod
    def _ranks(cls, value: dict[str, int]) -> dict[str, int]:
        if any(v <= 0 for v in value.values()):
            raise ValueError("every rank must be a positive integer")
        return value

    def check(self) -> list[tuple[str, str]]:
        problems = super().check()
        if self.lora_bias and self.init_lora_weights not in (True, False):
            problems.append(("lora_bias", "The argument lora_bias=True is only supported with init_lora_weights=True "
                                          f"or False (as in peft), got {self.init_lora_weights!r}; set lora_bias=False "
                                          "or change the init"))
        if self.target_parameters:
            for field, value, allowed in (("lora_dropout", self.lora_dropout, 0.0), ("use_dora", self.use_dora, False),
                                          ("lora_bias", self.lora_bias, False)):
                if value != allowed:
                    problems.append((field, f"must be {allowed!r} with target_parameters (LoRA on a parameter changes "
                                            "the weight and never sees the input, as in peft)"))
        if self.lora_bias and self.use_dora:
            problems.append(("lora_bias", "The argument lora_bias=True is not supported for DoRA (as in peft); "
                                          "set lora_bias=False or use_dora=False"))
        return problems

    def for_loading(self) -> "LoraConfig":
        # The saved values replace the initial ones, so no initialisation is needed, except
        # PiSSA/OLoRA's: an adapter saved from it holds A and B for the *residual* base (W minus
        # the top-r part), and re-running the (deterministic) decomposition is what turns the
        # original base back into that residual, as peft does on loading. Files converted with
        # path_initial_model_for_weight_conversion say init_lora_weights=True and skip it.
        keep = self.base_changing_init() is not None
        return self.model_copy(update={} if keep else {"init_lora_weights": False}, deep=True)

    def base_changing_init(self) -> Optional[str]:
        if not mutates_base(self.init_lora_weights):
            return None
        return "OLoRA" if self.init_lora_weights == "olora" else "PiSSA"

    def converted_from_mutated_init(
        self, trained: dict, initial_config: PeftConfig, initial: dict, where: str
    ) -> tuple["LoraConfig", dict]:
        """A trained PiSSA/OLoRA adapter as a plain LoRA adapter (rank 2r) on the original base
        weights; used by ``save_pretrained(path_initial_model_for_weight_conversion=...)``
        (see :mod:`peftkit.methods.lora_conversion`)."""
        return convert_mutated_init(self, trained, initial_config, initial, where)

    # peft's custom LoRA modules: module type -> LoRA layer class, kept on this config object only
    # (a pydantic private attribute: never saved, carried by the model's copy of the config)
    _custom_modules: Optional[dict] = None

    def _register_custom_module(self, mapping: dict[type[nn.Module], type[LoraLayer]]) -> None:
        """LoRA layers of your own for module types (peft's experimental API, same name): each
        ``{module type: layer class}`` is tried before peftkit's layers, for a type LoRA does not
        support or to replace its layer for one it does. The class is a :class:`LoraLayer` built as
        ``cls(module, adapter_name, config, key)`` (a ``LoraLinear`` subclass as peftkit builds its own).
        Not saved: register again on the config read back before loading the adapter, as in peft.

        Example:
            >>> cfg = LoraConfig(target_modules=["my_module"])
            >>> cfg._register_custom_module({MyModule: MyLora})  # doctest: +SKIP
        """
        self._custom_modules = {**(self._custom_modules or {}), **mapping}

    def custom_layer_factories(self) -> list[LayerFactory]:
        return [_custom_factory(module_type, layer_cls) for module_type, layer_cls in (self._custom_modules or {}).items()]


def _custom_factory(module_type: type[nn.Module], layer_cls: type[LoraLayer]) -> LayerFactory:
    """The factory for one ``_register_custom_module`` entry: the user's layer class around modules
    of ``module_type``, with peft's warning when LoRA has no layer of its own for that type."""

    def build(module: nn.Module, name: str, config: LoraConfig, key: str) -> LoraLayer:
        if LORA.factory_for(module) is None:  # peft's exact sentence: code compares it
            warnings.warn(f"Unsupported layer type '{type(module)}' encountered, proceed at your own risk.", UserWarning)
        if issubclass(layer_cls, LoraLinear):  # built like peftkit's own linears (fan_in_fan_out follows the module)
            return _linear_factory(module, name, config, key, cls=layer_cls)
        return layer_cls(module, name, config, key)

    return LayerFactory(f"{module_type.__name__} (custom: {layer_cls.__name__})",
                        lambda m: isinstance(m, module_type), build)


def _linear_factory(module: nn.Module, name: str, config: LoraConfig, key: str, cls: type = LoraLinear) -> LoraLayer:
    # nn.Linear stores (out, in); GPT-2's Conv1D stores (in, out): fan_in_fan_out follows the layer,
    # and the (model-owned copy of the) config records it, as peft's saved configs do.
    fan_in_fan_out = is_conv1d(module)
    if config.fan_in_fan_out != fan_in_fan_out:
        config.fan_in_fan_out = fan_in_fan_out
    return cls(module, name, config, key, fan_in_fan_out=fan_in_fan_out)


LORA = register_method(
    MethodSpec(
        peft_type="LORA",
        mixable=True,
        config_cls=LoraConfig,
        layer_cls=LoraLayer,
        layer_factories=[
            *quantized_factories(LoraLinear, _linear_factory),
            LayerFactory("nn.Linear", lambda m: isinstance(m, nn.Linear), _linear_factory),
            LayerFactory("transformers Conv1D", is_conv1d, _linear_factory),
            LayerFactory("nn.Embedding", lambda m: isinstance(m, nn.Embedding), LoraEmbedding),
            LayerFactory("nn.MultiheadAttention", lambda m: isinstance(m, nn.MultiheadAttention), LoraMultiheadAttention),
            LayerFactory(
                "nn.Conv1d/Conv2d/Conv3d", lambda m: isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)), LoraConv
            ),
        ],
        parameter_targets=parameter_targets,
        find_parameters=find_parameters,
        inject_parameters=inject_parameters,
        tie_adapter=tie_lora_adapter,
    )
)
