"""``PeftModel``: the one wrapper around a user's model, with ``peft``'s API.

The user's model lives at ``peft_model.base_model.model`` (so parameter names match ``peft``'s:
``base_model.model.<path>.lora_A.<adapter>.weight``); ``base_model`` is a plain holder with no
behaviour of its own. Adapter layers are injected into the user's model in place (see
:mod:`peftkit.layers`); this class only orchestrates them: add, select, disable, delete, merge,
save and load adapters, and route mixed batches.
"""

from __future__ import annotations

import contextlib
import inspect
import types
import warnings
import weakref
from typing import Any, Iterator, Optional, Union

import torch
import torch.nn as nn

from . import checkpoint
from .config import PeftConfig, TargetedConfig
from .errors import AdapterError, TargetError
from .layers import BASE_ADAPTER, AdapterLayer, ModulesToSaveWrapper, RowAdapters, _ForwardsToBase, unwrap_layer
from .merge import MergeMixin
from .model_io import SaveLoadMixin
from .names import adapter_name_list, check_adapter_name, short_repr
from .registry import MethodSpec, base_layer_kinds, method_for_config, refusal
from .targets import (
    TASK_HEADS,
    find_targets,
    iter_adapter_modules,
    iter_plain_modules,
    modules_to_save_for,
    name_matches,
    resolve_target_modules,
)
from .meta import move_to_meta
from .tree import get_module, set_module


# What peft's tuner object (``peft_model.base_model``) offers that code calls on it: answered by
# the PeftModel that owns the holder, so there is one implementation and one notion of "active".
_TUNER_API = frozenset({
    "set_adapter", "active_adapter", "active_adapters", "peft_config", "prefix", "delete_adapter",
    "disable_adapter_layers", "enable_adapter_layers", "merge_adapter", "unmerge_adapter",
    "merge_and_unload", "unload", "add_weighted_adapter",
})


class BaseModelHolder(_ForwardsToBase):
    """Holds the user's model as ``.model`` (``peft``'s ``base_model.model`` path). peft's tuner
    API (``base_model.set_adapter(...)``, ``base_model.prefix``...) is answered by the owning
    PeftModel; other attribute reads it lacks go to the model."""

    _wrapped_attr = "model"

    def __init__(self, model: nn.Module, owner: Optional["PeftModel"] = None):
        super().__init__()
        self.model = model
        # a weak reference: the PeftModel holds this module, not the other way round
        self.__dict__["_owner"] = weakref.ref(owner) if owner is not None else None

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state.pop("_owner", None)  # a copy (deepcopy, pickle) is linked to its own PeftModel again
        return state

    def __getattr__(self, name: str) -> Any:
        owner_ref = self.__dict__.get("_owner")
        owner = owner_ref() if owner_ref is not None else None
        if name in _TUNER_API and owner is not None and (hasattr(type(owner), name) or name in owner.__dict__):
            return getattr(owner, name)
        return super().__getattr__(name)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.model(*args, **kwargs)


