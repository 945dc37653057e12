"""Adding and removing adapters on a :class:`~peftkit.model.PeftModel`: check the config and the
method, find the targets, wrap them with the method's layers (rolled back as a whole on any
failure), settle which adapters train, and take adapters out again. A mixin, as merging
(:mod:`peftkit.merge`) and saving (:mod:`peftkit.model_io`) are.

Example:
    >>> peft_model.add_adapter("b", LoraConfig(r=8, target_modules=["q_proj"]))  # doctest: +SKIP
    >>> peft_model.delete_adapter("b")  # doctest: +SKIP
"""

from __future__ import annotations

import re
import warnings
from typing import Optional

import torch.nn as nn

from . import checkpoint
from .config import PeftConfig, TargetedConfig
from .errors import AdapterError, TargetError
from .layers import AdapterLayer, unwrap_layer
from .modules_to_save import ModulesToSaveWrapper
from .meta import move_to_meta
from .names import check_adapter_name
from .registry import MethodSpec, base_layer_kinds, method_for_config, refusal
from .targets import (
    TASK_HEADS, find_targets, iter_plain_modules, matching_modules, modules_to_save_for, name_matches,
    nothing_matched, resolve_target_modules, short_target_names,
)
from .tree import get_module, set_module
from .weight_tying import TyingPlan, link_tied_layers, plan_weight_tying, tie_saved_modules


class AdapterManagementMixin:
    """``add_adapter``, ``delete_adapter`` and the injection behind them (``PeftModel``'s part)."""

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
            raise AdapterError(f"Adapter with name '{adapter_name}' already exists. Pick another name, or delete_adapter() it first")
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
        targets, parameter_keys, tying = _choose_targets(model, config, spec)
        asks_parameters = bool(parameter_keys)
        if targets:
            self._check_factories(spec, targets, config)
            for kind in base_layer_kinds():  # e.g. switch off a quantized backend's inference-only tricks
                kind.prepare_model(model)
            resolved = short_target_names(model, config, resolve_target_modules(model, config),
                                          [k for k in targets if not tying or k not in tying.keys])
            config.target_modules = resolved
            init_config.target_modules = resolved
        self.peft_config[adapter_name] = config
        try:
            followers = tying.followers if tying and tying.via == "target_modules" else []
            for key in targets:
                if key not in followers:
                    self._wrap(spec, key, adapter_name, init_config)
            for key in followers:  # after the embedding, whose adapter they share (peft: the same order)
                self._wrap(spec, key, adapter_name, init_config)
            if followers:
                self._tie_layers(spec, tying, adapter_name)
            if asks_parameters:
                spec.inject_parameters(model, adapter_name, init_config)
            if low_cpu_mem_usage:  # the values will come from a state dict (peft's low_cpu_mem_usage)
                move_to_meta(model, [p for _, m in self._adapter_modules() if isinstance(m, AdapterLayer)
                                     for _, p in m.adapter_parameters(adapter_name)])
            self._wrap_modules_to_save(adapter_name, config, tying.keys if tying and tying.via == "modules_to_save" else ())
            if tying and tying.via == "modules_to_save":
                tie_saved_modules(model, adapter_name, tying)
            if spec.on_add:
                spec.on_add(self, adapter_name, init_config)
            if not config.base_model_name_or_path:
                config.base_model_name_or_path = getattr(model, "name_or_path", None) or None
        except BaseException:
            self.delete_adapter(adapter_name)
            raise
        _warn_unmatched_patterns(config, targets + parameter_keys)
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
                module.active_adapters = list(self._active)
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

    def _check_factories(self, spec: MethodSpec, targets: list[str], config: Optional[PeftConfig] = None) -> None:
        """Refuse, before anything is wrapped, a target the method's layers cannot wrap."""
        model = self.get_base_model()
        for key in targets:
            module = get_module(model, key)
            if isinstance(module, spec.layer_cls):
                continue  # the method's layer is there already: the adapter joins it
            problem = self._factory_refusal(spec, key, module, config)
            if problem:
                raise TargetError(problem)

    def _factory_refusal(self, spec: MethodSpec, key: str, module: nn.Module,
                         config: Optional[PeftConfig] = None) -> Optional[str]:
        """Why ``spec``'s layers (or ``config``'s own) cannot wrap ``module`` at ``key`` (None: they
        can); a mixed model overrides it (it stacks on other methods' layers, and refuses quantized ones)."""
        if isinstance(module, AdapterLayer) or spec.factory_for(module, config) is None:
            supported = ", ".join(f.label for f in spec.layer_factories)
            reason = refusal(module)
            return (f"module {key!r} is a {type(module).__name__}, which {spec.peft_type} cannot adapt"
                    + (f": {reason}" if reason else "")
                    + f" (supported: {supported}). Narrow target_modules or add it to exclude_modules.")
        return None

    def _wrap(self, spec: MethodSpec, key: str, adapter_name: str, config: PeftConfig) -> None:
        model = self.get_base_model()
        module = get_module(model, key)
        if isinstance(module, spec.layer_cls):
            module.add_adapter(adapter_name, config, key)
        else:
            set_module(model, key, spec.factory_for(module, config).build(module, adapter_name, config, key))

    def _tie_layers(self, spec: MethodSpec, tying: TyingPlan, adapter_name: str) -> None:
        """The followers compute with the embedding's adapter tensors (the method's ``tie_adapter``),
        and the layers of the group merge their shared delta once."""
        model = self.get_base_model()
        leader, followers = get_module(model, tying.leader), [get_module(model, k) for k in tying.followers]
        for follower in followers:
            spec.tie_adapter(leader, follower, adapter_name)
        link_tied_layers([leader, *followers], adapter_name)

    def _wrap_modules_to_save(self, adapter_name: str, config: PeftConfig, also: tuple[str, ...] | list[str] = ()) -> None:
        """Wrap the modules ``config.modules_to_save`` names, and the paths in ``also`` (tied
        embeddings: the input embedding and the modules sharing its weight)."""
        names = getattr(config, "modules_to_save", None) or []
        if not names and not also:
            return
        model = self.get_base_model()
        for key, module in list(iter_plain_modules(model)):
            if not (key in also or (names and name_matches(key, names))):
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


