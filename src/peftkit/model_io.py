"""Saving and loading adapters: the part of :class:`~peftkit.model.PeftModel` that talks to disk
(``adapter_config.json`` + ``adapter_model.safetensors``, see :mod:`peftkit.checkpoint`)."""

from __future__ import annotations

import os
import sys
import warnings
from typing import TYPE_CHECKING, Any, Optional, Union

import torch
import torch.nn as nn

from . import checkpoint
from .config import CONFIG_NAME, PeftConfig
from .errors import AdapterError, CheckpointError, TargetError
from .hub import README_NAME
from .names import check_adapter_name, child_path
from .staging import staged_folder
from .targets import find_targets

MAX_CARD_BYTES = 10 * 2**20  # a README.md already in the save folder is read up to this size
from .untrusted import allocation_limit, decode_utf8, read_bytes

if TYPE_CHECKING:
    from .model import PeftModel


class SaveLoadMixin:
    """``save_pretrained``, ``from_pretrained`` and ``load_adapter`` for PeftModel.

    Example:
        >>> model.save_pretrained("out")                                     # doctest: +SKIP
        >>> again = PeftModel.from_pretrained(fresh_base, "out")             # doctest: +SKIP
    """

    def save_pretrained(
        self,
        save_directory: str | os.PathLike,
        safe_serialization: bool = True,
        selected_adapters: Optional[list[str]] = None,
        is_main_process: bool = True,
        save_embedding_layers: Union[bool, str] = False,
        path_initial_model_for_weight_conversion: Optional[str | os.PathLike] = None,
        state_dict: Optional[dict[str, torch.Tensor]] = None,
        **_: Any,
    ) -> None:
        """Write each adapter as ``adapter_config.json`` + ``adapter_model.safetensors``: the
        ``"default"`` adapter in ``save_directory``, others in ``save_directory/<name>/``.
        ``save_embedding_layers=True`` also writes the embedding tables (after a vocabulary resize);
        ``"auto"`` decides as peft does (an adapted ``embed_tokens``/``lm_head``, or a resized vocabulary).
        ``state_dict`` (e.g. gathered by DeepSpeed, keyed by this model's parameter names) supplies
        the values to write.

        ``path_initial_model_for_weight_conversion``: the folder of a PiSSA/OLoRA adapter saved
        right after ``get_peft_model()`` (before training). The adapter is then written as a plain
        LoRA adapter of twice the rank that applies to the ORIGINAL base weights (as ``peft``
        does); the model in memory and the initial folder are left as they are.

        Example:
            >>> model.save_pretrained("pissa_init")                                   # doctest: +SKIP
            >>> ...  # train
            >>> model.save_pretrained("lora", path_initial_model_for_weight_conversion="pissa_init")  # doctest: +SKIP
        """
        if not safe_serialization:
            raise CheckpointError("peftkit writes safetensors only (pickle files can run code); drop safe_serialization=False")
        names = list(self.peft_config) if selected_adapters is None else self._check_names(selected_adapters, field="selected_adapters")
        if not is_main_process:
            return
        if os.path.isfile(save_directory):
            raise CheckpointError(f"save_directory {str(save_directory)!r} is a file; pass a folder to write the adapter into")
        for name in names:  # a name the checks at add_adapter() let through must still not leave the folder
            if name != "default":
                child_path(save_directory, check_adapter_name(name), what=f"the folder of adapter {name!r}")
        initial = None if path_initial_model_for_weight_conversion is None else _initial_adapter(path_initial_model_for_weight_conversion)
        if state_dict is None and _state_dict_overridden(self):
            state_dict = self.state_dict()  # peft saves what model.state_dict() returns: honour an override
        outputs = []  # everything is computed (and checked) before the first file is written
        for name in names:
            tensors = checkpoint.get_peft_model_state_dict(
                self, state_dict=state_dict, adapter_name=name, save_embedding_layers=save_embedding_layers
            )
            config = self.peft_config[name].model_copy(deep=True)
            if initial is not None:
                config, tensors = _converted(config, tensors, *initial, name)
            config.inference_mode = True  # a saved adapter loads for inference unless asked otherwise
            outputs.append(("" if name == "default" else name, config, tensors))
        with staged_folder(save_directory) as stage:  # moved in only when every adapter is written
            for folder, config, tensors in outputs:
                checkpoint.save_adapter_weights(tensors, os.path.join(stage, folder))
                config.save_pretrained(os.path.join(stage, folder), auto_mapping_dict=self._auto_mapping(config))
            existing = os.path.join(save_directory, README_NAME)  # a card already there keeps its text
            text = decode_utf8(read_bytes(existing, MAX_CARD_BYTES), existing) if os.path.isfile(existing) else None
            card = self._model_card(existing=text)
            with open(os.path.join(stage, README_NAME), "w", encoding="utf-8") as f:
                f.write(card)

    def _model_card(self, tags: Optional[list[str]] = None, existing: Optional[str] = None) -> str:
        """The ``README.md`` written beside the adapter, as peft writes one (huggingface_hub's
        template, or ``existing`` with its text kept): ``library_name: peft``, the base model (its
        ``config._name_or_path``; none for a model without a config), the method as a tag (the Hub
        shows LoRA adapters' inference widgets for the ``lora`` tag), ``text-generation`` for a
        causal LM."""
        from .hub import model_card

        model_config = getattr(self.get_base_model(), "config", None)
        base = model_config.to_dict().get("_name_or_path") if hasattr(model_config, "to_dict") else None
        methods = dict.fromkeys(str(c.peft_type).lower() for c in self.peft_config.values())
        transformers = sys.modules.get("transformers")
        if transformers is not None and isinstance(self.get_base_model(), transformers.PreTrainedModel):
            methods = {"transformers": None, **methods}
        pipeline = "text-generation" if type(self).__name__ == "PeftModelForCausalLM" else None
        return model_card(base or None, [*(tags or []), *methods], existing=existing, pipeline_tag=pipeline)

    def push_to_hub(
        self,
        repo_id: str,
        *,
        commit_message: Optional[str] = None,
        commit_description: Optional[str] = None,
        private: Optional[bool] = None,
        token: bool | str | None = None,
        revision: Optional[str] = None,
        create_pr: bool = False,
        max_shard_size: int | str | None = "50GB",
        tags: Optional[list[str]] = None,
    ) -> str:
        """Upload the adapter(s), as ``save_pretrained`` writes them, to the Hub repository ``repo_id``
        (created if needed) in one commit; returns the commit URL. Same arguments as ``peft``'s
        (transformers' ``PushToHubMixin.push_to_hub``); adapters are never sharded.

        Example:
            >>> model.push_to_hub("me/smollm2-contact-lora", private=True)   # doctest: +SKIP
        """
        from .hub import push_folder

        card = self._model_card(tags)
        return push_folder(
            self.save_pretrained, repo_id, card=card, commit_message=commit_message or "Upload adapter",
            commit_description=commit_description, private=private, token=token, revision=revision, create_pr=create_pr,
        )

    def _auto_mapping(self, config: PeftConfig) -> Optional[dict[str, str]]:
        """What ``AutoPeftModel`` needs to rebuild the base model of an adapter without a task type."""
        if config.task_type is not None:
            return None
        base = type(self.get_base_model())
        return {"base_model_class": base.__name__, "parent_library": base.__module__}

    @classmethod
    def from_pretrained(
        cls,
        model: nn.Module,
        model_id: str | os.PathLike,
        adapter_name: str = "default",
        is_trainable: bool = False,
        config: Optional[PeftConfig] = None,
        subfolder: Optional[str] = None,
        revision: Optional[str] = None,
        **kwargs: Any,
    ) -> "PeftModel":
        """Load a saved adapter (peftkit's or ``peft``'s) onto ``model``. If the adapter does not fit,
        the error names the first mismatching module and ``model`` is left as it was.
        ``autocast_adapter_dtype=False`` keeps the adapter in the dtype of the layers it adapts
        (by default adapters on float16/bfloat16 layers are float32, as in peft). ``key_mapping``
        (``{regex: replacement}``) renames the file's keys first; by default a transformers model's
        ``_checkpoint_conversion_mapping`` does, so adapters saved on an older layout still load.

        Example:
            >>> model = PeftModel.from_pretrained(base, "out/adapter", is_trainable=True)  # doctest: +SKIP
        """
        check_adapter_name(adapter_name)
        config = config or PeftConfig.from_pretrained(model_id, subfolder=subfolder, revision=revision)
        config.inference_mode = not is_trainable
        path = checkpoint.adapter_weights_path(model_id, subfolder=subfolder, revision=revision)
        peft_model = cls._class_for_task(config.task_type)(model, None)  # PeftModelForCausalLM etc., as in peft
        saved_grad = [(p, p.requires_grad) for p in model.parameters()]
        try:
            peft_model._load(adapter_name, config, path, kwargs.get("key_mapping"))
        except BaseException:
            for p, flag in saved_grad:  # the model goes back exactly as it came
                p.requires_grad_(flag)
            raise
        peft_model.set_adapter(adapter_name)
        if not kwargs.get("autocast_adapter_dtype", True):  # keep the adapter in its layers' dtype (as peft)
            peft_model._cast_adapter_to_base_dtype(adapter_name)
        return peft_model

    def load_adapter(
        self,
        model_id: str | os.PathLike,
        adapter_name: str,
        is_trainable: bool = False,
        subfolder: Optional[str] = None,
        revision: Optional[str] = None,
        **kwargs: Any,
    ) -> checkpoint.LoadResult:
        """Load another saved adapter beside the existing ones (it is not made active).
        ``autocast_adapter_dtype=False`` keeps it in the dtype of the layers it adapts (as peft).

        Example:
            >>> model.load_adapter("out/other", adapter_name="other")  # doctest: +SKIP
        """
        check_adapter_name(adapter_name)
        if adapter_name in self.peft_config:
            raise AdapterError(f"Adapter with name '{adapter_name}' already exists. Pick another name, or delete_adapter() it first")
        config = PeftConfig.from_pretrained(model_id, subfolder=subfolder, revision=revision)
        config.inference_mode = not is_trainable
        path = checkpoint.adapter_weights_path(model_id, subfolder=subfolder, revision=revision)
        result = self._load(adapter_name, config, path, kwargs.get("key_mapping"))
        if not kwargs.get("autocast_adapter_dtype", True):  # keep the adapter in its layers' dtype (as peft)
            self._cast_adapter_to_base_dtype(adapter_name)
        return result

    def _load(self, adapter_name: str, config: PeftConfig, path: str,
              key_mapping: Optional[dict[str, str]] = None) -> checkpoint.LoadResult:
        """Build the adapter and fill it from the file at ``path``, checking before any work: the
        file's header first (no tensor read), the layers built under a size limit (the file's
        tensors plus the base model's: a config claiming a huge rank fails before allocating), the
        header's shapes against the layers, and only then the tensor data."""
        # transformers models whose layout changed map old keys to new ones; adapters follow the same
        # rules (peft: for methods that wrap layers, whose keys start with base_model.model.)
        if key_mapping is None and checkpoint.key_prefix(config) == checkpoint.PREFIX:
            key_mapping = getattr(self.get_base_model(), "_checkpoint_conversion_mapping", None)
        header = checkpoint.remap_keys(checkpoint.adapter_file_header(path), key_mapping)
        limit = sum(t.numel for t in header.values()) + sum(p.numel() for p in self.parameters())
        _warn_if_base_changing_with_others(self, config)
        # PiSSA/OLoRA re-run (their adapter was saved for the residual base they leave); a failed
        # load puts the base weights they rewrote back. Other initialisations are skipped.
        originals = _target_weights(self, config) if config.base_changing_init() else []
        try:
            with allocation_limit(limit, f"{path}: adapter {adapter_name!r}"):
                self._inject(adapter_name, config, config.for_loading(), keep_config=True)
            try:
                checkpoint.check_fits_file(self, header, adapter_name, path)
                weights = checkpoint.remap_keys(checkpoint.read_adapter_file(path), key_mapping)
                result = checkpoint.set_peft_model_state_dict(self, weights, adapter_name=adapter_name, source=path)
            except BaseException:
                self.delete_adapter(adapter_name)
                raise
        except BaseException:
            for module, values in originals:
                module.load_state_dict(values)
            raise
        if config.inference_mode:
            self.eval()  # an adapter loaded for inference runs without dropout, as in peft
        return result


