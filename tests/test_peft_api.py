"""peft's functional API, side by side with the real ``peft``: ``inject_adapter_in_model``,
``get/set_peft_model_state_dict`` on plain modules and PeftModels, and ``get_peft_model`` /
``from_pretrained`` returning the task's ``PeftModelFor<Task>`` class."""

from __future__ import annotations

import inspect

import peft
import pytest
import torch
from tiny_models import example_inputs, make_model, model_outputs, randomize_lora_weights, tiny_llama

import peftkit as pk

pytestmark = pytest.mark.usefixtures("torch_single_thread")


def lora(lib, **extra):
    return lib.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], **extra)


def trained_like(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    randomize_lora_weights(model)
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_inject_adapter_in_model_matches_peft():
    ours, theirs = tiny_llama(), tiny_llama()
    assert pk.inject_adapter_in_model(lora(pk), ours) is ours
    assert peft.inject_adapter_in_model(lora(peft), theirs) is theirs
    assert list(ours.peft_config) == list(theirs.peft_config) == ["default"]
    assert ours.state_dict().keys() == theirs.state_dict().keys()  # same parameter paths
    trainable = lambda m: sorted(n for n, p in m.named_parameters() if p.requires_grad)  # noqa: E731
    assert trainable(ours) == trainable(theirs)
    ours.load_state_dict(trained_like(theirs))
    inputs = example_inputs("llama")
    torch.testing.assert_close(model_outputs(ours, inputs), model_outputs(theirs, inputs))


def test_a_second_injected_adapter_becomes_active_as_in_peft():
    ours, theirs = tiny_llama(), tiny_llama()
    for lib, model in ((pk, ours), (peft, theirs)):
        lib.inject_adapter_in_model(lora(lib), model)
        lib.inject_adapter_in_model(lib.LoraConfig(r=2, target_modules=["k_proj", "q_proj"]), model, adapter_name="b")
    assert list(ours.peft_config) == list(theirs.peft_config) == ["default", "b"]
    q_ours, q_theirs = ours.model.layers[0].self_attn.q_proj, theirs.model.layers[0].self_attn.q_proj
    assert q_ours.active_adapters == q_theirs.active_adapters == ["b"]
    ours.load_state_dict(trained_like(theirs))
    inputs = example_inputs("llama")
    torch.testing.assert_close(model_outputs(ours, inputs), model_outputs(theirs, inputs))


def test_state_dict_chooses_the_targets_as_in_peft():
    donor = pk.inject_adapter_in_model(pk.LoraConfig(r=4, target_modules=["k_proj"]), tiny_llama())
    saved = pk.get_peft_model_state_dict(donor)
    ours = pk.inject_adapter_in_model(pk.LoraConfig(r=4, target_modules=["o_proj"]), tiny_llama(), state_dict=saved)
    theirs = peft.inject_adapter_in_model(peft.LoraConfig(r=4, target_modules=["o_proj"]), tiny_llama(), state_dict=saved)
    assert pk.get_peft_model_state_dict(ours).keys() == peft.get_peft_model_state_dict(theirs).keys() == saved.keys()


@pytest.mark.parametrize("config", [pk.PromptTuningConfig(num_virtual_tokens=4), pk.VeraConfig(r=4, target_modules=["q_proj"])])
def test_methods_that_need_a_peft_model_are_refused_with_the_model_unchanged(config):
    model = tiny_llama()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(pk.AdapterError, match="get_peft_model"):
        pk.inject_adapter_in_model(config, model)
    assert model.state_dict().keys() == before.keys() and not hasattr(model, "peft_config")


def test_plain_module_state_dicts_move_both_ways_with_peft():
    theirs = peft.inject_adapter_in_model(lora(peft), tiny_llama())
    randomize_lora_weights(theirs)
    ours = pk.inject_adapter_in_model(lora(pk), tiny_llama())
    saved = peft.get_peft_model_state_dict(theirs)
    assert pk.set_peft_model_state_dict(ours, saved) == ([], [])
    mine = pk.get_peft_model_state_dict(ours)
    assert mine.keys() == saved.keys() and all(torch.equal(mine[k], saved[k]) for k in saved)
    inputs = example_inputs("llama")
    torch.testing.assert_close(model_outputs(ours, inputs), model_outputs(theirs, inputs))


def test_a_bad_state_dict_changes_nothing():
    model = pk.inject_adapter_in_model(lora(pk), tiny_llama())
    before = {k: v.clone() for k, v in pk.get_peft_model_state_dict(model).items()}
    bad = {**{k: v + 1 for k, v in before.items()}, "model.layers.0.mlp.up_proj.lora_A.weight": torch.zeros(4, 32)}
    with pytest.raises(pk.CheckpointError, match="up_proj"):
        pk.set_peft_model_state_dict(model, bad)
    after = pk.get_peft_model_state_dict(model)
    assert all(torch.equal(after[k], before[k]) for k in before)
    with pytest.raises(pk.AdapterError, match="ignore_mismatched_sizes"):
        pk.set_peft_model_state_dict(model, before, ignore_mismatched_sizes=True)


def test_peft_model_state_dict_equals_peft():
    ours = pk.get_peft_model(tiny_llama(), lora(pk))
    theirs = peft.get_peft_model(tiny_llama(), lora(peft))
    ours.load_state_dict(trained_like(theirs))
    mine, reference = pk.get_peft_model_state_dict(ours), peft.get_peft_model_state_dict(theirs)
    assert mine.keys() == reference.keys() and all(torch.equal(mine[k], reference[k]) for k in mine)


@pytest.mark.parametrize("family", ["llama", "bert", "bert_tok", "t5"])
@pytest.mark.parametrize("with_task", [True, False])
def test_get_peft_model_and_from_pretrained_return_peft_s_class(family, with_task, tmp_path):
    from tiny_models import TASK_TYPES

    task = {"task_type": TASK_TYPES[family]} if with_task else {}
    targets = {"target_modules": ["query", "value"] if family.startswith("bert") else ["q", "v"] if family == "t5" else ["q_proj"]}
    ours = pk.get_peft_model(make_model(family), pk.LoraConfig(r=2, **targets, **task))
    theirs = peft.get_peft_model(make_model(family), peft.LoraConfig(r=2, **targets, **task))
    assert type(ours).__name__ == type(theirs).__name__
    assert isinstance(ours, pk.PeftModel) and isinstance(ours, getattr(pk, type(ours).__name__))
    ours.save_pretrained(tmp_path / "ours")
    theirs.save_pretrained(tmp_path / "theirs")
    for folder in ("ours", "theirs"):
        loaded = pk.PeftModel.from_pretrained(make_model(family), tmp_path / folder)
        assert type(loaded).__name__ == type(theirs).__name__
        reference = peft.PeftModel.from_pretrained(make_model(family), tmp_path / folder)
        assert type(reference).__name__ == type(theirs).__name__


def test_task_classes_are_peft_models_and_the_mapping_matches_peft():
    assert set(pk.MODEL_TYPE_TO_PEFT_MODEL_MAPPING) == set(peft.MODEL_TYPE_TO_PEFT_MODEL_MAPPING)
    for task, cls in pk.MODEL_TYPE_TO_PEFT_MODEL_MAPPING.items():
        assert issubclass(cls, pk.PeftModel) and cls.__name__ == peft.MODEL_TYPE_TO_PEFT_MODEL_MAPPING[task].__name__
        assert cls.forward is pk.PeftModel.forward  # a name, no logic of its own


def test_get_peft_model_options():
    half = tiny_llama().to(torch.bfloat16)
    kept = pk.get_peft_model(half, lora(pk), autocast_adapter_dtype=False)
    assert {p.dtype for n, p in kept.named_parameters() if "lora_" in n} == {torch.bfloat16}
    upcast = pk.get_peft_model(tiny_llama().to(torch.bfloat16), lora(pk))
    assert {p.dtype for n, p in upcast.named_parameters() if "lora_" in n} == {torch.float32}
    assert pk.get_peft_model(tiny_llama(), lora(pk), revision="v2").peft_config["default"].revision == "v2"
    mixed = pk.get_peft_model(tiny_llama(), lora(pk), mixed=True)  # peft's class for mixing methods
    assert type(mixed) is pk.PeftMixedModel and type(mixed).__name__ == peft.PeftMixedModel.__name__


@pytest.mark.parametrize(
    "name",
    ["inject_adapter_in_model", "get_peft_model_state_dict", "set_peft_model_state_dict", "get_peft_model"],
)
def test_signatures_are_peft_s(name):
    ours = list(inspect.signature(getattr(pk, name)).parameters)
    theirs = list(inspect.signature(getattr(peft, name)).parameters)
    assert ours == theirs


def test_base_model_state_dict_round_trip_under_original_keys():
    import torch.nn as nn

    torch.manual_seed(0)
    original = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    expected = {k: v.clone() for k, v in original.state_dict().items()}
    model = pk.get_peft_model(original, pk.LoraConfig(target_modules=["0"], modules_to_save=["1"]))
    got = pk.get_base_model_state_dict(model)
    assert set(got) == set(expected) and all(torch.equal(got[k], expected[k]) for k in expected)
    fresh = {k: torch.zeros_like(v) for k, v in expected.items()}
    pk.set_base_model_state_dict(model, fresh)
    assert all(not v.any() for v in pk.get_base_model_state_dict(model).values())
    assert model.base_model.model[0].lora_A["default"].weight.abs().sum() > 0  # adapters untouched
    with pytest.raises(pk.CheckpointError, match="missing keys"):
        pk.set_base_model_state_dict(model, {"0.weight": expected["0.weight"]})
    # not strict: what is missing or extra is reported in the base model's own key names, never the adapters'
    result = pk.set_base_model_state_dict(model, {"0.weight": expected["0.weight"], "2.weight": fresh["0.weight"]},
                                          strict=False)
    assert result.missing_keys == ["0.bias", "1.bias", "1.weight"] and result.unexpected_keys == ["2.weight"]
    assert pk.set_base_model_state_dict(model, expected, strict=False) == ([], [])
    assert model.targeted_module_names == ["0"]
    assert torch.equal(model.base_model.model[0].get_delta_weight("default"), model.base_model.model[0].delta_weight("default"))


def test_base_model_state_dict_through_nested_wrappers():
    """LoRA on nn.MultiheadAttention holds a second LoRA layer on its out_proj: both steps go."""
    import torch.nn as nn

    class Attention(nn.Module):
        def __init__(self):
            super().__init__()
            self.mha, self.lin0 = nn.MultiheadAttention(8, 2), nn.Linear(8, 2)

    original = Attention()
    expected = {k: v.clone() for k, v in original.state_dict().items()}
    model = pk.get_peft_model(original, pk.LoraConfig(target_modules=["mha", "lin0"]))
    got = pk.get_base_model_state_dict(model)
    assert set(got) == set(expected) == set(peft.get_base_model_state_dict(
        peft.get_peft_model(Attention(), peft.LoraConfig(target_modules=["mha", "lin0"]))))
    assert all(torch.equal(got[k], expected[k]) for k in expected)
    pk.set_base_model_state_dict(model, {k: torch.zeros_like(v) for k, v in expected.items()})
    assert not model.base_model.model.mha.base_layer.out_proj.base_layer.weight.any()


def test_only_one_adapter_may_train_the_base_biases():
    """peft's rule and words: the base biases would be shared by two adapters with bias != 'none'."""
    import torch.nn as nn

    model = pk.get_peft_model(nn.Sequential(nn.Linear(4, 4)), pk.LoraConfig(target_modules=["0"], bias="all"))
    with pytest.raises(ValueError, match="supports only 1 adapter with bias"):
        model.add_adapter("other", pk.LoraConfig(target_modules=["0"], bias="lora_only"))
    assert "other" not in model.peft_config
    model.add_adapter("plain", pk.LoraConfig(target_modules=["0"]))  # bias="none" beside it is fine
