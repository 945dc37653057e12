"""Running a :class:`~peftkit.model.PeftModel`: ``forward`` and ``generate``, with batches whose
rows use different adapters (``adapter_names=``, routed through :class:`~peftkit.layers.RowAdapters`)
and the input rewriting of methods that change the model's inputs (prompt learning). A mixin, as
merging (:mod:`peftkit.merge`) and saving (:mod:`peftkit.model_io`) are.

Example:
    >>> peft_model(input_ids=ids, adapter_names=["a", "b", "__base__"])  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import inspect
from typing import Any, Iterator, Optional

import torch.nn as nn

from .errors import AdapterError
from .layers import BASE_ADAPTER
from .row_batches import RowAdapters, merged_batch_error, row_count_error
from .names import short_repr
from .registry import MethodSpec


class RunningMixin:
    """``forward``, ``generate`` and mixed-adapter batches (``PeftModel``'s part)."""

    @contextlib.contextmanager
    def _rows(self, adapter_names: Optional[list[str]], rows: Optional[int], expandable: bool = False) -> Iterator[None]:
        """Route each batch row through its adapter. ``rows``: the batch size, when the inputs tell
        it; ``expandable``: generation may repeat every row (beams, several samples per prompt)."""
        if adapter_names is None:
            yield
            return
        if isinstance(adapter_names, str) or not isinstance(adapter_names, (list, tuple)) or not all(
                isinstance(n, str) for n in adapter_names):
            raise AdapterError("adapter_names must be a list with one adapter name (or '__base__') per batch row, "
                               f"got {short_repr(adapter_names)}")
        if rows is not None and len(adapter_names) != rows:
            raise row_count_error(len(adapter_names), rows)
        if self.peft_config and self._method().prepare_inputs is not None:
            raise AdapterError(
                f"{self._method().peft_type} adapters change the model's inputs, so one batch cannot mix them "
                "(adapter_names=...); run one batch per adapter with set_adapter()"
            )
        unknown = sorted({n for n in adapter_names if n != BASE_ADAPTER} - set(self.peft_config))
        if unknown:  # peft's sentence (code matches it), then what this model has
            shown = ", ".join(n if n.isprintable() else short_repr(n) for n in unknown)
            raise AdapterError(f"Trying to infer with non-existing adapter(s): {shown}. They are unknown adapter(s) "
                               f"[{', '.join(short_repr(n) for n in unknown)}]; this model has {sorted(self.peft_config)}; "
                               f"use '{BASE_ADAPTER}' for rows without an adapter.")
        if any(layer.merged_adapters for layer in self._adapter_layers()):
            raise merged_batch_error()
        modules = [m for _, m in self._adapter_modules()]
        for m in modules:
            m.row_adapters = RowAdapters(adapter_names, expandable=expandable)
        try:
            yield
        finally:
            for m in modules:
                m.row_adapters = None

    def forward(self, *args: Any, adapter_names: Optional[list[str]] = None, labels: Any = None, **kwargs: Any) -> Any:
        """Call the model. ``adapter_names`` (one per row; ``"__base__"`` for none) mixes adapters in one batch.
        (``labels`` is named so that ``transformers.Trainer`` finds the label column; it is passed on when given.)"""
        if labels is not None:
            kwargs["labels"] = labels
        with self._rows(adapter_names, _batch_rows(args, kwargs)), self._inputs_prepared():
            return self.get_base_model()(*args, **kwargs)

    def generate(self, *args: Any, adapter_names: Optional[list[str]] = None, **kwargs: Any) -> Any:
        """``model.generate`` with the adapters applied; ``adapter_names`` as in :meth:`forward`."""
        with self._rows(adapter_names, _batch_rows(args, kwargs), expandable=True), self._inputs_prepared() as method:
            model = self.get_base_model()
            if method is not None and method.prepare_generate is not None:
                kwargs = method.prepare_generate(self, self._active[0], _by_name(model.generate, args, kwargs))
                args = ()
            return model.generate(*args, **kwargs)

    @contextlib.contextmanager
    def _inputs_prepared(self) -> Iterator[Optional[MethodSpec]]:
        """Inside, every call of the wrapped model's forward has its keyword arguments rewritten by
        the active adapter's method (``MethodSpec.prepare_inputs``: e.g. virtual tokens prepended to
        the input embeddings); yields that method, or None when there is nothing to rewrite."""
        method = self._method() if self.peft_config and self._active else None
        if method is None or method.prepare_inputs is None or self._inputs_disabled:
            yield None
            return
        name = self._active[0]

        def rewrite(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
            return (), method.prepare_inputs(self, name, _by_name(module.forward, args, kwargs))

        handle = self.get_base_model().register_forward_pre_hook(rewrite, with_kwargs=True)
        try:
            yield method
        finally:
            handle.remove()


def _batch_rows(args: tuple, kwargs: dict) -> Optional[int]:
    """The batch size of a call's inputs (``input_ids``, ``inputs_embeds``, or the first positional
    tensor), or None when they do not tell it; the layers then check each input they see."""
    candidates = (kwargs.get("input_ids"), kwargs.get("inputs_embeds"), args[0] if args else None)
    first = next((c for c in candidates if c is not None), None)
    shape = getattr(first, "shape", None)
    return int(shape[0]) if shape is not None and len(shape) > 0 else None


def _by_name(function: Any, args: tuple, kwargs: dict) -> dict:
    """``kwargs`` plus the positional ``args`` under the names ``function`` gives them."""
    if not args:
        return dict(kwargs)
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    names = [p.name for p in inspect.signature(function).parameters.values() if p.kind in kinds]
    if len(args) > len(names):
        raise TypeError(f"{getattr(function, '__qualname__', function)} takes at most {len(names)} positional arguments")
    return {**dict(zip(names, args)), **kwargs}
