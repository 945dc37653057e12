"""Every problem of a raw run config at once: each section validated by its schema model, the
adapter section by its method's config class, then the checks between sections (task and format,
metrics and eval data, optimizer and device) and, when loading from a file, the data files and
output folder. Problems are ``(dotted path, message)`` pairs with "did you mean".

Example:
    >>> from peftkit.train.config_checks import Validation
    >>> Validation({"model": {"name": "gpt2"}, "adapter": {"method": "lora"}, "data": {"train": "user/set",
    ...             "format": "text"}, "train": {"learning_rate": 1}}, check_files=False).problems
    [('train.learning_rate', "unknown key; did you mean 'lr'?")]
"""

from __future__ import annotations

import difflib
import os
import re
from typing import Any, Iterable, Optional

from pydantic import BaseModel, ValidationError

from ..errors import ConfigError
from ..names import short_repr
from ..registry import MethodSpec, registered_methods
from . import runs
from .config_descriptions import FORMAT_FIELDS, run_owned_message
from .config_schema import (ADAPTER_RUN_KEYS, METRIC_TASKS, REQUIRED, RUN_OWNED, SECTIONS, SYNONYMS, TASK_FORMATS,
                            TASK_TYPES, _Section)
from .optimizers import optimizer_problem
from .tasks.catalog import TASK_INFO

def did_you_mean(key: str, choices: list[str]) -> str:
    if SYNONYMS.get(key) in choices:
        return f"; did you mean '{SYNONYMS[key]}'?"
    lower = {c.lower(): c for c in choices}  # case-insensitive: "Train" -> "train", "causal_lm"
    close = difflib.get_close_matches(str(key).lower(), list(lower), n=1, cutoff=0.6)
    return f"; did you mean '{lower[close[0]]}'?" if close else ""


def _planned_steps(raw: dict[str, Any]) -> Optional[int]:
    """``train.max_steps`` of a raw config when it is valid: the run's step count, known before its data."""
    train = raw.get("train")
    steps = train.get("max_steps") if isinstance(train, dict) else None
    return steps if isinstance(steps, int) and not isinstance(steps, bool) and steps > 0 else None


def _raw_task(raw: dict[str, Any]) -> Optional[str]:
    """``train.task`` of a raw config when it is a known task (its default, sft, when left out)."""
    train = raw.get("train") if isinstance(raw.get("train"), dict) else {}
    task = train.get("task", "sft")
    return task if task in TASK_TYPES else None


def find_method(name: str) -> MethodSpec:
    """A method by peft_type, case-insensitive, '-' for '_': "lora", "LORA", "prefix-tuning"."""
    methods = {key.upper(): spec for key, spec in registered_methods().items()}
    if str(name).upper().replace("-", "_") not in methods:
        known = sorted(k.lower() for k in methods)
        raise ConfigError("Invalid adapter:", [("adapter.method", f"unknown method {name!r} (known: "
                                                f"{', '.join(known)}){did_you_mean(str(name), known)}")])
    return methods[str(name).upper().replace("-", "_")]


def _model_at(cls: type[BaseModel], loc: tuple) -> type[BaseModel]:
    """The pydantic model holding the field at ``loc`` inside section ``cls`` (``model.quantization.bits``
    is a field of the quantization config, not of the model section)."""
    for part in loc[:-1]:
        field = cls.model_fields.get(str(part))
        annotations = getattr(field.annotation, "__args__", (field.annotation,)) if field else ()
        inner = next((a for a in annotations if isinstance(a, type) and issubclass(a, BaseModel)), None)
        if inner is None:
            break
        cls = inner
    return cls


