"""The method registry: the only place that knows which adapter methods exist.

A method is a :class:`MethodSpec`: its config class, the adapter-layer class its layers share,
and a first-match list of :class:`LayerFactory` that wrap a target module. Generic code (injection,
saving, merging, the training loop) asks the registry and never branches on a method's name.
Built-in methods register themselves on import of :mod:`peftkit.methods`; other packages register
through the ``peftkit.methods`` entry point group, loaded lazily on the first lookup.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Callable, Optional

import torch.nn as nn

from .errors import ConfigError

if TYPE_CHECKING:
    from .config import PeftConfig
    from .layers import AdapterLayer

logger = logging.getLogger(__name__)
ENTRY_POINT_GROUP = "peftkit.methods"


@dataclass(frozen=True)
class LayerFactory:
    """Wraps one kind of module. ``matches(module)`` selects it; ``build(module, name, config, key)``
    returns the adapter layer holding ``module`` as ``base_layer`` with adapter ``name`` added.

    ``quantized``: the factory is made for a quantized layer (see :mod:`peftkit.quantized`). A module
    that a registered :class:`BaseLayerKind` claims (a bitsandbytes ``Linear4bit`` is also an
    ``nn.Linear``) is only ever offered to such factories, and plain modules only to the others, so
    a plain ``nn.Linear`` factory never adapts a packed weight as if it were dense."""

    label: str
    matches: Callable[[nn.Module], bool]
    build: Callable[[nn.Module, str, "PeftConfig", str], "AdapterLayer"]
    quantized: bool = False


@dataclass(frozen=True)
class BaseLayerKind:
    """Hooks for a kind of *base layer* that needs care whatever the method (quantized linears,
    registered by :mod:`peftkit.quantized`). Generic code calls them without knowing what they are for.

    ``claims(module)``: the module belongs to this kind (only ``quantized`` factories may wrap it);
    ``refusal(module)``: why no factory can adapt a claimed module, and what to do instead (None: it
    can be adapted); ``prepare_model(model)``: runs on a model before adapters are injected into it;
    ``check_merge(peft_model, layers, adapter_names)``: runs before anything is merged, and may raise
    to refuse the merge (the model is then unchanged); ``storage_name(module)``: what status reports
    (:mod:`peftkit.status`) call how a claimed module stores its weight (``"bnb 4bit"``)."""

    name: str
    claims: Callable[[nn.Module], bool]
    refusal: Callable[[nn.Module], Optional[str]] = lambda module: None
    prepare_model: Callable[[nn.Module], None] = lambda model: None
    check_merge: Callable[..., None] = lambda peft_model, layers, adapter_names: None
    storage_name: Callable[[nn.Module], Optional[str]] = lambda module: None


@dataclass
class MethodSpec:
    """Everything generic code needs to know about one adapter method.

    Example:
        >>> from peftkit.registry import get_method
        >>> get_method("LORA").config_cls.__name__
        'LoraConfig'
    """

    peft_type: str
    config_cls: type["PeftConfig"]
    layer_cls: type["AdapterLayer"]
    layer_factories: list[LayerFactory] = field(default_factory=list)
    # Called after every optimizer step during training (e.g. AdaLoRA's rank allocation).
    on_step_end: Optional[Callable[..., None]] = None
    # Extra loss terms (e.g. orthogonal regularisation), added by the training loop.
    extra_loss: Optional[Callable[..., object]] = None
    # State a method keeps on the PeftModel rather than in injected layers (VeRA's shared
    # projections, a prompt encoder). ``on_add(peft_model, adapter_name, config)`` runs after the
    # layers are wrapped (and is undone by ``on_delete(peft_model, adapter_name)``, which is also
    # called to roll back a failed add); ``model_tensors(peft_model, adapter_name)`` returns
    # checkpoint key -> live tensor, saved and loaded (shape-checked) beside the layers' tensors.
    # Parameters among them train while their adapter is active and trainable.
    on_add: Optional[Callable[..., None]] = None
    on_delete: Optional[Callable[..., None]] = None
    model_tensors: Optional[Callable[..., dict]] = None
    # ``model_parameters(peft_model, adapter_name)``: the model-level parameters that train with the
    # adapter, when they are not the saved tensors themselves (a prompt encoder saves the prompt it
    # computes, but trains its embedding and MLP). None: the parameters among ``model_tensors``.
    model_parameters: Optional[Callable[..., list]] = None
    # Methods that change the model's inputs rather than (or besides) its layers (prompt, prefix
    # tuning). ``prepare_inputs(peft_model, adapter_name, kwargs) -> kwargs`` rewrites the keyword
    # arguments of every call of the wrapped model's forward, in ``forward()`` and at each step of
    # ``generate()``; ``prepare_generate(peft_model, adapter_name, kwargs) -> kwargs`` rewrites the
    # arguments of ``generate()`` itself, once (for inputs that generate hands to an encoder directly).
    prepare_inputs: Optional[Callable[..., dict]] = None
    prepare_generate: Optional[Callable[..., dict]] = None
    # Settings a training run derives from its own plan when the adapter section leaves them unset
    # (AdaLoRA's ``total_step``). ``run_defaults(fields, total_steps) -> {field: value}`` gets the
    # config fields as the user wrote them and the run's optimizer steps, or None while a run config
    # is validated before its data is read (return stand-ins that let the other fields be checked).
    # The run's config, and its hash, keep what the user wrote; the adapter config it trains and
    # saves holds the filled values. ``get_peft_model`` never calls it.
    run_defaults: Optional[Callable[[dict, Optional[int]], dict]] = None
    # State beyond the adapter's tensors that a resumed run needs to continue exactly (AdaLoRA's
    # importance averages and rank mask). ``run_state(peft_model, adapter_name) -> {key: tensor}``
    # is written with every training checkpoint (safetensors) and given back, on resume, to
    # ``load_run_state(peft_model, adapter_name, tensors)``.
    run_state: Optional[Callable[..., dict]] = None
    load_run_state: Optional[Callable[..., None]] = None
    # Adapters of this method may sit on one model beside adapters of other methods, their layers
    # stacked on shared modules (get_peft_model(..., mixed=True): peftkit.mixed_model). Methods that
    # rewrite the model's inputs or keep model-level state are not.
    mixable: bool = False
    # Methods that adapt ``nn.Parameter``s beside (or instead of) modules (LoRA's target_parameters).
    # ``parameter_targets(config) -> [names]``: the parameters a config asks for ([]: none; then
    # the config may name no module at all). ``find_parameters(model, config, required=True) ->
    # [(module key, name)]`` matches them without changing anything (a TargetError when nothing
    # matches and ``required``: validation uses it);
    # ``inject_parameters(model, adapter_name, config) -> [keys]`` wraps them in place (after the
    # module targets; a failure is rolled back like any other).
    parameter_targets: Optional[Callable[..., list]] = None
    find_parameters: Optional[Callable[..., list]] = None
    inject_parameters: Optional[Callable[..., list]] = None
    # At most this many adapters of the method may be active at once (None: no limit).
    max_active_adapters: Optional[int] = None
    # At most this many adapters of the method may be trainable (not inference_mode) in one model
    # (AdaLoRA: its rank budget follows one adapter's training). None: no limit.
    max_trainable_adapters: Optional[int] = None
    # Why adapters of this method can never be merged into the base weights (None: see layer_cls).
    merge_error: Optional[str] = None
    # Where the user's model sits in the checkpoint's key space: peft writes ``base_model.model.``
    # for methods that wrap layers and ``base_model.`` for prompt-learning methods.
    key_prefix: str = "base_model.model."
    # peft's tuner flag: the method keeps state on the model that its layers share (VeRA's
    # projections, a prompt encoder, bottleneck placement), so it needs a PeftModel and cannot be
    # injected into a plain module with inject_adapter_in_model().
    uses_shared_state: bool = False
    # Tied embeddings (peftkit.weight_tying; configs with ``ensure_weight_tying``):
    # ``tie_adapter(leader, follower, adapter_name)`` makes the follower layer's adapter compute with
    # the leader layer's tensors (the input embedding's), so the modules sharing one weight share one
    # adapter. None: the method cannot tie adapters (peft warns, and so does peftkit).
    tie_adapter: Optional[Callable[..., None]] = None

    @property
    def prefix(self) -> str:
        """The prefix of the method's parameter names, as peft's tuners give it (``lora_`` for
        LoRA and AdaLoRA, ``hada_`` for LoHa, ``vera_lambda_``...): what the layer's tensor
        attributes share up to their last ``_``; ``<peft type>_`` for methods without layers."""
        names = list(getattr(self.layer_cls, "adapter_param_names", ()) or ())
        if not names:
            return f"{str(self.peft_type).lower()}_"
        shared = os.path.commonprefix(names)
        return shared[: shared.rfind("_") + 1] or f"{str(self.peft_type).lower()}_"

    def factory_for(self, module: nn.Module, config: Optional["PeftConfig"] = None) -> Optional[LayerFactory]:
        """The first factory that accepts ``module``, or None (a quantized module only matches
        factories marked ``quantized``; see :class:`LayerFactory`). Factories a ``config`` brings
        (:meth:`PeftConfig.custom_layer_factories`, peft's custom LoRA modules) come before the
        method's own, for any module.

        Example:
            >>> method_for_config(cfg).factory_for(model.lin0, cfg).label  # doctest: +SKIP
            'nn.Linear'
        """
        if config is not None:
            custom = next((f for f in config.custom_layer_factories() if f.matches(module)), None)
            if custom is not None:
                return custom
        special = any(kind.claims(module) for kind in base_layer_kinds())
        return next((f for f in self.layer_factories if f.quantized == special and f.matches(module)), None)


_METHODS: dict[str, MethodSpec] = {}
_BASE_LAYER_KINDS: dict[str, BaseLayerKind] = {}
_plugins_loaded = False


def register_base_layer_kind(kind: BaseLayerKind) -> BaseLayerKind:
    """Add (or replace, by name) hooks for a kind of base layer; see :class:`BaseLayerKind`."""
    _BASE_LAYER_KINDS[kind.name] = kind
    return kind


def base_layer_kinds() -> list[BaseLayerKind]:
    """Every registered kind of base layer (built-in: quantized linears)."""
    _load_plugins()
    return list(_BASE_LAYER_KINDS.values())


def refusal(module: nn.Module) -> Optional[str]:
    """Why no method can adapt ``module`` and what to do instead, when a base-layer kind knows;
    else None."""
    for kind in base_layer_kinds():
        if kind.claims(module):
            reason = kind.refusal(module)
            if reason:
                return reason
    return None


def register_method(spec: MethodSpec, *, replace: bool = False) -> MethodSpec:
    """Add a method to the registry; ``replace=True`` overrides an existing one of that name.

    Example:
        >>> register_method(MethodSpec("MY_METHOD", MyConfig, MyLayer, [my_linear_factory]))  # doctest: +SKIP
    """
    if spec.peft_type in _METHODS and not replace and _METHODS[spec.peft_type] is not spec:
        raise ValueError(f"method {spec.peft_type!r} is already registered; pass replace=True to override it")
    if spec.config_cls.peft_type != spec.peft_type:
        raise ValueError(
            f"{spec.config_cls.__name__}.peft_type is {spec.config_cls.peft_type!r}, expected {spec.peft_type!r}"
        )
    _METHODS[spec.peft_type] = spec
    return spec


def _load_plugins() -> None:
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    from . import methods, quantized  # noqa: F401  (built-ins register on import)

    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            loaded = ep.load()
            # An entry point may name a module (registering on import), a spec, or a function
            # returning specs; all three are accepted.
            if isinstance(loaded, MethodSpec):
                register_method(loaded)
            elif callable(loaded) and not isinstance(loaded, type):
                for spec in loaded() or []:
                    register_method(spec)
        except Exception as e:  # a broken plugin must not break peftkit
            logger.warning("peftkit plugin %r (%s) failed to load: %s", ep.name, ep.value, e)


def get_method(peft_type: str, source: str = "config") -> MethodSpec:
    """Look a method up by its ``peft_type`` (e.g. ``"LORA"``)."""
    _load_plugins()
    key = str(getattr(peft_type, "value", peft_type))
    if key not in _METHODS:
        import difflib

        close = difflib.get_close_matches(key, list(_METHODS), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(
            f"Invalid {source}:",
            [("peft_type", f"unknown method {key!r} (known: {', '.join(sorted(_METHODS))}){hint}")],
        )
    return _METHODS[key]


def method_for_config(config: "PeftConfig") -> MethodSpec:
    """The spec registered for a config instance's class."""
    return get_method(config.peft_type, source=type(config).__name__)


def registered_methods() -> dict[str, MethodSpec]:
    """All methods, built-in and plugins, by ``peft_type``."""
    _load_plugins()
    return dict(_METHODS)
