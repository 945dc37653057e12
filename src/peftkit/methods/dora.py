"""DoRA (Liu et al., 2024): LoRA with the adapted weight split into a direction and a magnitude.

    W' = m / ||W + s B A|| * (W + s B A)        (one norm per output unit: a row of a Linear weight)

``m`` (``lora_magnitude_vector``, one value per output unit) trains beside ``A`` and ``B`` and
starts at ``||W + s B A||``, so a new adapter leaves outputs unchanged. The norm is treated as a
constant in backward (section 4.3 of the paper; ``peft`` does the same), so with ``g = m / norm``
a layer's output is

    g * (W x + s B A x) + bias  =  y + (g - 1) * (y - bias) + g * s * B A x,    y = W x + bias.

Cost. ``peft`` forms ``W + s B A`` (a full weight-sized matrix) to take its norm on every forward.
Here the norm comes from an exact identity that needs only rank-``r`` products::

    ||W_i + s (BA)_i||^2 = ||W_i||^2 + 2 s <(W A^T)_i, B_i> + s^2 <(B (A A^T))_i, B_i>

``||W||^2`` per row is cached (the base is frozen; the cache is keyed on the weight's storage and
version and cleared on merge/unmerge), ``W A^T`` is one thin matmul, and everything is done in
float32 whatever the weights' dtype. Norms are only off from the materialised ones by rounding
(relative ~1e-7 in float32) unless the adapter nearly cancels a row of ``W``.

Dropout. ``peft`` (and the DoRA reference code) feed the *dropped* input to the base part
``(g - 1) * W x`` too, which costs a second full matmul forward and backward. peftkit drops out
only the low-rank input by default: same expectation, identical outputs and gradients without
dropout or in eval mode, and at ``g ~ 1`` (a new adapter) the two differ by almost nothing. Set
``LoraLayer.dora_base_sees_dropout = True`` for ``peft``'s exact training-mode numbers.

The layer types (Linear / GPT-2 Conv1D, Embedding, ConvNd) describe their weight as ``(units, K)``
rows through small hooks on :class:`~peftkit.methods.lora_layers.LoraLayer`; everything else is here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterable, Optional

import torch
import torch.nn as nn

from ..errors import TargetError
from ..layers import warn_if_merged_already
from ..row_batches import group_rows

if TYPE_CHECKING:
    from .lora import LoraConfig
    from .lora_layers import LoraLayer

MAGNITUDE = "lora_magnitude_vector"


class Magnitude(nn.Module):
    """One adapter's magnitude vector as ``.weight`` (``peft``'s layout: the parameter is named
    ``lora_magnitude_vector.<adapter>.weight`` in memory and saved as ``...lora_magnitude_vector``)."""

    def __init__(self, magnitude: torch.Tensor):
        super().__init__()
        self.weight = nn.Parameter(magnitude)


@torch.no_grad()
def row_norms(w_rows: torch.Tensor, a: torch.Tensor, b: torch.Tensor, scaling: float,
              base_sq: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``||w_rows + scaling * b @ a||`` per row, in float32, without forming ``b @ a``.

    ``w_rows`` is ``(units, K)``, ``a`` is ``(r, K)``, ``b`` is ``(units, r)``; ``base_sq`` is
    ``||w_rows||^2`` per row if already known.

    Example:
        >>> w, a, b = torch.randn(6, 5), torch.randn(2, 5), torch.randn(6, 2)
        >>> torch.allclose(row_norms(w, a, b, 0.5), torch.linalg.norm(w + 0.5 * b @ a, dim=1))
        True
    """
    with torch.autocast(w_rows.device.type, enabled=False):  # float32 even under autocast
        return _row_norms(w_rows.float(), a.float(), b.float(), scaling, base_sq)


