"""Mixed-adapter batches for LoRA linear layers in a constant number of ops per layer.

The plain mixed path (``AdapterLayer._forward_mixed``) runs one gather, two matmuls and one
scatter per adapter in the batch: with 32 adapters that is ~200 small ops per layer, and on a CPU
their fixed cost dominates. Here the rows are grouped once per forward (:func:`row_plan`, cached
across layers and calls), every adapter's ``A`` and ``scaling * B`` are stacked once per layer
(:class:`StackCache`, rebuilt only when a weight changes), and the whole batch goes through two
batched matmuls: rows of adapter ``k`` form slot ``k`` of a ``(K, rows, ...)`` batch, ranks padded
with zeros (exact: padded ranks contribute nothing).
"""

from __future__ import annotations

import functools
import weakref
from dataclasses import dataclass
from typing import Optional

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook

# Optimizer steps taken in this process. Fused optimizers (e.g. ``AdamW(fused=True)``) update
# parameters without bumping ``Tensor._version``, so the stack caches also key on this counter,
# kept by a global post-step hook that every torch optimizer runs.
_optimizer_steps = 0


def _count_optimizer_step(*_: object) -> None:
    global _optimizer_steps
    _optimizer_steps += 1


register_optimizer_step_post_hook(_count_optimizer_step)

# Past this much padding (slots / real rows) the per-adapter loop is cheaper: a batch of 60 rows
# for one adapter and 4 rows for three others would otherwise compute 4 x 60 padded rows.
MAX_PADDING = 2.0


@dataclass(frozen=True)
class RowPlan:
    """How a batch's rows map onto a padded ``(K, M)`` grid: ``names[k]`` owns slot row ``k``.

    ``gather[k * M + j]`` is the batch row in slot ``(k, j)``; a padding slot repeats one of its
    adapter's rows and ``keep`` (``(K, M)``, 1 for real slots, 0 for padding; None without
    padding) zeroes its rank-``r`` activations, so scattering every slot back adds nothing extra."""

    names: tuple[str, ...]
    per_slot: int
    gather: torch.Tensor
    keep: Optional[torch.Tensor]
    real_rows: int

    @property
    def padding(self) -> float:
        return len(self.names) * self.per_slot / max(1, self.real_rows)


@functools.lru_cache(maxsize=64)
def row_plan(row_adapters: tuple[str, ...], known: frozenset[str], device: torch.device) -> Optional[RowPlan]:
    """Group ``row_adapters`` (one name per batch row); rows whose name is not in ``known`` (the
    layer's adapters; so also ``"__base__"``) use the base alone. Cached: every layer of a
    forward, and repeated forwards with the same names, share one plan.

    Example:
        >>> plan = row_plan(("a", "b", "a"), frozenset({"a", "b"}), torch.device("cpu"))
        >>> plan.names, plan.per_slot, plan.gather.tolist()
        (('a', 'b'), 2, [0, 2, 1, 1])
    """
    groups: dict[str, list[int]] = {}
    for i, name in enumerate(row_adapters):
        if name in known:
            groups.setdefault(name, []).append(i)
    if not groups:
        return None
    per_slot = max(len(rows) for rows in groups.values())
    gather, keep = [], []
    for members in groups.values():
        gather += members + [members[0]] * (per_slot - len(members))
        keep.append([1.0] * len(members) + [0.0] * (per_slot - len(members)))
    padded = any(0.0 in k for k in keep)
    return RowPlan(
        tuple(groups), per_slot, torch.tensor(gather, dtype=torch.long, device=device),
        torch.tensor(keep, device=device) if padded else None, sum(len(m) for m in groups.values()),
    )


class StackCache:
    """Per-layer stacked adapter weights for a set of adapter names, rebuilt when any weight is
    replaced or changed in place (tracked by weak reference, ``Tensor._version`` and the count of
    optimizer steps), or when autograd
    needs a graph back to the weights (training through a mixed batch)."""

    def __init__(self) -> None:
        self._key: Optional[tuple] = None
        self._value: Optional[tuple[torch.Tensor, torch.Tensor]] = None

    def get(self, names: tuple[str, ...], weights: list[tuple[torch.Tensor, torch.Tensor, float]]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(A_stack (K, r_max, in), B_stack (K, out, r_max))`` with ``scaling`` folded into B."""
        needs_graph = torch.is_grad_enabled() and any(a.requires_grad or b.requires_grad for a, b, _ in weights)
        # weak references: a deleted adapter's tensor compares unequal even if its id is reused
        key = (names, _optimizer_steps,
               tuple((weakref.ref(a), a._version, weakref.ref(b), b._version, s) for a, b, s in weights))
        if needs_graph or key != self._key:
            value = _stack(weights)
            if needs_graph:
                return value
            self._key, self._value = key, value
        return self._value


def _stack(weights: list[tuple[torch.Tensor, torch.Tensor, float]]) -> tuple[torch.Tensor, torch.Tensor]:
    r_max = max(a.shape[0] for a, _, _ in weights)
    pad_a = [torch.nn.functional.pad(a, (0, 0, 0, r_max - a.shape[0])) for a, _, _ in weights]
    pad_b = [torch.nn.functional.pad(b * s, (0, r_max - b.shape[1])) for _, b, s in weights]
    return torch.stack(pad_a), torch.stack(pad_b)


def add_mixed_lora_(result: torch.Tensor, x: torch.Tensor, plan: RowPlan, a_stack: torch.Tensor, b_stack: torch.Tensor) -> torch.Tensor:
    """``result`` (the base output, ``(B, ..., out)``) plus every planned row's adapter output for
    input ``x`` (``(B, ..., in)``). Added in place when no autograd graph is being recorded.

    Example:
        >>> result = add_mixed_lora_(base_out, x, plan, *stacks.get(plan.names, weights))  # doctest: +SKIP
    """
    k, m = len(plan.names), plan.per_slot
    xs = x.index_select(0, plan.gather).to(a_stack.dtype).reshape(k, -1, x.shape[-1])  # (K, M*T, in)
    h = torch.bmm(xs, a_stack.transpose(1, 2))  # (K, M*T, r): small, so padding is zeroed here
    if plan.keep is not None:
        h = (h.view(k, m, -1, h.shape[-1]) * plan.keep.to(h.dtype)[:, :, None, None]).view_as(h)
    delta = torch.bmm(h, b_stack.transpose(1, 2)).reshape(k * m, *x.shape[1:-1], b_stack.shape[1])
    delta = delta.to(result.dtype)
    if torch.is_grad_enabled():
        return result.index_add(0, plan.gather, delta)
    return result.index_add_(0, plan.gather, delta)