class PeftModel(MergeMixin, SaveLoadMixin, nn.Module):
    """A model with one or more adapters. Build it with :func:`get_peft_model` or
    :meth:`PeftModel.from_pretrained`.

    Example:
        >>> import peftkit as pk
        >>> model = pk.get_peft_model(base, pk.LoraConfig(target_modules=["q_proj", "v_proj"]))  # doctest: +SKIP
        >>> model.print_trainable_parameters()  # doctest: +SKIP
    """

    def __init__(self, model: nn.Module, peft_config: Optional[PeftConfig], adapter_name: str = "default", **_: Any):
        super().__init__()
        self.base_model = BaseModelHolder(model, owner=self)
        self.peft_config: dict[str, PeftConfig] = {}
        self._active: list[str] = []
        self._inputs_disabled = False  # disable_adapter(): no method rewrites the inputs
        self._sign_forward(model)
        if peft_config is not None:
            self.add_adapter(adapter_name, peft_config)
            self.set_adapter(adapter_name)

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        self.base_model.__dict__["_owner"] = weakref.ref(self)  # see BaseModelHolder.__getstate__

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name in ("base_model", "peft_config", "_active") or name.startswith("__"):
                raise
            return getattr(self.base_model, name)

    def _sign_forward(self, model: nn.Module) -> None:
        """Give this model's ``forward`` the wrapped model's signature (plus ``adapter_names``).

        ``transformers.Trainer`` keeps only the dataset columns that ``inspect.signature(model.forward)``
        names (for ``peft`` models it looks at the base model instead, by class); without this it would
        drop ``input_ids``. The call itself is :meth:`forward` unchanged."""
        try:
            params = list(inspect.signature(model.forward).parameters.values())
        except (TypeError, ValueError):  # a forward without a readable signature: leave ours
            return
        if "adapter_names" not in {p.name for p in params}:
            at = next((i for i, p in enumerate(params) if p.kind is inspect.Parameter.VAR_KEYWORD), len(params))
            params.insert(at, inspect.Parameter("adapter_names", inspect.Parameter.KEYWORD_ONLY, default=None))
        params.insert(0, inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD))

        def forward(self: "PeftModel", *args: Any, **kwargs: Any) -> Any:
            return type(self).forward(self, *args, **kwargs)

        try:
            forward.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        except ValueError:  # parameters that cannot be combined this way: leave ours
            return
        forward.__doc__ = type(self).forward.__doc__
        self.__dict__["forward"] = types.MethodType(forward, self)

    @classmethod
    def _class_for_task(cls, task_type: Any) -> type["PeftModel"]:
        """peft's rule for the class to build: the task type's class (``CAUSAL_LM`` ->
        :class:`PeftModelForCausalLM`, ...), or ``cls`` for a config without a task type."""
        key = getattr(task_type, "value", task_type)
        return MODEL_TYPE_TO_PEFT_MODEL_MAPPING.get(key, cls) if key is not None else cls

    def _cast_adapter_to_base_dtype(self, adapter_name: str) -> None:
        """Give each of ``adapter_name``'s tensors the dtype of the weights of the layer it adapts."""
        for _, module in self._adapter_modules():
            base_weight = getattr(getattr(module, "base_layer", None), "weight", None)
            if not isinstance(base_weight, torch.Tensor) or not base_weight.is_floating_point():
                continue
            for _, p in module.adapter_parameters(adapter_name):
                p.data = p.data.to(base_weight.dtype)

    # ------------------------------------------------------------------ introspection
    def get_base_model(self) -> nn.Module:
        """The user's model, with the adapter layers injected."""
        return self.base_model.model

    @property
    def active_adapters(self) -> list[str]:
        return list(self._active)

    @property
    def active_adapter(self) -> str:
        return self._active[0] if len(self._active) == 1 else self.active_adapters  # type: ignore[return-value]

    @property
    def peft_type(self) -> str:
        return next(iter(self.peft_config.values())).peft_type

    @property
    def targeted_module_names(self) -> list[str]:
        """Paths (in the user's model) of the modules the adapters wrap (peft's tuner attribute)."""
        return [key for key, module in self._adapter_modules() if isinstance(module, AdapterLayer)]

    @property
    def prefix(self) -> str:
        """The prefix of this model's adapter parameter names (peft's tuner prefix: ``lora_``,
        ``ia3_``, ``hada_``...)."""
        return self._method().prefix

    @property
    def has_active_enabled_adapter(self) -> bool:
        """Whether the adapters take part in forward: False inside :meth:`disable_adapter` or after
        :meth:`disable_adapter_layers` (peft's property)."""
        layers_off = any(getattr(m, "disabled", False) for _, m in self._adapter_modules())
        return bool(self._active) and not self._inputs_disabled and not layers_off

    def disable_adapter_layers(self) -> None:
        """Switch every adapter layer off in place until :meth:`enable_adapter_layers` (peft's tuner
        method; :meth:`disable_adapter` is the context-manager form). Warns, as peft does, when an
        active adapter trains biases: those stay changed, so outputs are not the base model's."""
        for name in self._active:
            bias = getattr(self.peft_config[name], "bias", "none")
            if bias != "none":
                warnings.warn(f"Careful, disabling adapter layers with bias configured to be '{bias}' does not produce "
                              "the same output as the base model would without adaption.")
        for _, module in self._adapter_modules():
            module.disabled = True

    def enable_adapter_layers(self) -> None:
        """Undo :meth:`disable_adapter_layers`."""
        for _, module in self._adapter_modules():
            module.disabled = False

    @property
    def active_peft_config(self) -> PeftConfig:
        """The config of the active adapter (the first one when several are active)."""
        return self.peft_config[self._active[0]]

    @property
    def modules_to_save(self) -> Optional[set[str]]:
        names = {n for c in self.peft_config.values() for n in (getattr(c, "modules_to_save", None) or [])}
        return names or None

    def _method(self) -> MethodSpec:
        return method_for_config(next(iter(self.peft_config.values())))

    def _adapter_modules(self) -> Iterator[tuple[str, Union[AdapterLayer, ModulesToSaveWrapper]]]:
        return iter_adapter_modules(self.get_base_model())

    def _adapter_layers(self) -> Iterator[AdapterLayer]:
        return (m for _, m in self._adapter_modules() if isinstance(m, AdapterLayer))

    def _check_names(self, names: Any, allow_base: bool = False, field: str = "adapter_name", allow_list: bool = True) -> list[str]:
        """``names`` (a name or a list of names) as a list, each an adapter of this model."""
        names = adapter_name_list(names, field, allow_list)
        known = set(self.peft_config) | ({BASE_ADAPTER} if allow_base else set())
        unknown = [short_repr(n) for n in dict.fromkeys(names) if n not in known]
        if unknown:  # starts with peft's words, which code written for peft matches
            raise AdapterError(f"Adapter {', '.join(str(n) for n in dict.fromkeys(names) if n not in known)} does not "
                               f"exist: unknown adapter(s) [{', '.join(unknown)}]; this model has {sorted(self.peft_config)}")
        return names

    def get_nb_trainable_parameters(self) -> tuple[int, int]:
        """``(trainable, total)`` parameter counts, adapters included in the total."""
        params = list(self.parameters())
        return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)

    def print_trainable_parameters(self) -> None:
        """Print the trainable / total parameter counts, as ``peft`` does."""
        trainable, total = self.get_nb_trainable_parameters()
        print(f"trainable params: {trainable:,d} || all params: {total:,d} || trainable%: {100 * trainable / total:.4f}")

    # ------------------------------------------------------------------ adding and removing adapters
    def add_adapter(
        self, adapter_name: str, peft_config: PeftConfig, low_cpu_mem_usage: bool = False,
        autocast_adapter_dtype: bool = True,
    ) -> None:
        """Inject a new (inactive) adapter. Every target is checked before the model is touched,
        and a failure half-way removes what was added, so errors leave the model as it was.

        ``low_cpu_mem_usage=True`` creates the adapter's layer tensors on the meta device (no memory)
        for a state dict to fill (``set_peft_model_state_dict``); ``autocast_adapter_dtype=False``
        keeps them in the dtype of the layer they adapt instead of float32 (as in peft).

        Example:
            >>> model.add_adapter("b", pk.LoraConfig(target_modules=["q_proj"]))  # doctest: +SKIP
        """
        self._inject(adapter_name, peft_config, peft_config, low_cpu_mem_usage=low_cpu_mem_usage)
        if not autocast_adapter_dtype:
            self._cast_adapter_to_base_dtype(adapter_name)

    def _inject(
        self, adapter_name: str, config: PeftConfig, init_config: PeftConfig, keep_config: bool = False,
        low_cpu_mem_usage: bool = False,
    ) -> None:
        """Wrap the targets; ``peft_config[adapter_name]`` becomes a copy of ``config``, or, with
        ``keep_config`` (loading: peft keeps the object given to ``from_pretrained(config=...)``),
        ``config`` itself. ``init_config`` decides how the new tensors are initialised."""
        check_adapter_name(adapter_name)
        if adapter_name in self.peft_config:
            raise AdapterError(f"an adapter named {adapter_name!r} already exists; pick another name or delete_adapter() it first")
        if not isinstance(config, PeftConfig):
            raise TypeError(f"peft_config must be a peftkit config such as LoraConfig, got {type(config).__name__}")
        spec = method_for_config(config)
        self._check_method_fits(spec)
        trainable = [c for c in [*self.peft_config.values(), config]
                     if not c.inference_mode and method_for_config(c).peft_type == spec.peft_type]
        if spec.max_trainable_adapters is not None and len(trainable) > spec.max_trainable_adapters:
            raise AdapterError(  # peft's words (its tests match them)
                f"{type(config).__name__.removesuffix('Config')}Model supports only {spec.max_trainable_adapters} "
                "trainable adapter. When using multiple adapters, set inference_mode to True for all adapters "
                "except the one you want to train."
            )
        biased = [n for n, c in [*self.peft_config.items(), (adapter_name, config)] if getattr(c, "bias", "none") != "none"]
        if len(biased) > 1:  # the base biases train with the adapter: two adapters would share (and fight over) them
            raise AdapterError(  # peft's words (its tests match them), then which adapters
                f"{type(config).__name__.removesuffix('Config')}Model supports only 1 adapter with bias. When using "
                f"multiple adapters, set bias to 'none' for all adapters (adapters with bias: {biased})"
            )
        same = init_config is config
        config = config if keep_config else config.model_copy(deep=True)
        init_config = config if same else init_config.model_copy(deep=True)
        model = self.get_base_model()
        if "modules_to_save" in type(config).model_fields:
            self._add_task_heads(config, init_config)
        asks_parameters = bool(spec.parameter_targets and spec.parameter_targets(config))
        if isinstance(config, TargetedConfig) and asks_parameters and not config.target_modules:
            targets = []  # parameters only (peft: target_modules unset or [])
        elif isinstance(config, TargetedConfig):
            targets = find_targets(model, config)
            self._check_factories(spec, targets)
            for kind in base_layer_kinds():  # e.g. switch off a quantized backend's inference-only tricks
                kind.prepare_model(model)
            resolved = resolve_target_modules(model, config)
            config.target_modules = resolved
            init_config.target_modules = resolved
        else:
            targets = []
        self.peft_config[adapter_name] = config
        try:
            for key in targets:
                self._wrap(spec, key, adapter_name, init_config)
            if asks_parameters:
                spec.inject_parameters(model, adapter_name, init_config)
            if low_cpu_mem_usage:  # the values will come from a state dict (peft's low_cpu_mem_usage)
                move_to_meta(model, [p for _, m in self._adapter_modules() if isinstance(m, AdapterLayer)
                                     for _, p in m.adapter_parameters(adapter_name)])
            self._wrap_modules_to_save(adapter_name, config)
            if spec.on_add:
                spec.on_add(self, adapter_name, init_config)
            if not config.base_model_name_or_path:
                config.base_model_name_or_path = getattr(model, "name_or_path", None) or None
        except BaseException:
            self.delete_adapter(adapter_name)
            raise
        if len(self.peft_config) == 1:  # first adapter: freeze the base; adapters (and chosen biases) train
            for key, p in model.named_parameters():
                p.requires_grad_(False)
            self._apply_trainability()
        else:
            self._settle_new_adapter(adapter_name, trainable=keep_config and not config.inference_mode)

    def _settle_new_adapter(self, adapter_name: str, trainable: bool) -> None:
        """A further adapter joins without touching the others (as in peft): the layers keep
        computing with the model's active adapters, and only the new adapter's tensors get their
        ``requires_grad``: True when it was loaded with ``is_trainable=True``, else False
        (``add_adapter`` adds a frozen adapter; ``set_adapter`` makes the active ones train)."""
        for _, module in self._adapter_modules():
            if adapter_name not in module.adapter_names:
                continue
            if isinstance(module, AdapterLayer):
                module.active_adapters = [n for n in self._active if n in module.adapter_names]
            elif module.active_adapter not in module.adapter_names:
                module.active_adapter = next((n for n in self._active if n in module.adapter_names), None)
            for _, p in module.adapter_parameters(adapter_name):
                p.requires_grad_(trainable)
        for p in checkpoint.model_level_parameters(self, adapter_name):
            p.requires_grad_(trainable)

    def _check_method_fits(self, spec: MethodSpec) -> None:
        """A PeftModel holds adapters of one method (:class:`~peftkit.mixed_model.PeftMixedModel` mixes them)."""
        if self.peft_config and self._method().peft_type != spec.peft_type:
            raise AdapterError(
                f"this model holds {self._method().peft_type} adapters; {spec.peft_type} cannot be added beside them "
                "(get_peft_model(..., mixed=True) builds a PeftMixedModel, which mixes methods)"
            )

    def _add_task_heads(self, *configs: PeftConfig) -> None:
        """Classification heads are new and untrained: they train in full and save with the adapter
        (written into the saved config, so peft loading it knows too)."""
        for config in configs:
            if config.task_type in TASK_HEADS:
                config.modules_to_save = modules_to_save_for(config)

    def _check_factories(self, spec: MethodSpec, targets: list[str]) -> None:
        model = self.get_base_model()
        for key in targets:
            module = get_module(model, key)
            if isinstance(module, spec.layer_cls):
                continue
            if isinstance(module, AdapterLayer) or spec.factory_for(module) is None:
                supported = ", ".join(f.label for f in spec.layer_factories)
                reason = refusal(module)
                raise TargetError(
                    f"module {key!r} is a {type(module).__name__}, which {spec.peft_type} cannot adapt"
                    + (f": {reason}" if reason else "")
                    + f" (supported: {supported}). Narrow target_modules or add it to exclude_modules."
                )

    def _wrap(self, spec: MethodSpec, key: str, adapter_name: str, config: PeftConfig) -> None:
        model = self.get_base_model()
        module = get_module(model, key)
        if isinstance(module, spec.layer_cls):
            module.add_adapter(adapter_name, config, key)
        else:
            set_module(model, key, spec.factory_for(module).build(module, adapter_name, config, key))

    def _wrap_modules_to_save(self, adapter_name: str, config: PeftConfig) -> None:
        names = getattr(config, "modules_to_save", None) or []
        if not names:
            return
        model = self.get_base_model()
        for key, module in list(iter_plain_modules(model)):
            if not name_matches(key, names):
                continue
            if isinstance(module, ModulesToSaveWrapper):
                module.add_adapter(adapter_name)
            elif not isinstance(module, AdapterLayer):
                set_module(model, key, ModulesToSaveWrapper(module, adapter_name))

    def delete_adapter(self, adapter_name: str) -> None:
        """Remove an adapter; layers left without adapters get their original module back. A
        merged adapter is refused (nothing changes): unmerge it first."""
        self._check_names(adapter_name, allow_list=False)
        if any(adapter_name in getattr(m, "merged_adapters", ()) for _, m in self._adapter_modules()):
            raise AdapterError(  # peft's words
                f"Cannot delete adapter(s) {[adapter_name]} while they are merged. Please unmerge them first.")
        model = self.get_base_model()
        spec = method_for_config(self.peft_config[adapter_name])
        if spec.on_delete:
            spec.on_delete(self, adapter_name)
        for key, module in reversed(list(self._adapter_modules())):  # nested layers: the inner one first
            module.delete_adapter(adapter_name)
            if not module.adapter_names:
                replacement = unwrap_layer(get_module(model, key), module) if isinstance(module, AdapterLayer) else module.original_module
                set_module(model, key, replacement)
        del self.peft_config[adapter_name]
        self._active = [n for n in self._active if n != adapter_name]
        if not self._active and self.peft_config:
            self._active = [next(iter(self.peft_config))]
        self._apply_trainability()

    # ------------------------------------------------------------------ selecting adapters
    def set_adapter(self, adapter_name: Union[str, list[str]]) -> None:
        """Make one adapter (or several, summed) active; only active adapters train."""
        names = self._check_names(adapter_name)
        limit = self._method().max_active_adapters
        if limit is not None and len(names) > limit:
            raise AdapterError(f"{self._method().peft_type} allows {limit} active adapter(s) at a time, got {names}")
        self._active = names
        self._apply_trainability()

    def _apply_trainability(self) -> None:
        trainable = any(not self.peft_config[n].inference_mode for n in self._active)
        for _, module in self._adapter_modules():
            module.set_adapter(self._active, trainable=trainable)
        model = self.get_base_model()
        for name in self._active:
            bias = getattr(self.peft_config[name], "bias", "none")
            for p in checkpoint._bias_parameters(model, name, bias).values():
                p.requires_grad_(trainable)
        for name in self.peft_config:
            for p in checkpoint.model_level_parameters(self, name):
                p.requires_grad_(trainable and name in self._active)

    @contextlib.contextmanager
    def disable_adapter(self) -> Iterator[None]:
        """Context manager: inside it the model computes exactly as the base model.

        Example:
            >>> with model.disable_adapter():  # doctest: +SKIP
            ...     base_logits = model(input_ids).logits
        """
        modules = [m for _, m in self._adapter_modules()]
        # what was switched off before (an outer disable_adapter(), disable_adapter_layers()) stays off
        before = [(m, m.disabled) for m in modules]
        inputs_before = self._inputs_disabled
        for m in modules:
            m.disabled = True
        self._inputs_disabled = True
        try:
            yield
        finally:
            self._inputs_disabled = inputs_before
            for m, disabled in before:
                m.disabled = disabled

    # ------------------------------------------------------------------ running
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
            raise AdapterError(f"adapter_names has {len(adapter_names)} entries but the batch has {rows} rows; "
                               "give one name per row")
        if self.peft_config and self._method().prepare_inputs is not None:
            raise AdapterError(
                f"{self._method().peft_type} adapters change the model's inputs, so one batch cannot mix them "
                "(adapter_names=...); run one batch per adapter with set_adapter()"
            )
        self._check_names(list(adapter_names), allow_base=True, field="adapter_names")
        if any(layer.merged_adapters for layer in self._adapter_layers()):
            raise AdapterError("a mixed batch (adapter_names=...) needs unmerged adapters; call unmerge_adapter() first")
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


