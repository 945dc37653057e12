"""``peftkit.modules_to_save``: modules trained in full beside an adapter; the rules ``peft``'s
tests check (containers refused, a stale active adapter not hidden), compared with real ``peft``."""

from __future__ import annotations

import peft
import pytest
import torch
import torch.nn as nn

import peftkit as pk

pytestmark = pytest.mark.usefixtures("torch_single_thread")


class WithContainer(nn.Module):
    def __init__(self, container: nn.Module):
        super().__init__()
        self.other_layer = nn.Linear(4, 4)
        self.module = container


CONTAINERS = {
    "ModuleDict": lambda: nn.ModuleDict({"a": nn.Linear(4, 4)}),
    "ModuleList": lambda: nn.ModuleList([nn.Linear(4, 4)]),
    "ParameterDict": lambda: nn.ParameterDict({"a": nn.Parameter(torch.zeros(2))}),
    "ParameterList": lambda: nn.ParameterList([nn.Parameter(torch.zeros(2))]),
}


@pytest.mark.parametrize("kind", list(CONTAINERS))
def test_containers_cannot_be_saved_modules(kind):
    sentence = "modules_to_save cannot be applied to modules of type"
    config = dict(target_modules=["other_layer"], modules_to_save=["module"])
    model = WithContainer(CONTAINERS[kind]())
    with pytest.raises(TypeError, match=sentence):
        pk.get_peft_model(model, pk.LoraConfig(**config))
    assert isinstance(model.other_layer, nn.Linear)  # the failed adapter left nothing behind
    with pytest.raises(TypeError, match=sentence):
        peft.get_peft_model(WithContainer(CONTAINERS[kind]()), peft.LoraConfig(**config))


def test_a_stale_active_adapter_is_an_attribute_error_not_the_original():
    class MLP(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin0, self.lin1 = nn.Linear(4, 4), nn.Linear(4, 2)

    model = pk.get_peft_model(MLP(), pk.LoraConfig(target_modules=["lin0"], modules_to_save=["lin1"]))
    wrapper = model.base_model.model.lin1
    assert wrapper.active_adapter == "default" and wrapper._active_adapter == "default"  # peft's attribute
    assert wrapper.weight is wrapper.modules_to_save["default"].weight
    wrapper._active_adapter = "does-not-exist"
    with pytest.raises(AttributeError, match="has no attribute 'weight'"):
        wrapper.weight
    wrapper.active_adapter = None  # none active: the original answers
    assert wrapper.weight is wrapper.original_module.weight
