"""Adapter checkpoints in the Hugging Face ``peft`` format.

A saved adapter is a folder with ``adapter_config.json`` and ``adapter_model.safetensors``. Tensor
keys are the module path inside the user's model, prefixed with ``base_model.model.`` and without
the adapter name: ``base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight``. A module
trained in full (``modules_to_save``) is saved under its own path. Weights are safetensors only:
peftkit never unpickles anything.
"""

from __future__ import annotations

import os
import warnings
import re
from typing import TYPE_CHECKING, Any, NamedTuple, Optional, Union

import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file

from .meta import assign_into_meta
from .config import PeftConfig
from .hub import resolve_file
from .errors import CheckpointError, CorruptFileError, PeftWarning
from .layers import AdapterLayer, layer_stack
from .modules_to_save import ModulesToSaveWrapper
from .targets import iter_adapter_modules, iter_plain_modules
from .untrusted import FLOAT_DTYPES, TensorInfo, read_safetensors_header
from .weight_tying import tied_adapter_tensors

if TYPE_CHECKING:
    from .model import PeftModel

WEIGHTS_NAME = "adapter_model.safetensors"
PICKLE_WEIGHTS_NAME = "adapter_model.bin"
PREFIX = "base_model.model."


class LoadResult(NamedTuple):
    """What ``set_peft_model_state_dict`` matched; both lists are empty after a successful load."""

    missing_keys: list[str]
    unexpected_keys: list[str]


def _bias_parameters(model: nn.Module, adapter_name: str, bias: str) -> dict[str, nn.Parameter]:
    """Base-model biases that train with the adapter (``bias="all"`` or ``"lora_only"``)."""
    if bias == "none":
        return {}
    found: dict[str, nn.Parameter] = {}
    for key, module in iter_plain_modules(model):
        if isinstance(module, ModulesToSaveWrapper):
            continue  # saved whole through the wrapper
        if isinstance(module, AdapterLayer):
            stack = layer_stack(module)
            if bias == "all" or any(adapter_name in layer.adapter_names for layer in stack):
                b = getattr(module.get_base_layer(), "bias", None)
                if isinstance(b, nn.Parameter):
                    found[f"{key}.base_layer.bias"] = b
            # adapter layers inside the base module (LoRA on nn.MultiheadAttention wraps its out_proj)
            base_path = key + ".base_layer" * len(stack)
            for sub_key, sub in module.get_base_layer().named_modules():
                if sub_key and isinstance(sub, AdapterLayer) and not isinstance(sub.base_layer, AdapterLayer):
                    b = getattr(sub.base_layer, "bias", None)
                    if isinstance(b, nn.Parameter) and (bias == "all" or adapter_name in sub.adapter_names):
                        found[f"{base_path}.{sub_key}.base_layer.bias"] = b
        elif bias == "all":
            b = module._parameters.get("bias")
            if isinstance(b, nn.Parameter):
                found[f"{key}.bias"] = b
    return found


def _is_bias(name: str) -> bool:
    return name == "bias" or name.endswith(".bias")


def peft_key_without_adapter(key: str, adapter_name: str) -> str:
    """``peft``'s rule for turning an in-model parameter path into a checkpoint key: the adapter name
    goes only where it is the last or second-to-last segment (``head.modules_to_save.default.bias``
    -> ``head.modules_to_save.bias``; a deeper ``head.modules_to_save.default.dense.bias`` keeps it).

    Example:
        >>> peft_key_without_adapter("classifier.modules_to_save.default.bias", "default")
        'classifier.modules_to_save.bias'
    """
    suffix = "." + adapter_name
    if key.endswith(suffix):
        return key[: -len(suffix)]
    head, dot, last = key.rpartition(".")
    return f"{head.removesuffix(suffix)}{dot}{last}"


