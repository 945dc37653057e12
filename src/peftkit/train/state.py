"""Training checkpoints without pickles: optimizer, scheduler, RNG and data position.

A checkpoint folder holds the adapter (``adapter/``, the peft format), ``optimizer.safetensors``
(every optimizer state tensor, keyed ``<param index>.<name>``), ``run_state.safetensors`` (the
model's trainable parameters, ``param.<name>``, and state a method keeps between steps,
``method.<adapter>.<key>``: see ``MethodSpec.run_state``) and ``state.json`` (optimizer param
groups and scalar state, scheduler counters, RNG states, step and data position). It is written
to a temporary folder and renamed into place, so a run killed mid-save never leaves a
half-written checkpoint: the newest complete one is always whole. Its ``COMPLETE`` mark, written
last, records every file's size and SHA-256; a resume checks them (:func:`intact_checkpoint`) and
falls back to the newest checkpoint that is still intact, naming the damaged file (a disk error,
an edit, a copy cut short). Checkpoints from before the mark held checksums are read in full instead.

A resume restores the trainable parameters from ``run_state.safetensors`` rather than from the
adapter: the adapter holds what inference needs, which is not always what trains (a P-tuning
adapter saves the prompt its encoder computes, not the encoder). Everything else in the model is
rebuilt from the run's config and seed exactly as at the start of the run. Checkpoints written
before this file existed resume from their adapter, as they always did.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import warnings
from dataclasses import asdict, dataclass
from typing import Any, Optional

import numpy as np
import torch
from safetensors.torch import load_file

from ..checkpoint import write_tensors

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
    try:
        _write_checkpoint(tmp, peft_model, optimizer, scheduler, progress, extra)
    except BaseException:  # a full disk, a crash in a method's state: no half-written folder stays
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)
    return folder


def _write_checkpoint(tmp: str, peft_model: Any, optimizer: torch.optim.Optimizer, scheduler: Any, progress: Progress,
                      extra: Optional[dict]) -> None:
    peft_model.save_pretrained(os.path.join(tmp, "adapter"))
    opt_tensors, opt_meta = _optimizer_state(optimizer)
    rng_tensors, rng_meta = _rng_state()
    write_tensors({**opt_tensors, **rng_tensors}, os.path.join(tmp, OPTIMIZER_NAME))
    write_tensors(_model_state(peft_model), os.path.join(tmp, RUN_STATE_NAME))
    state = {
        "progress": asdict(progress),
        "optimizer": opt_meta,
        "scheduler": _scheduler_state(scheduler),
        "rng": rng_meta,
        "extra": extra or {},
    }
    with open(os.path.join(tmp, STATE_NAME), "w", encoding="utf-8") as f:
        json.dump(state, f)
    manifest = {"files": _manifest(tmp)}  # before the mark exists: it lists every other file
    with open(os.path.join(tmp, COMPLETE_MARK), "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=1, sort_keys=True)


def load_checkpoint(folder: str, peft_model: Any, optimizer: torch.optim.Optimizer, scheduler: Any) -> tuple[Progress, dict]:
    """Restore the trainable parameters (and methods' run state), optimizer, scheduler and RNG from
    ``folder``; returns the progress and the ``extra`` dict saved with it."""
    from ..errors import CheckpointError

    model_state = os.path.join(folder, RUN_STATE_NAME)
    if os.path.exists(model_state):
        _load_model_state(peft_model, _read_tensors(model_state), model_state)
    else:  # written before run_state.safetensors existed
        from ..checkpoint import load_adapter_weights, set_peft_model_state_dict

        weights, path = load_adapter_weights(os.path.join(folder, "adapter"))
        set_peft_model_state_dict(peft_model, weights, adapter_name="default", source=path)
    state_path, optimizer_path = os.path.join(folder, STATE_NAME), os.path.join(folder, OPTIMIZER_NAME)
    state, tensors = _read_state(state_path), _read_tensors(optimizer_path)
    try:
        _load_optimizer_state(optimizer, {k: v for k, v in tensors.items() if not k.startswith("rng.")}, state["optimizer"])
        scheduler.load_state_dict({**scheduler.state_dict(), **state["scheduler"]})
        _set_rng_state({k: v for k, v in tensors.items() if k.startswith("rng.")}, state["rng"])
        return Progress(**state["progress"]), state["extra"]
    except (KeyError, TypeError, ValueError, IndexError, RuntimeError) as e:
        raise CheckpointError(f"{state_path} / {optimizer_path}: the optimizer, scheduler or RNG state does not fit "
                              f"this run ({type(e).__name__}: {e})") from None


def _read_tensors(path: str) -> dict[str, torch.Tensor]:
    from ..errors import CheckpointError

    try:
        return load_file(path)
    except Exception as e:  # safetensors raises its own error type for a damaged file
        raise CheckpointError(f"{path} is not a readable safetensors file ({e})") from None


def _read_state(path: str) -> dict[str, Any]:
    from ..errors import CheckpointError, CorruptFileError
    from ..untrusted import read_json

    try:
        state = read_json(path)
    except (OSError, CorruptFileError) as e:
        raise CheckpointError(f"{path}: {getattr(e, 'reason', None) or e}") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: not a JSON object")
    return state


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _manifest(folder: str) -> dict[str, dict[str, Any]]:
    """Relative path -> ``{"bytes", "sha256"}`` of every file of a checkpoint folder."""
    found = {}
    for root, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            found[os.path.relpath(path, folder)] = {"bytes": os.path.getsize(path), "sha256": _sha256(path)}
    return found


def checkpoint_problem(folder: str) -> Optional[str]:
    """Why the checkpoint ``folder`` cannot be trusted (naming the file), or None if it is intact:
    each file's size and SHA-256 against those its COMPLETE mark recorded; for checkpoints whose
    mark holds none (older peftkit), every file read in full instead."""
    from ..errors import PeftkitError
    from ..untrusted import read_json

    mark = os.path.join(folder, COMPLETE_MARK)
    try:
        recorded = read_json(mark).get("files") if os.path.getsize(mark) else None
    except (OSError, PeftkitError, AttributeError) as e:
        return f"{COMPLETE_MARK}: {getattr(e, 'reason', None) or e}"
    if recorded is None:
        return _full_read_problem(folder)
    if not isinstance(recorded, dict) or not all(isinstance(v, dict) for v in recorded.values()):
        return f"{COMPLETE_MARK}: not a list of files with their sizes and checksums"
    for rel, expected in sorted(recorded.items()):
        path = os.path.join(folder, rel)
        if os.path.commonpath([os.path.realpath(folder), os.path.realpath(path)]) != os.path.realpath(folder):
            return f"{COMPLETE_MARK}: names a file outside the checkpoint ({rel[:100]!r})"
        if not os.path.isfile(path):
            return f"{rel}: missing"
        if os.path.getsize(path) != expected.get("bytes") or _sha256(path) != expected.get("sha256"):
            return f"{rel}: its contents differ from those written (size or SHA-256)"
    return None


def _full_read_problem(folder: str) -> Optional[str]:
    from ..errors import PeftkitError

    checks = [(STATE_NAME, _read_state), (OPTIMIZER_NAME, _read_tensors),
              (os.path.join("adapter", "adapter_model.safetensors"), _read_tensors)]
    if os.path.exists(os.path.join(folder, RUN_STATE_NAME)):
        checks.append((RUN_STATE_NAME, _read_tensors))
    for rel, read in checks:
        try:
            read(os.path.join(folder, rel))
        except (OSError, PeftkitError) as e:
            return f"{rel}: {e}"
    return None


def intact_checkpoint(checkpoints_dir: str, warn: Any = None) -> Optional[str]:
    """The newest complete checkpoint that passes :func:`checkpoint_problem`; each damaged one
    passed over is reported through ``warn`` (default: :func:`warnings.warn`), naming its bad file.
    None when there is no complete checkpoint; :class:`CheckpointError` when there are some and
    none is intact (starting over would discard the run's progress without being asked).

    Example:
        >>> intact_checkpoint("runs/r1/checkpoints")  # doctest: +SKIP
        'runs/r1/checkpoints/step-00050'
    """
    from ..errors import CheckpointError

    warn = warn or (lambda message: warnings.warn(message, stacklevel=3))
    damaged = []
    for folder in _complete_checkpoints(checkpoints_dir):
        problem = checkpoint_problem(folder)
        if problem is None:
            return folder
        damaged.append(folder)
        warn(f"checkpoint {folder} is damaged and is skipped: {os.path.join(folder, problem)}")
    if damaged:
        raise CheckpointError(f"no intact checkpoint in {checkpoints_dir}: every one is damaged (newest: "
                              f"{damaged[0]}); the run was left as it was")
    return None


def _complete_checkpoints(checkpoints_dir: str) -> list[str]:
    """Complete checkpoint folders (``step-N`` with a COMPLETE mark), newest first."""
    if not os.path.isdir(checkpoints_dir):
        return []
    done = [d for d in os.listdir(checkpoints_dir) if re.fullmatch(r"step-\d+", d)
            and os.path.isfile(os.path.join(checkpoints_dir, d, COMPLETE_MARK))]
    return [os.path.join(checkpoints_dir, d) for d in sorted(done, key=lambda d: int(d.split("-")[1]), reverse=True)]


def latest_checkpoint(checkpoints_dir: str) -> Optional[str]:
    """The newest complete checkpoint folder (``step-NNNNN`` with its COMPLETE mark), or None;
    unverified (see :func:`intact_checkpoint`)."""
    done = _complete_checkpoints(checkpoints_dir)
    return done[0] if done else None
