"""Mixed-adapter batches: the errors carry peft's sentences (code written for peft matches them)."""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn as nn

import peftkit as pk


class _Mlp(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin0, self.lin1 = nn.Linear(10, 10), nn.Linear(10, 2)
        self.mha = nn.MultiheadAttention(10, 2)

    def forward(self, x):
        return self.lin1(self.lin0(x))


def _model(**kwargs):
    model = pk.get_peft_model(_Mlp(), pk.LoraConfig(init_lora_weights=False, **kwargs)).eval()
    model.add_adapter("other", pk.LoraConfig(init_lora_weights=False, **kwargs))
    return model


def test_row_count_mismatch_names_both_counts():
    with pytest.raises(ValueError, match=r"Length of `adapter_names` should be the same as the number of inputs, but "
                                         r"got 2 and 3 respectively"):
        _model(target_modules=["lin0"])(torch.randn(3, 10), adapter_names=["default"] * 2)


def test_unknown_adapter_names_are_listed_sorted():
    msg = re.escape("Trying to infer with non-existing adapter(s): a-missing, b-missing")
    with pytest.raises(ValueError, match=msg):
        _model(target_modules=["lin0"])(torch.randn(3, 10), adapter_names=["b-missing", "a-missing", "default"])


def test_merged_adapters_refuse_mixed_batches():
    model = _model(target_modules=["lin0"])
    model.merge_adapter(["default"])
    with pytest.raises(ValueError, match=re.escape("Cannot pass `adapter_names` when there are merged adapters")):
        model(torch.randn(2, 10), adapter_names=["default", "other"])


def test_attention_refuses_mixed_batches_with_a_type_error():
    model = _model(target_modules=["mha"])
    x = torch.randn(2, 3, 10)
    with pytest.raises(TypeError, match="lora.MultiheadAttention does not support mixed adapter batches"):
        with model._rows(["default", "other"], 2):
            model.base_model.model.mha(x, x, x)