def _saved_module_biases(model: nn.Module, adapter_name: str) -> dict[str, tuple[str, nn.Parameter]]:
    """With ``bias="all"``, ``peft`` saves every bias of the model by its path, so a module trained in
    full (``modules_to_save``) contributes two more keys besides ``<path>.bias``: its frozen
    original's ``<path>.original_module.bias`` and the adapter's copy again as
    ``<path>.modules_to_save.bias``. They are written the same way here; on loading they are
    optional (the copy's value comes from ``<path>.bias``; the original's is restored)."""
    found: dict[str, tuple[str, nn.Parameter]] = {}
    for key, module in iter_plain_modules(model):
        if not isinstance(module, ModulesToSaveWrapper):
            continue
        for sub, p in module.original_module.named_parameters():
            if _is_bias(sub):
                found[f"{key}.original_module.{sub}"] = (key, p)
        if adapter_name in module.modules_to_save:
            for sub, p in module.modules_to_save[adapter_name].named_parameters():
                if _is_bias(sub):
                    found[peft_key_without_adapter(f"{key}.modules_to_save.{adapter_name}.{sub}", adapter_name)] = (key, p)
    return found


def _optional_entries(model: nn.Module, adapter_name: str, config: PeftConfig) -> dict[str, tuple[str, nn.Parameter]]:
    """Checkpoint key -> (module path, live parameter) for tensors that are saved as ``peft`` saves them
    but may be absent from a checkpoint (earlier peftkit versions did not write them). Accepted
    whatever this model's ``bias`` says: the file's writer decides what it trained (peft loads them
    into a model made with the default ``bias="none"`` too)."""
    prefix = key_prefix(config)
    return {prefix + k: v for k, v in _saved_module_biases(model, adapter_name).items()}


def adapter_tensors(model: nn.Module, adapter_name: str, config: PeftConfig) -> dict[str, nn.Parameter]:
    """Checkpoint key -> live parameter for one adapter of a model (the user's model, adapted).

    Example:
        >>> list(adapter_tensors(peft_model.get_base_model(), "default", cfg))[:1]  # doctest: +SKIP
        ['base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight']
    """
    return {key: p for key, (_, p) in _adapter_entries(model, adapter_name, config).items()}


def _adapter_entries(model: nn.Module, adapter_name: str, config: PeftConfig) -> dict[str, tuple[str, nn.Parameter]]:
    """Checkpoint key -> (module path, live parameter)."""
    prefix = key_prefix(config)
    entries: dict[str, tuple[str, nn.Parameter]] = {}
    for key, module in iter_adapter_modules(model):
        for sub, p in module.adapter_parameters(adapter_name):
            entries[f"{prefix}{key}.{sub}"] = (key, p)
    for key, p in _bias_parameters(model, adapter_name, getattr(config, "bias", "none")).items():
        entries[prefix + key] = (key.rsplit(".", 1)[0], p)
    return entries


def key_prefix(config: PeftConfig) -> str:
    """The checkpoint key prefix of the user's model for this config's method (``PREFIX`` for
    methods that wrap layers; peft writes ``base_model.`` for prompt-learning methods)."""
    from .registry import method_for_config

    return method_for_config(config).key_prefix


def remap_keys(tensors: dict[str, Any], key_mapping: Optional[dict[str, str]], prefix: str = PREFIX) -> dict[str, Any]:
    """Checkpoint keys renamed by transformers' ``key_mapping`` rules (``{regex: replacement}``, the
    first rule that matches a key applies), read on the key below ``prefix``. transformers models
    whose layout changed (vision-language models that moved their language model under
    ``model.language_model``) carry these rules as ``_checkpoint_conversion_mapping``, so adapters
    saved on the old layout load on the new one, as in peft. Keys outside ``prefix`` are kept.

    Example:
        >>> remap_keys({"base_model.model.model.layers.0.q.lora_A.weight": 1}, {"^model": "model.language_model"})
        {'base_model.model.model.language_model.layers.0.q.lora_A.weight': 1}
    """
    if not key_mapping:
        return tensors
    out = {}
    for key, value in tensors.items():
        if key.startswith(prefix):
            rest = key[len(prefix):]
            for pattern, replacement in key_mapping.items():
                renamed, count = re.subn(pattern, replacement, rest)
                if count:
                    rest = renamed
                    break
            key = prefix + rest
        out[key] = value
    return out