class Validation:
    """Collects every problem of a raw config. ``parts``: each section validated, or (with errors) a
    draft with the bad keys at their defaults; ``bad``: those keys, which cross-section checks skip."""

    def __init__(self, raw: dict[str, Any], check_files: bool):
        self.problems = [(str(k), self.unknown_key(str(k), "", SECTIONS)) for k in raw if k not in SECTIONS]
        self.parts, self.bad = {}, set()
        for name in SECTIONS:
            if name in REQUIRED and raw.get(name) is None:
                self.parts[name] = None
                self.problems.append((name, f"missing required section, e.g. {name}: {REQUIRED[name]}"))
            else:
                self.parts[name] = (self.adapter(raw[name], _planned_steps(raw), _raw_task(raw)) if name == "adapter"
                                    else self.section(name, raw.get(name)))
        self.fill_format()
        self.cross_checks()
        if check_files:
            self.file_checks()
        if not self.problems and self.parts["model"].task_type is None:  # inferred from the task
            model, task = self.parts["model"], self.parts["train"].task
            self.parts["model"] = model.model_copy(update={"task_type": TASK_TYPES[task]})
        if not self.problems:  # what the task fills in (vision_sft: the vision tower stays frozen)
            adapter = self.parts["adapter"]
            for key, value in TASK_INFO[self.parts["train"].task].adapter_defaults:
                if key in adapter and adapter[key] is None:
                    adapter[key] = value

    @staticmethod
    def unknown_key(key: str, section: str, choices: Iterable[str]) -> str:
        choices = sorted(choices)  # a key written in the wrong section: point at the right one first
        home = next((s for s, cls in SECTIONS.items() if cls and s != section and key in cls.model_fields), None)
        hint = f"; did you mean '{home}.{key}'? (it belongs in the {home} section)" if home else ""
        hint = hint or did_you_mean(key, choices)
        return "unknown key" + (hint or f" (valid keys: {', '.join(choices)})")

    def message(self, err: dict[str, Any], section: str) -> str:
        """pydantic's error as a sentence a person can act on, with the offending value."""
        cls, kind, got = _model_at(SECTIONS[section], err["loc"]), err["type"], err.get("input")
        if kind == "extra_forbidden":
            return self.unknown_key(str(err["loc"][-1]), section, cls.model_fields)
        if kind == "missing":
            choices = getattr(cls.model_fields[str(err["loc"][-1])].annotation, "__args__", ())
            return "required" + (f"; one of {', '.join(choices)}" if all(isinstance(c, str) for c in choices) else "")
        if kind == "literal_error":
            choices = re.findall(r"'([^']*)'", err["ctx"]["expected"])
            if not choices:  # numbers: "4 or 8"
                return f"must be {err['ctx']['expected']}, got {short_repr(got)}"
            return f"must be one of {', '.join(choices)}, got {short_repr(got)}{did_you_mean(short_repr(got), choices)}"
        special = {"model_type": "must be a mapping (indented key: value lines)",
                   "string_pattern_mismatch": "must be a plain folder name (no '/', not '.' or '..')"}
        msg = special.get(kind) or re.sub(r"^(Input|String) should", "must", err["msg"].removeprefix("Value error, "))
        return f"{msg}, got {short_repr(got)}"

    def get(self, path: str) -> Any:
        section, field = path.split(".")
        return None if path in self.bad or self.parts.get(section) is None else getattr(self.parts[section], field)

    def section(self, name: str, raw: Any) -> Optional[_Section]:
        cls = SECTIONS[name]
        try:
            return cls.model_validate({} if raw is None else raw)
        except ValidationError as e:
            errors = e.errors()
        self.problems += [(name + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err["loc"]),
                           self.message(err, name)) for err in errors]
        bad = {str(err["loc"][0]) for err in errors if err["loc"]}
        self.bad |= {f"{name}.{key}" for key in bad}
        try:  # without the bad keys the rest may validate: the cross checks then see its good values
            return cls.model_validate({k: v for k, v in raw.items() if k not in bad}) if isinstance(raw, dict) else None
        except ValidationError:
            return None

    def fill_format(self) -> None:
        """``data.format`` left out: the task's only format (classification, dpo), else a problem
        that lists the formats the task reads and the fields of their rows."""
        data, task = self.parts.get("data"), self.get("train.task")
        if data is None or data.format is not None or "data.format" in self.bad or task is None:
            return
        formats = TASK_FORMATS[task]
        if len(formats) == 1:
            self.parts["data"] = data.model_copy(update={"format": formats[0]})
            return
        self.problems.append(("data.format", f"required for train.task {task!r}: how each row is laid out, one of "
                                             + "; ".join(f"{f} ({FORMAT_FIELDS[f]})" for f in formats)
                                             + " (docs/run-config.md)"))

    def adapter(self, raw: Any, steps: Optional[int] = None, task: Optional[str] = None) -> Optional[dict[str, Any]]:
        """The method's own config class validates the rest of the section, at paths adapter.<field>;
        settings the run fills (``MethodSpec.run_defaults``, from ``steps``) are checked filled, and
        kept as the user wrote them."""
        if not isinstance(raw, dict) or not isinstance(raw.get("method"), str):
            known = ", ".join(sorted(k.lower() for k in registered_methods()))
            where = "adapter.method" if isinstance(raw, dict) else "adapter"
            self.problems.append((where, f"needs the method name (known: {known}), e.g. {REQUIRED['adapter']}"))
            return None
        try:
            spec = find_method(raw["method"])
        except ConfigError as e:
            self.problems += e.problems
            return None
        cls, fields, count = spec.config_cls, {}, len(self.problems)
        source = raw.get("from")  # an adapter to start from (lineage); see peftkit.tracking.lineage
        if source is not None and (not isinstance(source, str) or not source.strip()):
            self.problems.append(("adapter.from", f"must be a run folder, run id or adapter folder, got {source!r}"))
        for key, value in raw.items():
            if key == "task_type" and task in TASK_TYPES and str(value).upper() == TASK_TYPES[task]:
                continue  # what train.task sets anyway: a peft habit, harmless
            if key in RUN_OWNED:
                self.problems.append((f"adapter.{key}", run_owned_message(key, short_repr(value), task, TASK_TYPES)))
            elif key in cls.peft_only_keys:
                self.problems.append((f"adapter.{key}", "a peft option that peftkit does not implement; remove it"))
            elif key not in cls.model_fields and key not in ADAPTER_RUN_KEYS:
                known = [f for f in cls.model_fields if f not in RUN_OWNED] + list(ADAPTER_RUN_KEYS)
                self.problems.append((f"adapter.{key}", self.unknown_key(str(key), "adapter", known)))
            elif key not in ADAPTER_RUN_KEYS:
                fields[key] = value
        filled = spec.run_defaults(dict(fields), steps) if spec.run_defaults else {}
        try:
            config = cls(**{**fields, **filled})
        except ConfigError as e:
            self.problems += [(f"adapter.{p}" if p else "adapter", msg) for p, msg in e.problems]
            return None
        data = {k: v for k, v in config.model_dump(mode="json").items() if k not in RUN_OWNED}
        data.update({k: fields.get(k, cls.model_fields[k].get_default(call_default_factory=True)) for k in filled})
        head = {"method": spec.peft_type.lower(), **({"from": source} if source is not None else {})}
        return {**head, **data} if len(self.problems) == count else None

    def cross_checks(self) -> None:
        """Checks between sections; each runs only when the values it reads are valid."""
        get, add = self.get, self.problems.append
        task, fmt, metrics = get("train.task"), get("data.format"), get("eval.metrics") or []
        if task and fmt and fmt not in TASK_FORMATS[task]:
            add(("data.format", f"{fmt!r} does not fit train.task {task!r}, which reads "
                                f"{' / '.join(TASK_FORMATS[task])}; change one of them"))
        if task and get("model.task_type") not in (None, TASK_TYPES[task]):
            add(("model.task_type", f"{get('model.task_type')} does not fit train.task {task!r}; use {TASK_TYPES[task]}"
                                    " or leave it out"))
        if get("train.optimizer") and (problem := optimizer_problem(get("train.optimizer"))):
            add(("train.optimizer", problem))
        for metric in metrics:
            if task and task not in METRIC_TASKS.get(metric, (task,)):
                add(("eval.metrics", f"{metric!r} is only for train.task {' / '.join(METRIC_TASKS[metric])}"))
        has_eval = get("data.eval") or get("data.eval_fraction") or "data.eval" in self.bad
        if self.parts["data"] and not has_eval and [m for m in metrics if m != "loss"]:
            add(("eval.metrics", "need eval data: set data.eval or data.eval_fraction"))

    def file_checks(self) -> None:
        """Missing local data files (Hub-looking ids, see the module docstring, are left to the
        loader) and an ``output.dir`` that cannot hold run folders."""
        out = self.get("output.dir")
        problem = out and runs.output_dir_problem(out)
        if problem:
            self.problems.append(("output.dir", problem))
        for field in ("train", "eval"):
            path = self.get(f"data.{field}")
            if path is None or "://" in path or os.path.exists(os.path.expanduser(path)):
                continue
            hub_like = re.fullmatch(r"[\w.-]+(/[\w.-]+)?", path) and not path.startswith(".")
            if not hub_like or path.lower().endswith((".jsonl", ".json", ".csv", ".parquet", ".arrow", ".txt")):
                self.problems.append((f"data.{field}", f"file not found: {path!r} (relative paths are read from "
                                                       f"the current directory, {os.getcwd()})"))
