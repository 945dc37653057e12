"""``peftkit combine combine.yaml``: a weighted combination of trained adapters (runs or adapter
folders) written as a new run, with every parent in its lineage.

The YAML file names the parents and how to combine them (``add_weighted_adapter``'s arguments)::

    adapters: [runs/20261203-120000-email-1a2b3c, runs/20261203-121500-city-4d5e6f]
    weights: [1.0, 0.5]
    combination_type: ties        # default: svd for LoRA, linear for (IA)3
    density: 0.5
    output: {dir: runs, name: email-plus-city}

The run folder holds ``adapter/`` (the combined adapter, ``peft``'s format), ``combine.yaml`` (the
spec, resolved), ``run.json`` (``parent`` = the first parent, ``parents`` = all of them with their
weights and adapter fingerprints, ``combine`` = the spec, the combination's error report) and, when
the first parent is a run, ``config.yaml``: that run's config with the ``adapter`` section of the
result, so ``peftkit eval``, ``runs show`` and ``runs diff`` work on it as on a trained run.
``--eval`` scores the result on each parent run's eval data (``eval_results-<parent>.json``).

Example:
    >>> run_dir = combine_from_file("combine.yaml", evaluate=True)  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from typing import Any, Literal, Optional, TextIO

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..errors import ConfigError, CorruptFileError
from ..untrusted import decode_utf8, read_bytes
from . import runs
from .yaml_io import MAX_BYTES, load_yaml


class CombineOutput(BaseModel):
    model_config = ConfigDict(extra="forbid")
    dir: str = "runs"
    name: Optional[str] = None


class CombineSpec(BaseModel):
    """The combine.yaml schema: ``add_weighted_adapter``'s arguments plus where the parents are and
    where the result goes."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())
    adapters: list[str] = Field(min_length=1)
    weights: list[float] = Field(min_length=1)
    combination_type: Optional[str] = None
    svd_rank: Optional[int] = None
    svd_clamp: Optional[float] = None
    density: Optional[float] = None
    majority_sign_method: Literal["total", "frequency"] = "total"
    seed: int = 0  # DARE draws its masks from torch's generator, seeded with this
    model: Optional[str] = None  # base model; default: the first parent's
    output: CombineOutput = Field(default_factory=CombineOutput)


def load_spec(path: str) -> CombineSpec:
    """Read and check a combine.yaml; every problem is listed in one :class:`ConfigError`.

    Example:
        >>> load_spec("combine.yaml").weights  # doctest: +SKIP
        [1.0, 0.5]
    """
    try:
        raw = load_yaml(decode_utf8(read_bytes(path, MAX_BYTES), path))
    except (OSError, CorruptFileError, yaml.YAMLError) as e:
        reason = "no such file" if isinstance(e, FileNotFoundError) else getattr(e, "reason", None) or str(e)
        raise ConfigError(f"Cannot read combine config {path}:", [("", f"{path}: {reason}")]) from None
    if not isinstance(raw, dict):
        raise ConfigError(f"Invalid combine config {path}:", [("", "the top level must be a mapping (adapters, weights, ...)")])
    try:
        spec = CombineSpec(**raw)
    except ValidationError as e:
        problems = [(".".join(str(p) for p in err["loc"]), err["msg"]) for err in e.errors()]
        raise ConfigError(f"Invalid combine config {path}:", problems) from None
    if len(spec.weights) != len(spec.adapters):
        raise ConfigError(f"Invalid combine config {path}:", [
            ("weights", f"{len(spec.weights)} weight(s) for {len(spec.adapters)} adapter(s); give one weight per adapter")])
    return spec


