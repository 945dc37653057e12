"""peft's three lookup tables by peft type, read live from the method registry.

``PEFT_TYPE_TO_CONFIG_MAPPING[peft_type]`` is the config class, ``PEFT_TYPE_TO_TUNER_MAPPING`` the
method's :class:`~peftkit.registry.MethodSpec` (peftkit's counterpart of peft's tuner classes: it
answers ``uses_shared_state`` and ``prefix`` as they do) and ``PEFT_TYPE_TO_PREFIX_MAPPING`` the
prefix of the method's parameter names. Methods registered later (plugins) appear in all three.

Example::

    >>> from peftkit.mapping import PEFT_TYPE_TO_CONFIG_MAPPING, PEFT_TYPE_TO_PREFIX_MAPPING
    >>> PEFT_TYPE_TO_CONFIG_MAPPING["LORA"].__name__, PEFT_TYPE_TO_PREFIX_MAPPING["LOHA"]
    ('LoraConfig', 'hada_')
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Callable, Iterator

from .registry import MethodSpec, registered_methods


class _RegistryView(Mapping):
    """A read-only mapping peft type -> ``read(spec)`` over the registered methods."""

    def __init__(self, read: Callable[[MethodSpec], Any]):
        self._read = read

    def __getitem__(self, peft_type: Any) -> Any:
        methods = registered_methods()
        key = str(getattr(peft_type, "value", peft_type))
        if key not in methods:
            raise KeyError(f"{key!r} is not a registered method (known: {', '.join(sorted(methods))})")
        return self._read(methods[key])

    def __iter__(self) -> Iterator[str]:
        return iter(registered_methods())

    def __len__(self) -> int:
        return len(registered_methods())


PEFT_TYPE_TO_CONFIG_MAPPING: Mapping = _RegistryView(lambda spec: spec.config_cls)
PEFT_TYPE_TO_TUNER_MAPPING: Mapping = _RegistryView(lambda spec: spec)
PEFT_TYPE_TO_PREFIX_MAPPING: Mapping = _RegistryView(lambda spec: spec.prefix)
