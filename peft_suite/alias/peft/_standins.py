"""Stand-ins for peft names peftkit lacks, so that peft's test modules import and every test counts.

Nothing here behaves like peft. A stand-in raises as soon as a test uses it:

- :class:`NotInPeftkit` for a peft *method* or LoRA *variant* peftkit does not implement (BOFT,
  OFT, EVA initialisation, ...): the plugin counts such a test as not applicable;
- :class:`MissingInPeftkit` for peft *API* that peftkit should have but lacks: such a test counts
  as failed, and the fix goes into peftkit proper (then the name moves to ``_table.py``).
"""

from __future__ import annotations

from typing import Any


class NotInPeftkit(NotImplementedError):
    """A test used a peft method or variant peftkit does not implement (not applicable)."""


class MissingInPeftkit(NotImplementedError):
    """A test used peft API that peftkit lacks (counted as failed)."""


class _StandInMeta(type):
    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        if cls._error is MissingInPeftkit:
            raise cls._error(f"{cls._peft_name}: {cls._why}")
        # peft's test modules build configs of other methods at import time (parametrize lists):
        # the object may exist, any use of it raises.
        return object.__new__(cls)

    def __getattr__(cls, name: str) -> Any:
        if name.startswith("_"):  # introspection (pytest, inspect) probes private names
            raise AttributeError(name)
        raise cls._error(f"{cls._peft_name}.{name}: {cls._why}")


def stand_in(peft_name: str, why: str, applicable: bool) -> type:
    """A class named ``peft_name`` that raises when called or its attributes are read; isinstance
    and issubclass checks against it answer False, sorting by ``__name__`` works."""
    short = peft_name.rsplit(".", 1)[-1]
    error = MissingInPeftkit if applicable else NotInPeftkit
    return _StandInMeta(short, (), {"_peft_name": peft_name, "_why": why, "_error": error, "__module__": "peft",
                                    "__getattr__": _instance_getattr, "__repr__": lambda self: f"<{short} stand-in>"})


def _instance_getattr(self: Any, name: str) -> Any:
    if name.startswith("_"):
        raise AttributeError(name)
    raise type(self)._error(f"{type(self)._peft_name}.{name}: {type(self)._why}")
