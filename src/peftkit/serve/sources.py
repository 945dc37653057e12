"""Where served adapters come from: named folders (command line or a YAML file), the sub-folders
of watched directories, and the paths ``/v1/load_lora_adapter`` may name.

A folder is an adapter folder (``adapter_config.json`` + weights) or a ``peftkit train`` run folder
(its final ``adapter/``). Names go through the one rule of :mod:`peftkit.names`, and a path sent in
a request is used only if it resolves inside a configured directory (``check_inside``).

>>> adapter_specs(["contacts=runs/x", "runs/y"])
{'contacts': 'runs/x', 'y': 'runs/y'}
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from ..config import PeftConfig
from ..errors import ConfigError, PathError, PeftkitError
from ..names import check_adapter_name, check_inside, short_repr
from ..registry import method_for_config
from ..train.commands import ADAPTER_CONFIG, locate
from .errors import ServeError

log = logging.getLogger("peftkit.serve")


@dataclass(frozen=True)
class AdapterSource:
    """A servable adapter: its name, folder (holding ``adapter_config.json``) and config."""

    name: str
    path: str
    config: PeftConfig
    origin: str  # "command line", "directory <dir>", "load_lora_adapter"

    def signature(self) -> tuple:
        """Changes when the adapter's files change (to reload a retrained or fixed adapter)."""
        return signature(self.path)


def signature(folder: str) -> tuple:
    stamps = []
    for entry in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
        try:
            stat = os.stat(os.path.join(folder, entry))
        except OSError:
            continue
        stamps.append((entry, stat.st_mtime_ns, stat.st_size))
    return tuple(stamps)


def adapter_specs(values: list[str]) -> dict[str, str]:
    """``--adapter [NAME=]PATH`` values as ``{name: path}``; without ``NAME=`` the folder's name
    (a run's ``adapter/`` folder: the run's name)."""
    specs: dict[str, str] = {}
    for value in values:
        name, sep, path = value.partition("=")
        if not sep:
            name, path = default_name(value), value
        if name in specs:
            raise ConfigError("Invalid adapters:", [("adapter", f"the name {name!r} is given twice")])
        specs[name] = path
    return specs


def default_name(path: str) -> str:
    folder = os.path.basename(os.path.normpath(path))
    if folder == "adapter":  # <run>/adapter: the run names it
        folder = os.path.basename(os.path.dirname(os.path.abspath(path)))
    return folder


def adapters_file(path: str) -> dict[str, str]:
    """A YAML file of ``name: folder`` entries (or a list of folders, named by :func:`default_name`);
    relative folders are relative to the file."""
    from ..untrusted import read_bytes, decode_utf8
    import yaml

    try:
        data = yaml.safe_load(decode_utf8(read_bytes(path, 2**20), path))
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"{path}: cannot be read:", [("", str(e).splitlines()[0])]) from None
    here = os.path.dirname(os.path.abspath(path))
    if isinstance(data, list) and all(isinstance(v, str) for v in data):
        data = {default_name(v): v for v in data}
    if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
        raise ConfigError(f"{path}: invalid adapters file:", [("", "write one 'name: folder' line per adapter "
                                                                  "(or a list of folders)")])
    return {name: os.path.join(here, folder) for name, folder in data.items()}


def read_source(name: str, path: str, origin: str) -> AdapterSource:
    """Check the name and the folder; the adapter must be a causal-LM adapter whose method mixes
    in a batch. Raises :class:`ServeError` (400) naming what is wrong."""
    try:
        check_adapter_name(name, field="adapter name")
        target = locate(path)
    except PeftkitError as e:
        raise ServeError(400, f"adapter {short_repr(name)} ({origin}): {e}", code="invalid_adapter") from None
    config = target.config
    task = getattr(config.task_type, "value", config.task_type)
    if task not in (None, "CAUSAL_LM"):
        raise ServeError(400, f"adapter {name!r} ({target.adapter_dir}): task_type is {task}; only CAUSAL_LM adapters "
                              "generate text", code="invalid_adapter")
    if method_for_config(config).prepare_inputs is not None:
        raise ServeError(400, f"adapter {name!r} ({target.adapter_dir}): {config.peft_type} changes the model's inputs, "
                              "so its requests cannot share a batch with others; serve LoRA-family, IA3, VeRA, ... "
                              "adapters", code="invalid_adapter")
    return AdapterSource(name, target.adapter_dir, config, origin)


def scan(directories: list[str]) -> dict[str, str]:
    """``{name: folder}`` for every sub-folder of ``directories`` that holds an adapter or a run
    (first directory wins a name); folders whose names are not valid adapter names are skipped."""
    found: dict[str, str] = {}
    for root in directories:
        try:
            entries = sorted(os.scandir(root), key=lambda e: e.name)
        except OSError as e:
            log.warning("adapter directory %s cannot be read: %s", root, e)
            continue
        for entry in entries:
            if not entry.is_dir() or entry.name in found:
                continue
            if not (os.path.isfile(os.path.join(entry.path, ADAPTER_CONFIG))
                    or os.path.isfile(os.path.join(entry.path, "adapter", ADAPTER_CONFIG))):
                continue
            try:
                check_adapter_name(entry.name)
            except PeftkitError:
                continue
            found[entry.name] = entry.path
    return found


def allowed_path(path: str, directories: list[str]) -> str:
    """``path`` (absolute, or relative to a configured directory) if it lies inside one of
    ``directories``; else a 403 naming them. Symbolic links are followed before the check."""
    if not directories:
        raise ServeError(403, "loading adapters at runtime is off: start the server with --adapter-dir DIR "
                              "to allow loading from DIR", code="runtime_loading_disabled")
    candidates = [path] if os.path.isabs(path) else [os.path.join(root, path) for root in directories]
    for candidate in candidates:
        for root in directories:
            try:
                return check_inside(root, candidate, what="lora_path")
            except PathError:
                continue
    raise ServeError(403, f"lora_path {short_repr(path)} is outside the adapter directories this server may load from "
                          f"({', '.join(directories)})", param="lora_path", code="path_not_allowed")

