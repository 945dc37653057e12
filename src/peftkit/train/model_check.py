"""Checks of a run config against its model that need no weights: the model's ``config.json`` (or a
GGUF header) and the module tree built on the meta device.

``peftkit validate`` reports these problems with the config's own; ``peftkit train`` raises them
before the data is tokenized, the model loaded or a run folder made. What they catch:

- a model name that does not resolve or whose config cannot be read (``model.name``);
- a task whose Auto class does not know the model's architecture (T5 for ``sft``, BERT for
  ``seq2seq``): no silent fallback to another model class;
- an encoder-decoder model for a causal-LM task (Whisper would be loaded as its decoder alone and
  trained as a text model with no audio), or a decoder-only one for a task that needs an encoder;
- a model with no feature extractor for a task that reads audio;
- ``adapter.target_modules`` (and ``exclude_modules``, ``layers_to_transform``) that match no module.

>>> model_problems(load_run_config("examples/quickstart.yaml"))  # doctest: +SKIP
[]
"""

from __future__ import annotations

import os
from typing import Any, Optional

from ..errors import ConfigError, TargetError
from .tasks.catalog import TASK_INFO, TaskInfo

Problem = tuple[str, str]


def load_model_config(name: str, revision: Optional[str] = None) -> Any:
    """The transformers config of a bundled name, local folder or hub id, without its weights.
    Raises OSError / ValueError as ``from_pretrained`` does when there is none:
    ``load_model_config("minilm-l6").model_type`` -> ``'bert'``."""
    from transformers import AutoConfig

    from ..models import _check_gguf, resolve_model

    resolved = resolve_model(name)
    _check_gguf(resolved)
    kwargs = {"revision": revision} if revision else {}
    return AutoConfig.from_pretrained(resolved.name_or_path, **resolved.from_pretrained_kwargs(), **kwargs)


def _auto_class_knows(info: TaskInfo, config: Any) -> bool:
    import transformers

    return type(config) in getattr(transformers, info.auto_class)._model_mapping


def task_fit_problem(info: TaskInfo, config: Any) -> Optional[str]:
    """Why a model with ``config`` cannot be trained with the task ``info`` (None when it can):
    ``task_fit_problem(TASK_INFO["sft"], WhisperConfig())`` -> ``"the model is an encoder-decoder ..."``."""
    arch = getattr(config, "model_type", type(config).__name__)
    encoder_decoder = bool(getattr(config, "is_encoder_decoder", False))
    if info.encoder_decoder is False and encoder_decoder:
        why = (f"the model is an encoder-decoder ({arch}); train.task {info.name!r} trains decoder-only "
               f"models, and would train its decoder alone without the encoder's input")
    elif info.encoder_decoder and not encoder_decoder:
        why = f"the model ({arch}) is not an encoder-decoder, and train.task {info.name!r} needs one"
    elif not _auto_class_knows(info, config):
        why = f"transformers' {info.auto_class} (what train.task {info.name!r} loads) does not know the architecture {arch!r}"
    else:
        return None
    fitting = [other.name for other in TASK_INFO.values() if other is not info and _fits(other, config)]
    hint = (f"; tasks that fit this model: {', '.join(fitting)}" if fitting
            else "; no task of peftkit's trainer fits this model (see docs/tasks.md)")
    return why + hint


def _fits(info: TaskInfo, config: Any) -> bool:
    encoder_decoder = bool(getattr(config, "is_encoder_decoder", False))
    return info.encoder_decoder in (None, encoder_decoder) and _auto_class_knows(info, config)


def _input_problem(info: TaskInfo, resolved_path: str, config: Any) -> Optional[str]:
    """A task that reads audio or images needs the model's feature extractor or image processor
    (preprocessor_config.json)."""
    media = [kind for kind in info.inputs if kind != "text"]
    if not media:
        return None
    # transformers writes a processor's parts into processor_config.json, older versions (and feature
    # extractors saved alone) into preprocessor_config.json
    files = ("preprocessor_config.json", "processor_config.json")
    if os.path.isdir(resolved_path) and not any(os.path.isfile(os.path.join(resolved_path, f)) for f in files):
        what = {"audio": "feature extractor", "image": "image processor"}[media[0]]
        return (f"train.task {info.name!r} reads {media[0]}, but the model folder {resolved_path} has no {what} "
                f"(preprocessor_config.json); save the model's processor there")
    return None


