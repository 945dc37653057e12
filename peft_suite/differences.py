"""Deliberate differences from peft: tests that check behaviour peftkit chooses not to have.

Each entry is a regular expression searched in the test id and the reason; the same list, with the
same reasons, is in docs/peft-compatibility.md. Keep it short: a difference is a decision, not a
place to park failures.

Example::

    >>> deliberate_difference("tests/test_custom_models.py::TestPeftCustomModel::test_save_pretrained_pickle[x]")
    'peftkit never writes or loads pickles (safe_serialization=False is refused)'
"""

from __future__ import annotations

import re
from typing import Optional

DIFFERENCES: list[tuple[str, str]] = [
    (r"::test_save_pretrained_pickle\[", "peftkit never writes or loads pickles (safe_serialization=False is refused)"),
    (r"::test_from_pretrained_forward_compatible", "an adapter_config.json key peftkit does not know, with a "
     "non-default value, is an error in peftkit (peft warns and ignores it): an adapter never loads with "
     "silently different behaviour (DESIGN: configs are strict; keys at their default value only warn)"),
    (r"::test_peft_version_", "peft_version records which peft release wrote a file (patched through peft's "
                              "private peft.config.__version__ / _get_commit_hash); peftkit is not peft and "
                              "does not claim a peft version (it accepts the key when reading)"),
    (r"::test_save_pretrained_with_target_modules\[|TestAdaLoraInitialization::test_adalora_target_modules_set$", "a list target_modules stays a list in peftkit (a set is "
     "accepted and sorted); peft turns lists into sets. Keeping the order makes saved configs and the training "
     "runs versioned by them byte-reproducible (a set of strings iterates in a per-process order); membership, "
     "iteration and the saved adapter_config.json (a list either way) behave the same"),
    (r"TestModelAndLayerStatus::test_mixed_model_raises$", "peft refuses get_layer_status / get_model_status on a "
     "PeftMixedModel; peftkit reports a mixed model's layers too (each layer of a stack, the inner ones at "
     "<path>.base_layer), since mixed stacks are where irregular states are most likely"),
    (r"::test_ia3_is_feedforward_subset_invalid_config$", "the test compares the whole error text (an anchored "
     "regex); peftkit raises the same ValueError with peft's sentence in it, but every config error names the "
     "config class, each wrong field and its fix, one line per problem"),
    (r"TestLoraInitialization::test_(lora_config_pissa_olora_warns\[config_kwargs\d+-True\]|"
     r"(pissa|olora)_(rank|alpha)_pattern_and_rslora_raises$)",
     "peft cannot convert a PiSSA/OLoRA adapter that combines rsLoRA with rank_pattern/alpha_pattern "
     "(save_pretrained(path_initial_model_for_weight_conversion=...)), so it warns when such a config is made "
     "and raises on the conversion; peftkit converts it correctly (each pattern's alpha is scaled so that "
     "alpha/sqrt(2r) keeps the trained scale; tests/methods/test_pissa_conversion.py checks the outputs on the "
     "original base, and that peft loads the file), so it neither warns nor raises"),
    (r"TestLoraInitialization::test_modules_to_save_targets_lora_layer_raises$", "peft can wrap a module inside "
     "its own LoRA layer when modules_to_save names the adapter (lora_A.<name>) and raises for it; peftkit never "
     "looks for modules_to_save inside adapter layers, so the conflict cannot arise and nothing is raised"),
    (r"TestLoraInitialization::test_lora_with_bias_argument\[invalid\]$", "an invalid bias value is refused when "
     "the LoraConfig is made (a ConfigError, a ValueError, naming the allowed values); peft accepts the config and "
     "raises NotImplementedError later, in get_peft_model"),
    (r"TestFindMinimalTargetModules::test_find_minimal_target_modules_not_disjoint_raises\[", "the test matches "
     "peft's whole sentence, which sends users to peft's issue tracker; peftkit raises the same ValueError for "
     "overlapping names, naming them, without pointing at another project's tracker"),
    (r"TestCustomModelConfigWarning::test_warning_name_custom_model", "peft overwrites a base_model_name_or_path "
     "the user set with model.name_or_path (None for a custom model) and warns; peftkit keeps the user's value "
     "(peftkit train records the run's model name there, which a snapshot path or None would lose) and fills it "
     "only when it is empty"),
    (r"TestVeraInitialization::test_vera_(mixing_save_projection_raises|add_second_adapter_with_incompatible_input_shape|"
     r"add_second_adapter_with_higher_rank)$", "peft sizes VeRA's shared projections by the first adapter and "
     "refuses a second adapter with larger layers, a higher rank or another save_projection; peftkit gives each "
     "adapter its own projection pair (saved under the adapter's own keys), so those adapters work"),
    (r"::test_disable_adapters_exiting_context_irregular_state\[", "leaving disable_adapter() with some layers "
     "switched off by hand, peft switches every layer back on (its test calls this the status quo), which silently "
     "undoes the user's choice; peftkit warns with peft's sentence and puts each layer back as it was"),
    (r"TestMixedAdapterBatches::test_mixed_adapter_batches_(training_mode|lora_with_dora)_raises(\[|$)", "peftkit runs "
     "batches that mix adapters row by row in training mode and with DoRA (each row's output equals that "
     "adapter's alone: tests/kernels/test_multi_lora.py, tests/methods/test_dora*.py); peft refuses both"),
    (r"::test_delete_adapter_multiple_adapters_with_modules_to_save$", "when the last adapter that saves a module "
     "is deleted, peftkit puts the original module back; peft keeps an empty wrapper that can no longer run "
     "forward"),
    (r"TestRequiresGrad::test_requires_grad_adalora_(same|different)_targets$", "set_adapter(name) without "
     "inference_mode keeps an adapter whose config is in inference mode (loaded without is_trainable=True, or made "
     "with inference_mode=True) frozen; peft makes every activated adapter trainable unless inference_mode=True "
     "is passed, so a frozen adapter starts training by being selected. set_adapter(name, inference_mode=False) "
     "trains it in both libraries"),
]


def deliberate_difference(nodeid: str) -> Optional[str]:
    """The reason a test checks a deliberate difference, or None."""
    return next((reason for pattern, reason in DIFFERENCES if re.search(pattern, nodeid)), None)