def model_level_tensors(model: "PeftModel", adapter_name: str) -> dict[str, torch.Tensor]:
    """Checkpoint key -> live tensor for state the adapter's method keeps on the PeftModel itself
    (see ``MethodSpec.model_tensors``); empty for methods that live entirely in their layers."""
    from .registry import method_for_config

    spec = method_for_config(model.peft_config[adapter_name])
    return dict(spec.model_tensors(model, adapter_name)) if spec.model_tensors else {}


def model_level_parameters(model: "PeftModel", adapter_name: str) -> list[nn.Parameter]:
    """The parameters an adapter's method keeps on the PeftModel that train with the adapter
    (``MethodSpec.model_parameters``, or else the parameters among its ``model_tensors``)."""
    from .registry import method_for_config

    spec = method_for_config(model.peft_config[adapter_name])
    if spec.model_parameters:
        return list(spec.model_parameters(model, adapter_name))
    return [t for t in model_level_tensors(model, adapter_name).values() if isinstance(t, nn.Parameter)]


EMBEDDING_LAYER_NAMES = ("embed_tokens", "lm_head")  # the names peft's "auto" looks for


def _saves_embeddings(model: "PeftModel", adapter_name: str, choice: Union[bool, str]) -> bool:
    """Whether the embedding tables go into the file: ``True``/``False`` as given; ``"auto"`` as in
    peft: yes when the adapter adapts an ``embed_tokens`` / ``lm_head`` module, or when the model's
    vocabulary differs from its base model's saved config (a resized vocabulary), each with peft's
    warning. peftkit's default is False: targeting an embedding does not make every file carry it."""
    if choice != "auto":
        return bool(choice)
    adapted = [key for key, module in iter_adapter_modules(model.get_base_model())
               if adapter_name in getattr(module, "adapter_names", ())]
    if any(key.rsplit(".", 1)[-1] in EMBEDDING_LAYER_NAMES for key in adapted):
        warnings.warn("Setting `save_embedding_layers` to `True` as embedding layers found in `target_modules`.",
                      stacklevel=4)
        return True
    if _vocabulary_resized(model, adapter_name):
        warnings.warn("Setting `save_embedding_layers` to `True` as the embedding layer has been resized during "
                      "finetuning.", stacklevel=4)
        return True
    return False


def _vocabulary_resized(model: "PeftModel", adapter_name: str) -> bool:
    """The model's ``config.vocab_size`` against its base model's saved config (a local folder, or the
    hub when reachable); False when that config cannot be read, as peft assumes."""
    config = getattr(model.get_base_model(), "config", None)
    vocab_size, model_id = getattr(config, "vocab_size", None), model.peft_config[adapter_name].base_model_name_or_path
    if not vocab_size or not model_id or not hasattr(type(config), "from_pretrained"):
        return False
    try:
        return type(config).from_pretrained(model_id).vocab_size != vocab_size
    except (OSError, ValueError) as err:  # offline, no such repo or folder: assume unchanged, and say so
        warnings.warn(f"Could not find a config file in {model_id} - will assume that the vocabulary was not "
                      f"modified ({type(err).__name__}).", stacklevel=5)
        return False


def _embedding_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """The embedding tables of a transformers model under their parameter paths: the adapted ones
    if an adapter targets an embedding (as peft), otherwise the input and output tables."""
    getters = [getattr(model, "get_input_embeddings", None), getattr(model, "get_output_embeddings", None)]
    layers = [layer for layer in (g() for g in getters if callable(g)) if layer is not None]
    found: dict[str, nn.Parameter] = {}
    for key, module in iter_plain_modules(model):
        if any(module is layer for layer in layers):
            if isinstance(module, AdapterLayer):
                found[f"{key}.base_layer.weight"] = module.base_layer.weight
            else:
                found[f"{key}.weight"] = module.weight
    adapted = {k: p for k, p in found.items() if k.endswith(".base_layer.weight")}
    return adapted or found


