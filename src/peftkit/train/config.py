"""The run configuration (``load_run_config("run.yaml")``): one YAML file that describes a whole run in sections
model, adapter (``method`` plus the method's own config fields), data, train, eval, output, tracking. Every problem
(unknown key, wrong type, bad value, sections that do not fit together) is reported at once as ``(dotted path,
message)``, with "did you mean". ``data.train``/``data.eval`` are read relative to the *current working directory*
and must exist, unless they look like a Hugging Face dataset id (``name`` or ``user/name``: at most one slash, no
leading dot, no data-file extension such as ``.jsonl``), which the data loader resolves.

This module is the front: :class:`RunConfig`, loading, writing and the config version. The sections' schema is in
:mod:`~peftkit.train.config_schema`, the checks in :mod:`~peftkit.train.config_checks`, command-line overrides in
:mod:`~peftkit.train.config_overrides`; their public names are importable from here too.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Iterable, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict

from ..config import PeftConfig
from ..errors import ConfigError, CorruptFileError
from ..names import short_repr
from ..untrusted import decode_utf8, read_bytes
from .config_checks import Validation, did_you_mean, find_method
from .config_overrides import apply_overrides
from .config_schema import (ADAPTER_RUN_KEYS, FORMATS, METRIC_TASKS, REQUIRED, RUN_OWNED, SECTIONS, SYNONYMS,
                            TASK_FORMATS, TASK_TYPES, DataSection, EvalSection, ModelSection, OutputSection,
                            PathLike, Problem, TrackingSection, TrainSection)
from .yaml_io import MAX_BYTES, Dumper, Loader, load_yaml

__all__ = ["ADAPTER_RUN_KEYS", "FORMATS", "METRIC_TASKS", "REQUIRED", "RUN_OWNED", "SECTIONS", "SYNONYMS",
           "TASK_FORMATS", "TASK_TYPES", "DataSection", "EvalSection", "ModelSection", "OutputSection",
           "Problem", "RunConfig", "TrackingSection", "TrainSection", "UNVERSIONED", "apply_overrides",
           "config_hash", "did_you_mean", "dump_yaml", "load_run_config", "resolved_dict", "validate_file"]


class RunConfig(BaseModel):
    """A validated run config; building one raises :class:`ConfigError` listing every problem.
    ``adapter`` is a plain dict: ``method`` first, then every field of the method's config.

    >>> cfg = RunConfig(model={"name": "gpt2"}, adapter={"method": "LORA", "r": 4},
    ...                 data={"train": "user/dataset", "format": "text"})
    >>> cfg.model.task_type, cfg.adapter["method"], cfg.adapter["lora_alpha"], cfg.train.lr
    ('CAUSAL_LM', 'lora', 8, 0.0002)
    """
    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model: ModelSection
    adapter: dict[str, Any]
    data: DataSection
    train: TrainSection = TrainSection()
    eval: EvalSection = EvalSection()
    output: OutputSection = OutputSection()
    tracking: TrackingSection = TrackingSection()

    def __init__(self, **data: Any):
        checked = Validation(data, check_files=False)
        if checked.problems:
            raise ConfigError("Invalid run config:", checked.problems)
        super().__init__(**checked.parts)

    # pydantic's own model_validate skips __init__, and with it every check beyond the types.
    model_validate = classmethod(lambda cls, obj, **kwargs: obj if isinstance(obj, cls) else cls(**obj))

    def adapter_config(self, total_steps: Optional[int] = None) -> PeftConfig:
        """The adapter's config object, with task_type, base_model_name_or_path and revision taken
        from the model section, and the settings the method derives from the run's ``total_steps``
        (``train.max_steps`` if not given) filled where the section leaves them unset (see
        ``MethodSpec.run_defaults``): ``cfg.adapter_config().task_type`` -> ``TaskType.CAUSAL_LM``."""
        fields = {k: v for k, v in self.adapter.items() if k not in ADAPTER_RUN_KEYS}
        return find_method(self.adapter["method"]).config_cls(
            **{**fields, **self.derived_settings(total_steps)}, task_type=self.model.task_type,
            base_model_name_or_path=self.model.name, revision=self.model.revision)

    def derived_settings(self, total_steps: Optional[int] = None) -> dict[str, Any]:
        """The adapter fields the run fills from its ``total_steps`` (``train.max_steps`` if not
        given) because the section leaves them unset: ``{"total_step": 100}`` for AdaLoRA, ``{}``
        for most methods."""
        spec = find_method(self.adapter["method"])
        if spec.run_defaults is None:
            return {}
        fields = {k: v for k, v in self.adapter.items() if k not in ADAPTER_RUN_KEYS}
        return spec.run_defaults(fields, total_steps if total_steps is not None else self.train.max_steps)


# YAML 1.2 floats (2e-4 is a number) and limits against alias bombs: see peftkit.train.yaml_io.
_Loader, _Dumper = Loader, Dumper


def load_run_config(path: PathLike, overrides: Iterable[str] = ()) -> RunConfig:
    """Read a YAML run config, apply overrides and validate; raise :class:`ConfigError` listing every
    problem: ``load_run_config("examples/quickstart.yaml", ["train.max_steps=5"])``."""
    try:
        raw = load_yaml(decode_utf8(read_bytes(path, MAX_BYTES), path))
        problem = ("the file is empty; it needs at least the model, adapter and data sections" if raw is None else
                   None if isinstance(raw, dict) else f"the top level must be a mapping of sections, not {short_repr(raw)}")
    except (OSError, CorruptFileError) as e:
        problem = ("no such file" if isinstance(e, FileNotFoundError) else getattr(e, "reason", None)
                   or getattr(e, "strerror", None) or str(e))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = f"invalid YAML{where}: {getattr(e, 'problem', None) or e}"
    if problem:  # the file itself is unusable: nothing else can be checked
        raise ConfigError(f"Cannot read run config {path}:", [("", f"{path}: {problem}")])
    problems = apply_overrides(raw, overrides) + Validation(raw, check_files=True).problems
    if problems:
        raise ConfigError(f"Invalid run config {path}:", problems)
    return RunConfig(**raw)


def validate_file(path: PathLike, overrides: Iterable[str] = ()) -> list[Problem]:
    """Every problem of a run config file as ``(dotted path, message)``, ``[]`` when it is fine; those
    of the file itself (missing, not YAML, empty) have the path ``""`` and name the file:
    ``validate_file("run.yaml", ["train.learning_rate=1"])[0]`` -> ``("train.learning_rate", ...)``."""
    try:
        load_run_config(path, overrides)
    except ConfigError as e:
        return list(e.problems)
    return []


def resolved_dict(cfg: RunConfig) -> dict[str, Any]:
    """The config with every default filled in (the adapter's too), as plain JSON/YAML types:
    ``resolved_dict(cfg)["train"]["scheduler"]`` -> ``'cosine'``."""
    return {name: json.loads(json.dumps(cfg.adapter)) if name == "adapter"
            else getattr(cfg, name).model_dump(mode="json") for name in SECTIONS}


def dump_yaml(cfg: RunConfig, path: PathLike) -> None:
    """Write the resolved config, atomically, as YAML that :func:`load_run_config` reads back to an
    equal config: ``dump_yaml(cfg, "runs/x/config.yaml")``."""
    text = yaml.dump(resolved_dict(cfg), Dumper=_Dumper, sort_keys=False, allow_unicode=True)
    (tmp := Path(f"{path}.tmp")).parent.mkdir(parents=True, exist_ok=True)
    tmp.write_text(f"# peftkit run config, defaults filled in; config_hash {config_hash(cfg)}\n{text}", "utf-8")
    os.replace(tmp, path)  # a crash never leaves a half-written config behind


# Sections that say where a run's outputs go, not what is trained: left out of the config version.
UNVERSIONED = ("output", "tracking")
# Fields added after runs already existed: at these defaults they are left out of the version, so a
# run made before they existed keeps its version (and still agrees with its re-runs).
LATER_DEFAULTS = {("model", "quantization"): None, ("train", "optimizer"): "adamw"}


def config_hash(cfg: Union[RunConfig, dict[str, Any]]) -> str:
    """The config *version*: 12 hex digits of the sha256 of the resolved config's canonical JSON
    without ``output`` (where the run is written, and its name) and ``tracking`` (where metrics are
    sent): key order, number spelling and spelled-out defaults do not change it. ``adapter.from``
    counts as its adapter's content fingerprint, not its path (see peftkit.tracking.lineage).
    ``config_hash(cfg)`` -> ``'3f2a9c0d1b7e'``."""
    cfg = cfg if isinstance(cfg, RunConfig) else RunConfig(**cfg)
    data = {k: v for k, v in resolved_dict(cfg).items() if k not in UNVERSIONED}
    for (section, key), default in LATER_DEFAULTS.items():
        if data[section].get(key, default) == default:
            data[section].pop(key, None)
    if data["adapter"].get("from"):
        from ..tracking.lineage import versioned_source

        data["adapter"]["from"] = versioned_source(data["adapter"]["from"])
    # 32 and 32.0 are the same alpha: integral floats are written as ints (bools stay bools).
    data = json.loads(json.dumps(data), parse_float=lambda t: int(float(t)) if float(t).is_integer() else float(t))
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]