def combine_from_file(path: str, evaluate: bool = False, out: Optional[TextIO] = None) -> str:
    """Run ``peftkit combine``: combine the parents named in ``path`` into a new run folder (written
    only when complete); with ``evaluate``, score it on each parent run's eval data. Returns the run folder.

    Example:
        >>> combine_from_file("combine.yaml")  # doctest: +SKIP
        'runs/20261203-130000-combine-9f8e7d'
    """
    from ..tracking.lineage import resolve_parent

    out = out or sys.stdout
    spec = load_spec(path)
    parents = [resolve_parent(source, spec.output.dir) for source in spec.adapters]
    problem = runs.output_dir_problem(spec.output.dir)
    if problem:
        raise ConfigError(f"Invalid combine config {path}:", [("output.dir", problem)])
    combined, base_name = _combine(spec, parents)
    run_dir = _write_run(spec, parents, combined, base_name)
    print(f"combined {len(parents)} adapters ({combined.report.combination_type}) into {run_dir}", file=out)
    if combined.report.max_error is not None:
        print(f"largest relative error against the exact weighted sum: {combined.report.max_error:.3g}", file=out)
    if evaluate:
        _evaluate(run_dir, parents, out)
    return run_dir


def _combine(spec: CombineSpec, parents: list) -> tuple[Any, str]:
    """Load the base model with every parent adapter and combine them beside it."""
    import torch

    from ..arithmetic import combine_adapters
    from .commands import base_model_source, load_adapter_model, locate, run_model

    first = locate(parents[0].adapter_dir)
    base_name, _ = base_model_source(first, spec.model, run_model(first))
    if spec.model is None:
        _check_one_base(parents, base_name)
    model, _ = load_adapter_model(first, model=base_name)
    names = ["default"] + [f"parent{i + 1}" for i in range(1, len(parents))]  # names stay inside: keys drop them
    for name, parent in zip(names[1:], parents[1:]):
        model.load_adapter(parent.adapter_dir, name)
    torch.manual_seed(spec.seed)
    combined = combine_adapters(model, names, spec.weights, combination_type=spec.combination_type,
                                svd_rank=spec.svd_rank, svd_clamp=spec.svd_clamp, density=spec.density,
                                majority_sign_method=spec.majority_sign_method)
    combined.config.base_model_name_or_path = base_name
    return combined, base_name


def _check_one_base(parents: list, base_name: str) -> None:
    """Refuse parents trained on different base models: their deltas change different matrices, so a
    weighted sum of them means nothing. Names are compared as written (a run's ``model.name``, else
    the adapter's ``base_model_name_or_path``); one model under two names is settled with ``model:``."""
    from .commands import base_model_source, locate, run_model

    bases = []
    for parent in parents:
        target = locate(parent.adapter_dir)
        bases.append(base_model_source(target, None, run_model(target))[0])
    if len(set(bases)) > 1:
        listing = "; ".join(f"{p.adapter_dir}: {b}" for p, b in zip(parents, bases))
        raise ConfigError("Cannot combine these adapters:", [(
            "adapters", f"they were trained on different base models ({listing}); an adapter's weights are "
                        f"changes to its own base's matrices, so combining them is undefined. If these are one "
                        f"model under different names, set model: to it (e.g. model: {base_name})")])


def _version(spec: CombineSpec, parents: list) -> str:
    """12 hex digits over the spec without ``output``, each parent counted by its adapter's content
    (as ``adapter.from`` is in run configs): the same combination of the same adapters is one version."""
    from ..tracking.lineage import adapter_fingerprint

    data = spec.model_dump(mode="json", exclude={"output"})
    data["adapters"] = [adapter_fingerprint(p.adapter_dir) for p in parents]
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:12]


def _parent_config(parents: list) -> Optional[str]:
    path = os.path.join(parents[0].run_dir, "config.yaml") if parents[0].run_dir else None
    return path if path and os.path.isfile(path) else None


