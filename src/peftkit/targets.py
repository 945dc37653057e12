"""Which modules an adapter adapts: ``peft``'s matching rules, written once for every method.

``target_modules`` may be a list of names (a module matches when its full key equals a name or
ends with ``"." + name``), a regex (full match against the key), or ``"all-linear"`` (every
``nn.Linear`` / GPT-2 ``Conv1D`` except the output head). ``exclude_modules`` uses the same rules;
``layers_to_transform`` / ``layers_pattern`` keep only some blocks of the stack.
"""

from __future__ import annotations

import re
import warnings
from typing import Iterator, Optional

import torch.nn as nn

from .config import TargetedConfig, TaskType
from .errors import NoMatchingPeftModuleError, PeftWarning, TargetError

ALL_LINEAR = "all-linear"

# Used when a config leaves target_modules unset, as peft does (attention projections).
DEFAULT_TARGETS: dict[str, list[str]] = {
    "llama": ["q_proj", "v_proj"],
    "mistral": ["q_proj", "v_proj"],
    "mixtral": ["q_proj", "v_proj"],
    "qwen2": ["q_proj", "v_proj"],
    "qwen3": ["q_proj", "v_proj"],
    "gemma": ["q_proj", "v_proj"],
    "gemma2": ["q_proj", "v_proj"],
    "phi3": ["qkv_proj"],
    "opt": ["q_proj", "v_proj"],
    "gpt2": ["c_attn"],
    "gpt_neox": ["query_key_value"],
    "gptj": ["q_proj", "v_proj"],
    "falcon": ["query_key_value"],
    "bloom": ["query_key_value"],
    "bert": ["query", "value"],
    "roberta": ["query", "value"],
    "xlm-roberta": ["query", "value"],
    "deberta-v2": ["query_proj", "value_proj"],
    "distilbert": ["q_lin", "v_lin"],
    "t5": ["q", "v"],
    "mt5": ["q", "v"],
    "bart": ["q_proj", "v_proj"],
}

# Heads that a classification-style task trains fully and saves with the adapter (peft's names).
TASK_HEADS: dict[TaskType, list[str]] = {
    TaskType.SEQ_CLS: ["classifier", "score"],
    TaskType.TOKEN_CLS: ["classifier", "score"],
    TaskType.QUESTION_ANS: ["qa_outputs"],
}


def iter_plain_modules(model: nn.Module, prefix: str = "") -> Iterator[tuple[str, nn.Module]]:
    """Like ``named_modules()``, but an adapter layer or saved-module wrapper is yielded as one
    module: its insides (``base_layer``, ``lora_A``, ...) are never targets themselves. An adapter
    layer that wraps another one of the same adapter (LoRA on two parameters of one module,
    :meth:`~peftkit.layers.AdapterLayer.nests_by_path`) is followed by the inner one, at
    ``<key>.base_layer``; layers a mixed model stacked on one module are not (see iter_adapter_modules)."""
    from .layers import AdapterLayer
    from .modules_to_save import ModulesToSaveWrapper

    for name, child in model.named_children():
        key = f"{prefix}.{name}" if prefix else name
        yield key, child
        outer, path = child, key
        while isinstance(outer, AdapterLayer) and isinstance(outer.base_layer, AdapterLayer):
            inner = outer.base_layer
            if inner.nests_by_path(outer):
                path = f"{path}.base_layer"
                yield path, inner
            outer = inner  # a mixed model's stack stays under the module's path (iter_adapter_modules)
        if not isinstance(child, (AdapterLayer, ModulesToSaveWrapper)):
            yield from iter_plain_modules(child, key)


