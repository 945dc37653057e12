"""TRL's trainers (SFT, DPO, GRPO, RLOO) on peftkit models.

Why TRL does not recognise a peftkit model on its own: every TRL trainer asks accelerate's
``is_peft_model(model)``, which is ``isinstance(model, peft.PeftModel)`` (and always False when
``peft`` is not installed), imported by name into each trainer module. For any other model TRL
takes its full fine-tuning path: it patches the fused LM head onto the outer model (whose output
then has no ``last_hidden_state``), loads a second full copy of the base model from disk as DPO's
and GRPO's reference, and refuses a ``peft_config`` that is not ``peft``'s. TRL has no hook for
"this is an adapter model", so this module gives each trainer module an ``is_peft_model`` that
also accepts peftkit models (unchanged for every other model), and a ``use_adapter`` that switches
peftkit adapters the way TRL's switches peft's. TRL then takes its PEFT path: the fused head goes
on the base model, the reference is the same model with its adapter disabled (no second copy), and
an adapter on the LM head is refused (see :mod:`peftkit.integrations.peft`).

Without ``peft`` installed, the names TRL's PEFT path reads from ``peft`` are bound to stand-ins:
peftkit's ``AdapterLayer`` for ``BaseTunerLayer``, and for peft's config and model classes a class
nothing is an instance of (those checks are about peft's own objects).

The trainer classes here (``SFTTrainer``, ``DPOTrainer``, ``GRPOTrainer``, ``RLOOTrainer``) are
TRL's, plus two things: ``peft_config=`` takes a peftkit config (the model is wrapped with
:func:`peftkit.get_peft_model` first, as TRL does with peft's), and ``save_model`` / checkpoints
write the adapter in peft's format (:class:`~peftkit.integrations.transformers.AdapterTrainerMixin`).
Importing this module is all it takes for TRL's own classes to recognise peftkit models too.

Example:
    >>> from peftkit.integrations.trl import DPOTrainer
    >>> trainer = DPOTrainer(model=base, args=DPOConfig(...), train_dataset=pairs, processing_class=tok,
    ...                      peft_config=pk.LoraConfig(r=16, target_modules="all-linear"))  # doctest: +SKIP
    >>> trainer.train(); trainer.save_model("out")    # out/adapter_config.json + adapter_model.safetensors  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import types
from typing import Any, Iterator, Optional

import trl
from accelerate.utils import extract_model_from_parallel
from trl.trainer import base_trainer, dpo_trainer, grpo_trainer, rloo_trainer, sft_trainer

from ..config import PeftConfig
from ..layers import AdapterLayer
from ..model import PeftModel, get_peft_model
from .peft import register_adapter_layers
from .transformers import AdapterTrainerMixin

# The TRL modules whose PEFT code paths are opened to peftkit models (each imports is_peft_model by name).
TRL_MODULES: tuple[types.ModuleType, ...] = (base_trainer, sft_trainer, dpo_trainer, grpo_trainer, rloo_trainer)
# Names TRL's PEFT code paths read from peft (imported only when peft is installed).
PEFT_CLASS_NAMES = ("LoraConfig", "PeftConfig", "PeftModel", "PrefixTuningConfig")


def is_peftkit_model(model: Any) -> bool:
    """Whether ``model`` (possibly inside DDP / torch.compile) is a peftkit model."""
    return isinstance(extract_model_from_parallel(model), PeftModel)


class NotInstalledPeftClass:
    """Stands in for a peft class that TRL names when peft is not installed: nothing is an instance."""


def _not_installed_get_peft_model(*args: Any, **kwargs: Any) -> None:
    raise ImportError("peft is not installed; pass a peftkit config (e.g. peftkit.LoraConfig) as peft_config")


def open_trl_to_peftkit() -> None:
    """Make TRL's trainer modules treat peftkit models as PEFT models (idempotent; done on import).

    Raises ``RuntimeError`` when this TRL no longer has the names this relies on, instead of
    training a peftkit model down the wrong path."""
    peft_present = register_adapter_layers()
    for module in TRL_MODULES:
        original = getattr(module, "is_peft_model", None)
        if not callable(original):
            raise RuntimeError(
                f"trl {trl.__version__}: {module.__name__}.is_peft_model is gone, so peftkit cannot make TRL recognise "
                "its models; install a TRL version peftkit supports (see pyproject's trl extra)"
            )
        if not getattr(original, "peftkit", False):
            module.is_peft_model = _recognising(original)
        if hasattr(module, "use_adapter") and not getattr(module.use_adapter, "peftkit", False):
            module.use_adapter = _switching(module.use_adapter)
        if not peft_present:
            _bind_stand_ins(module)


def _recognising(original: Any) -> Any:
    def is_peft_model(model: Any) -> bool:
        return is_peftkit_model(model) or original(model)

    is_peft_model.peftkit = True  # type: ignore[attr-defined]
    is_peft_model.__doc__ = "accelerate's is_peft_model, also true for peftkit models (peftkit.integrations.trl)"
    return is_peft_model


def _switching(original: Any) -> Any:
    @contextlib.contextmanager
    def use_adapter(model: Any, adapter_name: Optional[str]) -> Iterator[None]:
        """TRL's ``use_adapter`` (``None``: adapters disabled), for peftkit models without needing peft."""
        if not isinstance(model, PeftModel):
            with original(model, adapter_name):
                yield
            return
        if adapter_name is None:
            with model.disable_adapter():
                yield
            return
        previous = model.active_adapters
        model.set_adapter(adapter_name)
        try:
            yield
        finally:
            model.set_adapter(previous)

    use_adapter.peftkit = True  # type: ignore[attr-defined]
    return use_adapter


