"""Which peftkit object each peft name resolves to, module by module; the only list to edit.

An entry is ``"module:attribute"`` (a peftkit public object, re-exported as is), ``NA(why)`` (a peft
method or variant peftkit does not implement: a stand-in, tests using it are not applicable) or
``MISSING(why)`` (peft API peftkit lacks: a stand-in, tests using it fail until peftkit has it).
"""

from __future__ import annotations

from typing import NamedTuple


class NA(NamedTuple):
    why: str


class MISSING(NamedTuple):
    why: str


def _methods(*names: str) -> dict[str, NA]:
    return {name: NA(f"peft method {name[:-6] if name.endswith('Config') else name} is not in peftkit") for name in names}


def _lora_variants(*names: str) -> dict[str, NA]:
    return {name: NA(f"LoRA variant {name} is not in peftkit") for name in names}


TOP_LEVEL = {
    "AdaLoraConfig": "peftkit:AdaLoraConfig",
    "IA3Config": "peftkit:IA3Config",
    "LNTuningConfig": "peftkit:LNTuningConfig",
    "LoHaConfig": "peftkit:LoHaConfig",
    "LoKrConfig": "peftkit:LoKrConfig",
    "LoraConfig": "peftkit:LoraConfig",
    "PeftConfig": "peftkit:PeftConfig",
    "PeftModel": "peftkit:PeftModel",
    "PeftModelForCausalLM": "peftkit:PeftModelForCausalLM",
    "PeftModelForFeatureExtraction": "peftkit:PeftModelForFeatureExtraction",
    "PeftModelForQuestionAnswering": "peftkit:PeftModelForQuestionAnswering",
    "PeftModelForSeq2SeqLM": "peftkit:PeftModelForSeq2SeqLM",
    "PeftModelForSequenceClassification": "peftkit:PeftModelForSequenceClassification",
    "PeftModelForTokenClassification": "peftkit:PeftModelForTokenClassification",
    "PeftType": "peftkit:PeftType",
    "PrefixTuningConfig": "peftkit:PrefixTuningConfig",
    "PromptEncoder": "peftkit.methods.p_tuning:PromptEncoder",
    "PromptEncoderConfig": "peftkit:PromptEncoderConfig",
    "PromptLearningConfig": "peftkit.methods.prompt_learning:PromptLearningConfig",
    "PromptTuningConfig": "peftkit:PromptTuningConfig",
    "TaskType": "peftkit:TaskType",
    "VeraConfig": "peftkit:VeraConfig",
    "PeftError": "peftkit:PeftkitError",
    "convert_to_lora": "peftkit.arithmetic.convert:convert_to_lora",
    "get_peft_model": "peftkit:get_peft_model",
    "get_peft_model_state_dict": "peftkit:get_peft_model_state_dict",
    "inject_adapter_in_model": "peftkit:inject_adapter_in_model",
    "prepare_model_for_kbit_training": "peftkit:prepare_model_for_kbit_training",
    "set_peft_model_state_dict": "peftkit:set_peft_model_state_dict",
    "PeftWarning": "peftkit:PeftWarning",
    "NoMatchingPeftModuleError": "peftkit:NoMatchingPeftModuleError",
    "PeftMixedModel": "peftkit:PeftMixedModel",
    "get_base_model_state_dict": "peftkit:get_base_model_state_dict",
    "set_base_model_state_dict": "peftkit:set_base_model_state_dict",
    "get_layer_status": "peftkit:get_layer_status",
    "get_model_status": "peftkit:get_model_status",
    **_methods(
        "AdamssConfig", "AdaptionPromptConfig", "BOFTConfig", "BeftConfig", "C3AConfig", "CPTConfig",
        "CartridgeConfig", "DeftConfig", "DeloraConfig", "FourierFTConfig", "FrodConfig", "GloraConfig",
        "GraloraConfig", "HRAConfig", "HiraConfig", "LilyConfig", "MissConfig", "MultitaskPromptTuningConfig",
        "OFTConfig", "OSFConfig", "PeanutConfig", "PolyConfig", "PsoftConfig", "PveraConfig", "RandLoraConfig",
        "RoadConfig", "ShadowConfig", "ShiraConfig", "SupertuningConfig", "TinyLoraConfig",
        "TrainableTokensConfig", "UniLoraConfig", "VBLoRAConfig", "WaveFTConfig", "XLoraConfig",
    ),
    **_lora_variants("EvaConfig", "KasaConfig", "LoftQConfig", "MontecloraConfig", "VeloraConfig"),
}