def iter_adapter_modules(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """Every adapter layer and saved-module wrapper with the path of the module it adapts. Layers
    that a mixed model stacked on one module (see :func:`peftkit.layers.layer_stack`) all come under
    that module's path, outermost first: checkpoint keys name the module, not the stack.

    Example:
        >>> [(key, type(m).__name__) for key, m in iter_adapter_modules(mixed.get_base_model())]  # doctest: +SKIP
        [('lin0', 'LoHaLayer'), ('lin0', 'LoraLinear'), ('lin1', 'LoraLinear')]
    """
    from .layers import AdapterLayer, layer_stack
    from .modules_to_save import ModulesToSaveWrapper

    for key, module in iter_plain_modules(model):
        if isinstance(module, AdapterLayer):
            for layer in layer_stack(module):
                yield key, layer
        elif isinstance(module, ModulesToSaveWrapper):
            yield key, module


def name_matches(key: str, names: str | list[str]) -> bool:
    """``peft``'s rule: a regex must match the whole key; a name matches the key or its tail."""
    if isinstance(names, str):
        return re.fullmatch(names, key) is not None
    return any(key == n or key.endswith("." + n) for n in names)


def layer_index(key: str, layers_pattern: Optional[str | list[str]]) -> Optional[int]:
    """Index of the block a module lives in, e.g. 3 for ``model.layers.3.mlp.up_proj``."""
    # an empty layers_pattern ("" or []) means no pattern, as in peft: the first numbered segment
    patterns = [layers_pattern] if isinstance(layers_pattern, str) and layers_pattern else (layers_pattern or [])
    if not patterns:
        # the first numbered segment, so experts inside a block ("experts.0") are not mistaken for it
        m = re.match(r".*?\.[^.]*\.(\d+)\.", key)
        return int(m.group(1)) if m else None
    for pattern in patterns:
        m = re.match(rf"(?:^|.*?\.){pattern}\.(\d+)\.", key)
        if m:
            return int(m.group(1))
    return None


def pattern_value(patterns: dict, key: str, default):
    """Per-module override (``rank_pattern`` / ``alpha_pattern``): the first pattern that matches
    the key's tail wins, as in ``peft``."""
    for pattern, value in patterns.items():
        if re.match(rf"(.*\.)?({pattern})$", key):
            return value
    return default


def output_head_names(model: nn.Module, task_type: Optional[TaskType]) -> set[str]:
    """The LM head (and, for classifiers, the classification head): 'all-linear' leaves them alone."""
    heads: list[nn.Module] = []
    get_out = getattr(model, "get_output_embeddings", None)
    out = get_out() if callable(get_out) else None
    if out is not None:
        heads.append(out)
    for name in TASK_HEADS.get(task_type, []) if task_type else []:
        if isinstance(getattr(model, name, None), nn.Module):
            heads.append(getattr(model, name))
    return {key for key, module in model.named_modules() if any(module is h for h in heads)}


def _is_linear(module: nn.Module) -> bool:
    from .layers import AdapterLayer

    if isinstance(module, AdapterLayer):
        module = module.get_base_layer()
    return isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D"


def model_type_of(model: nn.Module) -> Optional[str]:
    """The ``model_type`` of a transformers-like model's config (None without one): its
    ``model_type`` attribute when that is a string, else ``config.to_dict()["model_type"]`` as peft
    reads it (configs that are no ``PretrainedConfig``: a dict-like or mocked config).

    Example:
        >>> model_type_of(AutoModelForCausalLM.from_pretrained("gpt2"))  # doctest: +SKIP
        'gpt2'
    """
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if config is None or isinstance(model_type, str):
        return model_type
    to_dict = getattr(config, "to_dict", None)
    values = to_dict() if callable(to_dict) else None
    found = values.get("model_type") if isinstance(values, dict) else None
    return found if isinstance(found, str) else None


def resolve_target_modules(model: nn.Module, config: TargetedConfig) -> Optional[str | list[str]]:
    """``target_modules`` as concrete names: expands ``"all-linear"`` and the per-architecture
    default used when it is unset."""
    # a method may fill model-dependent defaults of its own first (IA3: feedforward_modules)
    fill_defaults = getattr(config, "fill_model_defaults", None)
    if callable(fill_defaults):
        fill_defaults(model)
    targets = config.target_modules
    if isinstance(targets, str) and targets.lower() == ALL_LINEAR:
        skip = output_head_names(model, config.task_type)
        return [key for key, m in iter_plain_modules(model) if _is_linear(m) and key not in skip]
    if targets is None:
        # a method may define its own default (BitFit: every module with a bias; LN tuning: the norms)
        method_default = getattr(config, "default_target_modules", None)
        if callable(method_default):
            return method_default(model)
        model_type = model_type_of(model)
        if model_type not in DEFAULT_TARGETS:
            raise TargetError(  # peft's sentence (code matches it), then why and how
                "Please specify `target_modules` in `peft_config`: it is not set and peftkit has no default for "
                f"model type {model_type!r}; set e.g. target_modules='all-linear' or a list such as ['q_proj', 'v_proj']"
            )
        default = DEFAULT_TARGETS[model_type]
        return default if isinstance(default, str) else list(default)  # a str is a regex, as any target_modules
    return targets


def include_all_linear_layers(config: TargetedConfig, model: nn.Module) -> TargetedConfig:
    """``config`` with ``target_modules="all-linear"`` (any case) replaced, in place, by the full
    paths of ``model``'s linear layers (``nn.Linear``, transformers' ``Conv1D``, and adapter layers
    around them) other than the output head (and a classifier's head): ``peft``'s
    ``_maybe_include_all_linear_layers``. Any other ``target_modules`` is left alone. Returns
    ``config``.

    Example:
        >>> include_all_linear_layers(LoraConfig(target_modules="all-linear"), model).target_modules  # doctest: +SKIP
        ['model.layers.0.self_attn.q_proj', 'model.layers.0.self_attn.k_proj', ...]
    """
    targets = getattr(config, "target_modules", None)
    if isinstance(targets, str) and targets.lower() == ALL_LINEAR:
        config.target_modules = resolve_target_modules(model, config)
    return config


def short_target_names(model: nn.Module, config: TargetedConfig, resolved, targets: list[str]):
    """What ``config.target_modules`` stores once ``targets`` (the matched paths) are adapted:
    ``"all-linear"`` and lists of at least 20 names (``peft``'s rule) become the fewest names that
    match exactly the same modules (:mod:`peftkit.target_names`); anything else stays as resolved.

    Example:
        >>> short_target_names(model, LoraConfig(target_modules="all-linear"), keys, keys)  # doctest: +SKIP
        ['down_proj', 'gate_proj', 'k_proj', 'o_proj', 'q_proj', 'up_proj', 'v_proj']
    """
    from .target_names import MIN_TARGET_MODULES_FOR_OPTIMIZATION, condensed_targets

    asked = config.target_modules
    all_linear = isinstance(asked, str) and asked.lower() == ALL_LINEAR
    if isinstance(resolved, str) or not (all_linear or len(resolved) >= MIN_TARGET_MODULES_FOR_OPTIMIZATION):
        return resolved
    keys = [key for key, _ in iter_plain_modules(model)]
    names = condensed_targets(targets, keys)
    if names is None:
        return resolved
    # kept only if the short names select the same modules and the config stays valid (IA3 wants its
    # feedforward_modules among the targets, by name)
    trial = config.model_copy(update={"target_modules": names})
    if [key for key in keys if is_target(key, trial, names)] != targets or trial.check():
        return resolved
    return names


def compact_names(model: nn.Module, keys: list[str]) -> list[str]:
    """``keys`` as short peft-style names: a leaf name (``"ln_1"``) where every module of that name
    is among ``keys``, the full key otherwise. Matching the result selects exactly ``keys``."""
    chosen = set(keys)
    by_leaf: dict[str, list[str]] = {}
    for key, _ in iter_plain_modules(model):
        by_leaf.setdefault(key.rsplit(".", 1)[-1], []).append(key)
    names = []
    for key in keys:
        leaf = key.rsplit(".", 1)[-1]
        names.append(leaf if all(k in chosen for k in by_leaf[leaf]) else key)
    return list(dict.fromkeys(names))


def modules_to_save_for(config: TargetedConfig) -> list[str]:
    """``modules_to_save`` plus the heads its task trains in full (a new classifier is untrained)."""
    heads = TASK_HEADS.get(config.task_type, []) if config.task_type else []
    return list(dict.fromkeys([*(config.modules_to_save or []), *heads]))


def is_excluded(key: str, config: TargetedConfig) -> bool:
    """Whether the module named ``key`` is kept from adaptation whatever ``target_modules`` says:
    ``exclude_modules`` names it, or it is (inside) a module trained in full (``modules_to_save``)."""
    if config.exclude_modules and name_matches(key, config.exclude_modules):
        return True
    # a module that is trained in full (modules_to_save) never also gets an adapter
    return any(re.match(rf"(^|.*\.){re.escape(name)}($|\..*)", key) for name in modules_to_save_for(config))


def is_target(key: str, config: TargetedConfig, targets: str | list[str]) -> bool:
    """Whether the module named ``key`` is adapted under ``config`` (targets already resolved)."""
    if is_excluded(key, config):
        return False
    if not name_matches(key, targets):
        return False
    if config.layers_to_transform not in (None, []) and not isinstance(targets, str):  # [] means all, as in peft
        idx = layer_index(key, config.layers_pattern)
        wanted = config.layers_to_transform
        wanted = [wanted] if isinstance(wanted, int) else wanted
        return idx is not None and idx in wanted
    return True


def check_target_module_exists(config: TargetedConfig, key: str) -> bool:
    """Whether ``config`` adapts the module at path ``key`` by its names alone (``target_modules``,
    ``exclude_modules``, ``layers_to_transform``): ``peft``'s helper for checking a config, with no
    model at hand (so ``"all-linear"`` and an unset ``target_modules`` match nothing here).

    Example:
        >>> check_target_module_exists(LoraConfig(target_modules=["q_proj"]), "model.layers.0.self_attn.q_proj")
        True
    """
    targets = config.target_modules
    if targets is None or (isinstance(targets, str) and targets.lower() == ALL_LINEAR):
        return False
    return is_target(key, config, targets)


def inspect_matched_modules(peft_model: nn.Module, adapter_name: str = "default") -> dict[str, list[str]]:
    """``{"matched": [...], "unmatched": [...]}``: the module paths of the user's model that
    ``adapter_name``'s layers wrap, and all the others (``peft``'s helper for debugging a config).

    Example:
        >>> inspect_matched_modules(peft_model)["matched"]  # doctest: +SKIP
        ['model.layers.0.self_attn.q_proj', 'model.layers.0.self_attn.v_proj']
    """
    from .layers import AdapterLayer

    adapted = {key for key, module in iter_adapter_modules(peft_model.get_base_model())
               if isinstance(module, AdapterLayer) and adapter_name in module.adapter_names}
    keys = [key for key, _ in iter_plain_modules(peft_model.get_base_model()) if key]
    return {"matched": [k for k in keys if k in adapted], "unmatched": [k for k in keys if k not in adapted]}


def find_targets(model: nn.Module, config: TargetedConfig) -> list[str]:
    """Keys of the modules ``config`` adapts, in model order; an error if there are none.

    Example:
        >>> find_targets(model, LoraConfig(target_modules=["q_proj"]))  # doctest: +SKIP
        ['model.layers.0.self_attn.q_proj', 'model.layers.1.self_attn.q_proj']
    """
    keys = matching_modules(model, config)
    if not keys:
        raise no_match_error(model, config)
    if config.exclude_modules and not any(name_matches(key, config.exclude_modules) for key, _ in iter_plain_modules(model)):
        warnings.warn(  # peft's sentence (its tests match it), then why it matters
            f"You have passed exclude_modules={config.exclude_modules} but no modules were excluded. Please check "
            "that exclude_modules was set correctly. (It matches no module path of "
            f"{type(model).__name__}, so it has no effect: a misspelt name excludes nothing.)",
            PeftWarning, stacklevel=3,
        )
    return keys


def matching_modules(model: nn.Module, config: TargetedConfig) -> list[str]:
    """Keys of the modules ``config`` adapts, in model order; empty when there are none (see
    :func:`find_targets` for the version that raises).

    Example:
        >>> matching_modules(model, LoraConfig(target_modules=["nothing_here"]))  # doctest: +SKIP
        []
    """
    targets = resolve_target_modules(model, config)
    return [key for key, _ in iter_plain_modules(model) if is_target(key, config, targets)]


def no_match_error(model: nn.Module, config: TargetedConfig) -> NoMatchingPeftModuleError:
    """The error for a config that adapts no module of ``model``, with ``peft``'s sentence for the
    case (every module excluded; nothing matched ``target_modules``; some matched but were excluded
    or are ``modules_to_save``), then peftkit's detail: the module names there are to pick.

    Example:
        >>> str(no_match_error(model, LoraConfig(target_modules=["nope"])))  # doctest: +SKIP
        "Target modules ['nope'] not found in the base model. Please check the target modules and try again. ..."
    """
    keys = [key for key, _ in iter_plain_modules(model)]
    excluded = any(is_excluded(key, config) for key in keys)
    unmatched = any(not is_excluded(key, config) for key in keys)  # no key is a target: the rest did not match
    if excluded and not unmatched:
        head = ("All modules were excluded. This is likely unintended. Check your `target_modules`, "
                "`exclude_modules` and `modules_to_save` configuration.")
    elif not excluded:
        head = (f"Target modules {config.target_modules} not found in the base model. Please check the target "
                "modules and try again.")
    else:
        head = ("No modules were targeted for adaptation. This might be caused by a combination of mismatched "
                "target modules and excluded modules. Please check your `target_modules` and `exclude_modules` "
                "configuration. You may also have only targeted modules that are marked to be saved "
                "(`modules_to_save`).")
    if excluded or unmatched:  # peft's notes on the layer filter
        if config.layers_to_transform is not None:
            head += f" Note: You specified 'layers_to_transform': {config.layers_to_transform}."
        if config.layers_pattern is not None:
            head += f" You also specified 'layers_pattern': {config.layers_pattern}."
    return NoMatchingPeftModuleError(f"{head}\n{nothing_matched(model, config)}")


def nothing_matched(model: nn.Module, config: TargetedConfig) -> str:
    """The error text for ``target_modules`` that select no module: the names there are to pick."""
    names = [key for key, m in iter_plain_modules(model) if not list(m.children())]
    leaf_names = sorted({k.rsplit(".", 1)[-1] for k in names})
    sample = ", ".join(leaf_names[:12]) + (", ..." if len(leaf_names) > 12 else "")
    extra = ""
    if config.layers_to_transform is not None:
        extra = f" with layers_to_transform={config.layers_to_transform!r}"
    if config.exclude_modules:
        extra += f" after exclude_modules={config.exclude_modules!r}"
    return (
        f"target_modules={config.target_modules!r} matched no module of {type(model).__name__}{extra}. "
        f"Its leaf module names include: {sample}. "
        "Use one of these names, a regex over the full module path, or 'all-linear'."
    )