def get_peft_model_state_dict(
    model: "PeftModel",
    state_dict: Optional[dict[str, torch.Tensor]] = None,
    adapter_name: str = "default",
    save_embedding_layers: Union[bool, str] = False,
    **_: Any,
) -> dict[str, torch.Tensor]:
    """The adapter's tensors under their checkpoint keys (as ``peft.get_peft_model_state_dict``).

    ``state_dict``, if given (e.g. gathered by accelerate/DeepSpeed), supplies the values, looked
    up under the PeftModel's own parameter names. ``save_embedding_layers=True`` adds the full
    input/output embedding tables (needed only when the vocabulary was resized); unlike ``peft``'s
    ``"auto"`` it is off by default, so targeting ``embed_tokens`` keeps the adapter small.

    Example:
        >>> sd = get_peft_model_state_dict(peft_model)  # doctest: +SKIP
    """
    if adapter_name not in model.peft_config:
        raise CheckpointError(f"unknown adapter {adapter_name!r}; this model has {sorted(model.peft_config)}")
    base, config = model.get_base_model(), model.peft_config[adapter_name]
    live = adapter_tensors(base, adapter_name, config)
    if getattr(config, "bias", "none") == "all":  # peft writes a saved module's biases twice more then
        live.update({key: p for key, (_, p) in _optional_entries(base, adapter_name, config).items()})
    # tied layers' factors, under their own keys as peft writes them (its loader expects them)
    live.update(tied_adapter_tensors(base, adapter_name, key_prefix(config)))
    live.update(model_level_tensors(model, adapter_name))
    if _saves_embeddings(model, adapter_name, save_embedding_layers):
        prefix = key_prefix(model.peft_config[adapter_name])
        tables = _embedding_parameters(model.get_base_model())
        if not tables:  # peft's sentence (its tests match it), then what was looked for
            warnings.warn("Could not identify embedding layer(s) because the model is not a 🤗 transformers model. "
                          "(peftkit looks for get_input_embeddings() / get_output_embeddings(); no table was saved.)",
                          stacklevel=3)
        live.update({prefix + k: p for k, p in tables.items()})
    if state_dict is None:
        return {k: p.detach() for k, p in live.items()}
    names = {id(p): n for n, p in model.named_parameters(remove_duplicate=False)}
    # a tensor the method computes (a prompt encoder's output) is no parameter: it is saved as is
    out = {k: state_dict.get(names[id(p)]) if id(p) in names else p.detach() for k, p in live.items()}
    absent = sorted(k for k, v in out.items() if v is None)
    if absent:  # peft saves only what the given state dict has; say so, since the file then lacks them
        warnings.warn(f"state_dict has no value for {len(absent)} tensor(s) of adapter {adapter_name!r} "
                      f"({', '.join(absent[:4])}{' ...' if len(absent) > 4 else ''}); they are left out of the saved "
                      "adapter, as peft does", PeftWarning, stacklevel=3)
    return {k: v for k, v in out.items() if v is not None}


def _check_fit(
    expected: dict[str, tuple[str, nn.Parameter]], extra: dict[str, nn.Parameter], saved: dict[str, torch.Tensor], source: str,
    prefix: str = PREFIX,
) -> None:
    for key, tensor in saved.items():
        if key in expected:
            module, target = expected[key]
        elif key in extra:
            module, target = key.removeprefix(prefix).rsplit(".", 1)[0], extra[key]
        else:
            raise CheckpointError(
                f"{source}: tensor {key!r} has no matching module in this model. "
                "Was the adapter trained on another base model, or with other target_modules?"
            )
        if _floating(target.dtype) and not _floating(tensor.dtype):
            raise CheckpointError(
                f"{source}: {key!r} is stored as {tensor.dtype} but module {module!r} holds floating-point "
                f"values ({target.dtype}); the file was not written by peft or peftkit, or is damaged"
            )
        if tuple(target.shape) != tuple(tensor.shape):
            raise CheckpointError(
                f"{source}: adapter does not fit this model at module {module!r}: {key!r} has shape "
                f"{tuple(tensor.shape)} in the checkpoint but {tuple(target.shape)} in the model. "
                "Was the adapter trained on another base model?"
            )
    missing = sorted(set(expected) - set(saved))
    if missing:
        raise CheckpointError(
            f"{source}: the checkpoint lacks {len(missing)} adapter tensor(s), e.g. {missing[0]!r}; "
            "it is incomplete or was saved with a different config"
        )


