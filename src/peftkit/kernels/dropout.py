"""Dropout keep-masks for the fused adapter layers: cheap to draw on CPU, not kept on GPU.

Two measurements shape this file (LoRA dropout on every linear of a 30-layer model draws one
decision per element of every adapted layer's input: 153 M per step at batch 4 x 256):

- On CPU, drawing random numbers *is* dropout's cost. ``bernoulli_`` draws a double per element
  (6 ms for 1024 x 576 on 2 cores) and ``int16.random_()`` one 32-bit draw per element (3.5 ms).
  One full-range 64-bit draw cut into four independent 16-bit lanes, each compared with
  ``p * 65536``, takes 1.4 ms: the mask resolution is 1/65536 (p = 0.05 keeps 0.95000 of the
  elements, exactly). The mask is kept for backward (one byte per element): drawing it twice
  would cost more time than the byte costs memory.
- On GPU, drawing is cheap (counter-based Philox) but a byte per element of every adapted input
  is not: 2.7 GB for the 1B benchmark shape at batch 8 x 1024. There the layer keeps a seed
  instead and draws the same mask again in backward, so dropout adds no saved activations.
"""

from __future__ import annotations

from typing import Optional

import torch


def keep_mask(shape: torch.Size, p: float, device: torch.device,
              generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """A boolean mask of ``shape`` whose elements are True with probability ``1 - p``.

    Example:
        >>> keep = keep_mask(torch.Size([4, 8]), 0.25, torch.device("cpu"))
        >>> keep.dtype, keep.shape
        (torch.bool, torch.Size([4, 8]))
    """
    if device.type != "cpu":
        return torch.empty(shape, dtype=torch.bool, device=device).bernoulli_(1.0 - p, generator=generator)
    n = shape.numel()
    words = torch.empty((n + 3) // 4, dtype=torch.int64).random_(-(2**63), None, generator=generator)
    lanes = words.view(torch.int16)[:n]  # four uniform draws from [-32768, 32767] per word
    return (lanes >= round(p * 65536) - 32768).reshape(shape)


def redraws_mask(device: torch.device) -> bool:
    """Whether layers on ``device`` keep a seed (and draw the mask again) rather than the mask."""
    return device.type != "cpu"


def draw_mask(x: torch.Tensor, p: float, redraw: Optional[bool] = None) -> tuple[Optional[torch.Tensor], Optional[int]]:
    """``(keep, seed)`` for dropping elements of ``x`` with probability ``p``.

    ``keep`` is None when ``p == 0``; ``seed`` is None unless the mask is to be redrawn in backward
    (``redraw``; by default on GPU, see :func:`redraws_mask`), in which case
    ``mask_from_seed(x.shape, p, x.device, seed)`` gives ``keep`` again. The seed comes from the
    default CPU generator, so ``torch.manual_seed`` makes runs repeat and activation
    checkpointing (which restores RNG state) recomputes the same mask.

    Example:
        >>> keep, seed = draw_mask(torch.randn(2, 3), 0.1, redraw=True)
        >>> torch.equal(keep, mask_from_seed(torch.Size([2, 3]), 0.1, torch.device("cpu"), seed))
        True
    """
    if p == 0.0:
        return None, None
    if redraw is None:
        redraw = redraws_mask(x.device)
    if not redraw:
        return keep_mask(x.shape, p, x.device), None
    seed = int(torch.empty((), dtype=torch.int64).random_())
    return mask_from_seed(x.shape, p, x.device, seed), seed


def mask_from_seed(shape: torch.Size, p: float, device: torch.device, seed: int) -> torch.Tensor:
    """The keep-mask :func:`draw_mask` drew with ``seed`` (same shape, ``p`` and device)."""
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    return keep_mask(shape, p, device, generator)
