"""Model-merging functions on plain tensors: task arithmetic, magnitude pruning, TIES and DARE.

Each function takes the *task tensors* (one tensor per adapter, all the same shape: weight
deltas, or LoRA factors) and one weight per tensor, and returns one tensor of that shape. They
are the building blocks of :func:`peftkit.arithmetic.add_weighted_adapter`, public so that they
can be used on anything (whole fine-tuned checkpoints, deltas from another library). Names,
arguments and results are those of ``peft.utils.merge_utils``; with the same global seed, the
random draws of the DARE functions are the same too.

- :func:`task_arithmetic`: the weighted sum ``sum_i w_i t_i`` (Ilharco et al., 2023).
- :func:`magnitude_prune`: keep each tensor's largest ``density`` fraction of entries, then sum.
- :func:`ties`: prune by magnitude, elect a sign per entry, average the entries that agree with it
  (Yadav et al., 2023, "TIES-Merging").
- :func:`dare_linear` / :func:`dare_ties`: drop entries at random with probability ``1 - density``
  and rescale the rest by ``1 / density`` (Yu et al., 2023, "DARE"), then sum / TIES-merge.

Example:
    >>> import torch
    >>> from peftkit.arithmetic import task_arithmetic, ties
    >>> a, b = torch.tensor([1.0, -2.0, 3.0]), torch.tensor([1.0, 2.0, -1.0])
    >>> task_arithmetic([a, b], torch.tensor([1.0, 0.5]))
    tensor([ 1.5000, -1.0000,  2.5000])
    >>> ties([a, b], torch.tensor([1.0, 1.0]), density=1.0)
    tensor([ 1., -2.,  3.])
"""

from __future__ import annotations

from typing import Literal, Optional, Sequence, Union

import torch

from ..errors import ConfigError

SignMethod = Literal["total", "frequency"]
Weights = Union[torch.Tensor, Sequence[float]]


