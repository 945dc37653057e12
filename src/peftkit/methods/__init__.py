"""Built-in adapter methods. Importing a method module registers it (see :mod:`peftkit.registry`)."""

from . import lora  # noqa: F401
