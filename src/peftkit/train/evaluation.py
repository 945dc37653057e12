"""``peftkit eval``: score a trained adapter (and, with ``base=True``, the base model with the adapter
disabled) on evaluation data, with the same metrics as training (:func:`peftkit.train.loop.evaluate`).

The data and metrics come from the run's ``config.yaml`` (or another run config), changed by
``data_path`` / ``metrics`` / dotted overrides; a stand-alone adapter with no run config needs
``data_path`` and gets the task from its ``task_type`` and the format from the data's fields.
Results go to ``eval_results.json`` in the run folder (the adapter folder for a stand-alone adapter).

>>> results = evaluate_adapter("runs/20261122-192453-quickstart-12785c", base=True)  # doctest: +SKIP
>>> results["metrics"]["exact_match"], results["base_metrics"]["exact_match"]          # doctest: +SKIP
(0.95, 0.0)
"""

from __future__ import annotations

import json
import os
import sys
from functools import partial
from typing import Any, Iterable, Optional, TextIO

from ..errors import ConfigError
from . import data, runs
from .summary import failing_rows_text
from ..tracking.table import fmt_score, format_table
from .commands import TASKS_OF, CommandError, Target, load_adapter_model, locate, run_config_path

RESULTS_NAME = "eval_results.json"
DEFAULT_METRICS = {"sft": ["loss", "exact_match"], "classification": ["loss", "accuracy", "f1"], "dpo": ["loss"]}


def _check_writable(path: str) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise CommandError(f"--out {path} is a folder; give a file name")
    if not os.path.isdir(folder):
        raise CommandError(f"--out {path}: its folder {folder} does not exist (or is a file)")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise CommandError(f"--out {path}: cannot write into {folder} (permissions or a read-only file system)")


def evaluate_adapter(path: str, config: Optional[str] = None, data_path: Optional[str] = None,
                     metrics: Optional[list[str]] = None, overrides: Iterable[str] = (), base: bool = False,
                     model: Optional[str] = None, device: Optional[str] = None, out_path: Optional[str] = None,
                     out: Optional[TextIO] = None) -> dict[str, Any]:
    """Evaluate the adapter of a run (or an adapter folder); print and save the results, and return them."""
    from accelerate import Accelerator

    from .loop import evaluate
    from .prepare import Prepared

    out = out or sys.stdout
    target = locate(path)
    out_path = out_path or os.path.join(target.run_dir or target.adapter_dir, RESULTS_NAME)
    _check_writable(out_path)  # before the model is loaded and the data scored
    cfg = _run_config(target, config, data_path, metrics, list(overrides), model)
    if cfg.train.task not in DEFAULT_METRICS:  # seq2seq, token_classification, speech_to_text
        raise CommandError(f"peftkit eval does not score train.task {cfg.train.task!r} yet; the run's own evaluation "
                           f"is in its run.json (final_metrics) and eval_predictions.json")
    rows, source = _eval_rows(cfg)
    config = config or run_config_path(target)
    peft_model, tokenizer = load_adapter_model(target, model=model, run_model=(cfg.model.name, config, cfg.model.quantization) if config else None,
                                               dtype=cfg.model.dtype,
                                               device=device, revision=cfg.model.revision)
    labels = _labels(target, cfg)
    prep = _prepared(Prepared, cfg, rows, source, tokenizer, peft_model, labels)
    accelerator = Accelerator(cpu=str(peft_model.device) == "cpu")
    print(f"evaluating {target.adapter_dir} on {source} ({len(rows)} examples): {', '.join(cfg.eval.metrics)}",
          file=sys.stderr, flush=True)
    scores = _strip(evaluate(prep, peft_model, cfg, accelerator))
    predictions = list(prep.predictions)
    base_scores, base_predictions = None, []
    if base:
        with peft_model.disable_adapter():
            base_scores = _strip(evaluate(prep, peft_model, cfg, accelerator))
        base_predictions = list(prep.predictions)
    peft_model.eval()
    results = _results(target, cfg, source, len(rows), scores, base_scores, prep, predictions, base_predictions)
    runs.write_json_atomic(out_path, results)
    _print_table(scores, base_scores, len(prep.eval_prompts) if predictions else len(rows), out)
    wrong = failing_rows_text(results.get("predictions") or [])
    if wrong:
        print(wrong, file=out)
    print(f"wrote {out_path}", file=out, flush=True)
    return results


def _run_config(target: Target, config: Optional[str], data_path: Optional[str], metrics: Optional[list[str]],
                overrides: list[str], model: Optional[str]):
    """The run config to evaluate with: the given file, else the run's config.yaml, else one built for the
    stand-alone adapter from ``data_path``. Every problem is a :class:`ConfigError` naming its field."""
    from .config import load_run_config

    extra = list(overrides)
    if data_path:
        extra.append(f"data.eval={json.dumps(data_path)}")
    if metrics:
        extra.append(f"eval.metrics={json.dumps(list(metrics))}")
    if model:
        extra.append(f"model.name={json.dumps(model)}")
    path = config or run_config_path(target)
    if path is None:
        return _standalone_config(target, data_path, metrics, extra)
    if not os.path.isfile(path):
        raise CommandError(f"{path}: no such run config")
    try:
        return load_run_config(path, extra)
    except ConfigError as e:
        # the training data may have moved since: evaluation reads only the eval file
        gone = [p for p in e.problems if p[0] == "data.train" and p[1].startswith("file not found")]
        if not gone or len(gone) != len(e.problems) or not data_path:
            raise
        return load_run_config(path, extra + [f"data.train={json.dumps(data_path)}"])


