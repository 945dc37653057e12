"""The run-config reference, made from the schema itself: every key's type, default, allowed values
and meaning, as Markdown (``docs/run-config.md``), as a JSON Schema for editors
(``docs/run-config.schema.json``) and one key at a time (``peftkit validate --explain train.lr``).

Types, defaults and allowed values come from the pydantic sections of :mod:`peftkit.train.config`
and from each method's config class, so they cannot drift from what validation accepts. Meanings
live in :data:`DESCRIPTIONS`; a test fails when a run-config key has none. The committed files are
rewritten by ``python scripts/gen_run_config_docs.py`` (a test checks they are current).

>>> print(explain("train.lr").splitlines()[0])
train.lr: number > 0, default 0.0002
"""

from __future__ import annotations

import json
import typing
from typing import Any

from ..config import PeftType
from ..errors import ConfigError
from ..registry import registered_methods
from .config import ADAPTER_RUN_KEYS, RUN_OWNED, SECTIONS, TASK_FORMATS, TASK_TYPES
from .config_descriptions import DESCRIPTIONS, EXAMPLE, SECTION_TEXT


def builtin_methods() -> list[str]:
    """peftkit's own methods (``LORA``, ``IA3``...), sorted: plugins registered at run time are left
    out, so the committed reference is the same in every process."""
    return sorted(m for m in registered_methods() if m in PeftType.__members__)