def _choose_targets(model: nn.Module, config: PeftConfig, spec: MethodSpec) -> tuple[list[str], list[str], Optional[TyingPlan]]:
    """``(module keys to wrap, keys of modules whose parameters are wrapped, weight-tying plan)``
    for a new adapter; an error when the config selects nothing. Changes nothing."""
    if not isinstance(config, TargetedConfig):
        return [], [], None
    if spec.parameter_targets and spec.parameter_targets(config):
        targets, parameter_keys = _modules_and_parameters(model, config, spec)
        return targets, parameter_keys, None
    targets = find_targets(model, config)
    tying = plan_weight_tying(model, config)
    if tying and tying.via == "target_modules" and spec.tie_adapter is None:
        tying = None  # a method that cannot tie: the config's own targets, as asked
    return _with_tied_targets(targets, tying), [], tying


def _modules_and_parameters(model: nn.Module, config: TargetedConfig, spec: MethodSpec) -> tuple[list[str], list[str]]:
    """Targets of a config that names parameters (LoRA's ``target_parameters``), maybe modules too:
    ``(module keys, keys of the modules whose parameters matched)``. Either side may match nothing,
    with peft's RuntimeWarning naming it; nothing matched at all is an error."""
    keys = matching_modules(model, config) if config.target_modules else []
    found = spec.find_parameters(model, config, required=False)
    wanted = spec.parameter_targets(config)
    if not keys and not found:
        if config.target_modules:
            raise TargetError(f"{nothing_matched(model, config)} target_parameters={wanted!r} matched no parameter either.")
        raise TargetError(  # peft's sentence (its tests match it), then what to do
            "No `target_modules` passed but also no `target_parameters` found. Please check the values for these "
            f"arguments. target_parameters={wanted!r} names no parameter of {type(model).__name__}: give full "
            "names or dotted tails of names in model.named_parameters(), such as 'mlp.experts.gate_up_proj'"
        )
    if config.target_modules and not keys:  # peft prints the names as the set it keeps
        shown = "{" + ", ".join(repr(n) for n in config.target_modules) + "}" if isinstance(config.target_modules, list) \
            else repr(config.target_modules)
        warnings.warn(f"target_modules={shown} were set but no module was matched. Only target_parameters are "
                      "adapted.", RuntimeWarning, stacklevel=4)
    if not found:
        warnings.warn(f"target_parameters={wanted!r} were set but no parameter was matched. Only target_modules "
                      "are adapted.", RuntimeWarning, stacklevel=4)
    return keys, [key for key, _ in found]


def _warn_unmatched_patterns(config: PeftConfig, adapted: list[str]) -> None:
    """peft's RuntimeWarning (its tests match it) for ``rank_pattern`` / ``alpha_pattern`` keys that
    select none of the adapted modules: a typo there silently trains with the default rank."""
    for field in ("rank_pattern", "alpha_pattern"):
        patterns = getattr(config, field, None) or {}
        unmatched = sorted(p for p in patterns if not any(re.match(rf"(.*\.)?({p})$", key) for key in adapted))
        if unmatched:
            warnings.warn(
                f"The following {field} keys did not match any targeted module and were ignored: {unmatched}. "
                "Each key is a regex matched against the end of a module's path (see model.named_modules()).",
                RuntimeWarning, stacklevel=4,
            )


def _with_tied_targets(targets: list[str], tying: Optional[TyingPlan]) -> list[str]:
    """The targets once tying is settled: through ``target_modules`` the input embedding and every
    module tied to it get the adapter; through ``modules_to_save`` none of them does (they are trained
    in full instead, as peft moves them out of the targets)."""
    if tying is None:
        return targets
    if tying.via == "modules_to_save":
        return [k for k in targets if k not in tying.keys]
    return list(dict.fromkeys([*targets, *tying.keys]))