def _row_norms(w, a, b, scaling, base_sq):
    if base_sq is None:
        base_sq = w.square().sum(1)
    # <W_i, (BA)_i> = <(W A^T)_i, B_i> and ||(BA)_i||^2 = <(B A A^T)_i, B_i>, so both extra terms
    # are 2 s <(W A^T + s/2 B A A^T)_i, B_i>: three thin matmuls and one reduction
    q = (w @ a.t()).addmm_(b, a @ a.t(), alpha=0.5 * scaling)
    sq = base_sq + (2.0 * scaling) * q.mul_(b).sum(1)
    return sq.clamp_min_(0.0).sqrt_()


@torch.no_grad()
def row_norms_reference(w_rows: torch.Tensor, a: torch.Tensor, b: torch.Tensor, scaling: float) -> torch.Tensor:
    """The same norms by forming ``w_rows + scaling * b @ a`` (as ``peft`` does); for tests."""
    with torch.autocast(w_rows.device.type, enabled=False):
        return torch.linalg.norm(w_rows.float() + scaling * (b.float() @ a.float()), dim=1)


def _key(t: torch.Tensor) -> tuple:
    # storage, in-place version, layout: a changed or replaced tensor gets a new key
    return (t.data_ptr(), t._version, tuple(t.shape), t.stride(), t.dtype, t.device)


class NormCache:
    """Per-layer cache: ``||W||^2`` per row (reused while the base weight is unchanged) and, for
    inference only, each adapter's full norm. Cleared on merge/unmerge and by any forward with
    gradients enabled, so a training step (even with a fused optimizer, which does not bump
    tensor versions) never sees a stale norm."""

    def __init__(self) -> None:
        self.base: Optional[tuple[tuple, torch.Tensor]] = None
        self.full: dict[str, tuple[tuple, torch.Tensor]] = {}

    def clear(self) -> None:
        self.base = None
        self.full.clear()

    def base_sq(self, w_rows: torch.Tensor) -> torch.Tensor:
        key = _key(w_rows)
        if self.base is None or self.base[0] != key:
            with torch.no_grad():
                self.base = (key, w_rows.float().square().sum(1))
        return self.base[1]

    def norm(self, name: str, w_rows: torch.Tensor, a: torch.Tensor, b: torch.Tensor, scaling: float) -> torch.Tensor:
        reuse = not torch.is_grad_enabled()
        if not reuse:
            self.full.clear()
        key = (_key(w_rows), _key(a), _key(b), _key(scaling) if isinstance(scaling, torch.Tensor) else scaling)
        hit = self.full.get(name)
        if reuse and hit is not None and hit[0] == key:
            return hit[1]
        norm = row_norms(w_rows, a, b, scaling, self.base_sq(w_rows))
        if reuse:
            self.full[name] = (key, norm)
        return norm


def weight_norm(layer: "LoraLayer", name: str) -> torch.Tensor:
    """``||W + s B A||`` per output unit for adapter ``name`` of ``layer`` (float32, no grad)."""
    w, a, b = layer.dora_rows(name)
    if not layer.dora_norm_by_identity:
        return row_norms_reference(w, a, b, layer.scaling[name])
    return layer._dora_norms.norm(name, w, a, b, layer.scaling[name])


def init_magnitude(layer: "LoraLayer", name: str, dtype: torch.dtype) -> None:
    """Create ``lora_magnitude_vector[name]`` at the current norm (outputs unchanged at start)."""
    norm = weight_norm(layer, name)
    layer.lora_magnitude_vector[name] = Magnitude(layer.dora_unit_view(norm).to(dtype).clone())


def dora_scale(layer: "LoraLayer", name: str) -> torch.Tensor:
    """``g = m / ||W + s B A||`` shaped to broadcast over the layer's output; differentiable in ``m``."""
    m = layer.lora_magnitude_vector[name].weight
    return layer.dora_unit_view(m.reshape(-1) / weight_norm(layer, name))


