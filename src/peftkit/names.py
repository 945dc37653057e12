"""Names that become module keys, folder names or request fields: one set of rules, checked at every
entry point, and one check that a computed path stays inside the folder it was computed from.

An adapter name ends up in three places: a key of the layers' ``nn.ModuleDict`` s, a parameter path
(``lora_A.<name>.weight``) and, for every adapter but ``"default"``, a sub-folder that
``save_pretrained`` writes (``out/<name>/``). A multi-adapter server takes it straight from a
request. So a name is a short, printable string that is a single path segment on every operating
system: no path separators, no drive colon, no dot (``.`` / ``..`` included; torch refuses dots in
module keys anyway), no control characters, not an attribute of ``nn.ModuleDict`` (``"forward"``
would shadow the method) and not ``"__base__"`` (the mixed-batch marker for "no adapter").

>>> check_adapter_name("math-v2")
'math-v2'
>>> check_adapter_name("../etc")
Traceback (most recent call last):
...
peftkit.errors.AdapterError: adapter name '../etc' is invalid: it contains '/', '.' (an adapter name becomes a folder name and a module key: use letters, digits, '-' and '_', at most 64 characters)
"""

from __future__ import annotations

import os
import reprlib
import unicodedata
from typing import Any

import torch.nn as nn

from .errors import AdapterError, PathError

MAX_NAME_LENGTH = 64
# In a mixed batch (adapter_names=...), rows named this use the base model alone.
BASE_ADAPTER = "__base__"
# Characters that separate paths or drives on some system, or that torch refuses in module keys.
_FORBIDDEN = "/\\:."
_RULE = ("an adapter name becomes a folder name and a module key: use letters, digits, '-' and '_', "
         f"at most {MAX_NAME_LENGTH} characters")

# Adapters are keys of these containers in every layer; a key that is also an attribute of theirs
# ("forward", "training", "to", ...) cannot be added.
_HOLDERS = (nn.ModuleDict(), nn.ParameterDict())

_short = reprlib.Repr()
_short.maxstring, _short.maxother, _short.maxlist, _short.maxdict, _short.maxlevel = 80, 80, 6, 6, 2
SHORT_REPR_LIMIT = 200


def short_repr(value: Any) -> str:
    """``repr`` cut to at most 200 characters and two levels: error messages quote user values
    with it, so a huge or self-similar value (a YAML alias bomb) never makes a huge message.

    >>> short_repr("x" * 1000)[:12], len(short_repr(list(range(10**6)))) < 60
    ("'xxxxxxxxxxx", True)
    """
    text = _short.repr(value)
    return text if len(text) <= SHORT_REPR_LIMIT else text[: SHORT_REPR_LIMIT - 3] + "..."


def _problems(name: str) -> list[str]:
    problems = []
    if not name:
        problems.append("it is empty")
    bad = sorted({c for c in name if c in _FORBIDDEN}, key=_FORBIDDEN.index)
    if bad:
        problems.append("it contains " + ", ".join(repr(c) for c in bad))
    if any(unicodedata.category(c)[0] in "CZ" and c != " " for c in name):
        problems.append("it contains a control, format or separator character (NUL, newline, ...)")
    if name != name.strip():
        problems.append("it starts or ends with a space")
    if len(name) > MAX_NAME_LENGTH or len(name.encode("utf-8", "surrogatepass")) > 4 * MAX_NAME_LENGTH:
        problems.append(f"it is {len(name)} characters long (at most {MAX_NAME_LENGTH})")
    if name == BASE_ADAPTER:
        problems.append(f"{BASE_ADAPTER!r} is reserved for rows that use no adapter (adapter_names=...)")
    elif name and any(hasattr(holder, name) for holder in _HOLDERS):
        problems.append(f"it is the name of an nn.Module attribute ({name!r}), which an adapter would shadow")
    return problems


def check_adapter_name(name: Any, field: str = "adapter name") -> str:
    """``name`` if it is a valid adapter name (see the module docstring), else :class:`AdapterError`
    naming the value and the rule it breaks.

    >>> check_adapter_name("default")
    'default'
    """
    if not isinstance(name, str):
        raise AdapterError(f"{field} must be a string, got {type(name).__name__} {short_repr(name)}")
    problems = _problems(name)
    if problems:
        raise AdapterError(f"{field} {short_repr(name)} is invalid: {'; '.join(problems)} ({_RULE})")
    return name


def adapter_name_list(value: Any, field: str = "adapter_name", allow_list: bool = True) -> list[str]:
    """A name (or, with ``allow_list``, a list/tuple of names: ``set_adapter``'s argument) as a list
    of strings, else an :class:`AdapterError` that says which types are accepted. Only the types are
    checked here: names are checked against the adapters of a model by the model.

    >>> adapter_name_list("a"), adapter_name_list(("a", "b"))
    (['a'], ['a', 'b'])
    """
    if isinstance(value, str):
        return [value]
    if allow_list and isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return list(value)
    got = f"{type(value).__name__} {short_repr(value)}"
    if allow_list and isinstance(value, (list, tuple)):
        wrong = next(v for v in value if not isinstance(v, str))
        got += f" (holding a {type(wrong).__name__})"
    wanted = "an adapter name (a string)" + (" or a list of names" if allow_list else "")
    raise AdapterError(f"{field} must be {wanted}, got {got}")


def check_inside(root: str | os.PathLike, path: str | os.PathLike, what: str = "path") -> str:
    """``path`` if it resolves (symbolic links followed) inside the folder ``root``, else a
    :class:`~peftkit.errors.PathError` naming both: every path peftkit computes from a name is checked with this
    before anything is written there.

    >>> check_inside("out", "out/b") == os.path.join("out", "b")
    True
    """
    base = os.path.realpath(os.fspath(root))
    full = os.path.realpath(os.fspath(path))
    if os.path.commonpath([base, full]) != base:
        raise PathError(f"{what} {os.fspath(path)!r} resolves to {full!r}, outside {os.fspath(root)!r}; "
                        "nothing was written")
    return os.fspath(path)


def child_path(root: str | os.PathLike, *parts: str, what: str = "path") -> str:
    """``os.path.join(root, *parts)``, checked to stay inside ``root`` (:func:`check_inside`)."""
    return check_inside(root, os.path.join(os.fspath(root), *parts), what)
