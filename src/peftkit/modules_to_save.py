"""Modules trained in full beside an adapter (``modules_to_save``: a new classification head, a
resized embedding): one trainable copy per adapter, the frozen original kept, as ``peft`` lays them
out. Split from :mod:`peftkit.layers`, which holds the adapter layers themselves.

Example:
    >>> wrapper = ModulesToSaveWrapper(model.score, "default")  # doctest: +SKIP
    >>> wrapper.modules_to_save["default"] is not wrapper.original_module  # doctest: +SKIP
    True
"""

from __future__ import annotations

import copy
from typing import Any, Iterable, Optional

import torch
import torch.nn as nn

from .errors import AdapterError
from .layers import _ForwardsToBase, group_rows


# containers: nothing to call, so no copy of them can stand in for the original in a forward
_CONTAINERS = (nn.ModuleDict, nn.ModuleList, nn.ParameterDict, nn.ParameterList)


class ModulesToSaveWrapper(_ForwardsToBase):
    """A module trained in full (e.g. a new classification head): one trainable copy per adapter
    in ``modules_to_save[name]``, the frozen original in ``original_module`` (``peft``'s layout)."""

    _wrapped_attr = "original_module"

    def __init__(self, module: nn.Module, adapter_name: str):
        if isinstance(module, _CONTAINERS):
            raise TypeError(  # peft's sentence (its tests match it), then why and the fix
                f"modules_to_save cannot be applied to modules of type {type(module)}: a container has no forward "
                "of its own to compute with a trained copy. Name the modules inside it instead (e.g. 'module.0').")
        super().__init__()
        self.original_module = module
        self.modules_to_save = nn.ModuleDict()
        self._active_adapter: Optional[str] = None  # peft's attribute name; read as active_adapter
        self.disabled = False
        self.row_adapters: Optional[list[str]] = None
        self.add_adapter(adapter_name)

    @property
    def active_adapter(self) -> Optional[str]:
        """The adapter whose trained copy computes (None: the original does)."""
        return self.__dict__.get("_active_adapter")

    @active_adapter.setter
    def active_adapter(self, name: Optional[str]) -> None:
        self.__dict__["_active_adapter"] = name

    @property
    def adapter_names(self) -> list[str]:
        return list(self.modules_to_save.keys())

    def _get_available_adapters(self) -> set[str]:
        """``peft``'s name (AuxiliaryTrainingWrapper) for the adapters that own a copy."""
        return set(self.modules_to_save)

    def add_adapter(self, adapter_name: str) -> None:
        self.modules_to_save[adapter_name] = copy.deepcopy(self.original_module)

    def adapter_parameters(self, adapter_name: str) -> Iterable[tuple[str, nn.Parameter]]:
        if adapter_name in self.modules_to_save:
            yield from self.modules_to_save[adapter_name].named_parameters()

    def set_adapter(self, adapter_names: list[str], trainable: bool = True) -> None:
        mine = [n for n in adapter_names if n in self.modules_to_save]
        if len(mine) > 1:
            raise AdapterError(
                f"Only one adapter can be set at a time for ModulesToSaveWrapper: the trained copy of a saved module "
                f"belongs to one adapter, got {mine}; activate one of them"
            )
        self.active_adapter = mine[0] if mine else None
        self.original_module.requires_grad_(False)
        for name, module in self.modules_to_save.items():
            module.requires_grad_(trainable and name == self.active_adapter)

    def delete_adapter(self, adapter_name: str) -> None:
        if adapter_name in self.modules_to_save:
            del self.modules_to_save[adapter_name]
        if self.active_adapter == adapter_name:
            self.active_adapter = None

    def __getattr__(self, name: str) -> Any:
        """Attributes the wrapper lacks (``weight``, ``in_features``...) come from the module that
        computes: the active adapter's trained copy, else (none active, or disabled) the original."""
        try:
            return nn.Module.__getattr__(self, name)
        except AttributeError:
            if name in ("original_module", "modules_to_save") or name.startswith("__"):
                raise
        active, copies = self.__dict__.get("_active_adapter"), self._modules.get("modules_to_save")
        if active is not None and not self.__dict__.get("disabled") and copies is not None and active not in copies:
            # a stale selection (set by hand): answering from the original would hide that the copy is gone
            raise AttributeError(f"'{type(self).__name__}' object has no attribute '{name}' (its active adapter "
                                 f"{active!r} has no copy here; it has {list(copies)})")
        return getattr(self._computing_module(), name)

    def _computing_module(self) -> nn.Module:
        active = self.__dict__.get("_active_adapter")
        copies = self._modules.get("modules_to_save")
        if active is None or self.__dict__.get("disabled") or copies is None or active not in copies:
            return self._modules["original_module"]
        return copies[active]

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if self.row_adapters is None or self.disabled:
            return self._computing_module()(*args, **kwargs)
        # a mixed batch: rows of the first input (positional or, for keyword-only calls, by keyword)
        x = args[0] if args else next(v for v in kwargs.values() if isinstance(v, torch.Tensor))
        result = self.original_module(*args, **kwargs)
        for name, rows in group_rows(self.row_adapters, x.shape[0], x.device).items():
            if name in self.modules_to_save:
                rows_args = [a.index_select(0, rows) if a is x else a for a in args]
                rows_kwargs = {k: v.index_select(0, rows) if v is x else v for k, v in kwargs.items()}
                part = self.modules_to_save[name](*rows_args, **rows_kwargs)
                result = result.index_copy(0, rows, part.to(result.dtype))
        return result
