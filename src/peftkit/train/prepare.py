"""Everything a run needs before its first step, in two parts: :func:`prepare_data` (rows checked,
tokenizer, tokenized examples, evaluation prompts) and :func:`prepare` (the model with its adapter).
``peftkit train`` runs the first before it creates the run folder, so a bad row, an empty file or a
too-long sequence fails at once, naming file, row and field, without loading the model and without
leaving a run folder behind."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Callable, Iterator, Optional

from ..compat import enable_activation_checkpointing
from ..errors import ConfigError
from ..model import PeftModel, get_peft_model
from ..models import load_model, load_tokenizer
from ..progress import phase, quiet_libraries
from ..quantized.training import prepare_model_for_kbit_training
from . import data
from .prompting import PromptStyle, style_of
from .tasks import ModelTask, model_task
from .tasks.catalog import TASK_INFO


@dataclass
class PreparedData:
    tokenizer: Any
    train_examples: list
    eval_examples: list
    collate: Callable
    label_names: list[str] = field(default_factory=list)
    eval_prompts: list[str] = field(default_factory=list)
    eval_references: list[str] = field(default_factory=list)
    prompt_style: Optional[PromptStyle] = None  # how the rows were prompted: generate/chat reuse it


@dataclass
class Prepared(PreparedData):
    """The data plus the model with its adapter: everything the loop needs."""

    model: Optional[PeftModel] = None
    predictions: list[str] = field(default_factory=list)  # the latest exact_match generations


def load_splits(cfg: Any) -> tuple[Any, Optional[Any]]:
    """Load and validate the train (and eval) rows; every bad row names its file, row and field."""
    fields = dict(text_field=cfg.data.text_field, label_field=cfg.data.label_field)
    task = model_task(cfg.train.task)

    def validate(rows: Any, source: str) -> None:
        if task is not None:
            task.validate_rows(rows, cfg, source)
        else:
            data.validate_rows(rows, cfg.data.format, source, **fields)

    train = data.load_rows(cfg.data.train)
    validate(train, cfg.data.train)
    evaluation = None
    if cfg.data.eval:
        evaluation = data.load_rows(cfg.data.eval)
        validate(evaluation, cfg.data.eval)
    elif cfg.data.eval_fraction:
        train, evaluation = data.eval_split(train, cfg.data.eval_fraction, cfg.train.seed)
    if evaluation is not None and cfg.eval.num_examples:
        evaluation = evaluation.select(range(min(cfg.eval.num_examples, len(evaluation))))
    return train, evaluation


def tokenize(cfg: Any, rows: Any, tokenizer: Any, source: str, label_names: Optional[list[str]] = None):
    """Rows -> examples for ``cfg.train.task``; returns ``(examples, label_names)``."""
    t = cfg.train
    if t.task == "classification":
        examples, names = data.tokenize_classification(
            rows, tokenizer, cfg.data.text_field, cfg.data.label_field, t.max_seq_len, t.truncation, source=source,
            label_names=label_names,  # eval rows use the training label ids
        )
        return examples, names
    if t.task == "dpo":
        return data.tokenize_preference(rows, tokenizer, t.max_seq_len, t.truncation, source=source), []
    examples = data.tokenize_sft(rows, tokenizer, cfg.data.format, t.max_seq_len, t.completion_only, t.truncation, source=source)
    if t.packing:
        examples = data.pack(examples, t.max_seq_len, tokenizer.eos_token_id)
    return examples, []


def generation_prompts(cfg: Any, rows: Any, tokenizer: Any) -> tuple[list[str], list[str]]:
    """Templated prompts and reference answers for ``exact_match`` (chat and prompt_completion)."""
    prompts, refs = [], []
    for row in rows:
        if cfg.data.format == "chat":
            messages, answer = row["messages"][:-1], row["messages"][-1]["content"]
        elif cfg.data.format == "prompt_completion":
            messages, answer = [{"role": "user", "content": row["prompt"]}], row["completion"]
        else:
            return [], []
        if getattr(tokenizer, "chat_template", None):
            prompts.append(tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))
        else:
            prompts.append(messages[-1]["content"])
        refs.append(answer)
    return prompts, refs


@contextmanager
def _model_errors(cfg: Any, what: str) -> Iterator[None]:
    """A model that cannot be found or loaded is a problem of ``model.name``: say so plainly."""
    try:
        yield
    except (OSError, ValueError, ImportError) as e:  # FileNotFoundError, hub errors, missing packages
        raise ConfigError(f"Cannot load the {what} of {cfg.model.name!r}:", [("model.name", str(e))]) from e


def prepare_data(cfg: Any) -> PreparedData:
    """Load, check and tokenize the data for ``cfg`` (no model is loaded); raises
    :class:`~peftkit.train.data.DataError` naming the file, row and field of a bad row."""
    with quiet_libraries():  # datasets' "Generating train split" bars
        train_rows, eval_rows = load_splits(cfg)
    if model_task(cfg.train.task):
        return _prepare_task_data(cfg, model_task(cfg.train.task), train_rows, eval_rows)
    with _model_errors(cfg, "tokenizer"), quiet_libraries():
        tokenizer = load_tokenizer(cfg.model.name, revision=cfg.model.revision)
    pad_id = data.ensure_pad_token(tokenizer)
    train_examples, label_names = tokenize(cfg, train_rows, tokenizer, cfg.data.train)
    eval_examples = []
    if eval_rows is not None:
        eval_examples, _ = tokenize(cfg, eval_rows, tokenizer, cfg.data.eval or cfg.data.train, label_names or None)
    prompts, refs = ([], [])
    if eval_rows is not None and "exact_match" in cfg.eval.metrics:
        prompts, refs = generation_prompts(cfg, eval_rows, tokenizer)
    return PreparedData(tokenizer, train_examples, eval_examples, partial(data.collate, pad_token_id=pad_id),
                        label_names, prompts, refs, style_of(cfg.data.format, train_rows, tokenizer))


def _prepare_task_data(cfg: Any, task: ModelTask, train_rows: Any, eval_rows: Any) -> PreparedData:
    """:func:`prepare_data` for a task that brings its own processor, examples and collator."""
    with _model_errors(cfg, "processor"):
        processor = task.load_processor(cfg)
    train_examples, label_names = task.examples(cfg, train_rows, processor, cfg.data.train)
    eval_examples, prompts, refs = [], [], []
    if eval_rows is not None:
        source = cfg.data.eval or cfg.data.train
        eval_examples, _ = task.examples(cfg, eval_rows, processor, source, label_names or None)
        prompts, refs = task.eval_texts(cfg, eval_rows)
    return PreparedData(processor, train_examples, eval_examples, task.collate(processor), label_names, prompts, refs)


def prepare(cfg: Any, main_process: bool = True, prepared_data: Optional[PreparedData] = None) -> Prepared:
    """Build the model with its adapter for ``cfg``, with the data from :func:`prepare_data` (made
    here unless given).

    Example:
        >>> prep = prepare(load_run_config("examples/quickstart.yaml"))  # doctest: +SKIP
    """
    d = prepared_data or prepare_data(cfg)
    extra = {}
    task = model_task(cfg.train.task)
    if cfg.train.task == "classification":
        extra = dict(num_labels=len(d.label_names), id2label=dict(enumerate(d.label_names)),
                     label2id={n: i for i, n in enumerate(d.label_names)})
    elif task is not None:
        extra = task.model_kwargs(d.label_names)
    # the task's own Auto class: never a silent fallback to another
    with _model_errors(cfg, "model"), phase(f"loading model {cfg.model.name}", enabled=main_process):
        model = load_model(cfg.model.name, task_type=cfg.model.task_type, dtype=cfg.model.dtype,
                           revision=cfg.model.revision, quantization=cfg.model.quantization,
                           auto_class=TASK_INFO[cfg.train.task].auto_class, **extra)
    tokenizer = getattr(d.tokenizer, "tokenizer", d.tokenizer)  # a speech or vision processor holds one
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tokenizer.pad_token_id  # classifiers find the last real token through it
    if cfg.model.quantization is not None:  # QLoRA: peft's preparation (float32 norms and head, checkpointing)
        prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.train.gradient_checkpointing)
    elif cfg.train.gradient_checkpointing:
        enable_activation_checkpointing(model, use_reentrant=False)
    if cfg.train.gradient_checkpointing:
        model.config.use_cache = False
    peft_model = get_peft_model(model, cfg.adapter_config())
    return Prepared(**vars(d), model=peft_model)
