"""Hotswap: replace a loaded LoRA adapter's weights in place with another saved adapter's, so a
model under ``torch.compile`` keeps its compiled code (``peft``'s ``hotswap_adapter`` and
``prepare_model_for_compiled_hotswap``, with the same arguments and meaning).

Why nothing recompiles: the swap only writes into the existing parameters (same shapes, dtypes,
devices) and never changes the scalings the compiled code reads. The two things that differ
between adapters are handled without them:

- **rank**: ``prepare_model_for_compiled_hotswap(target_rank=R)`` pads every adapter's A and B with
  zeros to rank R once, before compiling; a smaller adapter is written into the first rows and
  columns (per group for a grouped convolution), the rest stays zero (the product is unchanged by
  zero rank components). On a model that is neither compiled nor prepared, a larger incoming rank
  grows the slot the same way first (``peft`` replaces the tensors; the model then recompiles);
- **scaling** (``lora_alpha``, rsLoRA, ``rank_pattern`` / ``alpha_pattern``): the slot keeps its
  scaling ``s`` per layer and the incoming adapter's scaling ``s'`` is folded into B
  (``B * s' / s``), which gives exactly ``s' B A``. ``peft`` writes ``s'`` into its scalings
  (tensors after ``prepare_model_for_compiled_hotswap``, which makes them tensors here too) and
  refuses different rsLoRA settings or alpha patterns; here they all swap, and the slot's config
  still describes its tensors, so ``save_pretrained`` after a swap writes an adapter that reloads
  with the same outputs.

An adapter that targets only some of the slot's modules swaps in, and the modules it lacks get
zero weights (no change to their outputs), as in ``peft``; one that targets a module the slot
does not have is refused, naming the keys, and nothing is written.

Example:
    >>> model = PeftModel.from_pretrained(base, "adapters/a")  # doctest: +SKIP
    >>> prepare_model_for_compiled_hotswap(model, target_rank=64)  # doctest: +SKIP
    >>> compiled = torch.compile(model)  # doctest: +SKIP
    >>> hotswap_adapter(compiled, "adapters/b", adapter_name="default")  # doctest: +SKIP
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Optional

import torch
import torch.nn as nn

from . import checkpoint
from .config import PeftConfig
from .errors import AdapterError, CheckpointError, HotswapKeyError
from .layers import AdapterLayer
from .targets import iter_adapter_modules, pattern_value

if TYPE_CHECKING:
    from .model import PeftModel

# settings that change what an adapter computes but are not in its tensors, and cannot be folded
# into them: they must agree between the slot and the incoming adapter (as in peft)
MUST_AGREE = ("use_dora", "lora_dropout", "lora_bias")


def _unwrap(model: nn.Module) -> nn.Module:
    """The model itself, also when given ``torch.compile(model)`` (which wraps it as ``_orig_mod``)."""
    return getattr(model, "_orig_mod", model)


def _as_peft_model(model: nn.Module) -> Optional["PeftModel"]:
    from .model import PeftModel

    inner = _unwrap(model)
    return inner if isinstance(inner, PeftModel) else None


def _peft_model(model: nn.Module) -> "PeftModel":
    inner = _as_peft_model(model)
    if inner is None:
        raise AdapterError(f"hotswap_adapter needs a peftkit PeftModel (or torch.compile of one), got "
                           f"{type(_unwrap(model)).__name__}; wrap the model with get_peft_model or PeftModel.from_pretrained")
    return inner


def _is_compiled(model: nn.Module) -> bool:
    return hasattr(model, "_orig_mod") or getattr(model, "_compiled_call_impl", None) is not None


def _root(model: nn.Module) -> nn.Module:
    """Where the adapter layers are: the user's model inside a PeftModel, else the module itself
    (a model adapted with ``inject_adapter_in_model``)."""
    peft_model = _as_peft_model(model)
    return peft_model.get_base_model() if peft_model is not None else _unwrap(model)


def _is_lora_layer(module: nn.Module) -> bool:
    return isinstance(module, AdapterLayer) and hasattr(module, "lowrank_parameters")


def _lora_layers(root: nn.Module, adapter_name: str) -> list[tuple[str, AdapterLayer]]:
    """``(module path, layer)`` for every layer holding ``adapter_name`` as low-rank factors."""
    return [(key, m) for key, m in iter_adapter_modules(root)  # stacked ones too (mixed models)
            if _is_lora_layer(m) and adapter_name in m.adapter_names]


def _all_lora_layers(root: nn.Module) -> list[tuple[str, AdapterLayer, str]]:
    """``(module path, layer, adapter name)`` for every LoRA adapter on every layer."""
    return [(key, m, name) for key, m in iter_adapter_modules(root) if _is_lora_layer(m)
            for name in m.adapter_names]


def _slot_config(model: "PeftModel", adapter_name: str) -> PeftConfig:
    if adapter_name not in model.peft_config:
        raise AdapterError(f"adapter_name={adapter_name!r}: no such adapter to swap; this model has {sorted(model.peft_config)}")
    return model.peft_config[adapter_name]


def _slot_rank(layer: Any, name: str) -> int:
    return layer.lowrank_parameters(name)[0].shape[0]  # A's rank axis holds the whole rank, every block


# ---------------------------------------------------------------------------------------- prepare
def prepare_model_for_compiled_hotswap(model: nn.Module, *, target_rank: Optional[int] = None,
                                       config: Optional[PeftConfig | dict[str, PeftConfig]] = None,
                                       check_compiled: Literal["error", "warn", "ignore"] = "error") -> None:
    """Get ``model`` (a PeftModel, or a model with LoRA layers from ``inject_adapter_in_model``) ready
    for ``torch.compile`` and later :func:`hotswap_adapter` calls, after loading the first adapter and
    before compiling. Every LoRA scaling becomes a 0-d tensor (as in ``peft``), and with
    ``target_rank`` (the largest rank you will swap in) every LoRA adapter is padded with zeros to that
    rank; outputs do not change. The model's configs (and ``config``, as in ``peft``) then say
    ``r=target_rank``; the model's own also get the ``lora_alpha`` / ``alpha_pattern`` that keep each
    layer's scaling, so a saved adapter reloads with the same outputs.

    Example:
        >>> model = PeftModel.from_pretrained(base, "adapters/r8")  # doctest: +SKIP
        >>> prepare_model_for_compiled_hotswap(model, target_rank=32)  # doctest: +SKIP
        >>> model = torch.compile(model)  # then hotswap_adapter(model, "adapters/r32", "default")  # doctest: +SKIP
    """
    if check_compiled not in ("error", "warn", "ignore"):
        raise AdapterError(f"check_compiles should be one of 'error', 'warn', or 'ignore', got '{check_compiled}' "
                           "instead. (peftkit: the argument is check_compiled; 'warn' goes on with a warning, "
                           "'ignore' silently.)")
    if _is_compiled(model):
        if check_compiled == "error":
            raise AdapterError("Call prepare_model_for_compiled_hotswap *before* compiling the model (it was given "
                               "the result of torch.compile): load the first adapter, prepare, then compile; or "
                               "pass check_compiled='warn' to prepare anyway and accept one recompilation")
        if check_compiled == "warn":
            warnings.warn("prepare_model_for_compiled_hotswap was called with a model that is already compiled. "
                          "The padded tensors and tensor scalings will make it recompile once; prepare before "
                          "torch.compile to avoid that.", stacklevel=2)
    root = _root(model)
    layers = _all_lora_layers(root)
    if not layers:
        raise AdapterError("No adapter layers found on the model: load the first LoRA adapter (get_peft_model, "
                           "PeftModel.from_pretrained), then call prepare_model_for_compiled_hotswap, then torch.compile")
    if target_rank is not None:
        if not isinstance(target_rank, int) or isinstance(target_rank, bool) or target_rank < 1:
            raise AdapterError(f"target_rank={target_rank!r}: must be a positive integer (the largest rank to swap in)")
        _check_padding(layers, target_rank)
    _scalings_to_tensors(layers)
    if target_rank is None:
        return
    peft_model = _as_peft_model(model)
    own = {} if peft_model is None else {n: c for n, c in peft_model.peft_config.items() if str(c.peft_type) == "LORA"}
    _pad_adapters(layers, target_rank, own)
    extra = [] if not config else list(config.values()) if isinstance(config, dict) else [config]
    for cfg in extra:  # peft's rule for the configs passed in: ranks only (the model's own are done above)
        if not any(cfg is c for c in own.values()):
            cfg.r = target_rank
            cfg.rank_pattern = {k: target_rank for k in cfg.rank_pattern}


def _check_padding(layers: list[tuple[str, AdapterLayer, str]], target_rank: int) -> None:
    """Every refusal of padding to ``target_rank``, before anything changes."""
    for key, layer, name in layers:
        blocks = layer.rank_blocks
        if target_rank % blocks:
            kind = type(layer.base_layer).__name__
            raise AdapterError(f"Trying to pad a {kind} LoRA adapter with groups={blocks} to target rank {target_rank}, "
                               f"but the target rank is not divisible by {blocks}. Please choose a target rank that is "
                               f"divisible by {blocks}. (peftkit: module {key!r}, adapter {name!r}; its lora_B is "
                               "grouped like the convolution, so every group needs the same share of the rank.)")
        rank = _slot_rank(layer, name)  # refuses layer kinds hotswap cannot pad, by name
        if rank > target_rank:
            raise AdapterError(f"Trying to pad the adapter to the target rank {target_rank}, but the original rank is "
                               f"larger ({rank}). This is not possible. (peftkit: module {key!r} of adapter {name!r}; "
                               f"pass a target_rank of at least {rank}, the largest rank of any adapter you will swap in.)")


def _scalings_to_tensors(layers: list[tuple[str, AdapterLayer, str]]) -> None:
    """Scalings as 0-d tensors (``peft``'s type after preparing). Their values never change here
    (hotswap folds into B), but code written for ``peft`` may set them between compiled calls."""
    for _, layer, name in layers:
        value = layer.scaling[name]
        if layer.hotswap_refusal:  # never swapped (refused by name), and its paths expect a float
            continue
        if not isinstance(value, torch.Tensor):
            device = layer.lowrank_parameters(name)[0].device
            layer.scaling[name] = torch.tensor(float(value), device=device)


def _pad_adapters(layers: list[tuple[str, AdapterLayer, str]], target_rank: int, configs: dict[str, PeftConfig],
                  only: Optional[str] = None) -> None:
    """Pad every listed adapter (``only``: that one) to ``target_rank`` and make its config in
    ``configs`` (the model's, by adapter name) describe the padded layers."""
    padded: dict[str, list[tuple[str, AdapterLayer, int]]] = {}
    for key, layer, name in layers:
        if only is None or name == only:
            padded.setdefault(name, []).append((key, layer, _slot_rank(layer, name)))
            _pad(layer, name, target_rank)
    for name, entries in padded.items():
        if name in configs:
            _update_config(configs[name], entries, name, target_rank)


def _update_config(cfg: PeftConfig, entries: list[tuple[str, AdapterLayer, int]], name: str, target_rank: int) -> None:
    """The config ``cfg`` of adapter ``name`` after padding ``entries`` (path, layer, old rank): ``r`` and
    every ``rank_pattern`` value become ``target_rank`` (``peft``'s rule), and ``lora_alpha`` /
    ``alpha_pattern`` are scaled so each module's ``alpha / r`` is still the scaling it has."""
    grow = (lambda r: math.sqrt(target_rank / r)) if cfg.use_rslora else (lambda r: target_rank / r)
    new_alpha = cfg.lora_alpha * grow(cfg.r)
    governed: dict[str, set[int]] = {}
    for key, _, old_r in entries:
        match = next((k for k in cfg.alpha_pattern if pattern_value({k: True}, key, False)), None)
        if match is not None:
            governed.setdefault(match, set()).add(old_r)
    patterns = {k: (v * grow(next(iter(governed[k]))) if len(governed.get(k, ())) == 1 else v)
                for k, v in cfg.alpha_pattern.items()}
    exact = {}
    for key, layer, _ in entries:  # a module whose alpha the patterns above do not give gets its own entry
        want = layer.lora_alpha[name]
        if not math.isclose(pattern_value(patterns, key, new_alpha), want, rel_tol=1e-9):
            exact[key] = want
    cfg.r = target_rank
    cfg.rank_pattern = {k: target_rank for k in cfg.rank_pattern}
    cfg.lora_alpha = _tidy(new_alpha)
    cfg.alpha_pattern = {k: _tidy(v) for k, v in {**exact, **patterns}.items()}  # first match wins: exact keys first


def _tidy(value: float) -> float | int:
    """``24.000000000000004`` -> ``24``: the config keeps an int where the product is one."""
    rounded = round(value)
    return int(rounded) if math.isclose(value, rounded, rel_tol=1e-12, abs_tol=1e-12) else value


def _pad(layer: Any, name: str, rank: int) -> None:
    """Zero-pad adapter ``name`` of ``layer`` to ``rank``. The scaling stays as it is (folding a new
    one into B would round B, which peft's exact-output checks notice); ``lora_alpha`` grows with
    ``r`` so the configured scaling, and a saved config, stay consistent with it."""
    old_a, old_b = layer.lowrank_parameters(name)
    r = old_a.shape[0]
    if r == rank:
        return
    holders = getattr(layer, "lora_B", None)  # embeddings keep bare parameters (lora_embedding_B), no bias
    holder_b = holders[name] if isinstance(holders, nn.ModuleDict) else None
    old_bias = getattr(holder_b, "bias", None)
    with torch.no_grad():
        layer.create_tensors(name, rank)
        new_a, new_b = layer.lowrank_parameters(name)
        for new, old in ((new_a, old_a), (new_b, old_b)):
            new.data = torch.zeros(new.shape, dtype=old.dtype, device=old.device)
            new.requires_grad_(old.requires_grad)
        _copy_rank_rows(new_a, old_a, layer.rank_blocks)
        new_b[:, : old_b.shape[1]].copy_(old_b)
    if old_bias is not None:  # lora_bias: not a rank tensor, kept as it is
        layer.lora_B[name].bias = old_bias
    grow = math.sqrt(rank / r) if layer.use_rslora[name] else rank / r
    layer.lora_alpha[name] = _tidy(layer.lora_alpha[name] * grow)
    layer.r[name] = rank


def _copy_rank_rows(target: torch.Tensor, value: torch.Tensor, blocks: int) -> None:
    """Write A-like ``value`` (rank on axis 0) into the zeroed, larger ``target``: block by block
    where the rank comes in ``blocks`` groups (grouped convolutions), else into the first rows."""
    step_t, step_v = target.shape[0] // blocks, value.shape[0] // blocks
    for g in range(blocks):
        target[g * step_t: g * step_t + step_v].copy_(value[g * step_v: (g + 1) * step_v])


# ---------------------------------------------------------------------------------------- swap
@dataclass
class _Write:
    """One planned write: ``target`` gets ``value`` in its first rows/columns, zeros elsewhere."""

    target: nn.Parameter
    value: Optional[torch.Tensor]  # None: zero the target (a module the incoming adapter lacks)
    rank_axis: Optional[int] = None  # 0 for A, 1 for B; None for tensors copied whole
    blocks: int = 1  # A's rank axis in this many groups (grouped convolutions)


def hotswap_adapter(model: nn.Module, model_name_or_path: str, adapter_name: str,
                    torch_device: Optional[str] = None, **kwargs: Any) -> None:
    """Replace the weights of LoRA adapter ``adapter_name`` of ``model`` (a PeftModel, or
    ``torch.compile`` of one) with those of the adapter saved at ``model_name_or_path``; the name
    stays. A larger rank than the slot's needs :func:`prepare_model_for_compiled_hotswap` first (up
    to its ``target_rank``) on a model that is or will be compiled; elsewhere the slot grows.
    Different alphas, rsLoRA and rank/alpha patterns swap as they are. Every check runs before the
    first write: a refused swap leaves the model unchanged. ``torch_device`` is accepted for
    ``peft``'s signature; tensors go where the slot's are.

    Example:
        >>> hotswap_adapter(compiled_model, "adapters/b", adapter_name="default")  # doctest: +SKIP
    """
    subfolder, revision = kwargs.get("subfolder"), kwargs.get("revision")
    config = PeftConfig.from_pretrained(model_name_or_path, subfolder=subfolder, revision=revision)
    _check_configs(_slot_config(_peft_model(model), adapter_name), config, adapter_name, str(model_name_or_path))
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
    writes, grow_to = _plan(peft_model, adapter_name, incoming, config, source)
    if grow_to is not None:
        _grow_slot(model, peft_model, adapter_name, grow_to, source)
        writes, grow_to = _plan(peft_model, adapter_name, incoming, config, source)
        assert grow_to is None, "the slot was grown to the incoming adapter's largest rank"
    with torch.no_grad():
        for write in writes:
            _apply(write)


def _check_configs(slot: PeftConfig, new: PeftConfig, adapter_name: str, source: str) -> None:
    """peft's checks and messages: the same method, LoRA, and the settings in MUST_AGREE."""
    mine, theirs = str(slot.peft_type), str(new.peft_type)
    if mine != theirs:
        raise AdapterError(f"Incompatible PEFT types found: {mine} and {theirs} (adapter {adapter_name!r} of the model "
                           f"is {mine}, {source} is {theirs}); hotswap only replaces an adapter with one of its own "
                           "method: use load_adapter to add this one")
    if mine != "LORA":
        raise AdapterError(f"Hotswapping only supports LORA but {mine} was passed (adapter {adapter_name!r} and "
                           f"{source}); use load_adapter / set_adapter to switch between {mine} adapters")
    for field in MUST_AGREE:
        ours, incoming = getattr(slot, field, None), getattr(new, field, None)
        if ours != incoming:
            raise AdapterError(f"Configs are incompatible: for {field}, {ours} != {incoming} (adapter {adapter_name!r} "
                               f"has {field}={ours!r}, {source} has {field}={incoming!r}); hotswap cannot change it "
                               "(load the adapter with load_adapter instead)")


def _grow_slot(model: nn.Module, peft_model: "PeftModel", adapter_name: str, rank: int, source: str) -> None:
    """Pad adapter ``adapter_name`` to ``rank`` so a larger incoming adapter fits: only on a model that
    is neither compiled nor prepared for compiling, where new tensor shapes cost nothing."""
    layers = [(key, layer, adapter_name) for key, layer in _lora_layers(peft_model.get_base_model(), adapter_name)]
    prepared = any(isinstance(layer.scaling[adapter_name], torch.Tensor) for _, layer, _ in layers)
    if _is_compiled(model) or _is_compiled(peft_model) or prepared:
        state = "is compiled" if not prepared else "was prepared by prepare_model_for_compiled_hotswap"
        raise AdapterError(f"{source}: has rank {rank}, more than adapter {adapter_name!r} holds, and the model {state}: "
                           "a larger slot would change tensor shapes under the compiled code. Call "
                           f"prepare_model_for_compiled_hotswap(model, target_rank={rank}) (or larger) before compiling")
    _check_padding(layers, rank)
    _pad_adapters(layers, rank, {adapter_name: peft_model.peft_config[adapter_name]}, only=adapter_name)


def _with_adapter_name(key: str, adapter_name: str) -> str:
    """A checkpoint key in peft's in-model form, as peft's messages show it (``lin1.lora_A.weight`` ->
    ``lin1.lora_A.default.weight``)."""
    parts = key.split(".")
    i = max((j for j, part in enumerate(parts) if part.startswith("lora_")), default=len(parts) - 1)
    return ".".join(parts[: i + 1] + [adapter_name] + parts[i + 1:])


def _plan(model: "PeftModel", adapter_name: str, incoming: dict[str, torch.Tensor], config: PeftConfig,
          source: str) -> tuple[list[_Write], Optional[int]]:
    """Every write the swap makes, after checking every key, shape and rank (nothing written yet),
    and the rank the slot must grow to first (None: the incoming adapter fits)."""
    slot = checkpoint.adapter_tensors(model.get_base_model(), adapter_name, model.peft_config[adapter_name])
    unexpected = sorted(set(incoming) - set(slot))
    if unexpected:
        modules = sorted({k.removeprefix(checkpoint.PREFIX).split(".lora_")[0] for k in unexpected})
        keys = ", ".join(_with_adapter_name(k, adapter_name) for k in unexpected)
        raise HotswapKeyError(f"Hot swapping the adapter did not succeed, unexpected keys found: {keys}. ({source} "
                              f"targets modules that adapter {adapter_name!r} has no LoRA layers on: "
                              f"{', '.join(modules[:8])}{' ...' if len(modules) > 8 else ''}; hotswap cannot add "
                              "layers: load the first adapter with those modules too, or use load_adapter.)")
    key_of = {id(p): k for k, p in slot.items()}
    writes: list[_Write] = []
    factor_keys: set[str] = set()
    grow_to: Optional[int] = None
    for path, layer in _lora_layers(model.get_base_model(), adapter_name):
        if adapter_name in layer.merged_adapters:
            raise AdapterError(f"adapter {adapter_name!r} is merged into {path!r}; unmerge_adapter() before swapping")
        a, b = layer.lowrank_parameters(adapter_name)
        a_key, b_key = key_of[id(a)], key_of[id(b)]
        factor_keys |= {a_key, b_key}
        layer_writes, rank = _layer_writes(layer, adapter_name, path, (a_key, a), (b_key, b), incoming, config, source)
        if rank is not None and rank > a.shape[0]:
            grow_to = max(grow_to or 0, rank)
        writes += layer_writes
        bias = getattr(layer.lora_B[adapter_name], "bias", None) if hasattr(layer, "lora_B") else None
        if bias is not None:  # lora_bias: the output gains scaling * b, so b folds like B
            bias_key = key_of[id(bias)]
            factor_keys.add(bias_key)
            writes.append(_bias_write(layer, adapter_name, path, (bias_key, bias), rank, incoming, config, source))
    for key, target in slot.items():
        if key in factor_keys:
            continue
        if key not in incoming:
            raise AdapterError(f"{source}: lacks {key!r}, which adapter {adapter_name!r} has and hotswap cannot zero "
                               "(only LoRA A/B factors of missing modules can be zeroed)")
        writes.append(_Write(target, _checked(incoming[key], target.shape, key, source)))
    return ([] if grow_to is not None else writes), grow_to


def _layer_writes(layer: Any, name: str, path: str, a_entry: tuple[str, nn.Parameter], b_entry: tuple[str, nn.Parameter],
                  incoming: dict[str, torch.Tensor], config: PeftConfig,
                  source: str) -> tuple[list[_Write], Optional[int]]:
    """The writes for one layer's A and B, and the incoming rank there (None: the module is absent)."""
    (a_key, a), (b_key, b) = a_entry, b_entry
    present = (a_key in incoming, b_key in incoming)
    if present == (False, False):
        if name in getattr(layer, "lora_magnitude_vector", {}):
            raise AdapterError(f"{source}: has no weights for DoRA module {path!r}; a DoRA layer cannot be zeroed "
                               "(its magnitude would still rescale the weight)")
        return [_Write(a, None), _Write(b, None)], None
    blocks = layer.rank_blocks
    rank = incoming[a_key].shape[0] if present[0] else incoming[b_key].shape[1] * blocks
    if rank % blocks:
        raise CheckpointError(f"{source}: module {path!r} has rank {rank}, which its {blocks} groups cannot share; "
                              "re-save the adapter")
    scaling = incoming_scaling(config, path, rank, source)
    slot_scaling = layer.scaling[name]
    if slot_scaling == 0:
        raise AdapterError(f"adapter {name!r} has scaling 0 at {path!r} (lora_alpha=0): nothing can be folded into it")
    new_a = _checked(incoming[a_key], (rank, *a.shape[1:]), a_key, source) if present[0] else None
    new_b = _checked(incoming[b_key], (b.shape[0], rank // blocks, *b.shape[2:]), b_key, source) if present[1] else None
    if present != (True, True):
        # peft zeroes the factor that is missing and writes the other: the module then adds nothing
        missing = a_key if not present[0] else b_key
        warnings.warn(f"{source}: has one LoRA factor of {path!r} but not {missing!r}; hotswap zeroes the missing "
                      "factor, so this module adds nothing (re-save the adapter if that is not intended)", stacklevel=4)
    writes = [_Write(a, new_a, rank_axis=0, blocks=blocks),
              _Write(b, None if new_b is None else new_b * (scaling / slot_scaling), rank_axis=1)]
    return writes, rank


def _bias_write(layer: Any, name: str, path: str, entry: tuple[str, nn.Parameter], rank: Optional[int],
                incoming: dict[str, torch.Tensor], config: PeftConfig, source: str) -> _Write:
    """``lora_B``'s bias (``lora_bias=True``) scaled into the slot's scaling like B (zeroed with it)."""
    key, bias = entry
    if key not in incoming:
        return _Write(bias, None)
    scaling = incoming_scaling(config, path, layer.r[name] if rank is None else rank, source)
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
        _copy_rank_rows(target, value, write.blocks)
    elif write.rank_axis == 1:
        target[:, : value.shape[1]].copy_(value)
    else:
        target.copy_(value)
