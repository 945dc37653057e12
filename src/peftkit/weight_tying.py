"""Tied embeddings and adapters (``LoraConfig.ensure_weight_tying``, as in ``peft``).

Many language models share one table between the input embedding and the LM head
(``tie_word_embeddings=True``). When an adapter adapts that table through one of the two modules,
the other one keeps the unadapted table unless its adapter is tied too. With
``ensure_weight_tying=True`` every module tied to the input embedding (the *followers*) gets the
embedding's adapter (the *leader*'s), sharing its tensors:

- ``modules_to_save``: the followers' trained copies use the embedding copy's weight (one parameter);
- ``target_modules``: the embedding gets the adapter, and a follower's adapter reads the
  embedding's tensors (a linear LM head: transposed views, so both uses train one parameter).

Merging then adds the shared delta once, and the weight stays tied. Checkpoints hold the
followers' keys too, as ``peft`` writes them, so files move both ways.

Example:
    >>> from peftkit.weight_tying import tied_module_names
    >>> tied_module_names(llama_with_tied_head)  # doctest: +SKIP
    ['lm_head']
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterator, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .targets import iter_adapter_modules, iter_plain_modules

if TYPE_CHECKING:
    from .config import PeftConfig
    from .layers import AdapterLayer

_ISSUE = ("This can lead to complications, for example when merging the adapter or converting your model to formats "
          "other than safetensors. Check the discussion here: https://github.com/huggingface/peft/issues/2777")
# peft's sentences first (code written for peft matches them), then what to do in peftkit
NOT_REQUESTED = ("Model has `tie_word_embeddings=True` and a tied layer is part of the adapter, but "
                 "`ensure_weight_tying` is not set to True. " + _ISSUE
                 + " (peftkit: set ensure_weight_tying=True to give the tied modules one shared adapter.)")
NO_IMPLEMENTATION = ("Model has `tie_word_embeddings=True` and a tied layer is part of the adapter, but no "
                     "implementation exists to tie the adapters. " + _ISSUE
                     + " (peftkit: only LoRA ties adapters; load the model with tie_word_embeddings=False to untie.)")
NOTHING_TIED = ("You have requested `ensure_weight_tying`, but no tied modules were found in the model "
                "(peftkit: its config has tie_word_embeddings=False, or no module shares the input embedding's "
                "weight); the adapter is added without tying.")
NOTHING_ADDED = ("You have requested `ensure_weight_tying`, but no tied modules are added in either "
                 "`modules_to_save` or `target_modules` (peftkit: name the input embedding or a module tied to "
                 "it there, or set ensure_weight_tying=False).")


@dataclass
class TyingPlan:
    """What one adapter ties: ``leader`` (the input embedding's path) and ``followers`` (the paths of
    the modules sharing its weight), through ``via`` (``"modules_to_save"`` or ``"target_modules"``)."""

    leader: str
    followers: list[str] = field(default_factory=list)
    via: str = "target_modules"

    @property
    def keys(self) -> list[str]:
        return [self.leader, *self.followers]


def _unwrapped(module: nn.Module) -> nn.Module:
    """The original module inside adapter layers and saved-module wrappers."""
    from .layers import AdapterLayer
    from .modules_to_save import ModulesToSaveWrapper

    while True:
        if isinstance(module, AdapterLayer):
            module = module.get_base_layer()
        elif isinstance(module, ModulesToSaveWrapper):
            module = module.original_module
        else:
            return module


def input_embedding_name(model: nn.Module) -> Optional[str]:
    """The path of ``model.get_input_embeddings()`` in ``model`` (None: the model has none).

    Example:
        >>> input_embedding_name(llama)  # doctest: +SKIP
        'model.embed_tokens'
    """
    getter = getattr(model, "get_input_embeddings", None)
    try:
        embedding = getter() if callable(getter) else None
    except (NotImplementedError, AttributeError):
        return None
    if embedding is None:
        return None
    return next((key for key, module in iter_plain_modules(model) if module is embedding), None)


# Path segments that adapter layers and saved-module wrappers put between a module and its weight.
_WRAPPER_SEGMENTS = re.compile(r"(\.(base_layer|original_module))+$")


def tied_module_names(model: nn.Module) -> list[str]:
    """Paths of the modules whose weight is the input embedding's (an LM head with
    ``tie_word_embeddings=True``), sorted; the embedding itself is not listed. Empty when the model's
    config says ``tie_word_embeddings=False`` (weights equal by chance are not tied), or when the model
    has no input embedding. Modules already wrapped by adapters are found under their own paths
    (a PeftModel answers for its user model). ``peft``'s ``_get_module_names_tied_with_embedding``.

    Example:
        >>> from transformers import LlamaConfig, LlamaForCausalLM
        >>> cfg = LlamaConfig(vocab_size=32, hidden_size=8, intermediate_size=16, num_hidden_layers=1,
        ...                   num_attention_heads=2, tie_word_embeddings=True)
        >>> tied_module_names(LlamaForCausalLM(cfg))
        ['lm_head']
    """
    if callable(getattr(model, "get_base_model", None)):  # a PeftModel: names are its user model's
        model = model.get_base_model()
    if getattr(getattr(model, "config", None), "tie_word_embeddings", None) is False:
        return []  # tying is switched off for this checkpoint, even where weights are shared (peft: #2944)
    leader = input_embedding_name(model)
    if leader is None:
        return []
    from .tree import get_module

    weight = getattr(_unwrapped(get_module(model, leader)), "weight", None)
    if not isinstance(weight, torch.Tensor):
        return []
    names = set()
    for name, p in model.named_parameters(remove_duplicate=False):
        if p is weight:
            names.add(_WRAPPER_SEGMENTS.sub("", name.rpartition(".")[0]))
    names.discard(leader)
    return sorted(names)


# Whether a config adapts the tied embedding is decided by these module names, as peft decides it
# (not by the modules matched): a config must tie, or not, the same way in both libraries, or an
# adapter saved by one would compute differently in the other.
EMBEDDING_NAMES = ("embed_tokens", "lm_head")


def _names_an_embedding(target_modules) -> bool:
    if isinstance(target_modules, str):  # a regex, tried on the bare names ("all-linear" matches neither)
        return any(re.fullmatch(target_modules, name) for name in EMBEDDING_NAMES)
    return any(name.rsplit(".", 1)[-1] in EMBEDDING_NAMES for name in target_modules or [])


def plan_weight_tying(model: nn.Module, config: "PeftConfig") -> Optional[TyingPlan]:
    """Decide what ``config`` ties on ``model``, and warn as ``peft`` does: a tied module is part of
    the adapter but tying is not requested (or the method cannot tie), or tying is requested but
    there is nothing to tie. None: nothing is tied. The config names the embedding or the head
    through ``modules_to_save`` or ``target_modules`` (by :data:`EMBEDDING_NAMES`); then the input
    embedding leads and every module sharing its weight follows.

    Example:
        >>> plan_weight_tying(llama, LoraConfig(target_modules=["embed_tokens"], ensure_weight_tying=True))  # doctest: +SKIP
        TyingPlan(leader='model.embed_tokens', followers=['lm_head'], via='target_modules')
    """
    followers = tied_module_names(model)
    leader = input_embedding_name(model) if followers else None
    saved = any(name.rsplit(".", 1)[-1] in EMBEDDING_NAMES for name in getattr(config, "modules_to_save", None) or [])
    targeted = _names_an_embedding(getattr(config, "target_modules", None))
    requested = getattr(config, "ensure_weight_tying", None)
    if requested:
        if not followers:
            warnings.warn(NOTHING_TIED, stacklevel=4)
        elif saved:
            return TyingPlan(leader, followers, "modules_to_save")
        elif targeted:
            return TyingPlan(leader, followers, "target_modules")
        else:
            warnings.warn(NOTHING_ADDED, stacklevel=4)
    elif (saved or targeted) and followers:
        # a config without the field belongs to a method that cannot tie adapters (peft's rule too)
        warnings.warn(NOT_REQUESTED if requested is False else NO_IMPLEMENTATION, stacklevel=4)
    return None


def tie_saved_modules(model: nn.Module, adapter_name: str, plan: TyingPlan) -> None:
    """``modules_to_save`` tying: each follower's trained copy takes the leader copy's weight (the
    same parameter), so they train, save and unload as one table.

    Example:
        >>> tie_saved_modules(model, "default", TyingPlan("model.embed_tokens", ["lm_head"], "modules_to_save"))  # doctest: +SKIP
    """
    from .tree import get_module

    source = get_module(model, plan.leader).modules_to_save[adapter_name]
    for key in plan.followers:
        copy = get_module(model, key).modules_to_save[adapter_name]
        copy.weight = source.weight


class TiedWeight(nn.Module):
    """Stands where a layer keeps an adapter's ``nn.Linear`` (``lora_A[name]``): its ``weight`` is a
    tensor another layer owns (``getattr(owner, attr)[adapter_name]``), transposed if asked. A view,
    not a copy: one parameter, whose gradient sums both uses. It owns no parameters, so the owner's
    checkpoint keys and trainability cover it; :func:`tied_adapter_tensors` lists it for saving.

    Example:
        >>> lm_head.lora_A["default"] = TiedWeight(embed, "lora_embedding_B", "default", transpose=True)  # doctest: +SKIP
    """

    bias = None

    def __init__(self, owner: nn.Module, attr: str, adapter_name: str, transpose: bool):
        super().__init__()
        # kept out of _modules: the owner is a module elsewhere in the model, not a child of this one
        self.__dict__["owner"] = owner
        self.attr, self.adapter_name, self.transpose = attr, adapter_name, transpose

    @property
    def weight(self) -> torch.Tensor:
        # looked up on every use, so a parameter the owner replaces (loading onto meta tensors) is followed
        tensor = getattr(self.owner, self.attr)[self.adapter_name]
        return tensor.t() if self.transpose else tensor

    @property
    def in_features(self) -> int:
        return self.weight.shape[1]

    @property
    def out_features(self) -> int:
        return self.weight.shape[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight)

    def extra_repr(self) -> str:
        return f"tied to {getattr(self.owner, 'key', '?')}.{self.attr}[{self.adapter_name!r}]" + (".T" if self.transpose else "")


def tied_adapter_tensors(model: nn.Module, adapter_name: str, prefix: str) -> dict[str, torch.Tensor]:
    """Checkpoint key -> tensor for the adapter tensors that tied layers read from another layer
    (:class:`TiedWeight`): saved under the follower's keys as ``peft`` saves them; on loading their
    values come from the owner's keys.

    Example:
        >>> list(tied_adapter_tensors(peft_model.get_base_model(), "default", "base_model.model."))  # doctest: +SKIP
        ['base_model.model.lm_head.lora_A.weight', 'base_model.model.lm_head.lora_B.weight']
    """
    return {f"{prefix}{key}.{attr}.weight": entry.weight for key, attr, entry in _tied_entries(model, adapter_name)}


def _tied_entries(model: nn.Module, adapter_name: str) -> Iterator[tuple[str, str, TiedWeight]]:
    from .layers import AdapterLayer

    for key, layer in iter_adapter_modules(model):
        if not isinstance(layer, AdapterLayer):
            continue
        for attr in layer.adapter_param_names:
            holder = getattr(layer, attr, None)
            if isinstance(holder, nn.ModuleDict) and adapter_name in holder and isinstance(holder[adapter_name], TiedWeight):
                yield key, attr, holder[adapter_name]


def link_tied_layers(layers: list["AdapterLayer"], adapter_name: str) -> None:
    """Record that ``layers`` hold one shared adapter ``adapter_name`` on one shared weight: merging
    adds its delta to that weight once (see ``AdapterLayer.merge``) and never unties it."""
    for layer in layers:
        layer.tied_layers[adapter_name] = [other for other in layers if other is not layer]
