"""peftkit: parameter-efficient fine-tuning with the Hugging Face ``peft`` API and file format.

Example:
    >>> import peftkit as pk
    >>> model = pk.get_peft_model(base, pk.LoraConfig(r=16, lora_alpha=32, target_modules="all-linear"))  # doctest: +SKIP
"""

from .config import PeftConfig, PeftType, TaskType
from .errors import (
    AdapterError,
    AdapterNotFoundError,
    CheckpointError,
    ConfigError,
    ConfigTypeError,
    CorruptFileError,
    MergeError,
    NoMatchingPeftModuleError,
    PathError,
    PeftkitError,
    PeftWarning,
    TargetError,
)
from .layers import BASE_ADAPTER, AdapterLayer
from .modules_to_save import ModulesToSaveWrapper
from .methods.bitfit import BitFitConfig
from .methods.bottleneck import BottleneckConfig
from .methods.ia3 import IA3Config
from .methods.ln_tuning import LNTuningConfig
from .methods.loha import LoHaConfig
from .methods.lokr import LoKrConfig
from .methods.lora import LoraConfig
from .methods.p_tuning import PromptEncoderConfig, PromptEncoderReparameterizationType
from .methods.prefix_tuning import PrefixTuningConfig
from .methods.prompt_tuning import PromptTuningConfig, PromptTuningInit
from .methods.vera import VeraConfig
from .methods.adalora import AdaLoraConfig
from .auto import (
    AutoPeftModel,
    AutoPeftModelForCausalLM,
    AutoPeftModelForFeatureExtraction,
    AutoPeftModelForQuestionAnswering,
    AutoPeftModelForSeq2SeqLM,
    AutoPeftModelForSequenceClassification,
    AutoPeftModelForTokenClassification,
)
from .model import (
    MODEL_TYPE_TO_PEFT_MODEL_MAPPING,
    PeftModel,
    PeftModelForCausalLM,
    PeftModelForFeatureExtraction,
    PeftModelForQuestionAnswering,
    PeftModelForSeq2SeqLM,
    PeftModelForSequenceClassification,
    PeftModelForTokenClassification,
    get_peft_model,
)
from .mixed_model import PeftMixedModel
from .hotswap import hotswap_adapter, hotswap_adapter_from_state_dict, prepare_model_for_compiled_hotswap
from . import quantized
from .peft_api import (
    get_base_model_state_dict,
    get_peft_model_state_dict,
    inject_adapter_in_model,
    set_base_model_state_dict,
    set_peft_model_state_dict,
)
from .quantized.training import prepare_model_for_kbit_training
from .status import TunerLayerStatus, TunerModelStatus, get_layer_status, get_model_status
from .registry import (
    LayerFactory,
    MethodSpec,
    get_method,
    register_method,
    registered_methods,
)

__version__ = "0.1.0"

__all__ = [
    "AdaLoraConfig",
    "AdapterError",
    "AdapterNotFoundError",
    "AdapterLayer",
    "AutoPeftModel",
    "AutoPeftModelForCausalLM",
    "AutoPeftModelForFeatureExtraction",
    "AutoPeftModelForQuestionAnswering",
    "AutoPeftModelForSeq2SeqLM",
    "AutoPeftModelForSequenceClassification",
    "AutoPeftModelForTokenClassification",
    "BASE_ADAPTER",
    "BitFitConfig",
    "BottleneckConfig",
    "CheckpointError",
    "ConfigError",
    "ConfigTypeError",
    "CorruptFileError",
    "IA3Config",
    "LNTuningConfig",
    "LayerFactory",
    "LoHaConfig",
    "LoKrConfig",
    "LoraConfig",
    "MODEL_TYPE_TO_PEFT_MODEL_MAPPING",
    "MergeError",
    "MethodSpec",
    "ModulesToSaveWrapper",
    "NoMatchingPeftModuleError",
    "PeftConfig",
    "PeftMixedModel",
    "PeftModel",
    "PeftModelForCausalLM",
    "PeftModelForFeatureExtraction",
    "PeftModelForQuestionAnswering",
    "PeftModelForSeq2SeqLM",
    "PeftModelForSequenceClassification",
    "PeftModelForTokenClassification",
    "PeftType",
    "PeftWarning",
    "PathError",
    "PeftkitError",
    "PrefixTuningConfig",
    "PromptEncoderConfig",
    "PromptEncoderReparameterizationType",
    "PromptTuningConfig",
    "PromptTuningInit",
    "TargetError",
    "TaskType",
    "TunerLayerStatus",
    "TunerModelStatus",
    "VeraConfig",
    "get_base_model_state_dict",
    "get_layer_status",
    "get_method",
    "get_model_status",
    "get_peft_model",
    "get_peft_model_state_dict",
    "hotswap_adapter",
    "hotswap_adapter_from_state_dict",
    "prepare_model_for_compiled_hotswap",
    "inject_adapter_in_model",
    "prepare_model_for_kbit_training",
    "quantized",
    "register_method",
    "registered_methods",
    "set_base_model_state_dict",
    "set_peft_model_state_dict",
]
