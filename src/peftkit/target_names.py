"""Short ``target_modules``: the fewest name suffixes that select exactly the adapted modules.

``"all-linear"`` and long lists of full module paths (a list built by a script, diffusers' LoRA
loaders) are stored in ``adapter_config.json`` as the shortest names that match the same modules
under peft's rule (a name matches a key equal to it or ending in ``"." + name``): a Llama's 210
projection paths become ``["down_proj", "gate_proj", ..., "v_proj"]``, as ``peft`` writes them.

Example:
    >>> sorted(find_minimal_target_modules(["a.b.c", "d.e.f"], ["a.b.x", "d.x.f"]))
    ['c', 'e.f']
"""

from __future__ import annotations

from typing import Iterable, Optional

# peft shortens a list of at least this many names (its MIN_TARGET_MODULES_FOR_OPTIMIZATION)
MIN_TARGET_MODULES_FOR_OPTIMIZATION = 20


def find_minimal_target_modules(target_modules: Iterable[str], other_module_names: Iterable[str]) -> set[str]:
    """The shortest suffixes (whole dotted segments) of ``target_modules`` that match none of
    ``other_module_names``: matching the result against a model's module paths selects the targets
    and nothing else. Each target gets its shortest such suffix; targets that share it share one name.

    Raises ValueError for a string, an empty collection, an empty name, or names in both arguments.

    Example:
        >>> sorted(find_minimal_target_modules([f"layers.{i}.k_proj" for i in range(3)], ["layers.0.q_proj"]))
        ['k_proj']
    """
    # peft's sentences first (code written for peft matches them), then ours
    if isinstance(target_modules, str) or not target_modules:
        raise ValueError("target_modules should be a list or set of strings: pass the full module paths to shorten")
    targets = set(target_modules)
    if "" in targets:
        raise ValueError("target_modules should not contain an empty string: every entry must be a module path")
    others = set(other_module_names)
    common = targets & others
    if common:
        raise ValueError(
            "target_modules and other_module_names contain common elements, this should not happen: "
            f"{sorted(common)[:5]} are in both (a module is either adapted or not)")
    other_suffixes = {".".join(parts[i:]) for parts in (name.split(".") for name in others) for i in range(len(parts))}
    return {_shortest_free_suffix(target, other_suffixes) for target in targets}


def _shortest_free_suffix(target: str, taken: set[str]) -> str:
    parts = target.split(".")
    for start in range(len(parts) - 1, -1, -1):
        suffix = ".".join(parts[start:])
        if suffix not in taken:
            return suffix
    return target  # unreachable: the whole path is not among the others (checked above)


def condensed_targets(targets: list[str], all_keys: Iterable[str]) -> Optional[list[str]]:
    """``targets`` (the adapted modules' full paths) as the sorted minimal names, or None when that
    would not be shorter. ``all_keys``: every module path of the model.

    Example:
        >>> condensed_targets(["0.q", "1.q"], ["0", "0.q", "0.k", "1", "1.q", "1.k"])
        ['q']
    """
    chosen = set(targets)
    if not chosen:
        return None
    names = sorted(find_minimal_target_modules(chosen, [key for key in all_keys if key and key not in chosen]))
    return names if len(names) < len(chosen) else None
