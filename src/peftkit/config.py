"""Adapter configurations: typed, strict, and written in the Hugging Face ``peft`` JSON format.

Every method's config is a pydantic model that subclasses :class:`PeftConfig`. Field names and
meanings follow ``peft`` so that ``adapter_config.json`` files move both ways. Invalid values fail
when the config is built (or a field is assigned), with every problem listed by field name. Reading
and writing the file is :mod:`peftkit.config_io`'s part.
"""

from __future__ import annotations

import math
import re
from enum import Enum
from typing import Any, ClassVar, Optional, Union

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from .config_io import ANY_VALUE, CONFIG_NAME, ConfigFiles, _did_you_mean  # noqa: F401  (re-exported names)
from .dataclass_view import dataclass_fields
from .errors import ConfigError, ConfigTypeError, UnknownFieldError
from .names import short_repr



class TaskType(str, Enum):
    """The model family an adapter is for; same values as ``peft.TaskType``."""

    CAUSAL_LM = "CAUSAL_LM"
    SEQ_CLS = "SEQ_CLS"
    SEQ_2_SEQ_LM = "SEQ_2_SEQ_LM"
    TOKEN_CLS = "TOKEN_CLS"
    QUESTION_ANS = "QUESTION_ANS"
    FEATURE_EXTRACTION = "FEATURE_EXTRACTION"


class PeftType(str, Enum):
    """Built-in method names as written in ``adapter_config.json``. Plugins may add any string."""

    LORA = "LORA"
    ADALORA = "ADALORA"
    IA3 = "IA3"
    VERA = "VERA"
    LOHA = "LOHA"
    LOKR = "LOKR"
    PROMPT_TUNING = "PROMPT_TUNING"
    P_TUNING = "P_TUNING"
    PREFIX_TUNING = "PREFIX_TUNING"
    LN_TUNING = "LN_TUNING"
    # peftkit's own methods (peft has neither)
    BOTTLENECK = "BOTTLENECK"
    BITFIT = "BITFIT"

    # A member reads as its plain value in text (f-strings, str(), file names), as peft's does
    # when written out; ``.value`` is there for code that asks for it (peft's tests, model cards).
    def __str__(self) -> str:
        return str.__str__(self)

    def __format__(self, spec: str) -> str:
        return str.__format__(str.__str__(self), spec)


def _problems(cls_name: str, error: ValidationError, fields: list[str]) -> list[tuple[str, str]]:
    """Turn pydantic's error list into ``(field, message)`` pairs a person can act on."""
    problems: list[tuple[str, str]] = []
    seen: set[str] = set()
    for err in error.errors():
        loc = [str(p) for p in err["loc"]]
        path = loc[0] if loc else ""
        if path in seen:  # one message per field; union branches otherwise repeat themselves
            continue
        seen.add(path)
        if err["type"] == "extra_forbidden":
            msg = f"unknown field for {cls_name}{_did_you_mean(path, fields)}"
        else:
            msg = err["msg"].removeprefix("Value error, ")
            if "input" in err and err["type"] != "missing":
                msg += f", got {short_repr(err['input'])}"
        problems.append((path, msg))
    return problems


