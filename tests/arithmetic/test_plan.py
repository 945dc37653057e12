"""What add_weighted_adapter refuses before computing anything (peftkit.arithmetic.plan): LoRA
layer kinds whose change is no single low-rank update of one weight."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import peftkit as pk
from peftkit.errors import AdapterError


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.mha = nn.MultiheadAttention(8, 2, batch_first=True)
        self.grouped = nn.Conv2d(4, 4, 3, groups=2)
        self.lin = nn.Linear(8, 8)


@pytest.mark.parametrize("config, module", [
    (dict(target_modules=["mha"]), "'mha': LoRA on attention has two pairs of factors"),
    (dict(target_modules=["grouped"], r=4), "'grouped': a grouped convolution"),
    (dict(target_modules=[], target_parameters=["lin.weight"]), "'lin': LoRA on a parameter"),
])
@pytest.mark.parametrize("combination_type", ["svd", "ties_svd", "cat", "linear"])
def test_layer_kinds_without_one_low_rank_update_are_refused(config, module, combination_type):
    model = pk.get_peft_model(Net(), pk.LoraConfig(**config))
    model.add_adapter("other", pk.LoraConfig(**config))
    with pytest.raises(AdapterError, match=module if "svd" in combination_type else "needs LoRA factors"):
        model.add_weighted_adapter(["default", "other"], [1.0, 0.5], "sum", combination_type=combination_type,
                                   density=0.5 if "ties" in combination_type else None)
    assert "sum" not in model.peft_config
