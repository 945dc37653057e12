"""Tiny quantized models for the quantized-base tests, with the real backends on CPU.

``quantized_llama(backend)`` quantizes a tiny Llama in place with peftkit's own loader; its
``reference`` twin holds exactly the dequantized weights in plain ``nn.Linear`` layers, so an adapter
on the quantized model and the same adapter on the reference compute the same function (up to
what the backend's own kernel rounds differently: bitsandbytes int8 also quantizes activations).
"""

from __future__ import annotations

import copy

import pytest
import torch
from tiny_models import tiny_llama

from peftkit.quantized.loading import QuantizationConfig, dequantize_model, quantize_model

# name -> the quantization config (every kind peftkit supports, and NF4's sibling FP4)
BACKENDS = {
    "bnb-nf4": dict(backend="bnb", bits=4, quant_type="nf4", double_quant=True),
    "bnb-fp4": dict(backend="bnb", bits=4, quant_type="fp4", double_quant=False),
    "bnb-int8": dict(backend="bnb", bits=8),
    "torchao-int8": dict(backend="torchao", bits=8),
}
# Relative tolerance of outputs against the dequantized reference: bitsandbytes int8 quantizes the
# activations too (row-wise, 8 bits), the others compute with exactly the dequantized weight.
RTOL = {"bnb-nf4": 1e-5, "bnb-fp4": 1e-5, "bnb-int8": 5e-2, "torchao-int8": 1e-4}

# the package each backend needs: its tests skip where it is not installed (`make test-oldest`)
PACKAGES = {"bnb": "bitsandbytes", "torchao": "torchao"}

INPUT_IDS = torch.tensor([[1, 5, 7, 9, 11, 3, 42, 17], [1, 8, 8, 21, 63, 2, 4, 99]])


def quantized_llama(backend: str, **config_overrides) -> tuple[torch.nn.Module, torch.nn.Module]:
    """``(quantized tiny Llama, its dequantized float32 twin)``; skips the test where the backend's
    package is not installed."""
    require(BACKENDS[backend]["backend"])
    model = quantize_model(tiny_llama(**config_overrides), QuantizationConfig(**BACKENDS[backend]))
    return model, dequantize_model(copy.deepcopy(model))


def require(backend: str):
    """Import and return the package behind ``backend`` (``"bnb"``, ``"torchao"``), or skip the test."""
    return pytest.importorskip(PACKAGES[backend])


def relative_error(got: torch.Tensor, expected: torch.Tensor) -> float:
    return float((got - expected).norm() / expected.norm().clamp_min(1e-12))


def stored_bits(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every tensor that holds a quantized layer's weight, by name (bitsandbytes' packed data and
    statistics, torchao's int8 values and scales): what an exact restore must give back."""
    from peftkit.quantized import kind_of
    from peftkit.quantized.kinds import _tensors

    bits = {}
    for name, module in model.named_modules():
        kind = kind_of(module)
        if kind is not None:
            for i, tensor in enumerate(_tensors(kind.snapshot(module))):
                bits[f"{name}.{i}"] = tensor
    return bits
