"""Training checkpoints without pickles: optimizer, scheduler, RNG and data position.

A checkpoint folder holds the adapter (``adapter/``, the peft format), ``optimizer.safetensors``
(every optimizer state tensor, keyed ``<param index>.<name>``), ``run_state.safetensors`` (the
model's trainable parameters, ``param.<name>``, and state a method keeps between steps,
``method.<adapter>.<key>``: see ``MethodSpec.run_state``) and ``state.json`` (optimizer param
groups and scalar state, scheduler counters, RNG states, step and data position). It is written
to a temporary folder and renamed into place, so a run killed mid-save never leaves a
half-written checkpoint: the newest complete one is always whole.

A resume restores the trainable parameters from ``run_state.safetensors`` rather than from the
adapter: the adapter holds what inference needs, which is not always what trains (a P-tuning
adapter saves the prompt its encoder computes, not the encoder). Everything else in the model is
rebuilt from the run's config and seed exactly as at the start of the run. Checkpoints written
before this file existed resume from their adapter, as they always did.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from dataclasses import asdict, dataclass
from typing import Any, Optional

import numpy as np
import torch
from safetensors.torch import load_file, save_file

STATE_NAME = "state.json"
OPTIMIZER_NAME = "optimizer.safetensors"
RUN_STATE_NAME = "run_state.safetensors"
COMPLETE_MARK = "COMPLETE"


@dataclass
class Progress:
    """Where training stands: optimizer steps taken, the epoch, and batches consumed in it."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0


