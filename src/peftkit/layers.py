"""The protocol every adapter layer shares, and the wrapper for modules trained in full.

An adapter layer holds the original module as ``base_layer`` and its per-adapter tensors in
``nn.ModuleDict`` / ``nn.ParameterDict`` attributes keyed by adapter name, with ``peft``'s
attribute names. A method implements :meth:`AdapterLayer.add_adapter`, :meth:`AdapterLayer.delta`
(what the adapter adds to the base output) and, if mergeable, :meth:`AdapterLayer.delta_weight`;
everything else (selection, disabling, merging, mixed batches: rows split by
:mod:`peftkit.row_batches`) is written here once.
"""

from __future__ import annotations

import abc
import warnings
from typing import TYPE_CHECKING, Any, Iterable, Optional

import torch
import torch.nn as nn

from .errors import AdapterError
from .names import BASE_ADAPTER  # noqa: F401  (rows named this use the base model alone)
from .row_batches import group_rows, merged_batch_error

if TYPE_CHECKING:
    from .config import PeftConfig



def warn_if_merged_already(layer: "AdapterLayer", names: list[str]) -> None:
    """peft's warning when a layer that already holds merged adapters is asked to merge again."""
    if not layer.merged_adapters:
        return
    new = [n for n in names if n in layer.adapter_names and n not in layer.merged_adapters]
    if new:
        warnings.warn(f"Already following adapters were merged {','.join(layer.merged_adapters)}. "
                      f"You are now additionally merging {','.join(new)}.")
    else:
        warnings.warn("All adapters are already merged, nothing to do.")


# (input, output) size attribute names per kind of module: Linear, ConvNd, transformers' Conv1D,
# Embedding. A module of another kind (LayerNorm) answers with its normalized size for both.
_SIZE_NAMES = (("in_features", "out_features"), ("in_channels", "out_channels"), ("nx", "nf"),
               ("num_embeddings", "embedding_dim"))


def _sizes(module: nn.Module) -> tuple[int, int]:
    if isinstance(module, nn.MultiheadAttention):  # LoRA adapts its in_proj_weight: (3 * embed, embed), as peft reports
        return module.embed_dim, 3 * module.embed_dim
    for names in _SIZE_NAMES:
        if all(isinstance(getattr(module, n, None), int) for n in names):
            return getattr(module, names[0]), getattr(module, names[1])
    shape = getattr(module, "normalized_shape", None)
    if shape:
        return shape[-1], shape[-1]
    weight = getattr(module, "weight", None)
    if isinstance(weight, torch.Tensor) and weight.dim() >= 2:
        return weight.shape[1], weight.shape[0]
    raise AttributeError(f"{type(module).__name__} has no input/output size that peftkit can read")


class _ForwardsToBase(nn.Module):
    """Attributes the wrapper lacks (``weight``, ``in_features``, ``padding_idx``...) are read from
    the wrapped module, so code that inspects a layer keeps working after it is wrapped."""

    _wrapped_attr = "base_layer"

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == self._wrapped_attr or name.startswith("__"):
                raise
            return getattr(super().__getattr__(self._wrapped_attr), name)


