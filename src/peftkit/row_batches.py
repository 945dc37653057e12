"""Batches that mix adapters row by row (``model(..., adapter_names=[...])``): one adapter name per
row, how generation's repeated rows map to them, and the errors for names that do not fit. The
layers (:mod:`peftkit.layers`) and the model's forward (:mod:`peftkit.model_running`) share these.

Example:
    >>> group_rows(["a", "__base__", "a"], 3, torch.device("cpu"))
    {'a': tensor([0, 2]), '__base__': tensor([1])}
"""

from __future__ import annotations

from typing import Iterable

import torch

from .errors import AdapterError
from .names import BASE_ADAPTER


class RowAdapters(list):
    """``adapter_names`` as the layers see them: one name per batch row. ``expandable`` is set
    inside ``generate``, which repeats every prompt's row in place (beams, several samples per
    prompt): only there may a batch hold an exact multiple of the names' rows."""

    def __init__(self, names: Iterable[str] = (), expandable: bool = False):
        super().__init__(names)
        self.expandable = expandable


def row_count_error(names: int, rows: int) -> AdapterError:
    """The error for ``adapter_names`` that do not give one name per batch row (peft's sentence first)."""
    return AdapterError(f"Length of `adapter_names` should be the same as the number of inputs, but got {names} and "
                        f"{rows} respectively. Give one adapter name (or '{BASE_ADAPTER}') per batch row.")


def merged_batch_error() -> AdapterError:
    """The error for a mixed batch over merged adapters (peft's sentence first): merged into the
    weights, an adapter would apply to every row."""
    return AdapterError("Cannot pass `adapter_names` when there are merged adapters, please call `unmerge_adapter` "
                        "first. A merged adapter is part of the weights every row uses, so rows cannot choose.")


def rows_for_batch(row_adapters: list[str], batch_size: int) -> list[str]:
    """One adapter name per row of a batch of ``batch_size`` rows: the names themselves, or, in
    generation (:class:`RowAdapters` ``expandable``), each name repeated for its prompt's copies.
    A count that fits neither is an :class:`AdapterError`: names are never reused across rows."""
    n = len(row_adapters)
    if batch_size == n:
        return list(row_adapters)
    if getattr(row_adapters, "expandable", False) and n and batch_size % n == 0:
        return [name for name in row_adapters for _ in range(batch_size // n)]
    raise row_count_error(n, batch_size)


def group_rows(row_adapters: list[str], batch_size: int, device: torch.device) -> dict[str, torch.Tensor]:
    """Row indices per adapter name (see :func:`rows_for_batch` for batches generation expanded)."""
    groups: dict[str, list[int]] = {}
    for i, name in enumerate(rows_for_batch(row_adapters, batch_size)):
        groups.setdefault(name, []).append(i)
    return {name: torch.tensor(rows, device=device) for name, rows in groups.items()}
