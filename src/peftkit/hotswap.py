"""Hotswap: replace a loaded LoRA adapter's weights in place with another saved adapter's, so a
model under ``torch.compile`` keeps its compiled code (``peft``'s ``hotswap_adapter`` and
``prepare_model_for_compiled_hotswap``, with the same arguments and meaning).

Why nothing recompiles: the swap only writes into the existing parameters (same shapes, dtypes,
devices) and never touches the Python floats the compiled code was specialised on. The two things
that differ between adapters are handled without them:

- **rank**: ``prepare_model_for_compiled_hotswap(target_rank=R)`` pads every adapter's A and B with
  zeros to rank R once, before compiling; a smaller adapter is written into the first rows and
  columns, the rest stays zero (the product is unchanged by zero rank components);
- **scaling** (``lora_alpha``, rsLoRA, ``rank_pattern`` / ``alpha_pattern``): the slot keeps its
  scaling ``s`` per layer and the incoming adapter's scaling ``s'`` is folded into B
  (``B * s' / s``), which gives exactly ``s' B A``. ``peft`` turns its scalings into tensors and
  refuses different rsLoRA settings or alpha patterns; here they all swap.

Beyond ``peft`` (#3593): an adapter that targets only some of the slot's modules swaps in, and the
modules it lacks get zero weights (no change to their outputs); one that targets a module the slot
does not have is refused, naming the modules, and nothing is written.

Example:
    >>> model = PeftModel.from_pretrained(base, "adapters/a")  # doctest: +SKIP
    >>> prepare_model_for_compiled_hotswap(model, target_rank=64)  # doctest: +SKIP
    >>> compiled = torch.compile(model)  # doctest: +SKIP
    >>> hotswap_adapter(compiled, "adapters/b", adapter_name="default")  # doctest: +SKIP
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Optional

import torch
import torch.nn as nn

from . import checkpoint
from .config import PeftConfig
from .errors import AdapterError, CheckpointError
from .layers import AdapterLayer
from .targets import iter_adapter_modules, pattern_value

if TYPE_CHECKING:
    from .model import PeftModel

# settings that change what an adapter computes but are not in its tensors, and cannot be folded
# into them: they must agree between the slot and the incoming adapter (as in peft)
MUST_AGREE = ("use_dora", "lora_dropout", "lora_bias")


def _peft_model(model: nn.Module) -> "PeftModel":
    """The PeftModel itself, also when given ``torch.compile(model)`` (which wraps it as ``_orig_mod``)."""
    from .model import PeftModel

    inner = getattr(model, "_orig_mod", model)
    if not isinstance(inner, PeftModel):
        raise AdapterError(f"hotswap needs a peftkit PeftModel (or torch.compile of one), got {type(inner).__name__}")
    return inner


def _is_compiled(model: nn.Module) -> bool:
    return hasattr(model, "_orig_mod") or getattr(model, "_compiled_call_impl", None) is not None


def _lora_layers(model: "PeftModel", adapter_name: str) -> list[tuple[str, AdapterLayer]]:
    """``(module path, layer)`` for every layer holding ``adapter_name`` as low-rank factors."""
    return [(key, m) for key, m in iter_adapter_modules(model.get_base_model())  # stacked ones too (mixed models)
            if isinstance(m, AdapterLayer) and hasattr(m, "lowrank_parameters") and adapter_name in m.adapter_names]


def _slot_config(model: "PeftModel", adapter_name: str) -> PeftConfig:
    if adapter_name not in model.peft_config:
        raise AdapterError(f"adapter_name={adapter_name!r}: no such adapter to swap; this model has {sorted(model.peft_config)}")
    config = model.peft_config[adapter_name]
    if str(config.peft_type) != "LORA":
        raise AdapterError(f"adapter {adapter_name!r} is a {config.peft_type} adapter; hotswap swaps LoRA adapters only")
    return config


# ---------------------------------------------------------------------------------------- prepare
def prepare_model_for_compiled_hotswap(model: nn.Module, *, target_rank: Optional[int] = None,
                                       config: Optional[PeftConfig | dict[str, PeftConfig]] = None,
                                       check_compiled: Literal["error", "warn", "ignore"] = "error") -> None:
    """Pad every LoRA adapter of ``model`` to rank ``target_rank`` (the largest rank you will swap
    in) with zeros, before ``torch.compile``; outputs do not change. The model's configs (and
    ``config``, as in ``peft``) then say ``r=target_rank`` and the tensors carry the factor that keeps
    each layer's scaling, so a saved adapter reloads with the same outputs. Without ``target_rank``
    it only checks that there is something to swap (scalings never change here, see the module doc).

    Example:
        >>> prepare_model_for_compiled_hotswap(model, target_rank=32)  # doctest: +SKIP
    """
    import warnings

    if check_compiled not in ("error", "warn", "ignore"):
        raise AdapterError(f"check_compiled={check_compiled!r}: use 'error', 'warn' or 'ignore'")
    if _is_compiled(model):
        message = "prepare_model_for_compiled_hotswap was called on a compiled model; call it before torch.compile"
        if check_compiled == "error":
            raise AdapterError(message)
        if check_compiled == "warn":
            warnings.warn(message + " (the padded model will recompile once)", stacklevel=2)
    peft_model = _peft_model(model)
    names = [n for n, c in peft_model.peft_config.items() if str(c.peft_type) == "LORA"]
    layers = {n: _lora_layers(peft_model, n) for n in names}
    if not any(layers.values()):
        raise AdapterError("no LoRA adapter layers found: load the first adapter, then prepare, then compile")
    if target_rank is None:
        return
    if not isinstance(target_rank, int) or isinstance(target_rank, bool) or target_rank < 1:
        raise AdapterError(f"target_rank={target_rank!r}: must be a positive integer (the largest rank to swap in)")
    too_big = [f"{key} ({name}: r={layer.r[name]})" for name in names for key, layer in layers[name] if layer.r[name] > target_rank]
    if too_big:
        raise AdapterError(f"target_rank={target_rank} is below the rank of {', '.join(too_big[:5])}; "
                           "pass the largest rank of any adapter you will swap in")
    for name in names:
        for _, layer in layers[name]:
            _pad(layer, name, target_rank)
    extra = [] if config is None else list(config.values()) if isinstance(config, dict) else [config]
    for cfg in [peft_model.peft_config[n] for n in names] + extra:
        cfg.r = target_rank
        cfg.rank_pattern = {k: target_rank for k in cfg.rank_pattern}


def _pad(layer: Any, name: str, rank: int) -> None:
    """Zero-pad adapter ``name`` of ``layer`` to ``rank``, keeping ``scaling * B A`` exactly."""
    old_a, old_b = layer.lowrank_parameters(name)
    r = old_a.shape[0]
    if r == rank:
        return
    old_scaling = layer.scaling[name]
    layer.r[name] = rank
    new_scaling = layer.configured_scaling(name)
    with torch.no_grad():
        layer.create_tensors(name, rank)
        new_a, new_b = layer.lowrank_parameters(name)
        for new, old in ((new_a, old_a), (new_b, old_b)):
            new.data = torch.zeros(new.shape, dtype=old.dtype, device=old.device)
            new.requires_grad_(old.requires_grad)
        new_a[:r].copy_(old_a)
        new_b[:, :r].copy_(old_b * (old_scaling / new_scaling))
    layer.scaling[name] = new_scaling


# ---------------------------------------------------------------------------------------- swap
@dataclass
class _Write:
    """One planned write: ``target`` gets ``value`` in its first rows/columns, zeros elsewhere."""

    target: nn.Parameter
    value: Optional[torch.Tensor]  # None: zero the target (a module the incoming adapter lacks)
    rank_axis: Optional[int] = None  # 0 for A, 1 for B; None for tensors copied whole


def hotswap_adapter(model: nn.Module, model_name_or_path: str, adapter_name: str,
                    torch_device: Optional[str] = None, **kwargs: Any) -> None:
    """Replace the weights of LoRA adapter ``adapter_name`` of ``model`` (a PeftModel, or
    ``torch.compile`` of one) with those of the adapter saved at ``model_name_or_path``; the name
    stays. Different ranks need :func:`prepare_model_for_compiled_hotswap` first (up to its
    ``target_rank``); different alphas, rsLoRA and rank/alpha patterns swap as they are. Every check
    runs before the first write: a refused swap leaves the model unchanged. ``torch_device`` is
    accepted for ``peft``'s signature; tensors go where the slot's are.

    Example:
        >>> hotswap_adapter(compiled_model, "adapters/b", adapter_name="default")  # doctest: +SKIP
    """
    subfolder, revision = kwargs.get("subfolder"), kwargs.get("revision")
    config = PeftConfig.from_pretrained(model_name_or_path, subfolder=subfolder, revision=revision)
    state_dict, _ = checkpoint.load_adapter_weights(model_name_or_path, subfolder=subfolder, revision=revision)
    hotswap_adapter_from_state_dict(model, state_dict, adapter_name, config, source=str(model_name_or_path))


def hotswap_adapter_from_state_dict(model: nn.Module, state_dict: dict[str, torch.Tensor], adapter_name: str,
                                    config: PeftConfig, parameter_prefix: str = "lora_", source: str = "state_dict") -> None:
    """:func:`hotswap_adapter` from tensors already in memory: ``state_dict`` as saved
    (``base_model.model.<module>.lora_A.weight``; keys with the adapter name inserted, as ``peft``'s
    function takes them, work too) and the incoming adapter's ``config``. ``parameter_prefix`` is
    accepted for ``peft``'s signature (the layers themselves say which tensors are LoRA factors).

    Example:
        >>> hotswap_adapter_from_state_dict(model, tensors, "default", LoraConfig(r=8, lora_alpha=16))  # doctest: +SKIP
    """
    peft_model = _peft_model(model)
    slot_config = _slot_config(peft_model, adapter_name)
    _check_configs(slot_config, config, adapter_name, source)
    incoming = {checkpoint.peft_key_without_adapter(k, adapter_name): v for k, v in state_dict.items()}
    writes = _plan(peft_model, adapter_name, incoming, config, source)
    with torch.no_grad():
        for write in writes:
            _apply(write)


def _check_configs(slot: PeftConfig, new: PeftConfig, adapter_name: str, source: str) -> None:
    if str(new.peft_type) != "LORA":
        raise AdapterError(f"{source}: a {new.peft_type} adapter cannot be swapped into LoRA adapter {adapter_name!r}")
    for field in MUST_AGREE:
        mine, theirs = getattr(slot, field, None), getattr(new, field, None)
        if mine != theirs:
            raise AdapterError(f"{source}: {field}={theirs!r} but adapter {adapter_name!r} has {field}={mine!r}; "
                               "hotswap cannot change it (load the adapter with load_adapter instead)")


def _plan(model: "PeftModel", adapter_name: str, incoming: dict[str, torch.Tensor], config: PeftConfig,
          source: str) -> list[_Write]:
    """Every write the swap makes, after checking every key, shape and rank (nothing written yet)."""
    slot = checkpoint.adapter_tensors(model.get_base_model(), adapter_name, model.peft_config[adapter_name])
    unexpected = sorted(set(incoming) - set(slot))
    if unexpected:
        modules = sorted({k.removeprefix(checkpoint.PREFIX).split(".lora_")[0] for k in unexpected})
        raise AdapterError(f"{source}: adapter targets modules that adapter {adapter_name!r} does not have: "
                           f"{', '.join(modules[:8])}{' ...' if len(modules) > 8 else ''}; hotswap cannot add "
                           "layers (load the first adapter with those modules too, or use load_adapter)")
    key_of = {id(p): k for k, p in slot.items()}
    writes: list[_Write] = []
    factor_keys: set[str] = set()
    for path, layer in _lora_layers(model, adapter_name):
        if adapter_name in layer.merged_adapters:
            raise AdapterError(f"adapter {adapter_name!r} is merged into {path!r}; unmerge_adapter() before swapping")
        a, b = layer.lowrank_parameters(adapter_name)
        a_key, b_key = key_of[id(a)], key_of[id(b)]
        factor_keys |= {a_key, b_key}
        writes += _layer_writes(layer, adapter_name, path, (a_key, a), (b_key, b), incoming, config, source)
        bias = getattr(layer.lora_B[adapter_name], "bias", None) if hasattr(layer, "lora_B") else None
        if bias is not None:  # lora_bias: the output gains scaling * b, so b folds like B
            bias_key = key_of[id(bias)]
            factor_keys.add(bias_key)
            writes.append(_bias_write(layer, adapter_name, path, (bias_key, bias), incoming, config, source))
    for key, target in slot.items():
        if key in factor_keys:
            continue
        if key not in incoming:
            raise AdapterError(f"{source}: lacks {key!r}, which adapter {adapter_name!r} has and hotswap cannot zero "
                               "(only LoRA A/B factors of missing modules can be zeroed)")
        writes.append(_Write(target, _checked(incoming[key], target.shape, key, source)))
    return writes


def _layer_writes(layer: Any, name: str, path: str, a_entry: tuple[str, nn.Parameter], b_entry: tuple[str, nn.Parameter],
                  incoming: dict[str, torch.Tensor], config: PeftConfig, source: str) -> list[_Write]:
    (a_key, a), (b_key, b) = a_entry, b_entry
    present = (a_key in incoming, b_key in incoming)
    if present == (False, False):
        if name in getattr(layer, "lora_magnitude_vector", {}):
            raise AdapterError(f"{source}: has no weights for DoRA module {path!r}; a DoRA layer cannot be zeroed "
                               "(its magnitude would still rescale the weight)")
        return [_Write(a, None), _Write(b, None)]
    if present != (True, True):
        missing = a_key if not present[0] else b_key
        raise CheckpointError(f"{source}: has one LoRA factor of {path!r} but not {missing!r}; re-save the adapter")
    new_a, new_b = incoming[a_key], incoming[b_key]
    rank = new_a.shape[0]
    if rank > a.shape[0]:
        raise AdapterError(f"{source}: module {path!r} has rank {rank} but the slot holds rank {a.shape[0]}; call "
                           f"prepare_model_for_compiled_hotswap(model, target_rank={rank}) (or larger) before compiling")
    _checked(new_a, (rank, *a.shape[1:]), a_key, source)
    _checked(new_b, (b.shape[0], rank, *b.shape[2:]), b_key, source)
    scaling = incoming_scaling(config, path, rank, source)
    slot_scaling = layer.scaling[name]
    if slot_scaling == 0:
        raise AdapterError(f"adapter {name!r} has scaling 0 at {path!r} (lora_alpha=0): nothing can be folded into it")
    return [_Write(a, new_a, rank_axis=0), _Write(b, new_b * (scaling / slot_scaling), rank_axis=1)]


def _bias_write(layer: Any, name: str, path: str, entry: tuple[str, nn.Parameter], incoming: dict[str, torch.Tensor],
                config: PeftConfig, source: str) -> _Write:
    """``lora_B``'s bias (``lora_bias=True``) scaled into the slot's scaling like B (zeroed with it)."""
    key, bias = entry
    if key not in incoming:
        return _Write(bias, None)
    a_key = key.removesuffix("lora_B.bias") + "lora_A.weight"
    rank = incoming[a_key].shape[0] if a_key in incoming else layer.r[name]
    scaling = incoming_scaling(config, path, rank, source)
    return _Write(bias, _checked(incoming[key], bias.shape, key, source) * (scaling / layer.scaling[name]))


def incoming_scaling(config: PeftConfig, path: str, rank: int, source: str) -> float:
    """The scaling loading ``config`` would give module ``path``, checked against the file's rank.

    Example:
        >>> incoming_scaling(LoraConfig(r=4, lora_alpha=8), "q_proj", 4, "x")  # doctest: +SKIP
        2.0
    """
    r = pattern_value(config.rank_pattern, path, config.r)
    if r != rank:
        raise CheckpointError(f"{source}: module {path!r} holds rank {rank} but its config says r={r}; re-save the adapter")
    alpha = pattern_value(config.alpha_pattern, path, config.lora_alpha)
    return alpha / (math.sqrt(r) if config.use_rslora else r)


def _checked(value: torch.Tensor, shape: tuple, key: str, source: str) -> torch.Tensor:
    if tuple(value.shape) != tuple(shape):
        raise CheckpointError(f"{source}: {key!r} has shape {tuple(value.shape)}, expected {tuple(shape)} for this model")
    if not value.is_floating_point():
        raise CheckpointError(f"{source}: {key!r} is {value.dtype}, expected a floating-point tensor")
    return value


def _apply(write: _Write) -> None:
    target = write.target
    if write.value is None or write.rank_axis is not None:
        target.zero_()
    if write.value is None:
        return
    value = write.value.to(device=target.device, dtype=target.dtype)
    if write.rank_axis == 0:
        target[: value.shape[0]].copy_(value)
    elif write.rank_axis == 1:
        target[:, : value.shape[1]].copy_(value)
    else:
        target.copy_(value)
