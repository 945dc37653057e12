"""``transformers.Trainer`` with peftkit models: ``save_model`` and checkpoints write just the adapter.

Trainer decides how to save by ``isinstance(model, (PreTrainedModel, peft.PeftModel))``; any other
model, a peftkit :class:`~peftkit.model.PeftModel` included, is written as its whole state dict
(``model.safetensors``: the frozen base weights too), and a checkpoint that holds only an adapter
cannot be resumed from or reloaded as the best model. No public hook changes either: a
``TrainerCallback`` runs after the files are written and takes no part in loading. So
:class:`AdapterTrainerMixin` overrides the three methods where Trainer makes those decisions
(``_save``, ``_load_from_checkpoint``, ``_load_best_model``), acts only for peftkit models, and
hands everything else to Trainer unchanged. They are private names: the mixin checks at
construction that Trainer still has them with the arguments it expects, and fails loudly if not.

Trainer refuses a quantized model unless it recognises adapters on it (a ``peft.PeftModel``, or
``_hf_peft_config_loaded``); the mixin sets that flag on a peftkit model, so QLoRA trains too.

With ``label_smoothing_factor``, Trainer shifts the labels only for models whose class name (or
that of ``peft``'s base model) is a causal LM's; a peftkit model is named ``PeftModel``, so a
causal LM's smoothed loss would score every token against the wrong label. The mixin tells the
label smoother to shift for a peftkit model over a causal LM.

Without the mixin, a plain ``Trainer`` still trains a peftkit model; call
``model.save_pretrained(dir)`` yourself for the adapter (its checkpoints then hold the full model,
which Trainer resumes from as usual).

Example:
    >>> from peftkit.integrations.transformers import AdapterTrainer
    >>> trainer = AdapterTrainer(model=peft_model, args=args, train_dataset=ds)  # doctest: +SKIP
    >>> trainer.train(); trainer.save_model("out")  # out/adapter_config.json + adapter_model.safetensors  # doctest: +SKIP
"""

from __future__ import annotations

import inspect
import os
from typing import Any, Optional

import torch
import transformers
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

from .. import checkpoint
from ..errors import CheckpointError
from ..model import PeftModel

TRAINING_ARGS_NAME = "training_args.bin"  # Trainer's name for its saved TrainingArguments
# Trainer methods overridden below, with the parameters each override relies on.
HOOKS: dict[str, tuple[str, ...]] = {
    "_save": ("output_dir", "state_dict"),
    "_load_from_checkpoint": ("resume_from_checkpoint", "model"),
    "_load_best_model": (),
}


def check_trainer_hooks(trainer_cls: type) -> None:
    """Raise if Trainer no longer has the methods :class:`AdapterTrainerMixin` overrides, or if the
    mixin comes after Trainer in ``trainer_cls``'s bases (its overrides would never run)."""
    mro = trainer_cls.__mro__
    if AdapterTrainerMixin in mro and transformers.Trainer in mro and mro.index(AdapterTrainerMixin) > mro.index(transformers.Trainer):
        raise TypeError(f"{trainer_cls.__name__}: list AdapterTrainerMixin before the Trainer class in its bases")
    for name, wanted in HOOKS.items():
        method = getattr(transformers.Trainer, name, None)
        if not callable(method) or not set(wanted) <= set(inspect.signature(method).parameters):
            raise RuntimeError(
                f"transformers {transformers.__version__}: Trainer.{name}({', '.join(wanted)}) is gone or changed, so "
                "peftkit's AdapterTrainer cannot save or load adapters reliably. Use transformers.Trainer and call "
                "model.save_pretrained(dir) after training, or install a transformers version peftkit supports."
            )


