"""Adapter arithmetic: weighted combinations of adapters (``add_weighted_adapter``, TIES, DARE,
SVD), the merge functions on plain tensors, and conversion of other methods to LoRA.

Everything is plain tensor maths applied per layer through the layer protocol (``delta_weight``,
and ``lowrank_factors`` / ``identity_parameters`` where a layer offers them), so every method
that defines a weight change gets it. See docs/adapter-arithmetic.md.

Example:
    >>> from peftkit.arithmetic import ties
    >>> import torch
    >>> ties([torch.tensor([1.0, -1.0]), torch.tensor([2.0, 3.0])], [1.0, 1.0], density=1.0)
    tensor([1.5000, 3.0000])
"""

from .combine import CombinationReport, add_weighted_adapter
from .convert import convert_to_lora, save_as_lora
from .lowrank import LowRank, truncated_svd
from .merge_utils import (
    dare_linear,
    dare_ties,
    disjoint_mean,
    magnitude_prune,
    majority_sign_mask,
    prune_by_magnitude,
    prune_randomly,
    task_arithmetic,
    ties,
)
from .plan import COMBINATION_TYPES
from .standalone import CombinedAdapter, combine_adapters

__all__ = [
    "COMBINATION_TYPES", "CombinationReport", "CombinedAdapter", "LowRank", "add_weighted_adapter", "combine_adapters",
    "dare_linear", "dare_ties", "disjoint_mean", "magnitude_prune", "majority_sign_mask", "prune_by_magnitude",
    "prune_randomly", "save_as_lora", "task_arithmetic", "ties", "truncated_svd", "convert_to_lora",
]