def _meta_model(info: TaskInfo, config: Any) -> Any:
    """The model's module tree with no memory behind its tensors (the meta device)."""
    import transformers
    from accelerate import init_empty_weights

    with init_empty_weights():
        return getattr(transformers, info.auto_class).from_config(config)


def target_problems(cfg: Any, info: TaskInfo, config: Any) -> list[Problem]:
    """``adapter.target_modules`` and friends against the model's module names (meta device):
    ``target_problems(cfg, TASK_INFO["sft"], config)`` -> ``[("adapter.target_modules", "...")]``."""
    from ..config import TargetedConfig
    from ..registry import method_for_config
    from ..targets import find_targets

    adapter = cfg.adapter_config()
    if not isinstance(adapter, TargetedConfig):
        return []  # prompt methods attach to the model's inputs, not to its modules
    spec = method_for_config(adapter)
    asks_parameters = bool(spec.parameter_targets and spec.parameter_targets(adapter))
    model, problems = _meta_model(info, config), []
    if adapter.target_modules or not asks_parameters:  # a config may adapt parameters only
        try:
            find_targets(model, adapter)
        except TargetError as e:
            problems.append(("adapter.target_modules", str(e)))
    if asks_parameters:
        try:
            spec.find_parameters(model, adapter)
        except TargetError as e:
            problems.append(("adapter.target_parameters", str(e)))
    return problems


def model_problems(cfg: Any) -> list[Problem]:
    """Every problem of ``cfg`` that the model's config and module names show, as ``(path, message)``;
    ``[]`` when the model fits the task and the adapter's targets exist. Loads no weights."""
    from ..models import resolve_model

    info = TASK_INFO[cfg.train.task]
    missing = package_problems(cfg)
    try:
        resolved = resolve_model(cfg.model.name)
        config = load_model_config(cfg.model.name, cfg.model.revision)
    except (OSError, ValueError, ImportError) as e:  # not found, offline, not a model folder, gguf missing
        return missing + [("model.name", f"cannot read the config of {cfg.model.name!r}: {str(e).strip()}")]
    problem = task_fit_problem(info, config)
    if problem:
        return missing + [("train.task", problem)]
    problem = _input_problem(info, resolved.name_or_path, config)
    if problem:
        return missing + [("model.name", problem)]
    return missing + target_problems(cfg, info, config)


def package_problems(cfg: Any) -> list[Problem]:
    """Metric and audio libraries the run needs but that are not installed:
    ``package_problems(cfg)`` -> ``[("eval.metrics", "'bleu' of train.task 'seq2seq' needs the package sacrebleu: ...")]``."""
    from .tasks.metrics import missing_packages

    return [("eval.metrics" if metric != "loss" else "train.task",
             f"{metric!r} of train.task {cfg.train.task!r} needs the package {package}: "
             f"pip install {package}  (or pip install 'peftkit[tasks]')")
            for metric, package in missing_packages(cfg.train.task, cfg.eval.metrics)]


def check_model(cfg: Any) -> None:
    """Raise :class:`ConfigError` with every :func:`model_problems` of ``cfg``; nothing is loaded:
    ``check_model(load_run_config("run.yaml"))``."""
    problems = model_problems(cfg)
    if problems:
        raise ConfigError(f"The model {cfg.model.name!r} does not fit the run config:", problems)


def data_problems(cfg: Any) -> list[Problem]:
    """The data files' problems (missing fields, wrong types, empty files), checked as ``train`` checks
    them before tokenizing; the first file with problems is reported, each bad row named:
    ``data_problems(cfg)`` -> ``[("data.train", "train.jsonl row 7: field 'completion' is missing ...")]``."""
    from .data import DataError
    from .prepare import load_splits

    try:
        load_splits(cfg)
    except DataError as e:
        where = "data.eval" if cfg.data.eval and e.file == cfg.data.eval else "data.train"
        return [(where, str(e))]
    return []


def validate_run(path: str, overrides: Any = ()) -> list[Problem]:
    """Everything ``peftkit validate`` checks: the config (:func:`~peftkit.train.config.validate_file`),
    then, when it is valid, the model against the task and the adapter's targets, and the data rows.
    ``[]`` means ``peftkit train`` will not fail on anything that can be seen without weights.

    Example:
        >>> validate_run("examples/quickstart.yaml")  # doctest: +SKIP
        []
    """
    from .config import load_run_config

    try:
        cfg = load_run_config(path, overrides)
    except ConfigError as e:
        return list(e.problems)
    return model_problems(cfg) + data_problems(cfg)
