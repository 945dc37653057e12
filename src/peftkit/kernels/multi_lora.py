"""Mixed-adapter batches for LoRA linear layers in a constant number of ops per layer.

The plain mixed path (``AdapterLayer._forward_mixed``) runs one gather, two matmuls and one
scatter per adapter in the batch: with 32 adapters that is ~200 small ops per layer, and on a CPU
their fixed cost dominates. Here the rows are grouped once per forward (:func:`row_plan`, cached
across layers and calls), every adapter's ``A`` and ``scaling * B`` sit in one slot of a per-layer
stack (:class:`StackCache`), and the whole batch goes through two batched matmuls: rows of the
adapter in slot ``k`` form entry ``k`` of a ``(K, rows, ...)`` batch, ranks padded with zeros
(exact: padded ranks contribute nothing).

A server's batch changes its mix of adapters at every step (requests join and leave), so the
stack is kept by slot: an adapter that joins is copied into a free slot, one that leaves frees its
slot, and the others move only once many slots are free; restacking every adapter on each change took 7-10% of a 32-adapter
server's CPU time (docs/benchmarks.md, B9).
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

Weights = list[tuple[torch.Tensor, torch.Tensor, float]]  # (A, B, scaling) per adapter


@functools.lru_cache(maxsize=64)
def adapters_in_rows(row_adapters: tuple[str, ...], known: frozenset[str]) -> tuple[tuple[str, ...], float]:
    """The adapters of ``known`` that the rows use (in order of first use) and the padding a
    plan over exactly them needs (slots x rows per slot / real rows). Cached like :func:`row_plan`.

    Example:
        >>> adapters_in_rows(("a", "__base__", "b", "a"), frozenset({"a", "b"}))
        (('a', 'b'), 1.3333333333333333)
    """
    counts: dict[str, int] = {}
    for name in row_adapters:
        if name in known:
            counts[name] = counts.get(name, 0) + 1
    if not counts:
        return (), 0.0
    return tuple(counts), len(counts) * max(counts.values()) / sum(counts.values())


@dataclass(frozen=True)
class RowPlan:
    """How a batch's rows map onto a padded ``(K, M)`` grid: slot ``k`` holds adapter ``names[k]``
    (None: a slot no row uses this time).

    ``gather[k * M + j]`` is the batch row in slot ``(k, j)``; a padding slot repeats a row and
    ``keep`` (``(K, M)``, 1 for real slots, 0 for padding; None without padding) zeroes its rank-``r``
    activations, so scattering every slot back adds nothing extra."""

    names: tuple[Optional[str], ...]
    per_slot: int
    gather: torch.Tensor
    keep: Optional[torch.Tensor]
    real_rows: int

    @property
    def padding(self) -> float:
        used = sum(1 for name in self.names if name is not None)
        return used * self.per_slot / max(1, self.real_rows)


def row_plan(row_adapters: tuple[str, ...], slots: tuple[Optional[str], ...], device: torch.device) -> Optional[RowPlan]:
    """Lay ``row_adapters`` (one name per batch row) out over ``slots`` (the stack's adapter per
    slot, in order); rows whose name has no slot (``"__base__"``, an adapter this layer lacks) use
    the base alone. Cached: every layer of a forward, and repeated forwards with the same names,
    share one plan.

    Example:
        >>> plan = row_plan(("a", "b", "a"), ("a", "b"), torch.device("cpu"))
        >>> plan.names, plan.per_slot, plan.gather.tolist()
        (('a', 'b'), 2, [0, 2, 1, 1])
    """
    # A plan made under torch.inference_mode holds inference tensors, which autograd refuses to
    # save: plans are cached per mode, so generating (or serving) first never breaks training after.
    return _row_plan(row_adapters, slots, device, torch.is_inference_mode_enabled())


@functools.lru_cache(maxsize=64)
def _row_plan(row_adapters: tuple[str, ...], slots: tuple[Optional[str], ...], device: torch.device,
              inference: bool) -> Optional[RowPlan]:
    groups: dict[Optional[str], list[int]] = {name: [] for name in slots if name is not None}
    for i, name in enumerate(row_adapters):
        if name in groups:
            groups[name].append(i)
    real = sum(len(rows) for rows in groups.values())
    if not real:
        return None
    per_slot = max(len(rows) for rows in groups.values())
    gather, keep = [], []
    for name in slots:
        members = groups.get(name, []) if name is not None else []
        filler = members[0] if members else 0  # any row: its activations are zeroed
        gather += members + [filler] * (per_slot - len(members))
        keep.append([1.0] * len(members) + [0.0] * (per_slot - len(members)))
    padded = any(0.0 in k for k in keep)
    return RowPlan(
        tuple(slots), per_slot, torch.tensor(gather, dtype=torch.long, device=device),
        torch.tensor(keep, device=device) if padded else None, real,
    )


@dataclass(slots=True)
class _Slot:
    """What one slot of the stack holds, and how to tell that the adapter has not changed since."""

    name: str
    a: weakref.ref
    a_version: int
    b: weakref.ref
    b_version: int
    scaling: float
    last_used: int = 0

    def holds(self, a: torch.Tensor, b: torch.Tensor, scaling: float) -> bool:
        # weak references: a deleted adapter's tensor compares unequal even if its id is reused
        return (self.a() is a and self.b() is b and self.a_version == a._version
                and self.b_version == b._version and self.scaling == scaling)


class StackCache:
    """One layer's adapters stacked by slot, transposed for the matmuls: ``A^T`` as ``(slots, in,
    r_max)``, ``(scaling * B)^T`` as ``(slots, r_max, out)``, ranks zero-padded. (Contiguous
    transposes: on a CPU the batched matmuls ran ~1.5x faster than on transposed views.)

    A batch's adapters that are already in a slot are used where they are; a new one is copied into
    spare room or into the slot of the adapter least recently used; slots that the batch leaves
    unused either ride along as padding (few) or are filled by moving the last slots down (many).
    A slot is rewritten when its weights change: replaced, changed in place (``Tensor._version``)
    or stepped by an optimizer (a count of steps, for fused optimizers). When autograd needs a graph
    back to the weights (training through a mixed batch) the stacks are built fresh each time, and
    while gradients are recorded a stack that others may have saved is never written in place.

    Example:
        >>> slots, a_stack, b_stack = stacks.get(("a", "b"), weights)   # doctest: +SKIP
    """

    def __init__(self) -> None:
        self._a: Optional[torch.Tensor] = None
        self._b: Optional[torch.Tensor] = None
        self._slots: list[Optional[_Slot]] = []
        self._where: dict[str, int] = {}  # adapter name -> its slot
        self._views: dict[tuple[int, ...], tuple] = {}  # slots used -> (names, A view, B view)
        self._inference = False
        self._steps = -1
        self._clock = 0

    def get(self, present: tuple[str, ...], weights: Weights) -> tuple[tuple[Optional[str], ...], torch.Tensor, torch.Tensor]:
        """``(slots, A_stack, B_stack)`` holding every adapter of ``present`` (whose ``(A, B,
        scaling)`` are ``weights``); ``slots[k]`` names the adapter in slot ``k``, None for a slot
        this batch does not use."""
        if torch.is_grad_enabled() and any(a.requires_grad or b.requires_grad for a, b, _ in weights):
            return present, *_stack(weights)
        self._clock += 1
        used = self._held(present, weights)
        if used is None:
            if not self._update(present, weights):
                self._rebuild(present, weights)
            used = [self._where[name] for name in present]
        for k in used:
            self._slots[k].last_used = self._clock
        unused = len(self._slots) - len(used)
        if unused * 4 > len(self._slots):  # more than a quarter of the slots would be read for nothing
            if len(present) < unused or not self._writable():
                # a small batch (a prefill) beside a larger one's slots: copy just its adapters
                index = torch.tensor(used, device=self._a.device)
                return present, self._a.index_select(0, index), self._b.index_select(0, index)
            self._compact(set(used))
            used = [self._where[name] for name in present]
        key = tuple(used)
        if key not in self._views:  # forgotten whenever a slot changes; slicing costs more than this lookup
            if len(self._views) >= 64:
                self._views.clear()
            names: list[Optional[str]] = [None] * len(self._slots)
            for name, k in zip(present, used):
                names[k] = name
            n = len(self._slots)
            self._views[key] = (tuple(names), self._a[:n], self._b[:n])
        return self._views[key]

    def _held(self, present: tuple[str, ...], weights: Weights) -> Optional[list[int]]:
        """The slots of ``present`` when every one holds its adapter's current weights, else None.
        Runs for every layer of every forward, so it is a plain loop."""
        if (self._a is None or self._steps != _optimizer_steps
                or (self._inference and not torch.is_inference_mode_enabled())):
            return None
        where, slots, used = self._where, self._slots, []
        for name, (a, b, scaling) in zip(present, weights):
            k = where.get(name)
            if k is None:
                return None
            slot = slots[k]
            # weak references: a deleted adapter's tensor compares unequal even if its id is reused
            if (slot.a() is not a or slot.b() is not b or slot.a_version != a._version
                    or slot.b_version != b._version or slot.scaling != scaling):
                return None
            used.append(k)
        return used

    # ------------------------------------------------------------------ slots
    def _update(self, present: tuple[str, ...], weights: Weights) -> bool:
        """Bring the slots up to date in place; False where only a rebuild will do."""
        if (self._a is None or self._steps != _optimizer_steps
                or (self._inference and not torch.is_inference_mode_enabled())):
            return False
        missing = [(name, w) for name, w in zip(present, weights)
                   if name not in self._where or not self._slots[self._where[name]].holds(*w)]
        if not missing:
            return True
        if not self._writable() or not self._fits([w for _, w in missing]):
            return False
        for name, w in missing:
            k = self._where.get(name)
            if k is None:
                k = self._free_slot(set(present))
                if k is None:
                    return False
            self._write(k, name, w)
        return True

    def _writable(self) -> bool:
        """No autograd graph can have saved the stack (and it is no inference tensor outside
        inference mode, which :meth:`_update` rules out)."""
        return not torch.is_grad_enabled()

    def _fits(self, weights: Weights) -> bool:
        a_buf, b_buf = self._a, self._b
        return all(a.shape[0] <= a_buf.shape[2] and a.shape[1] == a_buf.shape[1] and b.shape[0] == b_buf.shape[2]
                   and torch.promote_types(a.dtype, a_buf.dtype) == a_buf.dtype
                   and torch.promote_types(b.dtype, b_buf.dtype) == b_buf.dtype and a.device == a_buf.device
                   for a, b, _ in weights)

    def _free_slot(self, wanted: set[str]) -> Optional[int]:
        """An empty slot, spare room at the end, or the least recently used slot not ``wanted``."""
        for k, slot in enumerate(self._slots):
            if slot is None:
                return k
        if len(self._slots) < self._a.shape[0]:
            self._slots.append(None)
            return len(self._slots) - 1
        others = [k for k, slot in enumerate(self._slots) if slot.name not in wanted]
        return min(others, key=lambda k: self._slots[k].last_used) if others else None

    def _write(self, k: int, name: str, w: tuple[torch.Tensor, torch.Tensor, float]) -> None:
        a, b, scaling = w
        r = a.shape[0]
        self._a[k, :, :r].copy_(a.T)
        self._a[k, :, r:].zero_()
        torch.mul(b.T, scaling, out=self._b[k, :r])
        self._b[k, r:].zero_()
        if self._slots[k] is not None:
            del self._where[self._slots[k].name]
        self._slots[k] = _Slot(name, weakref.ref(a), a._version, weakref.ref(b), b._version, scaling)
        self._where[name] = k
        self._views.clear()

    def _rebuild(self, present: tuple[str, ...], weights: Weights) -> None:
        """Fresh stacks for ``present`` alone, with room for as many adapters again."""
        a0, b0, _ = weights[0]
        r_max = max(a.shape[0] for a, _, _ in weights)
        a_dtype = functools.reduce(torch.promote_types, (a.dtype for a, _, _ in weights))
        b_dtype = functools.reduce(torch.promote_types, (b.dtype for _, b, _ in weights))
        room = 2 * len(present)  # on a CPU, room never written is hardly memory (pages are committed when touched)
        self._a = torch.empty(room, a0.shape[1], r_max, dtype=a_dtype, device=a0.device)
        self._b = torch.empty(room, r_max, b0.shape[0], dtype=b_dtype, device=b0.device)
        self._slots, self._where, self._steps = [None] * len(present), {}, _optimizer_steps
        self._inference = self._a.is_inference()
        for k, (name, w) in enumerate(zip(present, weights)):
            self._write(k, name, w)

    def _compact(self, used: set[int]) -> None:
        """Keep only the ``used`` slots: the last of them move into the free places before them."""
        holes = [k for k in range(len(used)) if k not in used]
        movers = [k for k in sorted(used, reverse=True) if k >= len(used)]
        for target, source in zip(holes, movers):
            if self._slots[target] is not None:
                del self._where[self._slots[target].name]
            self._a[target].copy_(self._a[source])
            self._b[target].copy_(self._b[source])
            self._slots[target] = self._slots[source]
            self._where[self._slots[target].name] = target
        for slot in self._slots[len(used):]:
            if slot is not None and self._where.get(slot.name, -1) >= len(used):
                del self._where[slot.name]
        del self._slots[len(used):]
        self._views.clear()


def _stack(weights: Weights) -> tuple[torch.Tensor, torch.Tensor]:
    r_max = max(a.shape[0] for a, _, _ in weights)
    pad_a = [torch.nn.functional.pad(a.T, (0, r_max - a.shape[0])) for a, _, _ in weights]
    pad_b = [torch.nn.functional.pad((b * s).T, (0, 0, 0, r_max - b.shape[1])) for _, b, s in weights]
    return torch.stack(pad_a), torch.stack(pad_b)


def add_mixed_lora_(result: torch.Tensor, x: torch.Tensor, plan: RowPlan, a_stack: torch.Tensor, b_stack: torch.Tensor) -> torch.Tensor:
    """``result`` (the base output, ``(B, ..., out)``) plus every planned row's adapter output for
    input ``x`` (``(B, ..., in)``). Added in place when no autograd graph is being recorded.

    Example:
        >>> slots, a_stack, b_stack = stacks.get(present, weights)                         # doctest: +SKIP
        >>> add_mixed_lora_(base_out, x, row_plan(rows, slots, x.device), a_stack, b_stack)  # doctest: +SKIP
    """
    k, m = len(plan.names), plan.per_slot
    xs = x.index_select(0, plan.gather).to(a_stack.dtype).reshape(k, -1, x.shape[-1])  # (K, M*T, in)
    h = torch.bmm(xs, a_stack)  # (K, M*T, r): small, so padding is zeroed here
    if plan.keep is not None:
        h = (h.view(k, m, -1, h.shape[-1]) * plan.keep.to(h.dtype)[:, :, None, None]).view_as(h)
    delta = torch.bmm(h, b_stack).reshape(k * m, *x.shape[1:-1], b_stack.shape[2])
    delta = delta.to(result.dtype)
    if torch.is_grad_enabled():
        return result.index_add(0, plan.gather, delta)
    return result.index_add_(0, plan.gather, delta)