def _bind_stand_ins(module: types.ModuleType) -> None:
    module.__dict__.setdefault("BaseTunerLayer", AdapterLayer)
    module.__dict__.setdefault("get_peft_model", _not_installed_get_peft_model)
    for name in PEFT_CLASS_NAMES:
        module.__dict__.setdefault(name, NotInstalledPeftClass)


class PeftkitTrainerMixin(AdapterTrainerMixin):
    """Mixed into a TRL trainer: ``peft_config`` may be a peftkit config, and the adapter is what
    ``save_model`` and checkpoints write (in peft's format)."""

    def __init__(self, *args: Any, peft_config: Any = None, **kwargs: Any) -> None:
        created = isinstance(peft_config, PeftConfig)
        if created:
            args, kwargs = _with_model(args, kwargs, lambda model: get_peft_model(_loaded(model, kwargs), peft_config))
            peft_config = None
        super().__init__(*args, peft_config=peft_config, **kwargs)
        model = self._peftkit_model()
        if created and model is not None and "ref" in model.peft_config:
            # TRL copies an adapter it was handed into a frozen "ref" adapter, as the reference may
            # differ from the base model. One made here from peft_config starts as the base model, so
            # (as TRL's own peft_config path does) the reference is the adapter disabled.
            model.delete_adapter("ref")


def _with_model(args: tuple, kwargs: dict, wrap: Any) -> tuple[tuple, dict]:
    """``args`` / ``kwargs`` with the ``model`` argument (first positional or keyword) replaced."""
    if "model" in kwargs:
        return args, {**kwargs, "model": wrap(kwargs["model"])}
    if not args:
        raise TypeError("the trainer needs a model")
    return (wrap(args[0]), *args[1:]), kwargs


def _loaded(model: Any, kwargs: dict) -> Any:
    """A model given by name (a hub id, local path or peftkit bundled name) loaded as TRL would, with
    ``args.model_init_kwargs``, so that the peftkit adapter can be added before TRL sees it."""
    if not isinstance(model, str):
        return model
    from ..models import load_model

    init_kwargs = dict(getattr(kwargs.get("args"), "model_init_kwargs", None) or {})
    return load_model(model, **init_kwargs)


class SFTTrainer(PeftkitTrainerMixin, trl.SFTTrainer):
    """``trl.SFTTrainer`` taking peftkit models and configs; saves the adapter in peft's format."""


class DPOTrainer(PeftkitTrainerMixin, trl.DPOTrainer):
    """``trl.DPOTrainer`` taking peftkit models and configs; with ``ref_model=None`` the reference
    is the same model with its adapter disabled."""


class GRPOTrainer(PeftkitTrainerMixin, trl.GRPOTrainer):
    """``trl.GRPOTrainer`` taking peftkit models and configs; the KL reference (``beta > 0``) is the
    same model with its adapter disabled."""


class RLOOTrainer(PeftkitTrainerMixin, trl.RLOOTrainer):
    """``trl.RLOOTrainer`` taking peftkit models and configs; the KL reference is the same model
    with its adapter disabled."""


open_trl_to_peftkit()

__all__ = ["DPOTrainer", "GRPOTrainer", "PeftkitTrainerMixin", "RLOOTrainer", "SFTTrainer", "is_peftkit_model", "open_trl_to_peftkit"]
