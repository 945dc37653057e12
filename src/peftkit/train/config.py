"""The run configuration (``load_run_config("run.yaml")``): one YAML file that describes a whole run in sections
model, adapter (``method`` plus the method's own config fields), data, train, eval, output, tracking. Every problem
(unknown key, wrong type, bad value, sections that do not fit together) is reported at once as ``(dotted path,
message)``, with "did you mean". ``data.train``/``data.eval`` are read relative to the *current working directory*
and must exist, unless they look like a Hugging Face dataset id (``name`` or ``user/name``: at most one slash, no
leading dot, no data-file extension such as ``.jsonl``), which the data loader resolves.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import re
from pathlib import Path
from typing import Annotated, Any, Iterable, Literal, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ..config import PeftConfig
from ..errors import ConfigError, CorruptFileError
from ..names import short_repr
from ..untrusted import decode_utf8, read_bytes
from ..quantized.loading import QuantizationConfig
from ..registry import MethodSpec, registered_methods
from . import runs
from .config_descriptions import FORMAT_FIELDS, run_owned_message
from .optimizers import OPTIMIZERS, optimizer_problem
from .tasks.catalog import METRICS, TASK_INFO, TASKS, tasks_for_metric
from .yaml_io import MAX_BYTES, Dumper, Loader, load_yaml

Problem = tuple[str, str]
PathLike = Union[str, os.PathLike]
PosInt = Annotated[int, Field(gt=0)]
PosFloat = Annotated[float, Field(gt=0, allow_inf_nan=False)]
Name = Annotated[str, Field(min_length=1)]

# Each task's formats, model task type and metrics come from the task catalog (peftkit.train.tasks.catalog).
TASK_FORMATS = {name: info.formats for name, info in TASK_INFO.items()}
TASK_TYPES = {name: info.task_type for name, info in TASK_INFO.items()}
METRIC_TASKS = {metric: tasks_for_metric(metric) for metric in METRICS if metric != "loss"}
FORMATS = tuple(dict.fromkeys(f for formats in TASK_FORMATS.values() for f in formats))
# Adapter fields the run fills in from the model section; a second copy in `adapter` could disagree.
RUN_OWNED = ("task_type", "base_model_name_or_path", "revision", "inference_mode")
# Keys of the adapter section that are the run's, not the method config's: which method, and an
# existing adapter (run folder, run id or adapter folder) whose weights the new adapter starts from.
ADAPTER_RUN_KEYS = ("method", "from")
# Names people bring from transformers, peft and other trainers, which difflib cannot match to ours.
SYNONYMS = dict(pair.split("=") for pair in """learning_rate=lr num_train_epochs=epochs max_seq_length=max_seq_len
    per_device_train_batch_size=batch_size gradient_accumulation_steps=grad_accum lr_scheduler_type=scheduler
    fp16=mixed_precision bf16=mixed_precision torch_dtype=dtype output_dir=dir rank=r alpha=lora_alpha""".split())


class _Section(BaseModel):
    # strict: YAML already gives typed values, so "8" or true where a number belongs is a mistake.
    model_config = ConfigDict(extra="forbid", strict=True, validate_assignment=True, protected_namespaces=())


class ModelSection(_Section):
    """The base model: a bundled name, a Hugging Face id or a local path."""
    name: Name
    dtype: Literal["float32", "bfloat16", "float16", "auto"] = "float32"
    task_type: Optional[Literal["CAUSAL_LM", "SEQ_CLS", "SEQ_2_SEQ_LM", "TOKEN_CLS", "QUESTION_ANS",
                                "FEATURE_EXTRACTION"]] = None  # inferred from train.task when unset
    revision: Optional[str] = None
    # A frozen base in 4 or 8 bits (QLoRA): {backend: bnb, bits: 4, quant_type: nf4, double_quant: true,
    # compute_dtype: bfloat16}, {backend: bnb, bits: 8} or {backend: torchao, bits: 8}; see peftkit.quantized
    quantization: Optional[QuantizationConfig] = None


class DataSection(_Section):
    """Where the examples are and how they are laid out."""
    train: Name
    eval: Optional[Name] = None
    # left out: filled in from train.task where it reads one format (all but sft); the fields each
    # format reads: docs/tasks.md
    format: Optional[Literal[FORMATS]] = None
    text_field: Name = "text"
    label_field: Name = "label"
    eval_fraction: Optional[Annotated[float, Field(ge=0, lt=1)]] = None


class TrainSection(_Section):
    """The optimisation: task, length, batch, optimiser, schedule, precision, checkpoints."""
    task: Literal[TASKS] = "sft"  # see docs/tasks.md
    epochs: PosInt = 1
    max_steps: Optional[PosInt] = None
    batch_size: PosInt = 8
    grad_accum: PosInt = 1
    lr: PosFloat = 2e-4
    weight_decay: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 0.0
    scheduler: Literal["constant", "linear", "cosine", "constant_with_warmup", "cosine_with_restarts"] = "cosine"
    warmup_steps: Annotated[int, Field(ge=0)] = 0
    max_seq_len: PosInt = 512
    truncation: Literal["warn", "error"] = "warn"
    completion_only: bool = True
    packing: bool = False
    save_steps: PosInt = 50
    eval_steps: PosInt = 50
    logging_steps: PosInt = 1
    seed: Annotated[int, Field(ge=0, lt=2**32)] = 0  # numpy's seed range
    gradient_checkpointing: bool = False
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"
    _no = field_validator("mixed_precision", mode="before")(lambda v: "no" if v is False else v)  # YAML 1.1: no=false
    max_grad_norm: Optional[PosFloat] = 1.0
    dpo_beta: PosFloat = 0.1
    optimizer: Literal[tuple(OPTIMIZERS)] = "adamw"  # see peftkit.train.optimizers


class EvalSection(_Section):
    """What to measure on the eval data."""
    metrics: list[Literal[METRICS]] = ["loss"]
    max_new_tokens: PosInt = 64
    num_examples: Optional[PosInt] = None
    at_start: bool = False  # also score the untouched base model before the first step


class OutputSection(_Section):
    """Where the run directory goes: ``dir/<name, or a generated id>/``."""
    dir: Name = "runs"
    name: Optional[Annotated[str, Field(pattern=r"^[^/\\]*[^/\\.][^/\\]*$")]] = None  # no "/", ".", ".."


class TrackingSection(_Section):
    """Where metrics go besides the run folder's ``metrics.jsonl`` (always written; ``local`` names it),
    through accelerate's trackers: ``tensorboard`` (event files in ``<run>/tensorboard``), ``mlflow`` (the
    experiment ``project`` in ``mlflow_uri``, by default a local file store ``<output.dir>/mlruns``) and
    ``wandb`` (the project ``project``). Where metrics are sent does not change the config version."""
    backends: list[Literal["local", "tensorboard", "mlflow", "wandb"]] = ["local"]
    project: Name = "peftkit"
    mlflow_uri: Optional[Name] = None  # e.g. sqlite:///mlflow.db or http://host:5000

    @field_validator("backends")
    @classmethod
    def _once_each(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError(f"lists a backend twice: {value}")
        return value


SECTIONS: dict[str, Optional[type[_Section]]] = dict(model=ModelSection, adapter=None, data=DataSection,
                                                      train=TrainSection, eval=EvalSection, output=OutputSection,
                                                      tracking=TrackingSection)
REQUIRED = dict(model="{name: smollm2-135m-instruct}", adapter="{method: lora}", data="{train: a.jsonl, format: chat}")


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
        checked = _Validation(data, check_files=False)
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
        return _find_method(self.adapter["method"]).config_cls(
            **{**fields, **self.derived_settings(total_steps)}, task_type=self.model.task_type,
            base_model_name_or_path=self.model.name, revision=self.model.revision)

    def derived_settings(self, total_steps: Optional[int] = None) -> dict[str, Any]:
        """The adapter fields the run fills from its ``total_steps`` (``train.max_steps`` if not
        given) because the section leaves them unset: ``{"total_step": 100}`` for AdaLoRA, ``{}``
        for most methods."""
        spec = _find_method(self.adapter["method"])
        if spec.run_defaults is None:
            return {}
        fields = {k: v for k, v in self.adapter.items() if k not in ADAPTER_RUN_KEYS}
        return spec.run_defaults(fields, total_steps if total_steps is not None else self.train.max_steps)


# YAML 1.2 floats (2e-4 is a number) and limits against alias bombs: see peftkit.train.yaml_io.
_Loader, _Dumper = Loader, Dumper


def _did_you_mean(key: str, choices: list[str]) -> str:
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


def _find_method(name: str) -> MethodSpec:
    """A method by peft_type, case-insensitive, '-' for '_': "lora", "LORA", "prefix-tuning"."""
    methods = {key.upper(): spec for key, spec in registered_methods().items()}
    if str(name).upper().replace("-", "_") not in methods:
        known = sorted(k.lower() for k in methods)
        raise ConfigError("Invalid adapter:", [("adapter.method", f"unknown method {name!r} (known: "
                                                f"{', '.join(known)}){_did_you_mean(str(name), known)}")])
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


class _Validation:
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
        hint = hint or _did_you_mean(key, choices)
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
            return f"must be one of {', '.join(choices)}, got {short_repr(got)}{_did_you_mean(short_repr(got), choices)}"
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
            spec = _find_method(raw["method"])
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


def apply_overrides(raw: dict[str, Any], overrides: Iterable[str]) -> list[Problem]:
    """Apply ``key.sub=value`` overrides (YAML values: ``8``, ``null``, ``[q, v]``) to ``raw`` in place;
    return those that cannot apply. A missing key or section is created (validation then judges its
    name, as in the file); a missing mapping deeper down is not.

    >>> raw = {"train": {"lr": 1.0}}
    >>> apply_overrides(raw, ["train.lr=2e-4", "train.max_steps=null"]), raw
    ([], {'train': {'lr': 0.0002, 'max_steps': None}})
    """
    problems: list[Problem] = []
    for item in overrides:
        key, sep, text = (part.strip() for part in item.partition("="))
        if item.startswith("-"):
            problems.append((key.lstrip("-"), f"write overrides without dashes: {item.lstrip('-')!r}"))
        elif not sep or "" in key.split("."):
            problems.append((key, f"override {item!r} is not key.sub=value, e.g. train.lr=1e-4"))
        elif not text:
            problems.append((key, "empty value; write key=null to unset it, or key='' for an empty string"))
        else:
            try:
                problem = _set_dotted(raw, key.split("."), load_yaml(text))
            except yaml.YAMLError as e:
                problem = f"value {text!r} is not valid YAML ({getattr(e, 'problem', None) or e})"
            problems += [(key, problem)] if problem else []
    return problems


def _set_dotted(raw: dict[str, Any], parts: list[str], value: Any) -> Optional[str]:
    node = raw
    for depth, part in enumerate(parts[:-1]):
        if depth == 0 and node.get(part) is None:
            node[part] = {}  # a section left out (or left empty) in the file
        if not isinstance(node.get(part), dict):
            where, got = ".".join(parts[: depth + 1]), "missing" if node.get(part) is None else repr(node[part])
            return f"{where} is {got}, not a mapping; set it whole, e.g. {where}={{{parts[depth + 1]}: ...}}"
        node = node[part]
    node[parts[-1]] = value
    return None


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
    problems = apply_overrides(raw, overrides) + _Validation(raw, check_files=True).problems
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
