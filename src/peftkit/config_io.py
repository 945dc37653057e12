"""Configs on disk and on the Hub: ``adapter_config.json`` written and read as ``peft`` does, the
method chosen by its ``peft_type``, keys peftkit does not model dropped or refused. A mixin of
:class:`~peftkit.config.PeftConfig` (which holds the fields and their checks).

Example:
    >>> LoraConfig(r=8, target_modules=["q_proj"]).save_pretrained("out/adapter")   # doctest: +SKIP
    >>> type(PeftConfig.from_pretrained("out/adapter")).__name__                    # doctest: +SKIP
    'LoraConfig'
"""

from __future__ import annotations

import difflib
import json
import os
import warnings
from typing import TYPE_CHECKING, Any, Optional

from .errors import ConfigError, CorruptFileError, NotAConfigError
from .hub import resolve_file
from .untrusted import read_json

if TYPE_CHECKING:
    from .config import PeftConfig

CONFIG_NAME = "adapter_config.json"

# Marks a peft-only key whose value never matters (bookkeeping such as "peft_version").
ANY_VALUE = object()


def _is_empty(value: Any) -> bool:
    return value is None or value is False or value == {} or value == []


def _did_you_mean(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else ""


class ConfigFiles:
    """``save_pretrained`` / ``push_to_hub`` / ``from_pretrained`` / ``from_dict`` for configs."""

    def save_pretrained(self, save_directory: str | os.PathLike, auto_mapping_dict: Optional[dict] = None, **_: Any) -> None:
        """Write ``adapter_config.json`` into ``save_directory`` (created if needed).
        ``auto_mapping_dict`` (base model class and library, for adapters without a task type) is
        written as ``auto_mapping``, as peft does, so ``AutoPeftModel`` can rebuild the base model.

        Example:
            >>> LoraConfig(target_modules=["q"]).save_pretrained("out/adapter")  # doctest: +SKIP
        """
        os.makedirs(save_directory, exist_ok=True)
        path = os.path.join(save_directory, CONFIG_NAME)
        tmp = path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            data = self.to_dict() if auto_mapping_dict is None else {**self.to_dict(), "auto_mapping": auto_mapping_dict}
            json.dump(data, f, indent=2, sort_keys=True)
            f.write("\n")
        os.replace(tmp, path)  # never leave a half-written config behind

    def push_to_hub(self, repo_id: str, *, commit_message: Optional[str] = None, token: bool | str | None = None,
                    private: Optional[bool] = None, revision: Optional[str] = None, create_pr: bool = False, **_: Any) -> str:
        """Upload ``adapter_config.json`` to the Hub repository ``repo_id`` (created if needed).

        Example:
            >>> LoraConfig(r=8, target_modules=["q_proj"]).push_to_hub("me/lora-config")  # doctest: +SKIP
        """
        from .hub import push_folder

        return push_folder(self.save_pretrained, repo_id, commit_message=commit_message or "Upload config",
                           token=token, private=private, revision=revision, create_pr=create_pr)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> "PeftConfig":
        """Build a config from a dict as found in ``adapter_config.json``.

        Called on :class:`PeftConfig` itself, the method is chosen by ``data["peft_type"]``.
        Keys that ``peft`` writes but peftkit does not model are dropped when they hold their
        "unused" value, and rejected otherwise.
        """
        data = dict(data)
        peft_type = data.pop("peft_type", None)
        target = cls
        if cls.peft_type == "":
            from .registry import get_method

            if peft_type is None:
                raise ConfigError(f"Invalid {source}:", [("peft_type", "missing; cannot tell which method this is")])
            target = get_method(str(peft_type), source=source).config_cls
        elif peft_type is None and source != "config":  # a file: every adapter_config.json names its method
            raise NotAConfigError(  # peft's words first (its tests match them), then ours
                f"The {cls.__name__} config that is trying to be loaded is missing required keys: {{'peft_type'}}.",
                [("peft_type", f"missing from {source}: it is not an adapter config (adapter_config.json written by "
                               f"peft or peftkit always has it)")])
        elif peft_type is not None and str(peft_type) != cls.peft_type:
            raise ConfigError(
                f"Invalid {source}:",
                [("peft_type", f"is {peft_type!r} but {cls.__name__} reads {cls.peft_type!r} configs")],
            )
        kept = target._drop_peft_only_keys(data, source)
        if source == "config":
            return target(**kept)
        try:
            return target(**kept)
        except ConfigError as e:  # say which file the bad values came from
            raise ConfigError(f"Invalid {source} ({target.__name__}):", e.problems) from None

    @classmethod
    def _drop_peft_only_keys(cls, data: dict[str, Any], source: str) -> dict[str, Any]:
        fields = set(cls.model_fields)
        kept, problems = {}, []
        for key, value in data.items():
            if key in fields:
                kept[key] = value
            elif key in cls.peft_only_keys:
                unused = cls.peft_only_keys[key]
                if unused is not ANY_VALUE and value != unused and not _is_empty(value):
                    problems.append((key, f"peftkit does not support this peft feature (value {value!r}); remove it"))
            elif _is_empty(value):
                warnings.warn(f"{source}: ignoring unknown key {key!r} (value {value!r})", stacklevel=3)
            else:
                hint = _did_you_mean(key, sorted(fields))
                problems.append((key, f"unknown key with a non-default value {value!r}{hint}"))
        if problems:
            raise ConfigError(f"{source} cannot be loaded as {cls.__name__}:", problems)
        return kept

    @classmethod
    def from_json_file(cls, path_json_file: str | os.PathLike, **_: Any) -> dict[str, Any]:
        """The JSON object in ``path_json_file`` as a dict (peft's ``PeftConfig.from_json_file``;
        build a config from it with :meth:`from_dict`). A ``runtime_config`` entry (settings of
        one run that peft never saves on purpose) is dropped, as peft does.

        Example:
            >>> PeftConfig.from_json_file("out/adapter/adapter_config.json")["peft_type"]  # doctest: +SKIP
            'LORA'
        """
        data = read_json(str(path_json_file))
        if isinstance(data, dict) and data.pop("runtime_config", None) is not None:
            warnings.warn(f"{path_json_file}: ignoring the saved runtime_config (it holds settings of one run)")
        return data

    @classmethod
    def from_peft_type(cls, **kwargs: Any) -> "PeftConfig":
        """A config of the method named by ``kwargs["peft_type"]`` (``cls`` itself without one) from
        the other keyword arguments (peft's ``PeftConfig.from_peft_type``).

        Example:
            >>> type(PeftConfig.from_peft_type(peft_type="LORA", r=4)).__name__
            'LoraConfig'
        """
        if "peft_type" not in kwargs:
            return cls(**kwargs)
        return cls.from_dict(kwargs)

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike,
        subfolder: Optional[str] = None,
        revision: Optional[str] = None,
        **hub_kwargs: Any,
    ) -> "PeftConfig":
        """Read ``adapter_config.json`` from a local folder or a Hugging Face Hub repository.

        Example:
            >>> cfg = PeftConfig.from_pretrained("out/adapter")  # doctest: +SKIP
            >>> type(cfg).__name__  # doctest: +SKIP
            'LoraConfig'
        """
        path = resolve_file(pretrained_model_name_or_path, CONFIG_NAME, subfolder, revision, **hub_kwargs)
        try:
            data = read_json(path)
        except CorruptFileError as e:
            raise ConfigError(f"Invalid {path}:", [("", f"{e.reason}; re-save the adapter")]) from None
        if not isinstance(data, dict):
            raise ConfigError(f"Invalid {path}:", [("", "expected a JSON object")])
        return cls.from_dict(data, source=str(path))
