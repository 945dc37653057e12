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

from .errors import AdapterError, MixedBatchError
from .layers import _ForwardsToBase
from .row_batches import group_rows


# containers: nothing to call, so no copy of them can stand in for the original in a forward
_CONTAINERS = (nn.ModuleDict, nn.ModuleList, nn.ParameterDict, nn.ParameterList)


class ModulesToSaveWrapper(_ForwardsToBase):
    """A module trained in full (e.g. a new classification head): one trainable copy per adapter
    in ``modules_to_save[name]``, the frozen original in ``original_module`` (``peft``'s layout)."""

    _wrapped_attr = "original_module"

    # peft's layer attributes (AuxiliaryTrainingWrapper), read by code that walks a model's tuner modules:
    # the per-adapter container, no per-adapter settings, and nothing ever merged into the original.
    adapter_layer_names: tuple[str, ...] = ("modules_to_save",)
    other_param_names: tuple[str, ...] = ()
    merged_adapters: tuple[str, ...] = ()

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
        self.trains_active = True  # what the last set_adapter decided; re-enabling restores it
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

    @property
    def _adapters(self) -> set[str]:
        """``peft``'s name (AuxiliaryTrainingWrapper) for the adapters that own a copy."""
        return set(self.modules_to_save)

    def _get_available_adapters(self) -> set[str]:
        """``peft``'s name (AuxiliaryTrainingWrapper) for the adapters that own a copy."""
        return set(self.modules_to_save)

    @property
    def active_adapters(self) -> list[str]:
        """The adapter whose copy computes, as a list (empty when none of the selected adapters has a
        copy: the original computes), as peft's wrapper reports it.

        Example:
            >>> peft_model.base_model.model.score.active_adapters  # doctest: +SKIP
            ['default']
        """
        return [self.active_adapter] if self.active_adapter is not None else []

    @property
    def disable_adapters(self) -> bool:
        """Whether the original module computes whatever is selected (see :meth:`enable_adapters`)."""
        return self.disabled

    def add_adapter(self, adapter_name: str) -> None:
        self.modules_to_save[adapter_name] = copy.deepcopy(self.original_module)

    def adapter_parameters(self, adapter_name: str) -> Iterable[tuple[str, nn.Parameter]]:
        if adapter_name in self.modules_to_save:
            yield from self.modules_to_save[adapter_name].named_parameters()

    def set_adapter(self, adapter_names: str | list[str], inference_mode: bool = False,
                    trainable: Optional[bool] = None) -> None:
        """Let the copy of the one selected adapter that owns one compute (and train, unless
        ``inference_mode`` or ``trainable=False``); several selected adapters owning a copy is an error.

        Example:
            >>> wrapper.set_adapter(["lora_only", "with_head"])  # doctest: +SKIP
            >>> wrapper.active_adapters
            ['with_head']
        """
        adapter_names = [adapter_names] if isinstance(adapter_names, str) else list(adapter_names)
        trainable = not inference_mode if trainable is None else trainable
        mine = [n for n in adapter_names if n in self.modules_to_save]
        if len(mine) > 1:
            raise AdapterError(
                f"Only one adapter can be set at a time for ModulesToSaveWrapper: the trained copy of a saved module "
                f"belongs to one adapter, got {mine}; activate one of them"
            )
        self.active_adapter = mine[0] if mine else None
        self.trains_active = trainable
        self.original_module.requires_grad_(False)
        for name, module in self.modules_to_save.items():
            module.requires_grad_(trainable and name == self.active_adapter)

    def enable_adapters(self, enabled: bool) -> None:
        """Let the active copy compute again (``True``) or the original (``False``: no copy trains
        then, as in peft); back on, the active copy trains as the last :meth:`set_adapter` decided."""
        if enabled:
            self.set_adapter([self.active_adapter] if self.active_adapter else [], trainable=self.trains_active)
        else:
            self.modules_to_save.requires_grad_(False)
        self.disabled = not enabled

    def set_requires_grad(self, adapter_names: str | Iterable[str], requires_grad: bool = True) -> None:
        """Switch gradients of the named adapters' copies on or off, leaving the selection alone."""
        names = {adapter_names} if isinstance(adapter_names, str) else set(adapter_names)
        for name, module in self.modules_to_save.items():
            if name in names:
                module.requires_grad_(requires_grad)

    def delete_adapter(self, adapter_name: str, new_active_adapters: Optional[list[str]] = None) -> None:
        """Drop ``adapter_name``'s copy; ``new_active_adapters`` (peft's argument: the model's selection
        after the deletion) picks the copy that computes next, if one of them owns one."""
        if adapter_name in self.modules_to_save:
            del self.modules_to_save[adapter_name]
        if new_active_adapters is not None:
            self.set_adapter(new_active_adapters, trainable=self.trains_active)
        elif self.active_adapter == adapter_name:
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
        if isinstance(self.original_module, nn.RNNBase):  # its state has the batch on dim 1, not 0
            raise self._mixed_batch_refusal("is recurrent: its hidden state is not split by rows")
        x = args[0] if args else next(v for v in kwargs.values() if isinstance(v, torch.Tensor))
        result = self.original_module(*args, **kwargs)
        if not isinstance(result, torch.Tensor):
            raise self._mixed_batch_refusal(f"returns a {type(result).__name__}, not one tensor with a row per input row")
        for name, rows in group_rows(self.row_adapters, x.shape[0], x.device).items():
            if name in self.modules_to_save:
                rows_args = [a.index_select(0, rows) if a is x else a for a in args]
                rows_kwargs = {k: v.index_select(0, rows) if v is x else v for k, v in kwargs.items()}
                part = self.modules_to_save[name](*rows_args, **rows_kwargs)
                result = result.index_copy(0, rows, part.to(result.dtype))
        return result

    def _mixed_batch_refusal(self, why: str) -> MixedBatchError:
        module = type(self.original_module).__name__
        return MixedBatchError(  # peft's sentence first (its list); peftkit also splits other row-wise modules
            "Mixed batching is only supported for the following modules: Linear, Embedding, Conv1d, Conv2d, Conv3d. "
            f"peftkit also splits other modules by rows, but this saved module ({module}) {why}; run one adapter "
            "per batch, or leave it out of modules_to_save"
        )
