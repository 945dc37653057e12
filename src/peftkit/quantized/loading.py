"""How a base model is quantized: :class:`QuantizationConfig` (``model.quantization`` in a run
config, ``load_model(..., quantization=...)``), and quantizing / dequantizing a loaded model in place.

Folders and hub ids load quantized through transformers (``BitsAndBytesConfig`` is passed through).
GGUF checkpoints cannot: transformers refuses a quantization config with ``gguf_file``, so they are
loaded (dequantized to the model dtype) and quantized here in place, with the same flags transformers
sets (``is_loaded_in_4bit`` / ``is_loaded_in_8bit``, ``quantization_method``,
``config.quantization_config``), which ``peft`` reads: adapters then move between the two libraries
on the same base. The output head (and a classifier's head) stays in full precision, as transformers
keeps ``lm_head``.
"""

from __future__ import annotations

import importlib.util
from typing import Any, Literal, Optional

import torch
import torch.nn as nn
from pydantic import BaseModel, ConfigDict, model_validator

from ..tree import set_module

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_INSTALL = {"bnb": ("bitsandbytes", "bitsandbytes"), "torchao": ("torchao", "torchao")}
# Fields that only mean something for bitsandbytes 4-bit.
_BNB_4BIT_FIELDS = ("quant_type", "double_quant", "compute_dtype")


class QuantizationConfig(BaseModel):
    """How to quantize the frozen base: ``backend`` bnb (bitsandbytes, 4 or 8 bits) or torchao (int8
    weight-only). 4-bit settings: ``quant_type`` nf4 / fp4, ``double_quant`` (quantized statistics,
    ~0.4 bits per weight less) and ``compute_dtype`` (default: the model's dtype). ``skip_modules``:
    module names kept in full precision besides the output head.

    Example:
        >>> QuantizationConfig(backend="bnb", bits=4, compute_dtype="bfloat16").quant_type
        'nf4'
    """

    model_config = ConfigDict(extra="forbid", strict=True, validate_assignment=True)

    backend: Literal["bnb", "torchao"] = "bnb"
    bits: Literal[4, 8] = 4
    quant_type: Literal["nf4", "fp4"] = "nf4"
    double_quant: bool = True
    compute_dtype: Optional[Literal["float32", "bfloat16", "float16"]] = None
    skip_modules: list[str] = []

    @model_validator(mode="after")
    def _fits_backend(self) -> "QuantizationConfig":
        bnb_4bit = self.backend == "bnb" and self.bits == 4
        unused = [f for f in _BNB_4BIT_FIELDS if f in self.model_fields_set and not bnb_4bit]
        if self.backend == "torchao" and self.bits == 4:
            raise ValueError("torchao is supported as int8 weight-only (bits: 8): torchao 0.18's int4 weight-only has "
                             "no CPU kernel and its NF4 tensor fails on some layer shapes; for 4 bits use backend: bnb")
        if unused:
            one = len(unused) == 1
            raise ValueError(f"{', '.join(unused)} only appl{'ies' if one else 'y'} to backend bnb with bits 4; "
                             f"remove {'it' if one else 'them'}")
        package, pip_name = _INSTALL[self.backend]
        if importlib.util.find_spec(package) is None:
            raise ValueError(f"backend {self.backend!r} needs the {pip_name!r} package, which is not installed; "
                             f"install it with:  pip install 'peftkit[quantization]'")
        return self

    def compute_torch_dtype(self, model_dtype: torch.dtype) -> torch.dtype:
        return _DTYPES[self.compute_dtype] if self.compute_dtype else model_dtype

    def to_transformers(self, model_dtype: torch.dtype = torch.float32) -> Any:
        """The ``transformers`` quantization config with the same meaning (``BitsAndBytesConfig`` for
        bnb, ``TorchAoConfig`` for torchao): passed to ``from_pretrained`` and recorded on models
        quantized in place, where ``peft`` and transformers look for it."""
        if self.backend == "torchao":
            from torchao.quantization import Int8WeightOnlyConfig
            from transformers import TorchAoConfig

            return TorchAoConfig(Int8WeightOnlyConfig(), modules_to_not_convert=self.skip_modules or None)
        from transformers import BitsAndBytesConfig

        if self.bits == 8:
            return BitsAndBytesConfig(load_in_8bit=True, llm_int8_threshold=0.0,
                                      llm_int8_skip_modules=self.skip_modules or None)
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=self.quant_type,
                                  bnb_4bit_use_double_quant=self.double_quant,
                                  bnb_4bit_compute_dtype=self.compute_torch_dtype(model_dtype),
                                  llm_int8_skip_modules=self.skip_modules or None)

    @classmethod
    def from_transformers(cls, config: Any) -> "QuantizationConfig":
        """The inverse of :meth:`to_transformers` for a ``BitsAndBytesConfig`` (GGUF models, which
        transformers will not load with one, are quantized in place from it)."""
        skip = list(getattr(config, "llm_int8_skip_modules", None) or [])
        if getattr(config, "load_in_8bit", False):
            return cls(backend="bnb", bits=8, skip_modules=skip)
        if getattr(config, "load_in_4bit", False):
            dtype = str(getattr(config, "bnb_4bit_compute_dtype", None) or "").removeprefix("torch.") or None
            return cls(backend="bnb", bits=4, quant_type=config.bnb_4bit_quant_type,
                       double_quant=bool(config.bnb_4bit_use_double_quant),
                       **({"compute_dtype": dtype} if dtype in _DTYPES else {}), skip_modules=skip)
        raise ValueError(f"cannot quantize a GGUF model in place with {type(config).__name__}; use a "
                         "BitsAndBytesConfig with load_in_4bit or load_in_8bit, or peftkit's QuantizationConfig")


