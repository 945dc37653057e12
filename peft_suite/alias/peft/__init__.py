"""``import peft`` for peft's test suite, resolved to peftkit's public objects.

Put ``peft_suite/alias`` first on ``sys.path`` (``peft_suite.run`` does) and ``peft``,
``peft.tuners.lora.layer``, ``peft.utils`` ... are modules whose names are peftkit's objects, as
listed in ``_table.py``. This package re-exports; it implements nothing. Names peftkit lacks are
stand-ins that raise when used (``_standins.py``).
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import types
from typing import Any

import packaging.version
import transformers

from ._standins import MissingInPeftkit, NotInPeftkit, stand_in
from ._table import MISSING, NA, SUBMODULES, TOP_LEVEL

__version__ = "0.21.2"


def _resolve(peft_name: str, entry: Any) -> Any:
    if isinstance(entry, (NA, MISSING)):
        return stand_in(peft_name, entry.why, applicable=isinstance(entry, MISSING))
    module, attribute = entry.split(":")
    try:
        return getattr(importlib.import_module(module), attribute)
    except (ImportError, AttributeError):  # an older peftkit (--peftkit-at) that lacks the name
        return stand_in(peft_name, f"{entry} is not in this version of peftkit", applicable=True)


def _fill(module: types.ModuleType, entries: dict[str, Any]) -> None:
    for name, entry in entries.items():
        setattr(module, name, _resolve(f"{module.__name__}.{name}", entry))


def _environment_facts(module: types.ModuleType) -> None:
    """peft.import_utils: which transformers release runs, and which optional quantization
    backends are usable. peftkit does not integrate peft's backend classes (GPTQModel, AQLM,
    EETQ, HQQ, optimum, torchao), so their tests report the backends absent and skip."""
    version = packaging.version.parse(transformers.__version__)
    for flag, floor in {"5.0.0.dev0": "is_transformers_ge_v5", "5.1.0": "is_transformers_ge_v5_1_0",
                        "5.4.0": "is_transformers_ge_v5_4_0", "5.6.0.dev0": "is_transformers_ge_v5_6_0",
                        "5.17.0": "is_transformers_ge_v5_17_0"}.items():
        setattr(module, floor, version >= packaging.version.parse(flag))
    for backend in ("aqlm", "eetq", "gptqmodel", "hqq", "optimum", "torchao", "bnb", "auto_gptq", "inc", "xpu"):
        setattr(module, f"is_{backend}_available", lambda: False)


class _AliasFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Builds ``peft.<sub>`` modules from ``SUBMODULES``."""

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if fullname in SUBMODULES:
            is_package = any(other.startswith(fullname + ".") for other in SUBMODULES)
            return importlib.machinery.ModuleSpec(fullname, self, is_package=is_package)
        return None

    def create_module(self, spec: Any) -> types.ModuleType:
        module = types.ModuleType(spec.name)
        if spec.submodule_search_locations is not None:
            module.__path__ = []
        return module

    def exec_module(self, module: types.ModuleType) -> None:
        if module.__name__ == "peft.import_utils":
            _environment_facts(module)
        _fill(module, SUBMODULES[module.__name__])


sys.meta_path.insert(0, _AliasFinder())
_fill(sys.modules[__name__], TOP_LEVEL)
from . import config, import_utils, mapping, tuners, utils  # noqa: E402,F401  (peft imports these eagerly)
from .tuners import lora  # noqa: E402,F401

__all__ = [*TOP_LEVEL, "MissingInPeftkit", "NotInPeftkit"]
