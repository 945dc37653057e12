"""``AutoPeftModel*``: load a saved adapter together with the base model its config names.

``AutoPeftModelForCausalLM.from_pretrained("out/adapter")`` reads ``adapter_config.json``, loads
``base_model_name_or_path`` with the matching ``transformers`` Auto class (a local folder, a hub id,
or one of peftkit's bundled models), grows its vocabulary when the adapter folder holds a larger
tokenizer, and loads the adapter onto it: the same steps and checks as ``peft.AutoPeftModel*``.
"""

from __future__ import annotations

import importlib
import json
import os
from typing import Any, Optional

import torch.nn as nn

from .config import CONFIG_NAME, PeftConfig
from .hub import resolve_file
from .errors import ConfigError
from .model import MODEL_TYPE_TO_PEFT_MODEL_MAPPING, PeftModel

TOKENIZER_CONFIG_NAME = "tokenizer_config.json"
# Libraries whose classes an adapter config's ``auto_mapping`` may name (peft's default list): the
# class is imported by name from the file, so a file must not be able to import anything at all.
DEFAULT_IMPORT_ALLOWLIST = ("diffusers", "lerobot", "megatron-core", "transformers")


class _BaseAutoPeftModel:
    """``from_pretrained`` shared by the ``AutoPeftModel*`` classes; each names its Auto class."""

    _target_class: Optional[str] = None  # transformers Auto class name
    _target_peft_class: type[PeftModel] = PeftModel

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise TypeError(f"{type(self).__name__} is not instantiated: use {type(self).__name__}.from_pretrained(path)")

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike,
        adapter_name: str = "default",
        is_trainable: bool = False,
        config: Optional[PeftConfig] = None,
        revision: Optional[str] = None,
        import_allowlist: Optional[list[str]] = None,
        **kwargs: Any,
    ) -> PeftModel:
        """The base model named in the adapter's config, loaded with this class's Auto class, with the
        adapter on it. ``kwargs`` go to the base model's ``from_pretrained`` (``dtype=``...).

        Example:
            >>> model = pk.AutoPeftModelForCausalLM.from_pretrained("out/adapter")   # doctest: +SKIP
            >>> type(model).__name__                                                # doctest: +SKIP
            'PeftModelForCausalLM'
        """
        path = str(pretrained_model_name_or_path)
        peft_config = PeftConfig.from_pretrained(path, revision=revision)
        target_class = cls._base_model_class(path, peft_config, revision, import_allowlist)
        base_model = _load_base_model(target_class, peft_config, kwargs)
        _grow_vocabulary(base_model, path, revision)
        return cls._target_peft_class.from_pretrained(
            base_model, path, adapter_name=adapter_name, is_trainable=is_trainable, config=config, revision=revision
        )

    @classmethod
    def _base_model_class(
        cls, path: str, peft_config: PeftConfig, revision: Optional[str], import_allowlist: Optional[list[str]]
    ) -> type:
        task = getattr(peft_config.task_type, "value", peft_config.task_type)
        if task is not None:
            expected = MODEL_TYPE_TO_PEFT_MODEL_MAPPING[task]
            if cls._target_class is None or cls._target_peft_class is not expected:
                raise ConfigError(
                    f"{path}/{CONFIG_NAME}:",
                    [("task_type", f"is {task!r}, which {cls.__name__} does not load; use AutoPeftModelFor"
                                   f"{expected.__name__.removeprefix('PeftModelFor')}")],
                )
            import transformers

            return getattr(transformers, cls._target_class)
        return _auto_mapping_class(path, revision, import_allowlist or list(DEFAULT_IMPORT_ALLOWLIST))


