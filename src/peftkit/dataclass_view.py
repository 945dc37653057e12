"""peftkit's configs seen through the standard ``dataclasses`` API, as ``peft``'s dataclass configs are.

Code written for ``peft`` copies a config with ``dataclasses.replace(config, r=16)``, lists its fields
with ``dataclasses.fields`` or serialises it with ``dataclasses.asdict``. peftkit's configs are
pydantic models (validated on every assignment), so each config class also carries a
``__dataclass_fields__`` table describing its pydantic fields: those functions then work, and
``replace`` builds the copy through the class's own constructor, so the copy is validated.

Example:
    >>> import dataclasses
    >>> from peftkit import LoraConfig
    >>> dataclasses.replace(LoraConfig(r=4, target_modules=["q"]), r=8).r
    8
"""

from __future__ import annotations

import dataclasses
from typing import Any

from pydantic import BaseModel


def dataclass_fields(cls: type[BaseModel]) -> dict[str, dataclasses.Field]:
    """A ``__dataclass_fields__`` table for the pydantic model ``cls``: one init field per model field.

    Example:
        >>> from peftkit import LoraConfig
        >>> "lora_alpha" in dataclass_fields(LoraConfig)
        True
    """
    table: dict[str, dataclasses.Field] = {}
    for name, info in cls.model_fields.items():
        default: Any = dataclasses.MISSING if info.is_required() else info.get_default(call_default_factory=True)
        field = dataclasses.field(default=default) if not isinstance(default, (list, dict, set)) else (
            dataclasses.field(default_factory=lambda value=default: type(value)(value)))
        field.name, field.type = name, info.annotation
        # The field kind dataclasses gives a plain annotated attribute: read by fields(), asdict()
        # and replace(); dataclasses has no public way to build a Field outside @dataclass.
        field._field_type = dataclasses._FIELD  # type: ignore[attr-defined]
        table[name] = field
    return table