class AdapterLayer(_ForwardsToBase, metaclass=abc.ABCMeta):
    """Base class of every adapter layer.

    Example (a method's layer)::

        class MyLinear(AdapterLayer):
            adapter_param_names = ("my_A",)
            def add_adapter(self, name, config, key): ...
            def delta(self, name, x): return x @ self.my_A[name].T
    """

    # ModuleDict / ParameterDict attributes that hold per-adapter tensors (these are saved).
    adapter_param_names: tuple[str, ...] = ()
    # Plain dict attributes that hold per-adapter settings (rank, scaling, ...).
    adapter_setting_names: tuple[str, ...] = ()
    # Attributes that merging and unmerging change besides the base weights (copied and put back
    # when a merge is only tried out: see peftkit.quantized); methods with more state extend it.
    merge_bookkeeping: tuple[str, ...] = ("merged_adapters",)
    mergeable: bool = True
    # Whether the layer adds to its base's output (LoRA, LoHa, ...) rather than transforming it
    # ((IA)³ rescales). Stacked layers (a mixed model) of additive kinds commute; a non-additive
    # layer applies to everything inside it, which constrains merging (peftkit.merge).
    additive: bool = True
    # What status reports (peftkit.status) call this kind of layer after the method's name, when it is
    # not the wrapped module's class name (peft's class name: "ParamWrapper", "SVDLinear").
    peft_kind: Optional[str] = None

    def __init__(self, base_layer: nn.Module, key: str = ""):
        super().__init__()
        self.base_layer = base_layer
        self.key = key  # the module's path in the model, for error messages
        # ``selected_adapters``: the names last selected (the model's active adapters, some perhaps not
        # on this layer; peft's ``active_adapters``); ``computing_adapters``: the selected ones this layer
        # holds, the ones its forward and merge use.
        self.selected_adapters: list[str] = []
        self.computing_adapters: list[str] = []
        # what the last set_adapter decided about gradients, so that re-enabling a disabled layer
        # restores it (an inference-mode adapter stays frozen)
        self.trains_active = True
        self.merged_adapters: list[str] = []
        self.disabled = False
        # Per-row adapter names for one forward of a mixed batch; set and cleared by PeftModel.
        self.row_adapters: Optional[list[str]] = None
        # adapter name -> the other layers that share this adapter's tensors and this layer's weight
        # (tied embeddings: peftkit.weight_tying); they merge the shared delta once between them
        self.tied_layers: dict[str, list["AdapterLayer"]] = {}

    # ------------------------------------------------------------------ methods implement these
    @abc.abstractmethod
    def add_adapter(self, adapter_name: str, config: "PeftConfig", key: str) -> None:
        """Create the tensors of a new adapter for this layer."""

    @abc.abstractmethod
    def delta(self, adapter_name: str, x: torch.Tensor) -> torch.Tensor:
        """What ``adapter_name`` adds to the base layer's output for input ``x``."""

    def delta_weight(self, adapter_name: str) -> torch.Tensor:
        """The change to ``base_layer.weight`` (same layout) that merging this adapter makes."""
        raise AdapterError(f"{type(self).__name__} adapters cannot be merged into the base weights")

    def get_delta_weight(self, adapter_name: str) -> torch.Tensor:
        """peft's name for :meth:`delta_weight`."""
        return self.delta_weight(adapter_name)

    # ------------------------------------------------------------------ the base weight, as methods read it
    # Methods read the base layer's weight only through these two (and write it only by merging), so a
    # base that stores its weight differently (quantized: peftkit.quantized) overrides them and every
    # method works on it unchanged.
    def base_weight(self) -> torch.Tensor:
        """The base layer's weight as a dense tensor in the base module's layout (a quantized base
        gives a fresh dequantized copy: read it, do not keep it)."""
        return self.base_layer.weight

    def base_weight_info(self) -> tuple[torch.Size, torch.dtype, torch.device]:
        """Shape, dtype and device of :meth:`base_weight` without reading its values (the dtype is the
        one the base computes in: adapters are created from it, see ``adapter_dtype``)."""
        w = self.base_layer.weight
        return w.shape, w.dtype, w.device

    def set_base_weight(self, weight: torch.Tensor) -> None:
        """Overwrite the base weight (initialisations that move part of it into the adapter: PiSSA, OLoRA)."""
        self.base_layer.weight.data.copy_(weight.to(self.base_layer.weight.dtype))

    # ------------------------------------------------------------------ shared behaviour
    @property
    def adapter_names(self) -> list[str]:
        """Names of the adapters this layer holds."""
        return list(getattr(self, self.adapter_param_names[0]).keys()) if self.adapter_param_names else []

    def adapter_parameters(self, adapter_name: str) -> Iterable[tuple[str, nn.Parameter]]:
        """``(attribute path without the adapter name, parameter)`` pairs, e.g. ``("lora_A.weight", p)``:
        exactly the tensors a checkpoint holds for this layer."""
        for attr in self.adapter_param_names:
            holder = getattr(self, attr)
            if adapter_name not in holder:
                continue
            entry = holder[adapter_name]
            if isinstance(entry, torch.Tensor):  # a Parameter; a plain tensor under FSDP(use_orig_params=True)
                yield attr, entry
            else:
                for sub, p in entry.named_parameters():
                    yield f"{attr}.{sub}", p

    def set_adapter(self, adapter_names: str | list[str], inference_mode: bool = False,
                    trainable: Optional[bool] = None) -> None:
        """Make ``adapter_names`` the active adapters; only they get gradients, unless
        ``inference_mode`` (peft's keyword) or ``trainable=False`` freezes them too.

        Example:
            >>> layer.set_adapter(["a", "b"], inference_mode=True)  # doctest: +SKIP
            >>> layer.active_adapters
            ['a', 'b']
        """
        adapter_names = [adapter_names] if isinstance(adapter_names, str) else list(adapter_names)
        trainable = not inference_mode if trainable is None else trainable
        self.selected_adapters = adapter_names
        self.computing_adapters = [n for n in adapter_names if n in self.adapter_names]
        self.trains_active = trainable
        for name in self.adapter_names:
            for _, p in self.adapter_parameters(name):
                p.requires_grad_(trainable and name in self.computing_adapters)

    @property
    def active_adapters(self) -> list[str]:
        """The selected adapters' names, as peft's layers report them: a name this layer does not
        hold stays listed and is ignored (the model's selection is the same on every layer)."""
        return list(self.selected_adapters)

    @active_adapters.setter
    def active_adapters(self, names: list[str]) -> None:
        self.selected_adapters = list(names)
        self.computing_adapters = [n for n in names if n in self.adapter_names]

    @property
    def adapter_layer_names(self) -> tuple[str, ...]:
        """peft's name for :attr:`adapter_param_names`: the attributes holding per-adapter tensors."""
        return self.adapter_param_names

    @property
    def other_param_names(self) -> tuple[str, ...]:
        """peft's name for :attr:`adapter_setting_names`: per-adapter settings keyed by adapter name."""
        return self.adapter_setting_names

    def set_requires_grad(self, adapter_names: str | Iterable[str], requires_grad: bool = True) -> None:
        """Switch gradients of the named adapters' tensors on this layer, leaving the selection alone.

        Example:
            >>> layer.set_requires_grad("other")  # train "other" beside the active one  # doctest: +SKIP
        """
        names = {adapter_names} if isinstance(adapter_names, str) else set(adapter_names)
        for name in self.adapter_names:
            if name in names:
                for _, p in self.adapter_parameters(name):
                    p.requires_grad_(requires_grad)

    def delete_adapter(self, adapter_name: str) -> None:
        """Remove an adapter's tensors and settings from this layer."""
        if adapter_name in self.merged_adapters:
            raise AdapterError(f"adapter {adapter_name!r} is merged into {type(self).__name__}; unmerge it before deleting")
        for attr in (*self.adapter_param_names, *self.adapter_setting_names):
            holder = getattr(self, attr)
            if adapter_name in holder:
                del holder[adapter_name]
        self.computing_adapters = [n for n in self.computing_adapters if n != adapter_name]
        self.selected_adapters = [n for n in self.selected_adapters if n != adapter_name]
        self.__dict__.get("tied_layers", {}).pop(adapter_name, None)

    def stacking_refusal(self, adapter_name: str) -> Optional[str]:
        """Why ``adapter_name`` of this layer cannot sit over another adapter layer of the same module
        (a mixed model stacks layers of different methods), or None when it can."""
        return None

    def merge(self, adapter_names: Optional[list[str]] = None, safe_merge: bool = False) -> None:
        """Add the adapters' weight deltas into ``base_layer.weight``.

        ``safe_merge`` computes the merged weight on a copy first and refuses NaN/inf.
        """
        names = self.computing_adapters if adapter_names is None else adapter_names
        warn_if_merged_already(self, names)
        weight = self.base_layer.weight
        for name in names:
            if name not in self.adapter_names or name in self.merged_adapters:
                continue
            if self._merged_by_tied_layer(name):  # the shared weight holds this delta already
                self.merged_adapters.append(name)
                continue
            if safe_merge:
                merged = weight.data + self.delta_weight(name).to(weight.dtype)
                if not torch.isfinite(merged).all():
                    raise AdapterError(f"NaNs detected in the merged weights. The adapter {name!r} seems to be broken: "
                                       "merging it gives NaN/inf weights; the base layer was left as it was")
                weight.data.copy_(merged)
            else:
                self.add_delta_(weight.data, name, 1.0)
            self.merged_adapters.append(name)

    def merge_refusal(self, adapter_name: str) -> Optional[str]:
        """Why ``adapter_name`` cannot be merged into this layer (checked for every layer before a
        model-level merge changes anything), or None when it can."""
        return None

    def merge_is_finite(self, adapter_name: str) -> bool:
        """Whether merging ``adapter_name`` leaves every base tensor finite (``safe_merge``'s check);
        layers that merge into something other than ``base_layer.weight`` override it."""
        weight = self.base_layer.weight
        return bool(torch.isfinite(weight.data + self.delta_weight(adapter_name).to(weight.dtype)).all())

    def add_delta_(self, weight: torch.Tensor, adapter_name: str, sign: float) -> None:
        """``weight += sign * delta_weight(adapter_name)`` in place; layers override it when they
        can do this without materialising the delta (LoRA: one ``addmm_``)."""
        weight += sign * self.delta_weight(adapter_name).to(weight.dtype)

    def unmerge(self) -> None:
        """Subtract every merged adapter's delta again (restores the base weights up to rounding)."""
        weight = self.base_layer.weight
        while self.merged_adapters:
            name = self.merged_adapters.pop()
            if not self._merged_by_tied_layer(name):  # the last tied layer to unmerge takes the delta out
                self.add_delta_(weight.data, name, -1.0)

    def _merged_by_tied_layer(self, adapter_name: str) -> bool:
        """Whether a layer tied to this one (same adapter tensors, same base weight) has merged
        ``adapter_name``: their deltas are equal, so the shared weight must receive it only once."""
        weight = getattr(self.get_base_layer(), "weight", None)
        return any(adapter_name in other.merged_adapters and getattr(other.get_base_layer(), "weight", None) is weight
                   for other in self.__dict__.get("tied_layers", {}).get(adapter_name, ()))

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if self.disabled:
            if self.merged_adapters:
                self.unmerge()
            return self.base_layer(x, *args, **kwargs)
        if self.row_adapters is not None:
            return self._forward_mixed(x, *args, **kwargs)
        result = self.base_layer(x, *args, **kwargs)
        if self.merged_adapters:
            return result
        for name in self.computing_adapters:
            result = result + self.delta(name, x).to(result.dtype)
        return result

    def _forward_mixed(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if self.merged_adapters:
            raise merged_batch_error()
        result = self.base_layer(x, *args, **kwargs)
        for name, rows in group_rows(self.row_adapters, x.shape[0], x.device).items():
            if name == BASE_ADAPTER or name not in self.adapter_names:
                continue
            delta = self.delta(name, x.index_select(0, rows)).to(result.dtype)
            result = result.index_add(0, rows, delta)
        return result

    def extra_repr(self) -> str:
        return f"adapters={self.adapter_names}, active={self.computing_adapters}, merged={self.merged_adapters}"

    @property
    def peft_name(self) -> str:
        """``<method>.<kind>``, peft's qualified name for this kind of layer (``lora.Linear``,
        ``lora.Conv2d``, ``lora.ParamWrapper``): the method from the registry, the kind from the
        class's :attr:`peft_kind` or else the wrapped module's class (transformers' ``Conv1D`` is a
        linear to peft).

        Example:
            >>> peft_model.base_model.model.lin0.peft_name  # doctest: +SKIP
            'lora.Linear'
        """
        from .registry import registered_methods  # here: the registry imports the layer classes

        method = next((peft_type.lower() for peft_type, spec in registered_methods().items()
                       if isinstance(self, spec.layer_cls)), type(self).__module__.rsplit(".", 1)[-1])
        kind = self.peft_kind or type(self.get_base_layer()).__name__
        return f"{method}.{'Linear' if kind == 'Conv1D' else kind}"

    def __repr__(self) -> str:
        # printed models read as peft's (``lora.Linear(...)``): code and people recognise the layers
        body = super().__repr__()
        return self.peft_name + body[len(type(self).__name__):]

    # ------------------------------------------------------------------ peft's layer API (BaseTunerLayer)
    # Names that code written against peft's layers reads or calls (diffusers' LoRA API, TRL, users).
    @property
    def merged(self) -> bool:
        """Whether any adapter is merged into the base weights."""
        return bool(self.merged_adapters)

    @property
    def in_features(self) -> int:
        """The base layer's input size, whatever its kind calls it (peft's layers all expose it);
        a layer may set its own."""
        return self.__dict__.get("_in_features") or _sizes(self.base_layer)[0]

    @in_features.setter
    def in_features(self, value: int) -> None:
        self.__dict__["_in_features"] = value

    @property
    def out_features(self) -> int:
        """The base layer's output size (see :attr:`in_features`)."""
        return self.__dict__.get("_out_features") or _sizes(self.base_layer)[1]

    @out_features.setter
    def out_features(self, value: int) -> None:
        self.__dict__["_out_features"] = value

    @property
    def disable_adapters(self) -> bool:
        """Whether the layer runs as its base layer alone (see :meth:`enable_adapters`)."""
        return self.disabled

    @property
    def active_adapter(self) -> str | list[str]:
        """The active adapter's name, or the list of them when several are active."""
        return self.selected_adapters[0] if len(self.selected_adapters) == 1 else list(self.selected_adapters)

    def _all_available_adapter_names(self) -> list[str]:
        """``peft``'s name for :attr:`adapter_names`."""
        return self.adapter_names

    def get_base_layer(self) -> nn.Module:
        """The wrapped module: the innermost one when adapter layers are stacked (a mixed model,
        :mod:`peftkit.mixed_model`), as ``peft``'s ``get_base_layer`` recurses."""
        layer = self.base_layer
        while isinstance(layer, AdapterLayer):
            layer = layer.base_layer
        return layer

    def nests_by_path(self, outer: "AdapterLayer") -> bool:
        """Whether this layer, wrapped by ``outer``, is keyed at ``outer``'s path + ``.base_layer``
        (``peft``'s nesting of LoRA wrappers on several parameters of one module, inside one adapter)
        rather than at the module's own path (a mixed model's stack of different methods)."""
        return False

    def release_base_layer(self) -> nn.Module:
        """The wrapped module, to be put back in this layer's place (unload, last adapter deleted);
        a layer that adapted parts inside it (LoRA on attention's ``out_proj``) restores them first."""
        return self.base_layer

    def enable_adapters(self, enabled: bool) -> None:
        """Turn the adapters of this layer on or off (peft's method). Off, they also stop training, as
        in peft; back on, they train as the last :meth:`set_adapter` decided.

        Example:
            >>> layer.enable_adapters(False); layer.disable_adapters  # doctest: +SKIP
            True
        """
        if enabled:
            self.set_adapter(self.selected_adapters or self.computing_adapters, trainable=self.trains_active)
        else:
            for name in self.adapter_names:
                for _, p in self.adapter_parameters(name):
                    p.requires_grad_(False)
        self.disabled = not enabled


def layer_stack(module: nn.Module) -> list[AdapterLayer]:
    """The adapter layers wrapped around one base module, outermost first: one for a
    :class:`~peftkit.model.PeftModel`, several where a mixed model stacked layers of different methods
    (each holds the next as its ``base_layer``; the innermost holds the original module).

    Example:
        >>> layer_stack(peft_model.get_base_model().lin0)   # doctest: +SKIP
        [LoHaLayer(...), LoraLinear(...)]
    """
    stack = []
    while isinstance(module, AdapterLayer):
        stack.append(module)
        inner = module.base_layer
        if isinstance(inner, AdapterLayer) and inner.nests_by_path(module):
            break  # a layer of its own at <path>.base_layer (see AdapterLayer.nests_by_path)
        module = inner
    return stack


def unwrap_layer(outermost: nn.Module, layer: AdapterLayer) -> nn.Module:
    """Take ``layer`` out of the stack that starts at ``outermost``; returns the module that now
    stands where ``outermost`` stood (its own base when ``layer`` was the outermost).

    Example:
        >>> set_module(model, "lin0", unwrap_layer(model.lin0, emptied_layer))   # doctest: +SKIP
    """
    if outermost is layer:
        return layer.release_base_layer()
    for outer in layer_stack(outermost):
        if outer.base_layer is layer:
            outer.base_layer = layer.release_base_layer()
            break
    return outermost
