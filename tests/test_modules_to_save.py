"""``peftkit.modules_to_save``: modules trained in full beside an adapter. The rules ``peft``'s
tests check (containers refused, a stale active adapter not hidden), the wrapper's peft attributes
(active_adapters, _adapters, adapter_layer_names), its selection when adapters join and leave, and
the saved modules a mixed batch cannot split; compared with real ``peft`` where it applies."""

from __future__ import annotations

import peft
import pytest
import torch
import torch.nn as nn

import peftkit as pk
from peftkit.errors import MixedBatchError

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


class _Deep(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin0, self.head0, self.head1 = nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 8)

    def forward(self, x):
        return self.head1(self.head0(self.lin0(x)))


def _both(kwargs0, kwargs1):
    import peft

    models = []
    for lib in (peft, pk):
        model = lib.get_peft_model(_Deep(), lib.LoraConfig(target_modules=["lin0"], **kwargs0))
        model.add_adapter("other", lib.LoraConfig(target_modules=["lin0"], **kwargs1))
        models.append(model)
    return models


def test_wrapper_reports_what_peft_s_does():
    theirs, ours = _both({}, {"modules_to_save": ["head0"]})
    for names in (None, ["other"], ["default"]):
        if names:
            theirs.set_adapter(names[0])
            ours.set_adapter(names[0])
        mine, peft_wrapper = ours.base_model.model.head0, theirs.base_model.model.head0
        assert mine.active_adapters == peft_wrapper.active_adapters
        assert mine._adapters == peft_wrapper._adapters == {"other"}
        assert mine.adapter_layer_names == peft_wrapper.adapter_layer_names
        assert mine.other_param_names == peft_wrapper.other_param_names
        trains = mine.modules_to_save["other"].weight.requires_grad
        assert trains == peft_wrapper.modules_to_save["other"].weight.requires_grad == (names == ["other"])


def test_different_saved_modules_are_active_together():
    _, ours = _both({"modules_to_save": ["head0"]}, {"modules_to_save": ["head1"]})
    ours.base_model.set_adapter(["default", "other"])
    assert ours.base_model.model.head0.active_adapters == ["default"]
    assert ours.base_model.model.head1.active_adapters == ["other"]


def test_disabling_a_wrapper_freezes_its_copies_and_back_restores_them():
    _, ours = _both({"modules_to_save": ["head0"]}, {})
    wrapper = ours.base_model.model.head0
    wrapper.enable_adapters(False)
    assert wrapper.disable_adapters and not any(p.requires_grad for p in wrapper.parameters())
    wrapper.enable_adapters(True)
    assert wrapper.modules_to_save["default"].weight.requires_grad and not wrapper.original_module.weight.requires_grad


def test_deleting_the_active_adapter_moves_the_wrapper_on():
    _, ours = _both({"modules_to_save": ["head0"]}, {"modules_to_save": ["head0"]})
    ours.delete_adapter("default")
    assert ours.active_adapters == ["other"]
    assert ours.base_model.model.head0.active_adapters == ["other"]
    assert ours.base_model.model.head0._adapters == {"other"}


class _WithGru(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin0 = nn.Linear(8, 8)
        self.gru = nn.GRU(8, 8, batch_first=True)

    def forward(self, x):
        return self.gru(self.lin0(x).unsqueeze(1))[0].squeeze(1)


def test_mixed_batch_refuses_a_saved_module_it_cannot_split_by_rows():
    model = pk.get_peft_model(_WithGru(), pk.LoraConfig(target_modules=["lin0"], modules_to_save=["gru"])).eval()
    model.add_adapter("other", pk.LoraConfig(target_modules=["lin0"], modules_to_save=["gru"]))
    with pytest.raises(TypeError, match="Mixed batching is only supported for the following modules") as info:
        model(torch.randn(2, 8), adapter_names=["default", "other"])
    assert isinstance(info.value, MixedBatchError) and "GRU" in str(info.value)
