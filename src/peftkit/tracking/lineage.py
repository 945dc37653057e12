"""Lineage: a run that starts from another run's adapter records that run as its ``parent``.

``adapter.from`` in a run config (or ``peftkit train --from-run RUN``) names the adapter to start
from: a run folder (its final ``adapter/``), a run id or unique prefix in ``output.dir``, or any
adapter folder (``adapter_config.json`` + weights; a checkpoint's ``checkpoints/step-N/adapter``
belongs to its run). Before the run folder is made, :func:`resolve_parent` turns it into the
absolute adapter folder and the parent run; relative paths are read from the current directory,
like data paths. The config version counts the adapter by what it is, not where it lies
(:func:`adapter_fingerprint`: the sha256 of its config and weights files), so the same config run
from another checkout or machine, on a copy of the same adapter, is the same version. The loop then copies those weights into the new adapter (:func:`load_initial_weights`);
the adapter section must describe the same adapter (method, rank, targets), or loading fails naming
the module whose shape differs.

>>> chain(catalog, catalog.resolve("c"))   # doctest: +SKIP   (c continued b, which continued a)
['c...', 'b...', 'a...']
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import Any, Optional, Union

from ..errors import ConfigError, PeftkitError
from .env import file_digest
from .records import Run, is_run_dir, read_run

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"  # peftkit.checkpoint.WEIGHTS_NAME, without importing torch
# (path, size, mtime_ns) -> sha256: a run hashes its config more than once, the weights need reading once
_digests: dict[tuple[str, int, int], Optional[str]] = {}


@dataclass
class Parent:
    adapter_dir: str  # absolute
    run_dir: Optional[str]  # absolute, None for a stand-alone adapter folder

    @property
    def run_id(self) -> Optional[str]:
        return os.path.basename(self.run_dir) if self.run_dir else None


def _owning_run(adapter_dir: str) -> Optional[str]:
    """``<run>/adapter`` or ``<run>/checkpoints/step-N/adapter`` -> ``<run>``."""
    path = adapter_dir
    for _ in range(3):
        path = os.path.dirname(path)
        if is_run_dir(path):
            return path
    return None


def _problem(source: str, message: str) -> ConfigError:
    return ConfigError("Cannot start from the adapter in adapter.from:", [("adapter.from", f"{source!r}: {message}")])


def resolve_parent(source: str, runs_dir: str, method: Optional[str] = None) -> Parent:
    """Where ``adapter.from`` points; raises :class:`ConfigError` (path ``adapter.from``) when it is
    not a run with a final adapter nor an adapter folder, or holds another method's adapter."""
    path = os.path.abspath(os.path.expanduser(source))
    if not os.path.exists(path) and os.sep not in source and os.path.isdir(runs_dir):
        from .catalog import Catalog, RunsError

        try:
            with Catalog(runs_dir) as catalog:
                path = catalog.resolve(source).path
        except RunsError as e:
            raise _problem(source, f"no such folder, and as a run name: {e}") from None
    if not os.path.isdir(path):
        raise _problem(source, "no such run or adapter folder")
    if is_run_dir(path):
        adapter_dir, run_dir = os.path.join(path, "adapter"), path
        if not os.path.isfile(os.path.join(adapter_dir, ADAPTER_CONFIG)):
            status = read_run(path).status
            raise _problem(source, f"the run has no final adapter yet (status {status}); finish it first, or start "
                                   f"from a checkpoint: adapter.from={path}/checkpoints/step-N/adapter")
    elif os.path.isfile(os.path.join(path, ADAPTER_CONFIG)):
        adapter_dir, run_dir = path, _owning_run(path)
    else:
        raise _problem(source, f"neither a run folder (no run.json) nor an adapter folder (no {ADAPTER_CONFIG})")
    if method is not None:
        _check_method(adapter_dir, method, source)
    return Parent(adapter_dir, run_dir)


