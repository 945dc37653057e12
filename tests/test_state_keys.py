"""``peftkit.state_keys``: which ``state_dict()`` entries are adapter tensors, found from the module
tree (peft's ``_get_tuner_state_dict_key_prefixes`` / ``_filter_state_dict_by_key_prefixes``).
Where both libraries have the same layer attributes the prefixes are compared with real ``peft``."""

from __future__ import annotations

import warnings

import peft
import pytest
import torch.nn as nn
from peft.tuners.tuners_utils import _get_tuner_state_dict_key_prefixes as peft_prefixes

import peftkit as pk
from peftkit.state_keys import adapter_key_prefixes, filter_by_key_prefixes, is_under_prefixes

pytestmark = pytest.mark.usefixtures("torch_single_thread")


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin0 = nn.Linear(10, 20)
        self.lora_foobar = nn.Linear(20, 20)  # a base module whose name looks like an adapter's
        self.lin1 = nn.Linear(20, 2)

    def forward(self, x):
        return self.lin1(self.lora_foobar(self.lin0(x)))


def test_filter_respects_dot_boundaries_and_keeps_order():
    state = {"a": 0, "a.b": 1, "a.b.c": 2, "a.bc": 3, "ab": 4, "x.a.b": 5, "b.c": 6}
    assert filter_by_key_prefixes(state, {"a.b"}) == {"a.b": 1, "a.b.c": 2}
    assert list(filter_by_key_prefixes(state, {"b.c", "a"})) == ["a", "a.b", "a.b.c", "a.bc", "b.c"]
    assert filter_by_key_prefixes(state, set()) == {}
    assert not is_under_prefixes("lin0.lora_AB", {"lin0.lora_A"})


def test_prefixes_select_exactly_the_adapter_tensors():
    model = pk.get_peft_model(MLP(), pk.LoraConfig(target_modules=["lin0"], modules_to_save=["lin1"]))
    prefixes = adapter_key_prefixes(model)
    assert not any("base_layer" in p or "lora_foobar" in p or "lin1" in p for p in prefixes)
    assert sorted(filter_by_key_prefixes(model.state_dict(), prefixes)) == [
        "base_model.model.lin0.lora_A.default.weight", "base_model.model.lin0.lora_B.default.weight"]
    # a model with injected layers only: paths relative to it
    assert "lin0.lora_A" in adapter_key_prefixes(model.get_base_model())


def test_adapter_name_narrows_per_adapter_containers():
    model = pk.get_peft_model(MLP(), pk.LoraConfig(target_modules=["lin0"]))
    model.add_adapter("other", pk.LoraConfig(target_modules=["lin0", "lin1"]))
    other = adapter_key_prefixes(model, "other")
    assert {"base_model.model.lin0.lora_A.other", "base_model.model.lin1.lora_A.other"} <= other
    default = adapter_key_prefixes(model, "default")
    assert "base_model.model.lin0.lora_A.default" in default
    assert not any(p.startswith("base_model.model.lin1") for p in default)


def test_vera_shared_projections_on_the_holder():
    model = pk.get_peft_model(MLP(), pk.VeraConfig(target_modules=["lin0"], r=2))
    assert {"base_model.vera_A", "base_model.vera_B"} <= adapter_key_prefixes(model)
    assert "base_model.vera_A.default" in adapter_key_prefixes(model, "default")
    kept = filter_by_key_prefixes(model.state_dict(), adapter_key_prefixes(model, "default"))
    assert "base_model.vera_A.default" in kept and not any("base_layer" in k for k in kept)


# (VeRA is not compared: peft's VeRA layers also hold references to the shared projections,
# peftkit's reach them through the holder; the saved keys are the same)
@pytest.mark.parametrize("config_kwargs", [
    dict(cls="IA3Config", target_modules=["lin0"], feedforward_modules=[]),
    dict(cls="LoHaConfig", target_modules=["lin0", "lin1"]),
])
def test_prefixes_equal_peft(config_kwargs):
    kwargs = dict(config_kwargs)
    name = kwargs.pop("cls")
    ours = pk.get_peft_model(MLP(), getattr(pk, name)(**kwargs))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = peft.get_peft_model(MLP(), getattr(peft, name)(**kwargs))
    for adapter in (None, "default"):
        assert adapter_key_prefixes(ours, adapter) == peft_prefixes(theirs, adapter)