class AdapterTrainerMixin:
    """Mix into ``transformers.Trainer`` or a subclass of it (``class MyTrainer(AdapterTrainerMixin,
    SFTTrainer)``) so that a peftkit model is saved as its adapter(s), in ``peft``'s format, and
    resumed / reloaded from such checkpoints. Other models are left to Trainer."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        check_trainer_hooks(type(self))
        model = kwargs.get("model", args[0] if args else None)
        if isinstance(model, PeftModel):
            # transformers refuses to train a quantized model "without adapters" unless the model says
            # it has some (``_hf_peft_config_loaded``: its flag for attached adapters) or is a peft.PeftModel
            model._hf_peft_config_loaded = True
        super().__init__(*args, **kwargs)
        model = self._peftkit_model()
        if getattr(self, "label_smoother", None) is not None and model is not None and is_causal_lm(model):
            self.label_smoother = ShiftedLabelSmoother(self.label_smoother)

    def _peftkit_model(self, model: Optional[torch.nn.Module] = None) -> Optional[PeftModel]:
        """The peftkit model inside ``model`` (default: the trainer's), unwrapped from DDP or
        torch.compile; None for any other model."""
        found = self.accelerator.unwrap_model(self.model if model is None else model, keep_torch_compile=False)
        return found if isinstance(found, PeftModel) else None

    def _save(self, output_dir: Optional[str] = None, state_dict: Optional[dict] = None) -> None:
        model = self._peftkit_model()
        if model is None:
            return super()._save(output_dir, state_dict)
        output_dir = self.args.output_dir if output_dir is None else output_dir
        # state_dict: what DeepSpeed / FSDP gathered for save_model, keyed by the model's parameter names
        model.save_pretrained(output_dir, state_dict=state_dict, is_main_process=self.args.should_save)
        if not self.args.should_save:
            return
        tokenizer = self.processing_class
        if tokenizer is None:
            tokenizer = getattr(self.data_collator, "tokenizer", None)
        if tokenizer is not None:  # as Trainer does for any model
            tokenizer.save_pretrained(output_dir)
        torch.save(self.args, os.path.join(output_dir, TRAINING_ARGS_NAME))

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: Optional[torch.nn.Module] = None) -> None:
        peft_model = self._peftkit_model(model)
        if peft_model is None or self._sharded() or not holds_adapter(resume_from_checkpoint):
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        load_into_adapters(peft_model, resume_from_checkpoint)

    def _load_best_model(self) -> None:
        peft_model, best = self._peftkit_model(), self.state.best_model_checkpoint
        if peft_model is None or self._sharded() or not holds_adapter(best):
            return super()._load_best_model()
        load_into_adapters(peft_model, best)

    def _sharded(self) -> bool:
        # DeepSpeed and FSDP keep their own sharded model files in checkpoints: Trainer loads those
        return bool(self.is_deepspeed_enabled or self.is_fsdp_enabled)


def is_causal_lm(model: PeftModel) -> bool:
    """Whether the base model is one Trainer treats as a causal LM (by class name, as Trainer does)."""
    return model.get_base_model()._get_name() in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values()


class ShiftedLabelSmoother:
    """Trainer's label smoother, always shifting labels by one (next-token prediction)."""

    def __init__(self, smoother: Any) -> None:
        self.smoother = smoother

    def __call__(self, outputs: Any, labels: torch.Tensor, shift_labels: bool = False, **kwargs: Any) -> torch.Tensor:
        return self.smoother(outputs, labels, shift_labels=True, **kwargs)


class AdapterTrainer(AdapterTrainerMixin, transformers.Trainer):
    """``transformers.Trainer`` that saves, resumes and reloads a peftkit model's adapter(s) only."""


def holds_adapter(folder: str) -> bool:
    """Whether ``folder`` holds an adapter written by ``save_pretrained`` (itself or in a sub-folder)."""
    if os.path.isfile(os.path.join(folder, checkpoint.WEIGHTS_NAME)):
        return True
    return any(os.path.isfile(os.path.join(folder, d, checkpoint.WEIGHTS_NAME)) for d in _subfolders(folder))


def _subfolders(folder: str) -> list[str]:
    return [d for d in os.listdir(folder) if os.path.isdir(os.path.join(folder, d))] if os.path.isdir(folder) else []


def load_into_adapters(model: PeftModel, folder: str) -> None:
    """Put the adapter weights saved in ``folder`` (``"default"`` in the folder itself, every other
    adapter in a sub-folder of its name) into the model's adapters of the same names, which keep
    training. The checkpoint must hold exactly this model's adapters, and each adapter's tensors
    are checked (names, shapes) before any of them is copied.

    Example:
        >>> load_into_adapters(peft_model, "out/checkpoint-200")  # doctest: +SKIP
    """
    saved = {d for d in _subfolders(folder) if os.path.isfile(os.path.join(folder, d, checkpoint.WEIGHTS_NAME))}
    if os.path.isfile(os.path.join(folder, checkpoint.WEIGHTS_NAME)):
        saved.add("default")
    missing, unknown = sorted(set(model.peft_config) - saved), sorted(saved - set(model.peft_config))
    if missing or unknown:
        raise CheckpointError(
            f"{folder}: the checkpoint's adapters {sorted(saved)} are not this model's {sorted(model.peft_config)} "
            f"(missing: {missing}, unknown: {unknown}); resume with the model the checkpoint was written from"
        )
    weights = {}
    for name in model.peft_config:
        weights[name] = checkpoint.load_adapter_weights(folder, subfolder=None if name == "default" else name)
    for name, (tensors, path) in weights.items():
        checkpoint.set_peft_model_state_dict(model, tensors, adapter_name=name, source=path)