def _floating(dtype: Any) -> bool:
    """Whether a torch dtype, or a safetensors dtype name (a file header's), holds floating-point values."""
    return dtype.is_floating_point if isinstance(dtype, torch.dtype) else dtype in FLOAT_DTYPES


def _loading_targets(model: "PeftModel", adapter_name: str) -> tuple[dict[str, tuple[str, Any]], dict[str, nn.Parameter]]:
    """``(expected, extra)``: checkpoint key -> (module path, live tensor) for the adapter's own
    tensors, and key -> parameter for the plain base-model parameters a checkpoint may also hold
    (biases, or embedding tables peft saves when target embeddings were resized: loaded into the
    base model, as peft does)."""
    base, config = model.get_base_model(), model.peft_config[adapter_name]
    expected = _adapter_entries(base, adapter_name, config)
    expected.update({key: (key, t) for key, t in model_level_tensors(model, adapter_name).items()})
    prefix = key_prefix(config)
    # every name of a shared parameter: peft may save a tied table under the LM head's path too
    extra = {prefix + n: p for n, p in base.named_parameters(remove_duplicate=False)}
    extra.update({key: p for key, (_, p) in _optional_entries(base, adapter_name, config).items()})
    extra.update(tied_adapter_tensors(base, adapter_name, prefix))
    return expected, extra


def check_fits_file(model: "PeftModel", header: dict[str, TensorInfo], adapter_name: str, source: str) -> None:
    """The checks of :func:`set_peft_model_state_dict` (every tensor finds its module, with the
    same shape and a usable dtype; none is missing) on a file's header, before its data is read."""
    expected, extra = _loading_targets(model, adapter_name)
    _check_fit(expected, extra, header, source, key_prefix(model.peft_config[adapter_name]))


def set_peft_model_state_dict(
    model: "PeftModel", peft_model_state_dict: dict[str, torch.Tensor], adapter_name: str = "default", source: str = "state dict", **_: Any
) -> LoadResult:
    """Copy saved adapter tensors into ``adapter_name``. Everything is checked first (each tensor
    must find its module, with the same shape; no adapter tensor may be missing), so a bad
    checkpoint raises :class:`CheckpointError` and changes nothing.

    Example:
        >>> set_peft_model_state_dict(peft_model, load_file("adapter_model.safetensors"))  # doctest: +SKIP
    """
    expected, extra = _loading_targets(model, adapter_name)
    _check_fit(expected, extra, peft_model_state_dict, source, key_prefix(model.peft_config[adapter_name]))
    _check_storable(model, model_level_tensors(model, adapter_name), peft_model_state_dict, adapter_name, source)
    # A tensor saved under two keys (a saved module's bias, with bias="all") takes its value from
    # the required key, as in peft, which ignores the second one.
    required = {id(expected[key][1]) for key in peft_model_state_dict if key in expected}
    # a tied layer's factors are views of the embedding's tensors, which take their values from the
    # embedding's own keys (the file holds the same values twice)
    tied = set(tied_adapter_tensors(model.get_base_model(), adapter_name, key_prefix(model.peft_config[adapter_name])))
    on_meta = {}  # adapters injected with low_cpu_mem_usage=True: their tensors get storage now
    with torch.no_grad():
        for key, tensor in peft_model_state_dict.items():
            target = expected[key][1] if key in expected else extra[key]
            if key in tied or (key not in expected and id(target) in required):
                continue
            if target.is_meta:
                on_meta[id(target)] = tensor
            else:
                target.copy_(tensor.to(device=target.device, dtype=target.dtype))
    if on_meta:
        assign_into_meta(model, on_meta)
    return LoadResult([], [])