def _type_text(annotation: Any) -> str:
    """``int``, ``string``, ``one of: a, b``, ``list of: loss, exact_match`` ... from a type hint."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        inner, *marks = args
        marks = [m for mark in marks for m in (getattr(mark, "metadata", None) or [mark])]  # a Field() holds its own
        bounds = [f"{op} {getattr(mark, attr)}" for mark in marks
                  for attr, op in (("gt", ">"), ("ge", ">="), ("lt", "<")) if getattr(mark, attr, None) is not None]
        text = ("non-empty " if any(getattr(mark, "min_length", None) for mark in marks) else "") + _type_text(inner)
        return " ".join([text, " and ".join(bounds)]).strip()
    if origin is typing.Literal:
        return "one of: " + ", ".join(str(a) for a in args)
    if origin is typing.Union:
        kept = [a for a in args if a is not type(None)]
        text = " or ".join(_type_text(a) for a in kept)
        return f"{text}, or null" if len(kept) < len(args) else text
    if origin in (list, tuple):
        return f"list of {_type_text(args[0])}" if args else "list"
    if origin is dict:
        return f"mapping of {_type_text(args[0])} to {_type_text(args[1])}" if args else "mapping"
    return {int: "integer", float: "number", str: "string", bool: "true/false"}.get(annotation, getattr(annotation, "__name__", str(annotation)))


def _default_text(field: Any) -> str:
    if field.is_required():
        return "required"
    value = field.get_default(call_default_factory=True)
    return "default " + ("null" if value is None else json.dumps(value) if not isinstance(value, str) else value)


def section_rows(section: str) -> list[tuple[str, str, str, str]]:
    """``(key, type, default, description)`` for each key of a run-config section (adapter: the run's
    own keys ``method`` and ``from``; the method keys are in :func:`method_rows`)."""
    if section == "adapter":
        methods = ", ".join(k.lower() for k in builtin_methods())
        return [("method", f"one of: {methods}", "required", DESCRIPTIONS["adapter.method"]),
                ("from", "string or null", "default null", DESCRIPTIONS["adapter.from"])]
    cls = SECTIONS[section]
    return [(key, _type_text(f.annotation if not f.metadata else typing.Annotated[(f.annotation, *f.metadata)]),
             _default_text(f), DESCRIPTIONS.get(f"{section}.{key}", "")) for key, f in cls.model_fields.items()]


def method_rows(method: str) -> list[tuple[str, str, str, str]]:
    """``(key, type, default, description)`` for the adapter keys of ``method`` (``lora``, ``ia3``...)."""
    spec = registered_methods()[method.upper()]
    rows = []
    for key, f in spec.config_cls.model_fields.items():
        if key in RUN_OWNED or key == "peft_type":
            continue
        text = DESCRIPTIONS.get(f"adapter.{method.lower()}.{key}") or DESCRIPTIONS.get(f"adapter.{key}", "")
        rows.append((key, _type_text(f.annotation), _default_text(f), text))
    return rows


def _all_keys() -> dict[str, tuple[str, str, str]]:
    """``"train.lr" -> (type, default, description)`` for every key, ``adapter.<method>.<key>`` too."""
    keys = {}
    for section in SECTIONS:
        for key, kind, default, text in section_rows(section):
            keys[f"{section}.{key}"] = (kind, default, text)
    for method in builtin_methods():
        for key, kind, default, text in method_rows(method):
            keys[f"adapter.{method.lower()}.{key}"] = (kind, default, text)
    return keys


def explain(key: str) -> str:
    """What one key means: ``train.lr``, a section (``train``) or an adapter key (``adapter.r``:
    LoRA's unless named, ``adapter.ia3.target_modules``). Raises :class:`ConfigError` for an
    unknown key, with "did you mean"."""
    keys = _all_keys()
    if key in SECTIONS:
        rows = [(f"{key}.{k}", kind, default) for k, kind, default, _ in section_rows(key)]
        width = max(len(r[0]) for r in rows)
        return "\n".join([f"{key}: {SECTION_TEXT[key]}", ""] + [f"  {k.ljust(width)}  {kind}, {d}" for k, kind, d in rows])
    found = keys.get(key) or keys.get(key.replace("adapter.", "adapter.lora.", 1))
    if found is None:
        from .config_checks import SYNONYMS, did_you_mean

        section, _, name = key.rpartition(".")
        synonym = f"{section}.{SYNONYMS.get(name)}" if section else None
        hint = f"; did you mean '{synonym}'?" if synonym in keys else did_you_mean(key, list(keys))
        raise ConfigError("Unknown run-config key:", [(key, f"not a run-config key{hint}; "
                                                            "peftkit config schema --markdown lists them all")])
    kind, default, text = found
    return f"{key}: {kind}, {default}\n  {text}" if text else f"{key}: {kind}, {default}"


# --------------------------------------------------------------------------------------------- markdown
def _table(rows: list[tuple[str, str, str, str]]) -> list[str]:
    lines = ["| key | type | default | meaning |", "|---|---|---|---|"]
    lines += [f"| `{k}` | {kind} | {d.removeprefix('default ')} | {text} |".replace("\n", " ") for k, kind, d, text in rows]
    return lines


def markdown() -> str:
    """The whole reference as Markdown (what ``docs/run-config.md`` holds)."""
    out = ["# Run-config reference", "",
           "<!-- Generated from the schema by scripts/gen_run_config_docs.py; do not edit by hand. -->", "",
           "One YAML file describes a run: `peftkit train run.yaml key=value ...`. Every key of every",
           "section is below, with its type, default and meaning. `peftkit validate run.yaml` checks a file",
           "(every problem at once, with \"did you mean\"); `peftkit validate --explain KEY` prints one entry;",
           "`peftkit config schema` prints the JSON Schema that editors use to complete and check run files",
           "(committed as [run-config.schema.json](run-config.schema.json); see the end of this page).", "",
           "## A complete example", "", "```yaml", EXAMPLE.strip(), "```", "",
           "## Which data format fits which task", "", "| `train.task` | `data.format` | fields of each row | model class |",
           "|---|---|---|---|"]
    for task, formats in TASK_FORMATS.items():
        for fmt in formats:
            out.append(f"| `{task}` | `{fmt}` | {DESCRIPTIONS['format.' + fmt]} | {TASK_TYPES[task]} |")
    for section in SECTIONS:
        out += ["", f"## `{section}`", "", SECTION_TEXT[section], "", *_table(section_rows(section))]
    out += ["", "### Adapter keys of each method", "",
            "Everything else in the `adapter` section is the method's own config, with the same names and",
            "defaults as in `peft` (the keys of `adapter_config.json`). `task_type`, `base_model_name_or_path`,",
            "`revision` and `inference_mode` are filled in by the run (from `train.task` and `model`).", ""]
    for method in builtin_methods():
        out += [f"#### `method: {method.lower()}`", "", *_table(method_rows(method)), ""]
    out += ["## Editor support", "",
            "Point the YAML language server (VS Code's YAML extension, and others) at the schema with a first",
            "line in the run file:", "", "```yaml",
            "# yaml-language-server: $schema=https://raw.githubusercontent.com/peftkit/peftkit/main/docs/run-config.schema.json",
            "```", "", "or a local path (`$schema=../docs/run-config.schema.json`); `peftkit config schema > schema.json`",
            "writes the schema of the installed version.", ""]
    return "\n".join(out)


# --------------------------------------------------------------------------------------------- JSON Schema
def _described(schema: dict[str, Any], prefix: str) -> dict[str, Any]:
    for key, prop in (schema.get("properties") or {}).items():
        text = DESCRIPTIONS.get(f"{prefix}.{key}")
        if text:
            prop["description"] = text
    return schema


def _method_schema(method: str) -> dict[str, Any]:
    """A method's adapter keys, loosely typed (their validators are stricter than a schema can say)."""
    spec = registered_methods()[method]
    schema = spec.config_cls.model_json_schema(mode="validation")
    props = {k: v for k, v in schema.get("properties", {}).items() if k not in RUN_OWNED and k != "peft_type"}
    for key in ADAPTER_RUN_KEYS:
        props[key] = {"type": "string"}
    props["method"] = {"const": method.lower()}
    _described({"properties": props}, "adapter")
    return {"if": {"properties": {"method": {"const": method.lower()}}, "required": ["method"]},
            "then": {"properties": props, "additionalProperties": False, "$defs": schema.get("$defs", {})}}


def json_schema() -> dict[str, Any]:
    """The run config as a JSON Schema (draft 2020-12) with descriptions, for editors."""
    props: dict[str, Any] = {}
    for section, cls in SECTIONS.items():
        if cls is None:
            methods = builtin_methods()
            props[section] = {"type": "object", "description": SECTION_TEXT[section], "required": ["method"],
                              "properties": {"method": {"enum": [m.lower() for m in methods],
                                                        "description": DESCRIPTIONS["adapter.method"]},
                                             "from": {"type": "string", "description": DESCRIPTIONS["adapter.from"]}},
                              "allOf": [_method_schema(m) for m in methods]}
        else:
            props[section] = _described(cls.model_json_schema(mode="validation"), section)
            props[section]["description"] = SECTION_TEXT[section]
            props[section].pop("title", None)
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "title": "peftkit run config",
            "description": "One YAML file per run: peftkit train run.yaml. Reference: docs/run-config.md",
            "type": "object", "required": ["model", "adapter", "data"], "additionalProperties": False,
            "properties": props}


def json_schema_text() -> str:
    return json.dumps(json_schema(), indent=2, sort_keys=False) + "\n"


def undocumented_keys() -> list[str]:
    """Run-config keys (not method keys) without a description: a test keeps this empty."""
    return [f"{s}.{k}" for s in SECTIONS for k, _, _, text in section_rows(s) if not text]


__all__ = ["explain", "json_schema", "json_schema_text", "markdown", "method_rows", "section_rows", "undocumented_keys"]