def adapter_fingerprint(adapter_dir: str) -> str:
    """``sha256:<hex>`` over the adapter's ``adapter_config.json`` and ``adapter_model.safetensors``
    (each streamed, and remembered while its size and modification time stay the same): equal for
    byte-identical copies wherever they lie, different when either file differs.

    >>> adapter_fingerprint("runs/20261122-211659-demo-7bd1af/adapter")   # doctest: +SKIP
    'sha256:9c1e...'
    """
    combined = hashlib.sha256()
    for name in (ADAPTER_CONFIG, ADAPTER_WEIGHTS):
        path = os.path.abspath(os.path.join(adapter_dir, name))
        if not os.path.isfile(path):
            continue
        stat = os.stat(path)
        key = (path, stat.st_size, stat.st_mtime_ns)
        if key not in _digests:
            _digests[key] = file_digest(path)
        combined.update(f"{name} {_digests[key]}\n".encode())
    return "sha256:" + combined.hexdigest()


def versioned_source(source: str) -> str:
    """What ``adapter.from`` adds to the config version: the :func:`adapter_fingerprint` of the
    adapter folder it names, else (a config whose ``adapter.from`` is not resolved yet) its text."""
    if os.path.isfile(os.path.join(os.path.expanduser(source), ADAPTER_CONFIG)):
        return adapter_fingerprint(os.path.expanduser(source))
    return source


def _check_method(adapter_dir: str, method: str, source: str) -> None:
    from ..untrusted import read_json

    path = os.path.join(adapter_dir, ADAPTER_CONFIG)
    try:
        data = read_json(path)
    except (OSError, PeftkitError) as e:
        raise _problem(source, f"{path} cannot be read: {getattr(e, 'reason', None) or e}") from None
    saved = str(data.get("peft_type", "")).lower() if isinstance(data, dict) else ""
    if saved and saved != method.lower():
        raise _problem(source, f"holds a {saved} adapter, but adapter.method is {method}")


def load_initial_weights(peft_model: Any, adapter_dir: str) -> None:
    """Copy the weights of ``adapter_dir`` into the model's ``default`` adapter (shapes checked first:
    a mismatch raises :class:`~peftkit.errors.CheckpointError` naming the module)."""
    from ..checkpoint import load_adapter_weights, set_peft_model_state_dict

    weights, path = load_adapter_weights(adapter_dir)
    set_peft_model_state_dict(peft_model, weights, adapter_name="default", source=path)


def chain(lookup: Any, run: Run, limit: int = 100) -> list[Union[Run, str]]:
    """``run``, its parent, the parent's parent, ...; a parent that cannot be found any more ends
    the chain as its id (a string). ``lookup`` is a :class:`~peftkit.tracking.catalog.Catalog`."""
    found: list[Union[Run, str]] = [run]
    seen = {run.path}
    current = run
    while len(found) < limit:
        parent_id, parent_path = current.info.get("parent"), current.info.get("parent_path")
        if not parent_id:
            break
        parent = _find(lookup, parent_id, parent_path)
        if parent is None or parent.path in seen:
            found.append(parent_id)
            break
        found.append(parent)
        seen.add(parent.path)
        current = parent
    return found


def _find(lookup: Any, run_id: str, path: Optional[str]) -> Optional[Run]:
    loaded = lookup.index.load([run_id])
    if loaded:
        return loaded[0]
    if path and is_run_dir(path):  # a parent in another runs folder
        return read_run(path)
    return None


def children(runs: list[Run], run: Run) -> list[Run]:
    """The runs that started from ``run``'s adapter, or combined it with others (``parents``)."""
    return [r for r in runs if r.info.get("parent") == run.id or run.id in parent_ids(r)]


def parent_ids(run: Run) -> list[str]:
    """Every parent run of a combination (``peftkit combine``), in order; [] for other runs."""
    return [p["run"] for p in run.info.get("parents") or [] if isinstance(p, dict) and p.get("run")]