def _warn_if_base_changing_with_others(model: "PeftModel", config: PeftConfig) -> None:
    """peft's warning (its tests match it) when an adapter whose loading rewrites the base weights
    (PiSSA, OLoRA) shares a model with other adapters: each of them was trained on another base."""
    if not model.peft_config:
        return
    changing = [c.base_changing_init() for c in (config, *model.peft_config.values())]
    name = next((n for n in changing if n), None)
    if name:
        warnings.warn(
            f"{name} changes the base weights of the model and should thus not be used with other adapters. "
            "Consider converting the adapter into a plain LoRA adapter, which works on the original base: "
            "save_pretrained(..., path_initial_model_for_weight_conversion=<the adapter saved right after "
            "get_peft_model()>)",
            stacklevel=3,
        )


def _target_weights(model: "PeftModel", config: PeftConfig) -> list[tuple[nn.Module, dict[str, torch.Tensor]]]:
    """Copies of the weights of the modules ``config`` targets (to undo an initialisation that
    rewrites them); empty when it targets none, which the injection then reports."""
    base = model.get_base_model()
    try:
        keys = find_targets(base, config)
    except TargetError:
        return []
    modules = [base.get_submodule(key) for key in keys]
    return [(m, {k: v.detach().clone() for k, v in m.state_dict().items()}) for m in modules]