def dora_delta(layer: "LoraLayer", name: str, x: torch.Tensor, xd: torch.Tensor,
               base_out: Optional[torch.Tensor]) -> torch.Tensor:
    """What DoRA adapter ``name`` adds to ``base_out`` (the running output, bias included) for
    input ``x`` whose adapter input (cast, dropped out) is ``xd``. Without ``base_out`` the base
    part is computed here (one extra matmul)."""
    g = dora_scale(layer, name)
    dropout_on = layer.training and isinstance(layer.lora_dropout[name], nn.Dropout)
    if dropout_on and layer.dora_base_sees_dropout:
        base_part = layer.dora_base(xd)  # peft: the base part sees the dropped input too
    elif base_out is None:
        base_part = layer.dora_base(x)
    else:
        bias = getattr(layer.base_layer, "bias", None)
        base_part = base_out if bias is None else base_out - layer.dora_unit_view(bias)
    return (g - 1) * base_part + g * layer.lowrank(name, xd)


# ---------------------------------------------------------------------------------------- merging
def _merged_rows(layer: "LoraLayer", name: str, norm: torch.Tensor, sign: float) -> torch.Tensor:
    w, a, b = layer.dora_rows(name)
    g = layer.lora_magnitude_vector[name].weight.detach().float().reshape(-1, 1) / norm.to(w.device).reshape(-1, 1)
    lora = (b.float() @ a.float()).mul_(layer.scaling[name])
    if sign > 0:
        return (w.float() + lora).mul_(g)  # W' = g (W + s B A)
    return w.float().div(g).sub_(lora)  # W = W' / g - s B A


def merge_norm(layer: "LoraLayer", name: str) -> torch.Tensor:
    """The norm merging ``name`` uses: kept from ``LoraLayer.merge`` (taken on the weight without
    merged adapters, as forward sees it), else the current one."""
    norm = layer._dora_merge_norms.get(name)
    return weight_norm(layer, name) if norm is None else norm


@torch.no_grad()
def dora_delta_weight(layer: "LoraLayer", name: str) -> torch.Tensor:
    """``W' - W`` for merging ``name`` into the current weight (``safe_merge`` checks it)."""
    weight = layer.base_weight()
    return layer.dora_weight_layout(_merged_rows(layer, name, merge_norm(layer, name), 1.0)) - weight.float()


@torch.no_grad()
def dora_add_delta_(layer: "LoraLayer", weight: torch.Tensor, name: str, sign: float) -> None:
    """Merge (``sign > 0``) or unmerge DoRA adapter ``name`` in place: ``W' = g (W + s B A)`` and
    back ``W = W' / g - s B A``, with the norm kept from merge time for the way back."""
    if sign > 0:
        norm = merge_norm(layer, name)
        layer._dora_merge_norms[name] = norm
    else:
        norm = layer._dora_merge_norms.pop(name)
    weight.copy_(layer.dora_weight_layout(_merged_rows(layer, name, norm, sign)).to(weight.dtype))
    layer._dora_norms.clear()