SUBMODULES = {
    "peft.config": {"PeftConfig": "peftkit:PeftConfig"},
    "peft.mapping": {
        "PEFT_TYPE_TO_CONFIG_MAPPING": "peftkit.mapping:PEFT_TYPE_TO_CONFIG_MAPPING",
        "PEFT_TYPE_TO_TUNER_MAPPING": "peftkit.mapping:PEFT_TYPE_TO_TUNER_MAPPING",
        "PEFT_TYPE_TO_PREFIX_MAPPING": "peftkit.mapping:PEFT_TYPE_TO_PREFIX_MAPPING",
    },
    "peft.tuners": {},
    "peft.tuners._buffer_dict": {"BufferDict": "peftkit.methods.vera:BufferDict"},
    "peft.tuners.tuners_utils": {
        "BaseTunerLayer": "peftkit:AdapterLayer",
        "BaseTuner": "peftkit.model:BaseModelHolder",  # peft's tuner object: peft_model.base_model
        "check_target_module_exists": "peftkit.targets:check_target_module_exists",
        "inspect_matched_modules": "peftkit.targets:inspect_matched_modules",
        "_maybe_include_all_linear_layers": "peftkit.targets:include_all_linear_layers",
        "_find_minimal_target_modules": "peftkit.target_names:find_minimal_target_modules",
        "_filter_state_dict_by_key_prefixes": "peftkit.state_keys:filter_by_key_prefixes",
        "_get_tuner_state_dict_key_prefixes": "peftkit.state_keys:adapter_key_prefixes",
    },
    "peft.tuners.lora": {"LoraLayer": "peftkit.methods.lora_layers:LoraLayer",
                         "Linear": "peftkit.methods.lora_layers:LoraLinear",
                         "Embedding": "peftkit.methods.lora_layers:LoraEmbedding"},
    "peft.tuners.lora.layer": {"LoraLayer": "peftkit.methods.lora_layers:LoraLayer",
                               "Linear": "peftkit.methods.lora_layers:LoraLinear",
                               "Embedding": "peftkit.methods.lora_layers:LoraEmbedding"},
    "peft.tuners.lora.config": _lora_variants("ArrowConfig", "BdLoraConfig", "CordaConfig", "EvaConfig",
                                              "KasaConfig", "LoraGAConfig", "VeloraConfig"),
    "peft.tuners.lora.model": {"TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING": "peftkit.targets:DEFAULT_TARGETS"},
    "peft.tuners.lora.corda": _lora_variants("preprocess_corda"),
    "peft.tuners.lora.monteclora": _lora_variants("MontecloraSampler"),
    "peft.tuners.lokr": {"LoKrLayer": "peftkit.methods.lokr:LoKrLayer"},
    "peft.tuners.lokr.layer": {"LoKrLayer": "peftkit.methods.lokr:LoKrLayer"},
    "peft.tuners.lily": {},
    "peft.tuners.lily.layer": _methods("LilyLayer"),
    "peft.tuners.delora": {},
    "peft.tuners.delora.model": _methods("TRANSFORMERS_MODELS_TO_DELORA_TARGET_MODULES_MAPPING"),
    # imported by diffusers at import time when it finds peft installed
    "peft.helpers": {"disable_input_dtype_casting": MISSING("disable_input_dtype_casting is not in peftkit")},
    "peft.utils": {
        "ModulesToSaveWrapper": "peftkit:ModulesToSaveWrapper",
        # peft's base class of its two auxiliary wrappers; peftkit has one of the two
        "AuxiliaryTrainingWrapper": "peftkit:ModulesToSaveWrapper",
        "INCLUDE_LINEAR_LAYERS_SHORTHAND": "peftkit.targets:ALL_LINEAR",
        "TrainableTokensWrapper": NA("peft method TrainableTokens is not in peftkit"),
        "_get_submodules": "peftkit.tree:get_submodules",
        "infer_device": "peftkit.devices:infer_device",
    },
    "peft.utils.other": {
        "ModulesToSaveWrapper": "peftkit:ModulesToSaveWrapper",
        "prepare_model_for_kbit_training": "peftkit:prepare_model_for_kbit_training",
        "_get_module_names_tied_with_embedding": "peftkit.weight_tying:tied_module_names",
        "_get_no_split_modules": "peftkit.devices:no_split_modules",
    },
    "peft.utils.constants": {
        "DUMMY_MODEL_CONFIG": "peftkit.model:DUMMY_MODEL_CONFIG",
        "MIN_TARGET_MODULES_FOR_OPTIMIZATION": "peftkit.target_names:MIN_TARGET_MODULES_FOR_OPTIMIZATION",
    },
    "peft.utils.hotswap": {
        "hotswap_adapter": "peftkit:hotswap_adapter",
        "prepare_model_for_compiled_hotswap": "peftkit:prepare_model_for_compiled_hotswap",
    },
    "peft.utils.quantization_utils": {"Bnb8bitBackend": MISSING("peftkit has no quantization backend objects")},
    # Facts about the environment that peft's test helpers ask at import time (which optional
    # packages are installed, which transformers release runs); not peft behaviour.
    "peft.import_utils": {},
}