def _standalone_config(target: Target, data_path: Optional[str], metrics: Optional[list[str]], extra: list[str]):
    from .config import RunConfig, apply_overrides

    if not data_path:
        raise CommandError(f"{target.adapter_dir} is not in a run folder, so there is no run config to take eval data "
                           "from; pass --data FILE (and --model if the adapter's base model is not found), or --config RUN.yaml")
    task = TASKS_OF.get(target.task_type)
    if task is None:
        raise CommandError(f"task_type {target.task_type} in {target.adapter_dir}/adapter_config.json: eval supports "
                           "CAUSAL_LM and SEQ_CLS adapters")
    rows = data.load_rows(data_path)
    fmt = _guess_format(rows.column_names, task, data_path)
    task = "dpo" if fmt == "preference" else task
    name = target.config.base_model_name_or_path or "unknown"
    raw = {"model": {"name": name}, "adapter": {"method": str(getattr(target.config.peft_type, "value", target.config.peft_type)).lower()},
           "data": {"train": data_path, "eval": data_path, "format": fmt}, "train": {"task": task},
           "eval": {"metrics": list(metrics or DEFAULT_METRICS[task])}}
    problems = apply_overrides(raw, extra)
    if problems:
        raise ConfigError("Invalid overrides:", problems)
    return RunConfig(**raw)


def _guess_format(columns: list[str], task: str, source: str) -> str:
    if task == "classification":
        return "classification"
    for fmt, needs in (("chat", {"messages"}), ("preference", {"prompt", "chosen", "rejected"}),
                       ("prompt_completion", {"prompt", "completion"}), ("text", {"text"})):
        if needs <= set(columns):
            return fmt
    raise CommandError(f"{source}: cannot tell the data format from its fields ({', '.join(columns)}); expected "
                       "messages, prompt + completion, prompt + chosen + rejected, or text")


def _eval_rows(cfg: Any) -> tuple[Any, str]:
    """The evaluation rows of the config (``data.eval``, or the held-out ``data.eval_fraction`` of the
    training file, split exactly as in training), checked like training data."""
    from .prepare import load_splits

    if cfg.data.eval:
        rows = data.load_rows(cfg.data.eval)
        data.validate_rows(rows, cfg.data.format, cfg.data.eval, text_field=cfg.data.text_field,
                           label_field=cfg.data.label_field)
        if cfg.eval.num_examples:
            rows = rows.select(range(min(cfg.eval.num_examples, len(rows))))
        return rows, cfg.data.eval
    if cfg.data.eval_fraction:
        return load_splits(cfg)[1], f"{cfg.data.train} (held-out {cfg.data.eval_fraction:g})"
    raise CommandError("the run config has no eval data (data.eval and data.eval_fraction are unset); pass --data FILE")


def _labels(target: Target, cfg: Any) -> list[str]:
    from .commands import label_names

    return label_names(target) if cfg.train.task == "classification" else []


def _prepared(prepared_cls, cfg, rows, source, tokenizer, peft_model, labels):
    from .prepare import generation_prompts, tokenize

    pad_id = data.ensure_pad_token(tokenizer)
    examples, _ = tokenize(cfg, rows, tokenizer, source, labels or None)
    prompts, refs = ([], [])
    if "exact_match" in cfg.eval.metrics:
        prompts, refs = generation_prompts(cfg, rows, tokenizer)
    return prepared_cls(model=peft_model, tokenizer=tokenizer, train_examples=[], eval_examples=examples,
                        collate=partial(data.collate, pad_token_id=pad_id), label_names=labels, eval_prompts=prompts,
                        eval_references=refs)


def _strip(scores: dict[str, float]) -> dict[str, float]:
    return {k.removeprefix("eval_"): v for k, v in scores.items()}


def _results(target, cfg, source, n, scores, base_scores, prep, predictions, base_predictions) -> dict[str, Any]:
    results: dict[str, Any] = {
        "adapter": os.path.abspath(target.adapter_dir), "run": os.path.abspath(target.run_dir) if target.run_dir else None,
        "base_model": cfg.model.name, "data": source, "num_examples": n, "task": cfg.train.task,
        "evaluated": runs.now(), "metrics": scores,
    }
    if base_scores is not None:
        results["base_metrics"] = base_scores
    if predictions:
        rows = [{"prompt": p, "prediction": a, "reference": r}
                for p, a, r in zip(prep.eval_prompts, predictions, prep.eval_references)]
        for row, b in zip(rows, base_predictions):
            row["base_prediction"] = b
        results["predictions"] = rows
    return results


def _print_table(scores: dict[str, float], base_scores: Optional[dict[str, float]], examples: int, out: TextIO) -> None:
    """One line per metric, adapter then base; shares with their counts (``0.95 (19/20)``)."""
    names = list(scores) or list(base_scores or {})
    if not names:
        print("no metrics: the eval data gave no examples", file=out)
        return
    cells = [[name, fmt_score(name, scores.get(name), examples)]
             + ([fmt_score(name, base_scores.get(name), examples)] if base_scores is not None else []) for name in names]
    headers = ["metric", "adapter"] + (["base"] if base_scores is not None else [])
    print(format_table(headers, cells, right=tuple(range(1, len(headers)))), file=out)