def _skipped(model: nn.Module, config: QuantizationConfig) -> set[str]:
    """Module paths kept in full precision: output heads (of every task type) and ``skip_modules``."""
    from ..targets import TASK_HEADS, output_head_names

    heads = set().union(output_head_names(model, None), *(output_head_names(model, task) for task in TASK_HEADS))
    return heads | {name for name, _ in model.named_modules()
                    if any(name == s or name.endswith("." + s) for s in config.skip_modules)}


def quantize_model(model: nn.Module, config: QuantizationConfig) -> nn.Module:
    """Quantize every plain ``nn.Linear`` of a loaded model in place (all but the output head and
    ``skip_modules``) and set the flags transformers sets on a quantized load; returns ``model``.

    Example:
        >>> quantize_model(model, QuantizationConfig(backend="bnb", bits=4))   # doctest: +SKIP
    """
    skip = _skipped(model, config)
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    if config.backend == "torchao":
        from .torchao import quantize_int8_weight_only

        quantize_int8_weight_only(model, skip)
    else:
        from . import bnb

        compute = config.compute_torch_dtype(dtype)
        for name, module in list(model.named_modules()):
            if type(module) is nn.Linear and name not in skip:
                layer = (bnb.quantize_linear_8bit(module) if config.bits == 8 else
                         bnb.quantize_linear_4bit(module, config.quant_type, config.double_quant, compute))
                set_module(model, name, layer)
    _mark_quantized(model, config, dtype)
    return model


def _mark_quantized(model: nn.Module, config: QuantizationConfig, dtype: torch.dtype) -> None:
    """The attributes transformers sets on a model it loads quantized (``is_quantized`` itself is a
    transformers property of ``hf_quantizer``, which a model quantized in place does not have)."""
    model.is_loaded_in_4bit = config.backend == "bnb" and config.bits == 4
    model.is_loaded_in_8bit = config.backend == "bnb" and config.bits == 8
    model.quantization_method = "bitsandbytes" if config.backend == "bnb" else "torchao"
    if getattr(model, "config", None) is not None:
        model.config.quantization_config = config.to_transformers(dtype)


def dequantize_model(model: nn.Module, dtype: torch.dtype | str = torch.float32) -> nn.Module:
    """Replace every supported quantized linear layer by a plain ``nn.Linear`` holding its weight
    dequantized to ``dtype``, and drop the quantization flags: the lossless base for a 16-bit merged
    export of a QLoRA adapter (the adapter was trained against exactly these dequantized weights).
    Call it before adapters are attached. Returns ``model``.

    Example:
        >>> dense = dequantize_model(load_model("smollm2", quantization=qconfig), "bfloat16")   # doctest: +SKIP
    """
    from ..errors import AdapterError
    from ..layers import AdapterLayer
    from .kinds import kind_of

    if any(isinstance(m, AdapterLayer) for m in model.modules()):
        raise AdapterError("dequantize_model needs the base model without adapters: call it before get_peft_model / "
                           "PeftModel.from_pretrained (or on peft_model.unload()), then attach the adapter again")
    dtype = _DTYPES[dtype] if isinstance(dtype, str) else dtype
    for name, module in list(model.named_modules()):
        kind = kind_of(module)
        if kind is None:
            continue
        out_features, in_features = kind.shape(module)
        dense = nn.Linear(in_features, out_features, bias=module.bias is not None, device="meta")
        dense.weight = nn.Parameter(kind.dequantize(module).to(dtype), requires_grad=False)
        if module.bias is not None:
            dense.bias = nn.Parameter(module.bias.detach().to(dtype).clone(), requires_grad=False)
        set_module(model, name, dense)
    for attr in ("is_loaded_in_4bit", "is_loaded_in_8bit", "quantization_method"):
        if attr in vars(model):
            delattr(model, attr)
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer = None
    if hasattr(getattr(model, "config", None), "quantization_config"):
        delattr(model.config, "quantization_config")
    return model
