"""The run config's schema: its sections (model, data, train, eval, output, tracking; the adapter
section is the method's own config class) as strict pydantic models, and the tables the checks read
(task formats and types, run-owned keys, synonyms). Validation across sections is in
:mod:`peftkit.train.config_checks`; loading, overrides and versions in :mod:`peftkit.train.config`.

Example:
    >>> from peftkit.train.config_schema import TrainSection
    >>> TrainSection(lr=1e-4).scheduler
    'cosine'
"""

from __future__ import annotations

import os
from typing import Annotated, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..quantized.loading import QuantizationConfig
from .optimizers import OPTIMIZERS
from .tasks.catalog import METRICS, TASK_INFO, TASKS, tasks_for_metric

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