def _initial_adapter(path: str | os.PathLike) -> tuple[PeftConfig, dict[str, torch.Tensor], str]:
    """The adapter saved right after PiSSA/OLoRA initialisation: ``(config, tensors, path)``."""
    folder = str(path)
    if not os.path.isfile(os.path.join(folder, checkpoint.WEIGHTS_NAME)) or not os.path.isfile(os.path.join(folder, CONFIG_NAME)):
        raise CheckpointError(
            f"path_initial_model_for_weight_conversion={folder!r} holds no saved adapter ({CONFIG_NAME} and "
            f"{checkpoint.WEIGHTS_NAME}); save the adapter there with save_pretrained() right after get_peft_model(), "
            "before training"
        )
    config = PeftConfig.from_pretrained(folder)
    weights, _ = checkpoint.load_adapter_weights(folder)
    return config, weights, folder


def _converted(
    config: PeftConfig, tensors: dict, initial_config: PeftConfig, initial: dict, folder: str, name: str
) -> tuple[PeftConfig, dict]:
    convert = getattr(config, "converted_from_mutated_init", None)
    if convert is None:  # only methods whose init modifies the base weights define it (LoRA: PiSSA/OLoRA)
        raise CheckpointError(
            f"adapter {name!r}: path_initial_model_for_weight_conversion applies to LoRA adapters initialised "
            f"with PiSSA or OLoRA, not to {config.peft_type} adapters; save without it"
        )
    return convert(tensors, initial_config, initial, f"adapter {name!r} (initial adapter {folder!r})")


def _state_dict_overridden(model: nn.Module) -> bool:
    """Whether ``model.state_dict`` is not ``nn.Module``'s: set on the instance or overridden by a
    subclass. ``peft`` always saves from ``model.state_dict()``; peftkit reads the adapter layers
    (cheaper, and no quantization hooks run) unless the caller replaced that method.

    Example:
        >>> model.state_dict = lambda: filtered  # doctest: +SKIP
        >>> _state_dict_overridden(model)  # doctest: +SKIP
        True
    """
    return "state_dict" in vars(model) or type(model).state_dict is not nn.Module.state_dict