def _write_run(spec: CombineSpec, parents: list, combined: Any, base_name: str) -> str:
    """The run folder, assembled beside its place and moved in complete."""
    from ..names import child_path
    from ..staging import staged_folder
    from ..tracking import env
    from ..tracking.lineage import adapter_fingerprint

    version = _version(spec, parents)
    run_id = runs.new_run_id(spec.output.name, "combine", version)
    os.makedirs(spec.output.dir, exist_ok=True)
    run_dir, n = child_path(spec.output.dir, run_id, what="run folder"), 1
    while os.path.exists(run_dir):  # two combinations in the same second
        n += 1
        run_dir = child_path(spec.output.dir, f"{run_id}-{n}", what="run folder")
    resolved = spec.model_dump(mode="json") | {"adapters": [p.adapter_dir for p in parents], "model": base_name}
    report = combined.report
    started = runs.now()
    with staged_folder(run_dir) as stage:
        combined.save_pretrained(os.path.join(stage, "adapter"))
        with open(os.path.join(stage, "combine.yaml"), "w", encoding="utf-8") as f:
            yaml.safe_dump(resolved, f, sort_keys=False)
        _write_run_config(stage, parents, combined)
        runs.write_json_atomic(os.path.join(stage, "run.json"), dict(
            run_id=os.path.basename(run_dir), name=spec.output.name, config_hash=version, status="completed",
            kind="combine", started=started, ended=runs.now(), seed=spec.seed,
            parent=parents[0].run_id, parent_path=parents[0].run_dir, parent_adapter=parents[0].adapter_dir,
            parent_fingerprint=adapter_fingerprint(parents[0].adapter_dir),
            parents=[{"run": p.run_id, "path": p.run_dir, "adapter": p.adapter_dir, "weight": w,
                      "fingerprint": adapter_fingerprint(p.adapter_dir)} for p, w in zip(parents, spec.weights)],
            combine={k: v for k, v in resolved.items() if k not in ("adapters", "output")},
            combination={"type": report.combination_type, "max_relative_error": report.max_error,
                         "errors": report.errors, "ranks": report.ranks},
            environment=env.capture()))
    return run_dir


# what the result's adapter config decides (the rest of the adapter section is the first parent's)
RESULT_SETTINGS = ("r", "lora_alpha", "target_modules", "rank_pattern", "alpha_pattern", "use_rslora", "use_dora",
                   "feedforward_modules", "bias")


def _write_run_config(stage: str, parents: list, combined: Any) -> None:
    """config.yaml: the first parent run's config with the result's adapter section (nothing when
    the first parent is a bare adapter folder: there is no run config to start from)."""
    source = _parent_config(parents)
    if source is None:
        return
    from .config import RunConfig, dump_yaml, load_run_config, resolved_dict

    cfg = load_run_config(source)
    settings = json.loads(json.dumps(combined.config.to_dict()))
    method = str(settings.get("peft_type", "")).lower()
    adapter = {k: v for k, v in cfg.adapter.items() if k != "from"} if cfg.adapter.get("method") == method else {}
    adapter["method"] = method
    adapter.update({k: settings[k] for k in RESULT_SETTINGS if k in settings})
    cfg = RunConfig(**{**resolved_dict(cfg), "adapter": adapter})
    dump_yaml(cfg, os.path.join(stage, "config.yaml"))


def _evaluate(run_dir: str, parents: list, out: TextIO) -> None:
    """Score the combined adapter on each parent run's eval data; record it in run.json."""
    from .evaluation import evaluate_adapter

    scores: dict[str, dict[str, float]] = {}  # parent run id -> metrics
    final: dict[str, float] = {}
    for i, parent in enumerate(parents, 1):
        config = os.path.join(parent.run_dir, "config.yaml") if parent.run_dir else None
        if config is None or not os.path.isfile(config):
            print(f"parent {i} ({parent.adapter_dir}) is not a run: no eval data to score on", file=out)
            continue
        label = parent.run_id
        print(f"on the eval data of {label}:", file=out)
        results = evaluate_adapter(os.path.join(run_dir, "adapter"), config=config,
                                   out_path=os.path.join(run_dir, f"eval_results-{label}.json"), out=out)
        scores[label] = {k: v for k, v in (results.get("metrics") or {}).items() if isinstance(v, (int, float))}
        # the first parent's data unsuffixed: config.yaml is that run's, so `peftkit eval` scores the same data
        final.update({f"eval_{metric}" + ("" if i == 1 else f"_p{i}"): v for metric, v in scores[label].items()})
    runs.update_run_json(run_dir, eval_on_parents=scores, final_metrics=final)