def _stacked(task_tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    if len(task_tensors) == 0:
        raise ConfigError("Invalid merge input:", [("task_tensors", "needs at least one tensor")])
    shapes = {tuple(t.shape) for t in task_tensors}
    if len(shapes) > 1:
        raise ConfigError("Invalid merge input:", [("task_tensors", f"all tensors must have one shape, got {sorted(shapes)}")])
    return torch.stack(list(task_tensors), dim=0)


def _weights_for(stacked: torch.Tensor, weights: Weights) -> torch.Tensor:
    """``weights`` as a float tensor shaped to scale each stacked task tensor (one per row)."""
    w = weights if isinstance(weights, torch.Tensor) else torch.tensor([float(v) for v in weights])
    if w.dim() != 1 or w.numel() != stacked.shape[0]:
        raise ConfigError("Invalid merge input:", [("weights", f"needs one weight per task tensor ({stacked.shape[0]}), "
                                                              f"got shape {tuple(w.shape)}")])
    return w.to(stacked.device).reshape(-1, *([1] * (stacked.dim() - 1)))


def _check_density(density: Optional[float]) -> float:
    if density is None or isinstance(density, bool) or not isinstance(density, (int, float)) or not 0.0 <= density <= 1.0:
        raise ConfigError("Invalid merge input:", [("density", "must be a number in [0, 1]: the fraction of entries kept "
                                                              f"(e.g. 0.5), got {density!r}")])
    return float(density)


def _check_sign_method(method: str) -> str:
    if method not in ("total", "frequency"):
        raise ConfigError("Invalid merge input:", [("majority_sign_method", f"must be 'total' or 'frequency', got {method!r}")])
    return method


def prune_by_magnitude(tensor: torch.Tensor, density: float) -> torch.Tensor:
    """``tensor`` with all but its ``int(density * numel)`` largest-magnitude entries set to zero.

    Example:
        >>> prune_by_magnitude(torch.tensor([0.1, -3.0, 2.0, 0.5]), 0.5)
        tensor([ 0., -3.,  2.,  0.])
    """
    density = _check_density(density)
    if density >= 1.0:
        return tensor
    keep = torch.zeros(tensor.numel(), dtype=tensor.dtype, device=tensor.device)
    top = torch.topk(tensor.abs().reshape(-1), k=int(density * tensor.numel()), largest=True).indices
    keep[top] = 1
    return tensor * keep.reshape(tensor.shape)


def prune_randomly(tensor: torch.Tensor, density: float, rescale: bool = True,
                   generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """DARE's drop: each entry kept with probability ``density`` (a Bernoulli draw from torch's
    global generator, or ``generator``), the kept ones divided by ``density`` when ``rescale``
    (``density=0``: all zeros).

    Example:
        >>> kept = prune_randomly(torch.ones(1000), 0.25, generator=torch.Generator().manual_seed(0))
        >>> sorted(set(kept.tolist()))
        [0.0, 4.0]
    """
    density = _check_density(density)
    if density >= 1.0:
        return tensor
    mask = torch.bernoulli(torch.full_like(tensor, density), generator=generator)
    kept = tensor * mask
    # density 0 drops everything: zeros (peft divides 0 by 0 and returns NaN)
    return kept / density if rescale and density > 0 else kept


def majority_sign_mask(stacked: torch.Tensor, method: SignMethod = "total") -> torch.Tensor:
    """For task tensors stacked on dim 0: where each entry has the sign elected across tensors
    (``"total"``: the sign of the entries' sum; ``"frequency"``: the sign most entries have; ties
    go to +). Zero entries agree with nothing."""
    signs = stacked.sign()
    votes = stacked.sum(dim=0) if _check_sign_method(method) == "total" else signs.sum(dim=0)
    elected = torch.where(votes >= 0, 1, -1)
    return signs == elected


def disjoint_mean(weighted: torch.Tensor, agree: torch.Tensor) -> torch.Tensor:
    """TIES' merge step: per entry, the mean over the tensors that agree with the elected sign
    (zero where none does)."""
    total = (weighted * agree).sum(dim=0)
    return total / torch.clamp(agree.sum(dim=0), min=1.0)


def task_arithmetic(task_tensors: Sequence[torch.Tensor], weights: Weights) -> torch.Tensor:
    """``sum_i weights[i] * task_tensors[i]``; a negative weight subtracts a task (negation).

    Example:
        >>> task_arithmetic([torch.ones(2), torch.full((2,), 3.0)], [1.0, -1.0])
        tensor([-2., -2.])
    """
    stacked = _stacked(task_tensors)
    return (stacked * _weights_for(stacked, weights)).sum(dim=0)


def magnitude_prune(task_tensors: Sequence[torch.Tensor], weights: Weights, density: float) -> torch.Tensor:
    """Keep each task tensor's largest ``density`` fraction of entries, then the weighted sum.

    Example:
        >>> magnitude_prune([torch.tensor([1.0, -4.0]), torch.tensor([2.0, 0.5])], [1.0, 1.0], density=0.5)
        tensor([ 2., -4.])
    """
    density = _check_density(density)
    stacked = _stacked([prune_by_magnitude(t, density) for t in task_tensors])
    return (stacked * _weights_for(stacked, weights)).sum(dim=0)


def ties(task_tensors: Sequence[torch.Tensor], weights: Weights, density: float,
         majority_sign_method: SignMethod = "total") -> torch.Tensor:
    """TIES-Merging: prune each tensor by magnitude to ``density``, elect a sign per entry from
    the pruned (unweighted) tensors, then average the weighted entries that agree with it.

    Example:
        >>> ties([torch.tensor([1.0, -2.0]), torch.tensor([3.0, 1.0])], [1.0, 1.0], density=1.0)
        tensor([ 2., -2.])
    """
    density = _check_density(density)
    stacked = _stacked([prune_by_magnitude(t, density) for t in task_tensors])
    agree = majority_sign_mask(stacked, majority_sign_method)
    return disjoint_mean(stacked * _weights_for(stacked, weights), agree)


def dare_linear(task_tensors: Sequence[torch.Tensor], weights: Weights, density: float) -> torch.Tensor:
    """DARE then task arithmetic: entries dropped at random (kept with probability ``density``,
    rescaled by ``1 / density``), then the weighted sum. Seed torch (``torch.manual_seed``) for
    a repeatable result.

    Example:
        >>> _ = torch.manual_seed(0)
        >>> dare_linear([torch.ones(4), torch.ones(4)], [0.5, 0.5], density=1.0)
        tensor([1., 1., 1., 1.])
    """
    density = _check_density(density)
    stacked = _stacked([prune_randomly(t, density, rescale=True) for t in task_tensors])
    return (stacked * _weights_for(stacked, weights)).sum(dim=0)


def dare_ties(task_tensors: Sequence[torch.Tensor], weights: Weights, density: float,
              majority_sign_method: SignMethod = "total") -> torch.Tensor:
    """DARE's random drop (rescaled), then TIES' sign election and disjoint mean.

    Example:
        >>> dare_ties([torch.tensor([1.0, -2.0]), torch.tensor([3.0, 1.0])], [1.0, 1.0], density=1.0)
        tensor([ 2., -2.])
    """
    density = _check_density(density)
    stacked = _stacked([prune_randomly(t, density, rescale=True) for t in task_tensors])
    agree = majority_sign_mask(stacked, majority_sign_method)
    return disjoint_mean(stacked * _weights_for(stacked, weights), agree)
