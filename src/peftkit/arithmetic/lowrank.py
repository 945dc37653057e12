"""A matrix as a low-rank product ``B @ A`` by truncated SVD: at a given rank or at the smallest
rank that keeps a fraction of the matrix's energy, optionally with peft's quantile clamp, and
with the relative error of the result measured rather than assumed.

Example:
    >>> import torch
    >>> m = torch.randn(6, 2) @ torch.randn(2, 5)
    >>> f = truncated_svd(m, rank=2)
    >>> f.rank, f.error < 1e-5
    (2, True)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from ..errors import ConfigError


@dataclass
class LowRank:
    """``b`` (rows x rank) and ``a`` (rank x columns) with ``b @ a`` close to the matrix they came
    from; ``error`` is ``||matrix - b @ a|| / ||matrix||`` (Frobenius; 0 for a zero matrix)."""

    b: torch.Tensor
    a: torch.Tensor
    error: float

    @property
    def rank(self) -> int:
        return self.a.shape[0]


def check_svd_options(rank: Optional[int], energy: Optional[float], clamp: Optional[float]) -> None:
    """Raise :class:`ConfigError` listing every invalid option (names as the user passed them)."""
    problems = []
    if rank is not None and (isinstance(rank, bool) or not isinstance(rank, int) or rank <= 0):
        problems.append(("svd_rank", f"must be a positive integer (the rank of the result), got {rank!r}"))
    if energy is not None and (isinstance(energy, bool) or not isinstance(energy, (int, float)) or not 0.0 < energy <= 1.0):
        problems.append(("energy", f"must be a number in (0, 1]: the fraction of squared singular values kept, got {energy!r}"))
    if clamp is not None and (isinstance(clamp, bool) or not isinstance(clamp, (int, float)) or not 0.0 <= clamp <= 1.0):
        problems.append(("svd_clamp", f"must be a quantile in [0, 1] (e.g. 0.99) or None, got {clamp!r}"))
    if problems:
        raise ConfigError("Invalid low-rank options:", problems)


def rank_for_energy(singular_values: torch.Tensor, energy: float) -> int:
    """The smallest ``k`` whose top-``k`` squared singular values hold ``energy`` of their sum (at least 1).

    Example:
        >>> rank_for_energy(torch.tensor([3.0, 1.0, 0.1]), 0.9)
        1
    """
    squares = singular_values.double().square()
    total = float(squares.sum())
    if total == 0.0:
        return 1
    kept = torch.cumsum(squares, 0) / total
    reached = (kept >= energy - 1e-12).nonzero()
    return int(reached[0]) + 1 if len(reached) else int(singular_values.numel())


def _clamped(b: torch.Tensor, a: torch.Tensor, quantile: float) -> tuple[torch.Tensor, torch.Tensor]:
    """peft's ``svd_clamp``: both factors clipped to +-the ``quantile`` of their joint entries."""
    high = torch.quantile(torch.cat([b.flatten(), a.flatten()]), quantile)
    return b.clamp(-high, high), a.clamp(-high, high)


@torch.no_grad()
def truncated_svd(matrix: torch.Tensor, rank: Optional[int] = None, energy: Optional[float] = None,
                  clamp: Optional[float] = None, full_matrices: bool = False,
                  driver: Optional[str] = None) -> LowRank:
    """``matrix`` (2-D) as ``b @ a`` of rank ``rank`` (capped at the matrix's smaller side), or of
    the smallest rank keeping ``energy`` of the squared singular values; with neither, every
    non-zero direction is kept (exact). The singular values go into ``b``, as peft does.
    ``clamp`` clips both factors at that quantile of their entries (peft's ``svd_clamp``).
    ``full_matrices`` and ``driver`` are passed to ``torch.linalg.svd`` (the driver on CUDA only).
    Computed in float32 (or float64 for float64 input); the factors come back in that dtype."""
    check_svd_options(rank, energy, clamp)
    work = matrix.double() if matrix.dtype == torch.float64 else matrix.float()
    u, s, vh = torch.linalg.svd(work, full_matrices=full_matrices, driver=driver)
    keep = min(work.shape)
    if rank is not None:
        keep = min(rank, keep)
    elif energy is not None:
        keep = rank_for_energy(s, energy)
    else:  # exact: drop only directions that are zero to working precision
        tolerance = float(s[0]) * max(work.shape) * torch.finfo(work.dtype).eps if s.numel() else 0.0
        keep = max(1, int((s > tolerance).sum()))
    b, a = u[:, :keep] * s[:keep], vh[:keep, :]
    if clamp is not None:
        b, a = _clamped(b, a, clamp)
    return LowRank(b, a, relative_error(work, b, a))


def relative_error(matrix: torch.Tensor, b: torch.Tensor, a: torch.Tensor) -> float:
    """``||matrix - b @ a|| / ||matrix||`` (Frobenius), 0.0 when ``matrix`` is zero and matched exactly."""
    norm = float(torch.linalg.norm(matrix))
    residual = float(torch.linalg.norm(matrix - b.to(matrix.dtype) @ a.to(matrix.dtype)))
    if norm == 0.0:
        return 0.0 if residual == 0.0 else float("inf")
    return residual / norm
