"""Moved to :mod:`peftkit.integrations.transformers`; this name stays importable for existing code.

Example:
    >>> from peftkit.hf_trainer import AdapterTrainer   # same class as peftkit.integrations.transformers.AdapterTrainer
"""

from .integrations.transformers import (  # noqa: F401  (re-exports)
    HOOKS,
    TRAINING_ARGS_NAME,
    AdapterTrainer,
    AdapterTrainerMixin,
    ShiftedLabelSmoother,
    check_trainer_hooks,
    holds_adapter,
    is_causal_lm,
    load_into_adapters,
)

__all__ = [
    "AdapterTrainer",
    "AdapterTrainerMixin",
    "ShiftedLabelSmoother",
    "check_trainer_hooks",
    "holds_adapter",
    "is_causal_lm",
    "load_into_adapters",
]