def _check_storable(
    model: "PeftModel", model_level: dict[str, torch.Tensor], saved: dict[str, torch.Tensor], adapter_name: str, source: str
) -> None:
    """A model-level tensor that the method computes (e.g. the prompt a P-tuning encoder makes from
    its embedding and MLP) cannot take a saved value: only an adapter built for loading can."""
    owned = {id(t) for t in (*model.parameters(), *model.buffers())}
    computed = sorted(k for k, t in model_level.items() if k in saved and id(t) not in owned)
    if computed:
        raise CheckpointError(
            f"{source}: {computed[0]!r} is computed by adapter {adapter_name!r} (its encoder is trainable), so a saved "
            "value cannot be put into it; load the checkpoint as a new adapter with PeftModel.from_pretrained() "
            "or load_adapter(), which hold the saved value directly"
        )


def write_tensors(tensors: dict[str, torch.Tensor], path: str, metadata: Optional[dict[str, str]] = None) -> None:
    """``safetensors.torch.save_file``, with its I/O failures (a full disk, no permission) raised as
    the ``OSError`` they are (errno and file name set), so callers and the CLI handle them as such."""
    try:
        save_file(tensors, path, metadata=metadata)
    except OSError:
        raise
    except Exception as e:
        error = os_error_in(e, path)
        if error is None:
            raise
        raise error from None


def os_error_in(error: BaseException, path: Optional[str] = None) -> Optional[OSError]:
    """The ``OSError`` that a library error reports in its text (safetensors' Rust code says
    ``... (os error 28)``), or None if it reports none."""
    found = re.search(r"os error (\d+)", str(error))
    if found is None:
        return None
    code = int(found.group(1))
    return OSError(code, os.strerror(code), path)


def save_adapter_weights(tensors: dict[str, torch.Tensor], directory: str) -> str:
    """Write ``adapter_model.safetensors`` atomically (a temporary file, then a rename)."""
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, WEIGHTS_NAME)
    tmp = path + ".tmp"
    # clone: safetensors refuses tensors that share storage, and the file must own its data
    write_tensors({k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}, tmp, metadata={"format": "pt"})
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # safetensors writes 0600; adapters are meant to be shared
    os.replace(tmp, path)
    return path


def adapter_weights_path(model_id: str | os.PathLike, subfolder: Optional[str] = None, revision: Optional[str] = None, **hub_kwargs: Any) -> str:
    """Where ``adapter_model.safetensors`` is (a folder, or downloaded from the Hub). A pickle
    checkpoint (``adapter_model.bin``) is refused with a way out; it is never opened."""
    folder = os.path.join(str(model_id), subfolder) if subfolder else str(model_id)
    if not os.path.isfile(os.path.join(folder, WEIGHTS_NAME)) and os.path.isfile(os.path.join(folder, PICKLE_WEIGHTS_NAME)):
        raise CheckpointError(
            f"{folder} holds only {PICKLE_WEIGHTS_NAME}, a pickle file, which peftkit never loads (it can run code). "
            "Convert it once in a trusted environment: load it with peft and save_pretrained(..., safe_serialization=True)."
        )
    return resolve_file(model_id, WEIGHTS_NAME, subfolder, revision, **hub_kwargs)


def adapter_file_header(path: str) -> dict[str, TensorInfo]:
    """The tensors an adapter file holds (name -> dtype and shape), from its checked header alone."""
    try:
        return read_safetensors_header(path)
    except CorruptFileError as e:
        raise CheckpointError(f"{path} is not a readable safetensors file ({e.reason}); re-save the adapter") from None


def read_adapter_file(path: str) -> dict[str, torch.Tensor]:
    """Every tensor of an adapter file (its header checked first: see :func:`adapter_file_header`)."""
    adapter_file_header(path)
    try:
        return load_file(path, device="cpu")
    except Exception as e:  # safetensors' own checks: one error type, naming the file
        raise CheckpointError(f"{path} is not a readable safetensors file ({e}); re-save the adapter") from None


def load_adapter_weights(model_id: str | os.PathLike, subfolder: Optional[str] = None, revision: Optional[str] = None, **hub_kwargs: Any) -> tuple[dict[str, torch.Tensor], str]:
    """Read ``adapter_model.safetensors`` from a folder or the Hub; returns ``(tensors, path)``.
    A pickle checkpoint (``adapter_model.bin``) is refused with a way out."""
    path = adapter_weights_path(model_id, subfolder, revision, **hub_kwargs)
    return read_adapter_file(path), path
