"""Configs answer the standard dataclasses API as peft's dataclass configs do (replace, fields,
asdict), and an unexpected keyword argument is a TypeError as for any Python callable."""

from __future__ import annotations

import dataclasses

import pytest

import peftkit as pk
from peftkit.errors import ConfigError, UnknownFieldError


@pytest.mark.parametrize("config", [
    pk.LoraConfig(r=4, lora_alpha=8, target_modules=["q", "v"], rank_pattern={"q": 2}),
    pk.IA3Config(target_modules=["k"], feedforward_modules=[]),
    pk.LoHaConfig(r=2, target_modules=["q"]),
    pk.PromptTuningConfig(num_virtual_tokens=3, task_type="CAUSAL_LM"),
])
def test_replace_copies_every_field_and_changes_only_the_named_ones(config):
    name = "inference_mode"
    copy = dataclasses.replace(config, **{name: not getattr(config, name)})
    assert type(copy) is type(config) and copy is not config
    assert getattr(copy, name) is not getattr(config, name)
    assert copy.model_dump(exclude={name}) == config.model_dump(exclude={name})
    # the copy owns its containers: changing it leaves the original alone
    if isinstance(config, pk.LoraConfig):
        copy.rank_pattern["v"] = 1
        assert config.rank_pattern == {"q": 2}


def test_fields_and_asdict_list_the_config_fields():
    config = pk.LoraConfig(r=4, target_modules=["q"])
    assert [f.name for f in dataclasses.fields(config)] == list(type(config).model_fields)
    assert dataclasses.is_dataclass(config)
    assert dataclasses.asdict(config)["r"] == 4


def test_replace_validates_the_copy_like_any_config():
    with pytest.raises(ConfigError, match="r"):
        dataclasses.replace(pk.LoraConfig(r=4, target_modules=["q"]), r=0)


def test_an_unknown_keyword_is_a_type_error_and_a_config_error():
    with pytest.raises(TypeError) as info:
        pk.IA3Config(target_modules=["k"], bias="all")  # IA3 has no bias field (as in peft)
    assert isinstance(info.value, UnknownFieldError) and isinstance(info.value, ConfigError)
    assert "bias" in str(info.value)
    with pytest.raises(ConfigError) as info:
        pk.LoraConfig(r=-1)
    assert not isinstance(info.value, TypeError)  # a bad value stays a ValueError


def test_a_file_without_peft_type_is_not_an_adapter_config(tmp_path):
    """peft's rule and words: any JSON is not a config; the error is a TypeError and a ConfigError."""
    import json

    from peftkit.errors import NotAConfigError

    (tmp_path / "adapter_config.json").write_text(json.dumps({"foo": "bar", "baz": 123}))
    for cls in (pk.LoraConfig, pk.IA3Config, pk.PromptEncoderConfig):
        with pytest.raises(TypeError, match=r"missing required keys: \{'peft_type'\}") as info:
            cls.from_pretrained(tmp_path)
        assert isinstance(info.value, NotAConfigError) and "adapter_config.json" in str(info.value)
    assert pk.LoraConfig.from_dict({"r": 4}).r == 4  # a dict built in code needs no peft_type
