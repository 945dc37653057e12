"""How peft_suite.classify assigns peft's tests to methods and decides what applies to peftkit."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import pytest  # noqa: E402

from peft_suite.classify import method_of, runtime_not_applicable, static_not_applicable  # noqa: E402
from peft_suite.differences import deliberate_difference  # noqa: E402


def _cls(name: str) -> type:
    return type(name, (), {})


@pytest.mark.parametrize(
    "params, nodeid, expected",
    [
        ({"config_cls": _cls("LoraConfig"), "config_kwargs": {"target_modules": ["lin0"]}}, "f::t[x]", "LoRA"),
        ({"config_cls": _cls("LoraConfig"), "config_kwargs": {"use_dora": True}}, "f::t[x]", "DoRA"),
        ({"config_cls": _cls("AdaLoraConfig")}, "f::t", "AdaLoRA"),
        ({"config_class": _cls("PromptEncoderConfig"), "mandatory_kwargs": {}}, "f::t", "P-tuning"),
        ({"configs": (_cls("LoraConfig"), _cls("BOFTConfig"))}, "f::t", "BOFT (not in peftkit)"),
        ({}, "tests/test_initialization.py::TestAdaLoraInitialization::test_x", "AdaLoRA"),
        ({}, "tests/test_other.py::TestOft::test_soft_thing", "oft (not in peftkit)"),
        ({}, "tests/test_other.py::TestThing::test_soft_prompts_save", "general"),
        ({}, "tests/test_other.py::TestIA3Weights::test_x", "IA3"),
        # state-dict key prefixes are method-agnostic; prefix tuning keeps its word
        ({}, "tests/test_tuners_utils.py::TestTunerStateDictKeyPrefixes::test_prefixes_lora", "general"),
        ({}, "tests/test_other.py::TestPrefixTuning::test_x", "prefix tuning"),
        ({}, "tests/test_initialization.py::TestLoraInitialization::test_lora_init_orthogonal_odd_rank_raises",
         "init orthogonal (not in peftkit)"),
        ({}, "tests/test_initialization.py::TestLoraInitialization::test_lora_mica_freezes_B", "mica (not in peftkit)"),
        ({}, "tests/test_custom_models.py::TestRequiresGrad::test_loading_model_with_trainble_tokens_requires_grad_set_"
             "correctly[x]", "trainble token (not in peftkit)"),
    ],
)
def test_method_of(params, nodeid, expected):
    assert method_of(params, nodeid) == expected


def test_a_config_instance_names_its_method_and_variant():
    config = type("LoraConfig", (), {"use_dora": True, "init_lora_weights": True})()
    assert method_of({"config": config}, "f::t") == "DoRA"
    eva = type("LoraConfig", (), {"use_dora": False, "init_lora_weights": "eva"})()
    assert static_not_applicable({"config": eva}, "f::t") == "LoRA variant EVA is not in peftkit"


@pytest.mark.parametrize(
    "params, expected",
    [
        ({"config_cls": _cls("LoraConfig"), "config_kwargs": {"target_modules": ["lin0"]}}, None),
        ({"config_cls": _cls("LoraConfig"), "config_kwargs": {"use_bdlora": {"x": 1}}}, "LoRA variant BD-LoRA is not in peftkit"),
        ({"config_cls": _cls("LoraConfig"), "config_kwargs": {"lora_bias": True}}, None),  # peftkit's to implement
        ({"config_cls": _cls("GloraConfig")}, "peft method Glora is not in peftkit"),
        # two-adapter tests pass one config_kwargs per adapter
        ({"config_cls": _cls("LoraConfig"), "config_kwargs_1": {"target_modules": ["lin0"]},
          "config_kwargs_2": {"trainable_token_indices": {"emb": [3]}}}, "LoRA variant trainable tokens is not in peftkit"),
    ],
)
def test_static_not_applicable(params, expected):
    assert static_not_applicable(params, "f::t") == expected


def test_runtime_reasons_follow_the_exception_chain():
    NotInPeftkit = type("NotInPeftkit", (NotImplementedError,), {})
    try:
        try:
            raise NotInPeftkit("peft.BOFTConfig: peft method BOFT is not in peftkit")
        except NotImplementedError as inner:
            raise RuntimeError("wrapped") from inner
    except RuntimeError as outer:
        assert runtime_not_applicable(outer) == "peft.BOFTConfig: peft method BOFT is not in peftkit"
    assert runtime_not_applicable(AssertionError("outputs differ")) is None
    missing = ModuleNotFoundError("No module named 'awq.x'", name="awq.x")
    assert runtime_not_applicable(missing) == "needs the optional package 'awq', not in the lock"
    assert runtime_not_applicable(ModuleNotFoundError("x", name="peftkit.gone")) is None


def test_deliberate_differences_match_by_test_id():
    assert "pickles" in deliberate_difference("tests/test_custom_models.py::T::test_save_pretrained_pickle[a]")
    assert deliberate_difference("tests/test_custom_models.py::T::test_save_pretrained[a]") is None


def test_an_unknown_variant_option_or_no_network_is_not_applicable():
    from peftkit.errors import UnknownFieldError

    error = UnknownFieldError("Invalid LoraConfig:", [("trainable_token_indices", "unknown field for LoraConfig")])
    assert runtime_not_applicable(error) == "LoRA variant trainable tokens is not in peftkit"
    typo = UnknownFieldError("Invalid LoraConfig:", [("rr", "unknown field for LoraConfig")])
    assert runtime_not_applicable(typo) is None  # a real failure
    connect = type("ConnectError", (Exception,), {})("[Errno -2] Name or service not known")
    assert runtime_not_applicable(connect) == "needs the network (the suite runs offline)"
