"""``PeftModel``: the one wrapper around a user's model, with ``peft``'s API.

The user's model lives at ``peft_model.base_model.model`` (so parameter names match ``peft``'s:
``base_model.model.<path>.lora_A.<adapter>.weight``); ``base_model`` is a plain holder with no
behaviour of its own. Adapter layers are injected into the user's model in place (see
:mod:`peftkit.layers`); this class only orchestrates them: add, select, disable, delete, merge,
save and load adapters, and route mixed batches.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import types
import warnings
import weakref
from typing import TYPE_CHECKING, Any, Iterator, Optional, Union

import torch.nn as nn

from . import checkpoint
from .config import PeftConfig
from .errors import AdapterError
from .layers import BASE_ADAPTER, AdapterLayer, _ForwardsToBase
from .modules_to_save import ModulesToSaveWrapper
from .merge import MergeMixin
from .model_adapters import AdapterManagementMixin
from .model_io import SaveLoadMixin
from .model_running import RunningMixin
from .names import adapter_name_list, short_repr
from .registry import MethodSpec, method_for_config
from .targets import iter_adapter_modules

if TYPE_CHECKING:
    from .status import TunerLayerStatus, TunerModelStatus


# What peft's tuner object (``peft_model.base_model``) offers that code calls on it: answered by
# the PeftModel that owns the holder, so there is one implementation and one notion of "active".
_TUNER_API = frozenset({
    "set_adapter", "active_adapter", "active_adapters", "peft_config", "prefix", "delete_adapter",
    "disable_adapter_layers", "enable_adapter_layers", "merge_adapter", "unmerge_adapter",
    "merge_and_unload", "unload", "add_weighted_adapter", "targeted_module_names", "targeted_parameter_names",
})


# What a model without a ``config`` attribute reports as its config (peft's DUMMY_MODEL_CONFIG).
DUMMY_MODEL_CONFIG: dict[str, Any] = {"model_type": "custom"}


class BaseModelHolder(_ForwardsToBase):
    """Holds the user's model as ``.model`` (``peft``'s ``base_model.model`` path): the object
    ``peft`` calls its tuner (``BaseTuner``). peft's tuner API (``base_model.set_adapter(...)``,
    ``base_model.prefix``...) is answered by the owning PeftModel; other attribute reads it lacks
    go to the model."""

    _wrapped_attr = "model"

    @staticmethod
    def get_model_config(model: nn.Module) -> dict[str, Any]:
        """``model.config`` as a plain dict (``peft``'s ``BaseTuner.get_model_config``): a
        transformers config through its ``to_dict()``, a dataclass through ``asdict``, a dict as
        it is; a model without ``config`` gets a new copy of :data:`DUMMY_MODEL_CONFIG`
        (``{"model_type": "custom"}``), so changing the result never changes the constant.

        Example:
            >>> BaseModelHolder.get_model_config(nn.Linear(2, 2))
            {'model_type': 'custom'}
        """
        config = getattr(model, "config", None)
        if config is None:
            return dict(DUMMY_MODEL_CONFIG)
        if hasattr(config, "to_dict"):
            return config.to_dict()
        if dataclasses.is_dataclass(config) and not isinstance(config, type):
            return dataclasses.asdict(config)
        return config

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


class PeftModel(AdapterManagementMixin, RunningMixin, MergeMixin, SaveLoadMixin, nn.Module):
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
        for module in self._adapter_layers():
            # through the layer protocol: the weight a layer adapts need not be ``base_layer.weight``
            # (attention's in_proj_weight, a parameter of an expert stack, a quantized weight)
            try:
                _, dtype, _ = module.base_weight_info()
            except AttributeError:
                continue
            if not dtype.is_floating_point:
                continue
            for _, p in module.adapter_parameters(adapter_name):
                p.data = p.data.to(dtype)

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
        """Paths (in the user's model) of the modules the adapters wrap, each once (peft's tuner
        attribute, also on ``base_model``): the first adapter's modules in model order, then the
        modules each later adapter added, in the order the adapters were added."""
        layers = [(key, module) for key, module in self._adapter_modules() if isinstance(module, AdapterLayer)]
        names: dict[str, None] = {}
        for adapter in [*self.peft_config, None]:  # None: any layer left (an adapter without a config)
            for key, module in layers:
                if key not in names and (adapter is None or adapter in module.adapter_names):
                    names[key] = None
        return list(names)

    @property
    def targeted_parameter_names(self) -> list[str]:
        """Paths (in the user's model) of the parameters the adapters wrap through
        ``target_parameters`` (LoRA on ``nn.Parameter``s such as MoE experts), each once, in model
        order (peft's tuner attribute, also on ``base_model``).

        Example:
            >>> get_peft_model(mlp, LoraConfig(target_parameters=["lin0.weight"])).targeted_parameter_names  # doctest: +SKIP
            ['lin0.weight']
        """
        per_module: dict[str, list[str]] = {}
        for _, module in self._adapter_modules():
            if isinstance(module, AdapterLayer) and getattr(module, "parameter_name", None):
                per_module.setdefault(module.key, []).append(f"{module.key}.{module.parameter_name}")
        # two parameters of one module nest their wrappers, the outer one met first: list them
        # innermost first, which is the module's own parameter order (and peft's)
        return list(dict.fromkeys(name for names in per_module.values() for name in reversed(names)))

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
            module.enable_adapters(False)  # their tensors stop training too, as in peft

    def enable_adapter_layers(self) -> None:
        """Undo :meth:`disable_adapter_layers`: the layers compute again and the active adapters train
        as :meth:`set_adapter` last decided."""
        for _, module in self._adapter_modules():
            module.enable_adapters(True)

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

    def get_layer_status(self) -> list["TunerLayerStatus"]:
        """Each adapter layer's state (enabled, active, merged, trainable, devices): see
        :func:`peftkit.status.get_layer_status`.

        Example:
            >>> [s.merged_adapters for s in model.get_layer_status()]  # doctest: +SKIP
            [[], []]
        """
        from .status import get_layer_status  # here: peftkit.status builds on this module

        return get_layer_status(self)

    def get_model_status(self) -> "TunerModelStatus":
        """The adapters' state over the whole model, ``"irregular"`` where layers disagree: see
        :func:`peftkit.status.get_model_status`.

        Example:
            >>> model.get_model_status().active_adapters  # doctest: +SKIP
            ['default']
        """
        from .status import get_model_status

        return get_model_status(self)

    def set_requires_grad(self, adapter_names: Union[str, list[str]], requires_grad: bool = True) -> None:
        """Switch gradients of the named adapters' tensors on or off everywhere (layers, saved modules,
        model-level tensors) without changing which adapters are active (peft's method); the next
        ``set_adapter`` makes trainability follow the active adapters again.

        Example:
            >>> model.set_requires_grad("other", requires_grad=True)  # train "other" too  # doctest: +SKIP
        """
        names = self._check_names(adapter_names)
        for _, module in self._adapter_modules():
            for name in names:
                for _, p in module.adapter_parameters(name):
                    p.requires_grad_(requires_grad)
        for name in names:
            for p in checkpoint.model_level_parameters(self, name):
                p.requires_grad_(requires_grad)

    # ------------------------------------------------------------------ selecting adapters
    def set_adapter(self, adapter_name: Union[str, list[str]], inference_mode: Optional[bool] = None) -> None:
        """Make one adapter (or several, summed) active; only active adapters train.

        ``inference_mode`` (peft's keyword): ``True`` keeps the activated adapters frozen, ``False``
        makes them train; left out, they train unless their configs are in inference mode (an adapter
        loaded without ``is_trainable=True`` stays frozen).

        Example:
            >>> model.set_adapter("other", inference_mode=True)  # use it, do not train it  # doctest: +SKIP
        """
        names = self._check_names(adapter_name)
        limit = self._method().max_active_adapters
        if limit is not None and len(names) > limit:
            raise AdapterError(f"{self._method().peft_type} allows {limit} active adapter(s) at a time, got {names}")
        self._active = names
        self._apply_trainability(None if inference_mode is None else not inference_mode)

    def _apply_trainability(self, trainable: Optional[bool] = None) -> None:
        if trainable is None:
            trainable = any(not self.peft_config[n].inference_mode for n in self._active)
        for _, module in self._adapter_modules():
            module.set_adapter(self._active, trainable=trainable)
            if module.disabled:  # a disabled layer keeps its tensors frozen until it is enabled again
                module.enable_adapters(False)
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
        # what was switched off before (an outer disable_adapter(), disable_adapter_layers(), one layer's
        # enable_adapters(False)) stays off: each layer gets its own state back on exit
        before = [(m, m.disabled) for m in modules]
        if len({disabled for _, disabled in before}) > 1:
            off = [key for key, m in self._adapter_modules() if m.disabled]
            warnings.warn(  # peft's sentence (code matches it), then what peftkit does about it
                "The model contains some adapter layers that are enabled and others that are disabled. This is "
                f"most likely unintentional. Disabled before the context: {off[:5]}{' ...' if len(off) > 5 else ''}; "
                "peftkit restores each layer's state when the context exits (call enable_adapter_layers() to "
                "enable them all)."
            )
        inputs_before = self._inputs_disabled
        for m, disabled in before:
            if not disabled:
                m.enable_adapters(False)
        self._inputs_disabled = True
        try:
            yield
        finally:
            self._inputs_disabled = inputs_before
            for m, disabled in before:
                if not disabled:
                    m.enable_adapters(True)

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
