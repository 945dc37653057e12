"""The weight change an adapter really makes, measured by merging it (in peftkit or ``peft``): the
reference that combinations are checked against, whatever the method (LoRA, DoRA, IA3, ...)."""

from __future__ import annotations

import peft
import torch
from tiny_models import randomize_lora_weights

import peftkit as pk

ADAPTER_TENSORS = ("lora_", "ia3_", "hada_", "lokr_", "modules_to_save.")


def _layers(model) -> dict:
    kinds = (pk.AdapterLayer, peft.tuners.tuners_utils.BaseTunerLayer)
    return {k: m for k, m in model.base_model.model.named_modules() if isinstance(m, kinds)}


def _base_tensors(layer) -> list[torch.Tensor]:
    base = layer.get_base_layer()
    return [t for t in (base.weight, getattr(base, "bias", None)) if t is not None]


@torch.no_grad()
def changes(model, name: str) -> dict[str, torch.Tensor]:
    """Module path -> (merged weight and bias - unmerged ones), flattened, for adapter ``name``."""
    layers = _layers(model)
    before = {k: [t.detach().clone() for t in _base_tensors(m)] for k, m in layers.items()}
    model.merge_adapter([name])
    after = {k: [t.detach().clone() for t in _base_tensors(m)] for k, m in layers.items()}
    model.unmerge_adapter()
    return {k: torch.cat([(a - b).flatten() for a, b in zip(after[k], before[k])]).double() for k in layers}


def weighted_changes(model, names: list[str], weights: list[float]) -> dict[str, torch.Tensor]:
    """The exact weighted sum of the adapters' changes: what a combination should make."""
    parts = [changes(model, n) for n in names]
    return {k: sum(w * p[k] for w, p in zip(weights, parts)) for k in parts[0]}


def relative_error(got: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> float:
    """Relative Frobenius distance over all modules together."""
    diff = sum(float((got[k] - expected[k]).square().sum()) for k in expected) ** 0.5
    norm = sum(float(expected[k].square().sum()) for k in expected) ** 0.5
    return diff / norm


def build(lib, base, configs: dict, seed: int = 3):
    """A model (peftkit's or peft's) holding ``configs`` by name, with random adapter tensors."""
    model = None
    for name, config in configs.items():
        if model is None:
            model = lib.get_peft_model(base, config, adapter_name=name)
        else:
            model.add_adapter(name, config)
    randomize_lora_weights(model, seed=seed, patterns=ADAPTER_TENSORS)
    return model


def combination_error(lib, base, configs: dict, weights: list[float], **kwargs) -> float:
    """Build, combine as ``comb`` and return the relative error against the weighted changes."""
    model = build(lib, base, configs)
    names = list(configs)
    expected = weighted_changes(model, names, weights)
    model.add_weighted_adapter(names, weights, "comb", **kwargs)
    return relative_error(changes(model, "comb"), expected)