def _optimizer_state(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    sd = optimizer.state_dict()
    tensors, scalars = {}, {}
    for idx, state in sd["state"].items():
        for name, value in _flat(state):
            if torch.is_tensor(value):
                tensors[f"{idx}.{name}"] = value.detach().cpu().contiguous().clone()
            else:
                scalars[f"{idx}.{name}"] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _flat(state: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """``(name, value)`` pairs of one parameter's optimizer state; a nested dict (bitsandbytes'
    8-bit optimizers pack their quantized moments into one) gives ``outer/inner`` names."""
    items = []
    for name, value in state.items():
        if isinstance(value, dict):
            items += _flat(value, f"{prefix}{name}/")
        else:
            items.append((f"{prefix}{name}", value))
    return items


def _load_optimizer_state(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    state: dict[int, dict[str, Any]] = {}
    for key, value in [*tensors.items(), *meta["scalars"].items()]:
        idx, name = key.split(".", 1)
        node = state.setdefault(int(idx), {})
        *outer, name = name.split("/")
        for part in outer:
            node = node.setdefault(part, {})
        node[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def _rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    np_state = np.random.get_state()
    meta = {
        "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
    }
    return tensors, meta


def _set_rng_state(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    torch.set_rng_state(tensors["rng.torch"])
    cuda = [tensors[k] for k in sorted(k for k in tensors if k.startswith("rng.cuda."))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    version, internal, gauss = meta["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = meta["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))


def _cpu(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.detach().cpu().contiguous().clone()


def _model_state(peft_model: Any) -> dict[str, torch.Tensor]:
    """The trainable parameters under their names, and every method's own run state."""
    from ..registry import method_for_config

    tensors = {f"param.{name}": _cpu(p) for name, p in peft_model.named_parameters() if p.requires_grad}
    for adapter, config in peft_model.peft_config.items():
        spec = method_for_config(config)
        if spec.run_state is not None:
            tensors.update({f"method.{adapter}.{key}": _cpu(t) for key, t in spec.run_state(peft_model, adapter).items()})
    return tensors


def _load_model_state(peft_model: Any, tensors: dict[str, torch.Tensor], source: str) -> None:
    """Put back what :func:`_model_state` saved; the parameters must match by name and shape (else
    :class:`CheckpointError`). Methods' state goes first: it may reshape their layers (AdaLoRA's
    checkpoint after the final pruning)."""
    from ..errors import CheckpointError
    from ..registry import method_for_config

    for adapter, config in peft_model.peft_config.items():
        spec = method_for_config(config)
        if spec.load_run_state is not None:
            prefix = f"method.{adapter}."
            spec.load_run_state(peft_model, adapter, {k[len(prefix):]: t for k, t in tensors.items() if k.startswith(prefix)})
    saved = {k.removeprefix("param."): t for k, t in tensors.items() if k.startswith("param.")}
    live = {name: p for name, p in peft_model.named_parameters() if p.requires_grad}
    problem = next((f"{name!r} is missing" for name in live if name not in saved), None)
    problem = problem or next((f"{name!r} is not trainable in this model" for name in saved if name not in live), None)
    problem = problem or next((f"{name!r} has shape {tuple(saved[name].shape)} but {tuple(p.shape)} in the model"
                               for name, p in live.items() if saved[name].shape != p.shape), None)
    if problem:
        raise CheckpointError(f"{source}: the checkpoint does not fit this run's model: {problem}. Was the adapter "
                              "section of the run's config.yaml changed since the checkpoint was written?")
    with torch.no_grad():
        for name, p in live.items():
            p.copy_(saved[name].to(device=p.device, dtype=p.dtype))


def _scheduler_state(scheduler: Any) -> dict[str, Any]:
    # only the counters: the lr lambdas are rebuilt from the config on resume
    sd = scheduler.state_dict()
    return {k: v for k, v in sd.items() if isinstance(v, (int, float, list)) and k != "lr_lambdas"}


def save_checkpoint(
    folder: str, peft_model: Any, optimizer: torch.optim.Optimizer, scheduler: Any, progress: Progress, extra: Optional[dict] = None
) -> str:
    """Write a complete checkpoint into ``folder`` atomically; returns ``folder``.

    Example:
        >>> save_checkpoint("runs/r1/checkpoints/step-00050", model, opt, sched, Progress(50, 0, 50))  # doctest: +SKIP
    """
    tmp = folder + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    peft_model.save_pretrained(os.path.join(tmp, "adapter"))
    opt_tensors, opt_meta = _optimizer_state(optimizer)
    rng_tensors, rng_meta = _rng_state()
    save_file({**opt_tensors, **rng_tensors}, os.path.join(tmp, OPTIMIZER_NAME))
    save_file(_model_state(peft_model), os.path.join(tmp, RUN_STATE_NAME))
    state = {
        "progress": asdict(progress),
        "optimizer": opt_meta,
        "scheduler": _scheduler_state(scheduler),
        "rng": rng_meta,
        "extra": extra or {},
    }
    with open(os.path.join(tmp, STATE_NAME), "w", encoding="utf-8") as f:
        json.dump(state, f)
    open(os.path.join(tmp, COMPLETE_MARK), "w").close()
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)
    return folder


def load_checkpoint(folder: str, peft_model: Any, optimizer: torch.optim.Optimizer, scheduler: Any) -> tuple[Progress, dict]:
    """Restore the trainable parameters (and methods' run state), optimizer, scheduler and RNG from
    ``folder``; returns the progress and the ``extra`` dict saved with it."""
    model_state = os.path.join(folder, RUN_STATE_NAME)
    if os.path.exists(model_state):
        _load_model_state(peft_model, load_file(model_state), model_state)
    else:  # written before run_state.safetensors existed
        from ..checkpoint import load_adapter_weights, set_peft_model_state_dict

        weights, path = load_adapter_weights(os.path.join(folder, "adapter"))
        set_peft_model_state_dict(peft_model, weights, adapter_name="default", source=path)
    with open(os.path.join(folder, STATE_NAME), encoding="utf-8") as f:
        state = json.load(f)
    tensors = load_file(os.path.join(folder, OPTIMIZER_NAME))
    _load_optimizer_state(optimizer, {k: v for k, v in tensors.items() if not k.startswith("rng.")}, state["optimizer"])
    scheduler.load_state_dict({**scheduler.state_dict(), **state["scheduler"]})
    _set_rng_state({k: v for k, v in tensors.items() if k.startswith("rng.")}, state["rng"])
    return Progress(**state["progress"]), state["extra"]


def latest_checkpoint(checkpoints_dir: str) -> Optional[str]:
    """The newest complete checkpoint folder (``step-NNNNN`` with its COMPLETE mark), or None."""
    if not os.path.isdir(checkpoints_dir):
        return None
    done = [
        d for d in os.listdir(checkpoints_dir)
        if d.startswith("step-") and not d.endswith(".tmp") and os.path.exists(os.path.join(checkpoints_dir, d, COMPLETE_MARK))
    ]
    return os.path.join(checkpoints_dir, max(done, key=lambda d: int(d.split("-")[1]))) if done else None