def get_peft_model(
    model: nn.Module,
    peft_config: PeftConfig,
    adapter_name: str = "default",
    mixed: bool = False,
    autocast_adapter_dtype: bool = True,
    revision: Optional[str] = None,
    low_cpu_mem_usage: bool = False,
) -> PeftModel:
    """Add a new adapter to ``model`` and return it wrapped (``peft.get_peft_model``): a
    :class:`PeftModelForCausalLM` (and so on) when the config names a ``task_type``, else a
    :class:`PeftModel`.

    ``autocast_adapter_dtype=False`` keeps the adapter in the dtype of each adapted layer's weights
    (by default adapters on float16/bfloat16 layers are float32, as in ``peft``); ``revision`` is
    recorded in the config. ``mixed=True`` returns a :class:`~peftkit.mixed_model.PeftMixedModel`, to
    which adapters of other methods (LoRA, LoHa, LoKr, AdaLoRA, (IA)³) can be added and activated together.

    Example:
        >>> import peftkit as pk
        >>> model = pk.get_peft_model(base, pk.LoraConfig(r=16, target_modules="all-linear", task_type="CAUSAL_LM"))  # doctest: +SKIP
        >>> type(model).__name__  # doctest: +SKIP
        'PeftModelForCausalLM'
    """
    if revision is not None and isinstance(peft_config, PeftConfig):
        peft_config = peft_config.model_copy(update={"revision": revision})
    if mixed:
        from .mixed_model import PeftMixedModel, check_mixable

        check_mixable(peft_config)  # before the model is touched
        peft_model: PeftModel = PeftMixedModel(model, peft_config, adapter_name)
    else:
        peft_model = PeftModel._class_for_task(getattr(peft_config, "task_type", None))(model, None)
        peft_model.add_adapter(adapter_name, peft_config, low_cpu_mem_usage=low_cpu_mem_usage)
        peft_model.set_adapter(adapter_name)
    if not autocast_adapter_dtype:
        peft_model._cast_adapter_to_base_dtype(adapter_name)
    return peft_model