# ---------------------------------------------------------------------------------------- the layer side
class DoraMixin:
    """The DoRA half of a LoRA layer: adapters added with ``use_dora=True`` get a magnitude
    vector, a DoRA forward (also in mixed batches, which ``peft`` refuses), and DoRA merging.
    A layer type supports DoRA by setting ``supports_dora`` and implementing the ``dora_*`` hooks.
    """

    # Norms by the rank-r identity; False forms W + s B A as peft does (a reference for tests).
    dora_norm_by_identity: bool = True
    # True: in training with dropout, the base part of the delta sees the dropped input (peft's
    # exact numbers, a second full matmul; never on the fused path). See the module docstring.
    dora_base_sees_dropout: bool = False
    supports_dora: bool = False

    lora_magnitude_vector: nn.ModuleDict
    _dora_norms: NormCache
    _dora_merge_norms: dict[str, torch.Tensor]

    # ------------------------------------------------------------ hooks a layer type implements
    def dora_rows(self, name: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(W as (units, K), A as (r, K), B as (units, r))``; views where possible."""
        raise NotImplementedError

    def dora_unit_view(self, vec: torch.Tensor) -> torch.Tensor:
        """A per-unit vector shaped to broadcast over the output (default: units are the last dim)."""
        return vec

    def dora_weight_layout(self, rows: torch.Tensor) -> torch.Tensor:
        """``(units, K)`` rows back in ``base_layer.weight``'s layout."""
        raise NotImplementedError

    def dora_base(self, x: torch.Tensor) -> torch.Tensor:
        """The base layer's output for ``x`` without its bias, in ``x``'s dtype."""
        raise NotImplementedError

    # ------------------------------------------------------------ state
    def _init_dora(self) -> None:
        self.lora_magnitude_vector = nn.ModuleDict()
        self._dora_norms = NormCache()
        self._dora_merge_norms = {}

    def _check_dora(self, config: "LoraConfig", key: str) -> None:
        if config.use_dora and not self.supports_dora:
            raise TargetError(  # peft's sentence (its tests match it), then which module and the other fix
                f"{type(self.base_layer).__name__} does not support DoRA (yet), please set use_dora to False. "
                f"(module {key!r}, a {type(self).__name__}: or exclude it with exclude_modules)"
            )

    def adapter_parameters(self, adapter_name: str) -> Iterable[tuple[str, nn.Parameter]]:
        # peft saves the magnitude as "...lora_magnitude_vector", without the module's ".weight"
        for path, p in super().adapter_parameters(adapter_name):
            yield (MAGNITUDE if path == f"{MAGNITUDE}.weight" else path), p

    def delete_adapter(self, adapter_name: str) -> None:
        super().delete_adapter(adapter_name)
        self._dora_norms.full.pop(adapter_name, None)

    def train(self, mode: bool = True):
        self._dora_norms.clear()
        return super().train(mode)

    # ------------------------------------------------------------ forward
    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if (self.disabled or self.row_adapters is not None or self.merged_adapters
                or not any(n in self.lora_magnitude_vector for n in self.computing_adapters)):
            return super().forward(x, *args, **kwargs)
        result = self.base_layer(x, *args, **kwargs)
        out = result
        for name in self.computing_adapters:  # as peft: each DoRA adapter rescales the running output
            out = out + self.delta(name, x, base_out=out)
        return out.to(result.dtype)

    def _forward_mixed(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if self.merged_adapters or not any(n in self.lora_magnitude_vector for n in set(self.row_adapters)):
            return super()._forward_mixed(x, *args, **kwargs)
        result = self.base_layer(x, *args, **kwargs)
        for name, rows in group_rows(self.row_adapters, x.shape[0], x.device).items():
            if name in self.adapter_names:
                delta = self.delta(name, x.index_select(0, rows), base_out=result.index_select(0, rows))
                result = result.index_add(0, rows, delta.to(result.dtype))
        return result

    # ------------------------------------------------------------ merging
    def merge(self, adapter_names: Optional[list[str]] = None, safe_merge: bool = False) -> None:
        names = self.computing_adapters if adapter_names is None else list(adapter_names)
        warn_if_merged_already(self, names)
        todo = [n for n in names if n in self.adapter_names and n not in self.merged_adapters]
        if any(n in self.lora_magnitude_vector for n in todo):
            # a DoRA norm is that of the weight forward sees, without merged adapters (as peft)
            names = list(self.merged_adapters) + todo
            self.unmerge()
            for n in names:
                if n in self.lora_magnitude_vector:
                    self._dora_merge_norms[n] = weight_norm(self, n)
        super().merge(names, safe_merge)
        self._dora_norms.clear()

    def unmerge(self) -> None:
        super().unmerge()
        self._dora_norms.clear()

    def delta_weight(self, adapter_name: str) -> torch.Tensor:
        if adapter_name in self.lora_magnitude_vector:
            return dora_delta_weight(self, adapter_name)
        return self.lowrank_weight(adapter_name)

    def add_delta_(self, weight: torch.Tensor, adapter_name: str, sign: float) -> None:
        if adapter_name in self.lora_magnitude_vector:
            dora_add_delta_(self, weight, adapter_name, sign)
        else:
            super().add_delta_(weight, adapter_name, sign)