class PeftConfig(ConfigFiles, BaseModel):
    """Fields shared by every adapter config, with ``peft``'s names.

    Example:
        >>> from peftkit import LoraConfig
        >>> LoraConfig(r=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM").r
        8
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())

    # Name written as "peft_type" in adapter_config.json; each method sets its own.
    peft_type: ClassVar[str] = ""
    # Keys that `peft` writes for this method but that peftkit has no field for, with the value
    # that means "feature not used". Read at that value they are dropped silently; any other
    # value is a feature we cannot honour, so reading it is an error rather than a silent change.
    peft_only_keys: ClassVar[dict[str, Any]] = {"auto_mapping": ANY_VALUE, "peft_version": ANY_VALUE}

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        # dataclasses.replace / fields / asdict work on every config, as on peft's (dataclass_view.py)
        type.__setattr__(cls, "__dataclass_fields__", dataclass_fields(cls))

    def custom_layer_factories(self) -> list:
        """Layer factories this config brings for its own adapters (:class:`peftkit.registry.LayerFactory`),
        tried before the method's; none by default (LoRA's ``_register_custom_module`` adds some).
        They are not saved: a config read back from disk registers them again, as in peft."""
        return []

    task_type: Optional[TaskType] = None
    base_model_name_or_path: Optional[str] = None
    revision: Optional[str] = None
    inference_mode: bool = False

    @field_validator("task_type", mode="before")
    @classmethod
    def _known_task_type(cls, value: Any) -> Any:
        if value is None or isinstance(value, TaskType) or value in {t.value for t in TaskType}:
            return value
        # peft's wording, which code written for peft matches
        raise ValueError(f"Invalid task type: '{value}'. Must be one of the following task types: {', '.join(TaskType)}.")

    def __init__(self, **data: Any):
        title = f"Invalid {type(self).__name__}:"
        # peft accepts a peft_type argument and then sets the class's own (its __post_init__): the
        # class decides the method, so the argument is dropped here too
        data.pop("peft_type", None)
        try:
            super().__init__(**data)
            problems = self.check()
        except ValidationError as e:
            problems = _problems(type(self).__name__, e, list(type(self).model_fields))
            kinds = [err["type"] for err in e.errors()]
            error = (UnknownFieldError if "extra_forbidden" in kinds
                     else ConfigTypeError if all(kind.endswith("_type") for kind in kinds) else ConfigError)
            raise error(title, problems + self._cross_field_problems(data, problems)) from None
        except (TypeError, AttributeError, KeyError, IndexError, OverflowError) as e:
            # a validator (a plugin's, say) that met a value of a shape it did not expect: still a
            # config problem, reported as one (the values may come from a file someone else wrote)
            raise ConfigError(title, [("", f"values of an unexpected shape ({type(e).__name__}: {e})")]) from None
        if problems:
            raise ConfigError(title, problems)

    @classmethod
    def _cross_field_problems(cls, data: dict[str, Any], known: list[tuple[str, str]]) -> list[tuple[str, str]]:
        """Cross-field checks on unvalidated input, so that every problem is reported at once."""
        fields = set(cls.model_fields)
        try:
            draft = cls.model_construct(**{k: v for k, v in data.items() if k in fields})
            found = draft.check()
        except Exception:  # the invalid values already reported may make the checks meaningless
            return []
        reported = {path for path, _ in known}
        return [(path, msg) for path, msg in found if path not in reported]

    def __setattr__(self, name: str, value: Any) -> None:
        title = f"Invalid {type(self).__name__}:"
        old = getattr(self, name, None)
        try:
            super().__setattr__(name, value)
        except ValidationError as e:
            raise ConfigError(title, _problems(type(self).__name__, e, list(type(self).model_fields))) from None
        problems = self.check() if name in type(self).model_fields else []
        if problems:
            super().__setattr__(name, old)  # leave the config as it was
            raise ConfigError(title, problems)

    def check(self) -> list[tuple[str, str]]:
        """Cross-field checks; return ``(field, problem)`` pairs. Subclasses extend this."""
        return []

    def for_loading(self) -> "PeftConfig":
        """A copy used to build layers whose values will be overwritten by a checkpoint: methods
        whose initialisation is costly switch it off here."""
        return self.model_copy(deep=True)

    def base_changing_init(self) -> Optional[str]:
        """The name of this config's initialisation if it rewrites the base model's weights
        (LoRA's PiSSA and OLoRA move part of each weight into the adapter), else None. Loading
        such an adapter re-runs it; peftkit then warns when it shares a model with other adapters.

        Example:
            >>> LoraConfig(init_lora_weights="pissa").base_changing_init()  # doctest: +SKIP
            'PiSSA'
        """
        return None

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict[str, Any]:
        """The config as ``peft`` writes it in ``adapter_config.json``."""
        data = self.model_dump(mode="json")
        data["peft_type"] = self.peft_type
        return data



def _normalise_names(value: Any, field: str) -> Any:
    """Accept a regex string, or any iterable of module names; store names as a list."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, (list, tuple, set, frozenset)):
        names = list(value)
        if not all(isinstance(v, str) and v for v in names):
            raise ValueError("must be a regex string or a list of non-empty module names")
        # sets come from peft configs; sort them so saved configs are reproducible
        return sorted(names) if isinstance(value, (set, frozenset)) else list(dict.fromkeys(names))
    raise ValueError("must be a regex string or a list of module names")


class TargetedConfig(PeftConfig):
    """Fields of methods that adapt chosen layers: which modules, and which layers of the stack."""

    target_modules: Optional[Union[str, list[str]]] = None
    exclude_modules: Optional[Union[str, list[str]]] = None
    modules_to_save: Optional[list[str]] = None
    layers_to_transform: Optional[Union[int, list[int]]] = None
    layers_pattern: Optional[Union[str, list[str]]] = None

    @field_validator("target_modules", "exclude_modules", mode="before")
    @classmethod
    def _names(cls, value: Any, info: Any) -> Any:
        return _normalise_names(value, info.field_name)

    @field_validator("modules_to_save", mode="before")
    @classmethod
    def _save_names(cls, value: Any) -> Any:
        value = _normalise_names(value, "modules_to_save")
        return [value] if isinstance(value, str) else value

    @field_validator("layers_to_transform")
    @classmethod
    def _layers(cls, value: Any) -> Any:
        indices = [value] if isinstance(value, int) else (value or [])
        if any(i < 0 for i in indices):
            raise ValueError("layer indices must be >= 0")
        return value

    def check(self) -> list[tuple[str, str]]:
        problems = super().check() + regex_problems(self)
        # Each message starts with peft's sentence for the same mistake, so code that matches peft's
        # errors keeps working; ours adds the fix.
        if self.layers_pattern and self.layers_to_transform is None:
            problems.append(("layers_pattern", "When `layers_pattern` is specified, `layers_to_transform` must also be "
                             "specified. Set both (layers_pattern names the stack, layers_to_transform the indices)"))
        if isinstance(self.target_modules, str):
            for field in ("layers_to_transform", "layers_pattern"):
                if getattr(self, field) not in (None, "", []):  # layer index 0 counts
                    problems.append((field, f"`{field}` cannot be used when `target_modules` is a str. A regex "
                                     "target_modules chooses layers itself: put the layer index in the regex"))
        return problems


# How each kind of pattern is used when matching module paths (see peftkit.targets): a pattern is
# compiled the same way here, so that a broken one fails when the config is made, naming its field.
_PATTERN_USES = {"target_modules": "{}", "exclude_modules": "{}", "layers_pattern": r"(?:^|.*?\.){}\.(\d+)\.",
                 "rank_pattern": r"(.*\.)?({})$", "alpha_pattern": r"(.*\.)?({})$"}


def regex_problems(config: PeftConfig) -> list[tuple[str, str]]:
    """``(field, problem)`` for every pattern of ``config`` that is not a valid regular expression:
    a string ``target_modules`` / ``exclude_modules``, ``layers_pattern``, and the keys of
    ``rank_pattern`` / ``alpha_pattern`` (and of any other ``*_pattern`` mapping a method adds)."""
    problems = []
    for field in type(config).model_fields:
        value = getattr(config, field, None)
        if field in ("target_modules", "exclude_modules"):
            patterns = [value] if isinstance(value, str) else []
        elif field == "layers_pattern":
            patterns = [value] if isinstance(value, str) else list(value or [])
        elif field.endswith("_pattern") and isinstance(value, dict):
            patterns = [k for k in value if isinstance(k, str)]
        else:
            continue
        for pattern in patterns:
            try:
                re.compile(_PATTERN_USES.get(field, "{}").format(pattern))
            except (re.error, RecursionError, OverflowError) as e:
                why = getattr(e, "msg", None) or str(e) or type(e).__name__
                problems.append((field, f"{short_repr(pattern)} is not a valid regular expression ({why}); "
                                        "escape special characters, or give a list of module names"))
                break
    return problems


def mapping_values(value: Any) -> list[Any]:
    """Validator helper: the values of a ``{module name or regex: value}`` mapping (``rank_pattern``,
    ``alpha_pattern``); None counts as empty; anything else is an error naming the expected shape."""
    if value is None:
        return []
    if not isinstance(value, dict):
        raise ValueError("must be a mapping of module name (or regex) to a value, e.g. {'q_proj': 16}")
    return list(value.values())


def finite_number(value: Any, field: str) -> Any:
    """Validator helper: a real int/float (not a bool), finite."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(float(value)):
        raise ValueError("must be a finite number")
    return value