# peft has one class per task type; in peftkit the task changes no logic, so each is PeftModel under
# the task's name: get_peft_model and from_pretrained return them, and isinstance checks against
# either name hold, as in peft.
class PeftModelForCausalLM(PeftModel):
    """A :class:`PeftModel` over a causal language model (``task_type="CAUSAL_LM"``)."""


class PeftModelForSequenceClassification(PeftModel):
    """A :class:`PeftModel` over a sequence classifier (``task_type="SEQ_CLS"``)."""


class PeftModelForSeq2SeqLM(PeftModel):
    """A :class:`PeftModel` over an encoder-decoder model (``task_type="SEQ_2_SEQ_LM"``)."""


class PeftModelForTokenClassification(PeftModel):
    """A :class:`PeftModel` over a token classifier (``task_type="TOKEN_CLS"``)."""


class PeftModelForQuestionAnswering(PeftModel):
    """A :class:`PeftModel` over an extractive question-answering model (``task_type="QUESTION_ANS"``)."""


class PeftModelForFeatureExtraction(PeftModel):
    """A :class:`PeftModel` over an encoder used for embeddings (``task_type="FEATURE_EXTRACTION"``)."""


# task_type -> class, as peft's MODEL_TYPE_TO_PEFT_MODEL_MAPPING
MODEL_TYPE_TO_PEFT_MODEL_MAPPING: dict[str, type[PeftModel]] = {
    "CAUSAL_LM": PeftModelForCausalLM,
    "SEQ_CLS": PeftModelForSequenceClassification,
    "SEQ_2_SEQ_LM": PeftModelForSeq2SeqLM,
    "TOKEN_CLS": PeftModelForTokenClassification,
    "QUESTION_ANS": PeftModelForQuestionAnswering,
    "FEATURE_EXTRACTION": PeftModelForFeatureExtraction,
}
