"""The attention cache of every running sequence, one batch row each, left-padded to one length.

Each request is prefilled on its own rows (right-padded, so the causal mask alone keeps padding
out of real tokens), and its keys and values then join the running batch: shifted right so every
row ends at the same column, padding zeroed and masked out. A decoding step appends one column to
all rows; a finished row leaves with ``batch_select_indices``; columns that only padding uses are
dropped once they are a large share. Rows never see each other: the padding mask keeps each
sequence's attention to its own tokens, so a request decodes as it would alone.

The cache object is ``transformers``' ``DynamicCache`` (built from per-layer tensors), so the
model's own attention code reads it.

>>> cache = BatchCache()
>>> cache.rows
0
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from transformers import DynamicCache

# Drop leading padding columns when they are at least this share of the cache (and this many).
_TRIM_SHARE, _TRIM_MIN = 0.25, 16


def layer_tensors(cache: DynamicCache) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``(keys, values)`` of every layer, each ``(batch, heads, length, head_dim)``."""
    return [(layer.keys, layer.values) for layer in cache.layers]


def left_aligned(tensors: list[tuple[torch.Tensor, torch.Tensor]], lengths: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Right-padded rows (row ``i`` valid in ``[0, lengths[i])``) moved to end at the last column,
    the padding in front set to zero."""
    width = tensors[0][0].shape[2]
    source = torch.arange(width, device=lengths.device)[None, :] - (width - lengths)[:, None]  # (rows, width)
    valid = source >= 0
    source = source.clamp(min=0)
    out = []
    for keys, values in tensors:
        index = source[:, None, :, None].expand(-1, keys.shape[1], -1, keys.shape[3]).to(keys.device)
        keep = valid[:, None, :, None].to(keys.device, keys.dtype)
        out.append((keys.gather(2, index) * keep, values.gather(2, index) * keep))
    return out


class BatchCache:
    """The running batch's cache, attention mask and positions.

    Example:
        >>> cache.add(prefill_cache_tensors, lengths)        # doctest: +SKIP
        >>> model(input_ids=last, attention_mask=cache.step_mask(), position_ids=cache.positions()[:, None],
        ...       cache=cache.cache, use_cache=True)          # doctest: +SKIP
    """

    def __init__(self) -> None:
        self.cache: Optional[DynamicCache] = None
        self.mask: Optional[torch.Tensor] = None     # (rows, width), 1 for real tokens
        self.lengths: Optional[torch.Tensor] = None  # (rows,), real tokens per row

    @property
    def rows(self) -> int:
        return 0 if self.mask is None else int(self.mask.shape[0])

    @property
    def width(self) -> int:
        return 0 if self.mask is None else int(self.mask.shape[1])

    def add(self, tensors: list[tuple[torch.Tensor, torch.Tensor]], lengths: list[int]) -> None:
        """Append rows from a right-padded prefill cache (``tensors`` as :func:`layer_tensors`)."""
        device = tensors[0][0].device
        new_lengths = torch.tensor(lengths, device=device)
        new = left_aligned(tensors, new_lengths)
        new_width = tensors[0][0].shape[2]
        new_mask = (torch.arange(new_width, device=device)[None, :] >= (new_width - new_lengths)[:, None]).long()
        if self.cache is None:
            self._set(new, new_mask, new_lengths)
            return
        width = max(self.width, new_width)
        old = self._padded(layer_tensors(self.cache), width - self.width)
        new = self._padded(new, width - new_width)
        merged = [(torch.cat([ok, nk]), torch.cat([ov, nv])) for (ok, ov), (nk, nv) in zip(old, new)]
        mask = torch.cat([F.pad(self.mask, (width - self.width, 0)), F.pad(new_mask, (width - new_width, 0))])
        self._set(merged, mask, torch.cat([self.lengths, new_lengths]))

    @staticmethod
    def _padded(tensors: list[tuple[torch.Tensor, torch.Tensor]], extra: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        if extra == 0:
            return tensors
        return [(F.pad(k, (0, 0, extra, 0)), F.pad(v, (0, 0, extra, 0))) for k, v in tensors]

    def _set(self, tensors: list[tuple[torch.Tensor, torch.Tensor]], mask: torch.Tensor, lengths: torch.Tensor) -> None:
        self.cache = DynamicCache(tensors)
        self.mask, self.lengths = mask, lengths

    def keep(self, rows: list[int]) -> None:
        """Keep only these rows (in this order); the others' cache is freed."""
        if not rows:
            self.cache = self.mask = self.lengths = None
            return
        index = torch.tensor(rows, device=self.mask.device)
        self.cache.batch_select_indices(index)
        self.mask, self.lengths = self.mask[index], self.lengths[index]
        unused = int(self.width - self.lengths.max())
        if unused >= _TRIM_MIN and unused >= _TRIM_SHARE * self.width:
            trimmed = [(k[:, :, unused:], v[:, :, unused:]) for k, v in layer_tensors(self.cache)]
            self._set(trimmed, self.mask[:, unused:], self.lengths)

    def step_mask(self) -> torch.Tensor:
        """The attention mask for one more token per row (and record that token)."""
        self.mask = F.pad(self.mask, (0, 1), value=1)
        return self.mask

    def advance(self) -> None:
        """Count the token every row just decoded."""
        self.lengths = self.lengths + 1

    def positions(self) -> torch.Tensor:
        """The position of each row's next token: its count of real tokens."""
        return self.lengths
