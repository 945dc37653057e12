"""Other trackers through accelerate's tracker classes: ``tracking.backends: [tensorboard]`` writes
event files into ``<run>/tensorboard`` (view them with ``tensorboard --logdir runs``), ``[mlflow]`` a
run in the experiment ``tracking.project`` of ``tracking.mlflow_uri`` (default: a local file store
``<output.dir>/mlruns``; view it with ``mlflow ui --backend-store-uri runs/mlruns``), ``[wandb]`` a
run in the wandb project ``tracking.project``. ``metrics.jsonl`` in the run folder is always written
(``local``): it is what ``peftkit runs`` reads.

Metric names are grouped the way TensorBoard and MLflow show them: ``train/loss``, ``train/lr``,
``train/tokens_per_s``, ``eval/loss``, ``eval/exact_match``; the resolved config goes in as
hyperparameters (``adapter.r``, ``train.lr``, ...) with the config version and run id.
A resumed run continues its MLflow run (its id is kept in run.json under ``trackers``); what it
logs again after its checkpoint replaces what the trackers got before (:mod:`.resumed`).
"""

from __future__ import annotations

import importlib.util
import os
from typing import Any, Optional

from ..errors import ConfigError
from ..train import runs

# backend -> (importable modules, any one of which is enough; what to install)
REQUIREMENTS = {"tensorboard": (("tensorboard", "tensorboardX"), "pip install tensorboardX (or tensorboard)"),
                "mlflow": (("mlflow",), "pip install mlflow-skinny"),
                "wandb": (("wandb",), "pip install wandb")}
END_STATUS = {"completed": "FINISHED", "failed": "FAILED", "interrupted": "KILLED"}  # MLflow's words


def check_backends(backends: list[str]) -> None:
    """Fail before anything is trained when a backend's package is missing."""
    problems = []
    for i, backend in enumerate(backends):
        modules, install = REQUIREMENTS.get(backend, ((), ""))
        if modules and not any(importlib.util.find_spec(m) for m in modules):
            problems.append((f"tracking.backends[{i}]", f"{backend!r} needs the {modules[0]} package: {install}"))
    if problems:
        raise ConfigError("A tracker cannot be used:", problems)


def hyperparameters(cfg: Any, run_dir: str, version: str) -> dict[str, Any]:
    """The resolved config as flat ``section.key`` values of the types trackers accept."""
    from ..train.config import resolved_dict

    flat: dict[str, Any] = {"run_id": os.path.basename(run_dir), "config_version": version}
    for section, values in resolved_dict(cfg).items():
        for key, value in values.items():
            simple = isinstance(value, (bool, int, float, str))
            flat[f"{section}.{key}"] = value if simple else "null" if value is None else str(value)
    return flat


def open_trackers(accelerator: Any, cfg: Any, run_dir: str, version: str,
                  previous: Optional[dict[str, Any]] = None, first_step: Optional[int] = None) -> dict[str, Any]:
    """Start the configured trackers (main process only) and register them with ``accelerator``, so
    that ``accelerator.log`` reaches them; returns what run.json records about them. A resumed run
    passes run.json's ``previous`` tracker record and ``first_step``, the first step it logs again."""
    backends = [b for b in cfg.tracking.backends if b != "local"]
    if not backends or not accelerator.is_main_process:
        return {}
    from accelerate.tracking import MLflowTracker, TensorBoardTracker, WandBTracker

    from .resumed import mlflow_run_to_continue, tensorboard_options

    run_id, made, record = os.path.basename(run_dir), [], {}
    if "tensorboard" in backends:
        log_dir = os.path.join(run_dir, "tensorboard")  # accelerate: <logging_dir>/<run_name>
        made.append(TensorBoardTracker(run_name="tensorboard", logging_dir=run_dir,
                                       **tensorboard_options(log_dir, first_step)))
        record["tensorboard"] = {"dir": log_dir}
    if "mlflow" in backends:
        uri = cfg.tracking.mlflow_uri or "file:" + os.path.abspath(os.path.join(cfg.output.dir, "mlruns"))
        if uri.startswith("file:"):  # MLflow 3 wants an explicit opt-in to its (local) file store
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        import mlflow

        mlflow.set_tracking_uri(uri)
        earlier = (previous or {}).get("mlflow", {}).get("run_id")
        if earlier:
            from mlflow.tracking import MlflowClient

            earlier = mlflow_run_to_continue(MlflowClient(uri), earlier, first_step)
        made.append(MLflowTracker(experiment_name=cfg.tracking.project, run_id=earlier, run_name=run_id,
                                  tags={"peftkit.config_version": version, "peftkit.run_dir": run_dir}))
        record["mlflow"] = {"uri": uri, "experiment": cfg.tracking.project}
    if "wandb" in backends:
        made.append(WandBTracker(cfg.tracking.project, name=run_id, dir=run_dir))
        record["wandb"] = {"project": cfg.tracking.project}
    accelerator.log_with = made  # tracker objects: init_trackers starts them and keeps them in .trackers
    accelerator.init_trackers(cfg.tracking.project, config=None if previous else hyperparameters(cfg, run_dir, version))
    for tracker in accelerator.trackers:
        if tracker.name == "mlflow":
            record["mlflow"]["run_id"] = tracker.active_run.info.run_id
    return record


def log_metrics(accelerator: Any, run_dir: str, record: dict[str, Any]) -> None:
    """One metrics record: appended to ``metrics.jsonl`` and sent to every open tracker. Call it on
    the main process."""
    runs.append_metrics(run_dir, record)
    if accelerator is None or not getattr(accelerator, "trackers", None):
        return
    values = {}
    for key, value in record.items():
        if key in ("step", "final") or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        values[f"eval/{key[5:]}" if key.startswith("eval_") else f"train/{key}"] = value
    if values:
        accelerator.log(values, step=int(record.get("step", 0)))


def close_trackers(accelerator: Any, status: str) -> None:
    """Finish every tracker (MLflow with the run's status: FINISHED, FAILED or KILLED)."""
    for tracker in list(getattr(accelerator, "trackers", [])):
        if tracker.name == "mlflow" and accelerator.is_main_process:
            import mlflow

            mlflow.end_run(status=END_STATUS.get(status, "FINISHED"))
        else:
            tracker.finish()
    accelerator.trackers = []