def _auto_mapping_class(path: str, revision: Optional[str], allowlist: list[str]) -> type:
    """The base model class recorded in the config's ``auto_mapping`` (written by peft for adapters
    without a task type), imported only from an allowed library."""
    with open(resolve_file(path, CONFIG_NAME, revision=revision), encoding="utf-8") as f:
        mapping = json.load(f).get("auto_mapping") or {}
    library, class_name = mapping.get("parent_library"), mapping.get("base_model_class")
    if not library or not class_name:
        raise ConfigError(
            f"{path}/{CONFIG_NAME}:",
            [("task_type", "is not set and there is no auto_mapping naming the base model class; use the "
                           "AutoPeftModelFor<Task> class for the model, or load the base model yourself and call "
                           "PeftModel.from_pretrained(base, path)")],
        )
    if not any(library == allowed or library.startswith(allowed + ".") for allowed in allowlist):
        raise ConfigError(
            f"{path}/{CONFIG_NAME}:",
            [("auto_mapping.parent_library", f"{library!r} is not in the import allowlist {allowlist}; if importing it is "
                                             f"safe, pass import_allowlist=[{library!r}]")],
        )
    return getattr(importlib.import_module(library), class_name)


def _load_base_model(target_class: type, peft_config: PeftConfig, kwargs: dict) -> nn.Module:
    from .models import resolve_model

    name = peft_config.base_model_name_or_path
    if not name:
        raise ConfigError(
            "adapter_config.json:",
            [("base_model_name_or_path", "is not set, so the base model is unknown; load it yourself and call "
                                         "PeftModel.from_pretrained(base, path)")],
        )
    resolved = resolve_model(name)  # bundled names (smollm2-135m-instruct, ...) work offline
    load_kwargs = {"revision": peft_config.revision, **resolved.from_pretrained_kwargs(), **kwargs}
    if load_kwargs["revision"] is None:
        del load_kwargs["revision"]
    return target_class.from_pretrained(resolved.name_or_path, **load_kwargs)


def _grow_vocabulary(base_model: nn.Module, path: str, revision: Optional[str]) -> None:
    """An adapter trained after adding tokens is saved with its tokenizer: the embeddings grow to fit
    it before the adapter loads (as peft does)."""
    if not hasattr(base_model, "get_input_embeddings"):
        return
    try:
        resolve_file(path, TOKENIZER_CONFIG_NAME, revision=revision)
    except FileNotFoundError:
        return
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path, revision=revision)
    if len(tokenizer) > base_model.get_input_embeddings().weight.shape[0]:
        base_model.resize_token_embeddings(len(tokenizer))


class AutoPeftModel(_BaseAutoPeftModel):
    """Loads an adapter without a task type, onto the class its config's ``auto_mapping`` names."""


def _auto_peft_class(task: str, auto_class: str) -> type[_BaseAutoPeftModel]:
    """``AutoPeftModelFor<Task>``: loads ``task`` adapters onto ``transformers.<auto_class>``."""
    peft_class = MODEL_TYPE_TO_PEFT_MODEL_MAPPING[task]
    name = "AutoPeftModel" + peft_class.__name__.removeprefix("PeftModel")
    doc = f"Loads a ``{task}`` adapter onto ``transformers.{auto_class}`` as a :class:`{peft_class.__name__}`."
    attributes = {"_target_class": auto_class, "_target_peft_class": peft_class, "__doc__": doc, "__module__": __name__}
    return type(name, (_BaseAutoPeftModel,), attributes)


AutoPeftModelForCausalLM = _auto_peft_class("CAUSAL_LM", "AutoModelForCausalLM")
AutoPeftModelForSeq2SeqLM = _auto_peft_class("SEQ_2_SEQ_LM", "AutoModelForSeq2SeqLM")
AutoPeftModelForSequenceClassification = _auto_peft_class("SEQ_CLS", "AutoModelForSequenceClassification")
AutoPeftModelForTokenClassification = _auto_peft_class("TOKEN_CLS", "AutoModelForTokenClassification")
AutoPeftModelForQuestionAnswering = _auto_peft_class("QUESTION_ANS", "AutoModelForQuestionAnswering")
AutoPeftModelForFeatureExtraction = _auto_peft_class("FEATURE_EXTRACTION", "AutoModel")
