"""``key.sub=value`` overrides on the command line (``peftkit train run.yaml train.lr=1e-4``), applied
to the raw config before it is validated, so they are judged exactly like the file's own keys.

Example:
    >>> from peftkit.train.config_overrides import apply_overrides
    >>> raw = {}
    >>> apply_overrides(raw, ["train.max_steps=5"]), raw
    ([], {'train': {'max_steps': 5}})
"""

from __future__ import annotations

from typing import Any, Iterable, Optional

import yaml

from .config_schema import Problem
from .yaml_io import load_yaml

def apply_overrides(raw: dict[str, Any], overrides: Iterable[str]) -> list[Problem]:
    """Apply ``key.sub=value`` overrides (YAML values: ``8``, ``null``, ``[q, v]``) to ``raw`` in place;
    return those that cannot apply. A missing key or section is created (validation then judges its
    name, as in the file); a missing mapping deeper down is not.

    >>> raw = {"train": {"lr": 1.0}}
    >>> apply_overrides(raw, ["train.lr=2e-4", "train.max_steps=null"]), raw
    ([], {'train': {'lr': 0.0002, 'max_steps': None}})
    """
    problems: list[Problem] = []
    for item in overrides:
        key, sep, text = (part.strip() for part in item.partition("="))
        if item.startswith("-"):
            problems.append((key.lstrip("-"), f"write overrides without dashes: {item.lstrip('-')!r}"))
        elif not sep or "" in key.split("."):
            problems.append((key, f"override {item!r} is not key.sub=value, e.g. train.lr=1e-4"))
        elif not text:
            problems.append((key, "empty value; write key=null to unset it, or key='' for an empty string"))
        else:
            try:
                problem = _set_dotted(raw, key.split("."), load_yaml(text))
            except yaml.YAMLError as e:
                problem = f"value {text!r} is not valid YAML ({getattr(e, 'problem', None) or e})"
            problems += [(key, problem)] if problem else []
    return problems


def _set_dotted(raw: dict[str, Any], parts: list[str], value: Any) -> Optional[str]:
    node = raw
    for depth, part in enumerate(parts[:-1]):
        if depth == 0 and node.get(part) is None:
            node[part] = {}  # a section left out (or left empty) in the file
        if not isinstance(node.get(part), dict):
            where, got = ".".join(parts[: depth + 1]), "missing" if node.get(part) is None else repr(node[part])
            return f"{where} is {got}, not a mapping; set it whole, e.g. {where}={{{parts[depth + 1]}: ...}}"
        node = node[part]
    node[parts[-1]] = value
    return None
