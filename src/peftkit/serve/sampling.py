"""Choosing each sequence's next token: greedy, or sampled with its own seeded generator.

A batch row may be greedy while its neighbour samples at temperature 0.8 with top-p 0.9: the
greedy rows take one ``argmax`` together, each sampling row draws from its own ``torch.Generator``,
so a request's ``seed`` gives the same tokens whatever else shares the batch.

>>> params = SamplingParams(max_tokens=8)
>>> params.greedy
True
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Optional

import torch


@dataclass
class SamplingParams:
    """What a request asked for, already checked against the server's limits."""

    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    stop: list[str] = field(default_factory=list)
    seed: Optional[int] = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[int, float] = field(default_factory=dict)
    ignore_eos: bool = False

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def generator(self, device: torch.device, offset: int = 0) -> Optional[torch.Generator]:
        """The generator of one sequence (choice ``offset`` of the request); None when greedy."""
        if self.greedy:
            return None
        seed = (self.seed + offset) if self.seed is not None else secrets.randbits(63)
        return torch.Generator(device=device).manual_seed(seed % 2**63)


def _adjusted(logits: torch.Tensor, params: SamplingParams, generated: list[int]) -> torch.Tensor:
    """One row's logits after ``logit_bias`` and the presence / frequency penalties (OpenAI's
    definitions: subtract ``presence`` once per token already generated, ``frequency`` per time)."""
    if params.logit_bias:
        ids = torch.tensor(list(params.logit_bias), device=logits.device)
        logits = logits.index_add(0, ids, torch.tensor(list(params.logit_bias.values()), device=logits.device))
    if generated and (params.presence_penalty or params.frequency_penalty):
        counts = torch.bincount(torch.tensor(generated, device=logits.device), minlength=logits.shape[0])[: logits.shape[0]]
        logits = logits - params.frequency_penalty * counts - params.presence_penalty * (counts > 0)
    return logits


def _sample(logits: torch.Tensor, params: SamplingParams, generator: Optional[torch.Generator]) -> int:
    probs = torch.softmax(logits / params.temperature, dim=-1)
    if params.top_p < 1.0:
        sorted_probs, order = probs.sort(descending=True)
        # keep the smallest prefix whose mass reaches top_p (the first token always stays)
        outside = sorted_probs.cumsum(0) - sorted_probs >= params.top_p
        sorted_probs[outside] = 0.0
        return int(order[torch.multinomial(sorted_probs, 1, generator=generator)])
    return int(torch.multinomial(probs, 1, generator=generator))


def next_tokens(logits: torch.Tensor, rows: list[tuple[SamplingParams, Optional[torch.Generator], list[int]]]) -> list[int]:
    """The next token of every row of ``logits`` (``(rows, vocab)``); ``rows[i]`` is that row's
    ``(params, generator, tokens generated so far)``.

    Example:
        >>> next_tokens(torch.tensor([[0.0, 2.0, 1.0]]), [(SamplingParams(max_tokens=1, temperature=0.0), None, [])])
        [1]
    """
    logits = logits.float()
    plain = [i for i, (p, _, _) in enumerate(rows) if p.greedy and not p.logit_bias
             and not (p.presence_penalty or p.frequency_penalty)]
    chosen: list[int] = [0] * len(rows)
    if plain:
        best = logits[plain].argmax(dim=-1).tolist()
        for i, token in zip(plain, best):
            chosen[i] = token
    for i in sorted(set(range(len(rows))) - set(plain)):
        params, generator, generated = rows[i]
        row = _adjusted(logits[i], params, generated)
        chosen[i] = int(row.argmax()) if params.greedy else _sample(row, params, generator)
    return chosen
