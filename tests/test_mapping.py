"""peft's lookup tables by peft type (peftkit.mapping), read from the registry."""

from __future__ import annotations

import pytest

import peftkit as pk
from peftkit.mapping import PEFT_TYPE_TO_CONFIG_MAPPING, PEFT_TYPE_TO_PREFIX_MAPPING, PEFT_TYPE_TO_TUNER_MAPPING


@pytest.mark.parametrize(
    "peft_type, config_cls, prefix, shared",
    [
        ("LORA", pk.LoraConfig, "lora_", False), ("ADALORA", pk.AdaLoraConfig, "lora_", False),
        ("IA3", pk.IA3Config, "ia3_", False), ("LOHA", pk.LoHaConfig, "hada_", False),
        ("LOKR", pk.LoKrConfig, "lokr_", False), ("VERA", pk.VeraConfig, "vera_lambda_", True),
        ("LN_TUNING", pk.LNTuningConfig, "ln_tuning_", False),
        ("PROMPT_TUNING", pk.PromptTuningConfig, "prompt_tuning_", True),
        ("PREFIX_TUNING", pk.PrefixTuningConfig, "prefix_tuning_", True),
    ],
)
def test_tables_answer_as_peft(peft_type, config_cls, prefix, shared):
    assert PEFT_TYPE_TO_CONFIG_MAPPING[peft_type] is config_cls
    assert PEFT_TYPE_TO_CONFIG_MAPPING[pk.PeftType(peft_type)] is config_cls
    assert PEFT_TYPE_TO_PREFIX_MAPPING[peft_type] == prefix
    assert PEFT_TYPE_TO_TUNER_MAPPING[peft_type].uses_shared_state is shared


def test_unknown_peft_type_is_a_key_error_listing_the_known_ones():
    with pytest.raises(KeyError, match="'BOFT' is not a registered method"):
        PEFT_TYPE_TO_CONFIG_MAPPING["BOFT"]
    assert "LORA" in set(PEFT_TYPE_TO_TUNER_MAPPING) and len(PEFT_TYPE_TO_PREFIX_MAPPING) >= 10
