"""A request as the engine sees it (a :class:`Job` of one or more :class:`Sequence` s), and the
events it sends back to the HTTP side.

A completion request with ``n`` choices (or several prompts) is one job of several sequences: each
sequence is a batch row of its own, and all of them use the job's adapter. The engine reports
through ``job.emit``: text pieces (:class:`Delta`), the end of a sequence (:class:`Finish`), the end
of the job with its token counts (:class:`Done`), or a failure (:class:`Failure`).

>>> job = Job("cmpl-1", "base", None, [], sink=print, timeout=60, queue_timeout=10)
>>> job.emit(Delta(0, "Hi"))
Delta(index=0, text='Hi')
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Union

import torch

from .errors import ServeError
from .sampling import SamplingParams
from .text import IncrementalDecoder, StopMatcher


@dataclass
class Delta:
    index: int
    text: str


@dataclass
class Finish:
    index: int
    reason: str  # "stop" or "length"


@dataclass
class Done:
    prompt_tokens: int
    completion_tokens: int


@dataclass
class Failure:
    error: ServeError


Event = Union[Delta, Finish, Done, Failure]


@dataclass
class Sequence:
    """One choice being generated: its prompt, sampling state and output so far."""

    index: int
    prompt: list[int]
    params: SamplingParams
    decoder: IncrementalDecoder
    generator: Optional[torch.Generator] = None
    out: list[int] = field(default_factory=list)
    finish: Optional[str] = None

    def __post_init__(self) -> None:
        self.stops = StopMatcher(self.params.stop)


class Job:
    """One HTTP request in the engine. ``adapter`` is None for the base model.

    Example:
        >>> job = Job("chatcmpl-1", "contacts", "contacts", sequences, sink, timeout=600, queue_timeout=60)  # doctest: +SKIP
    """

    def __init__(self, id: str, model: str, adapter: Optional[str], sequences: list[Sequence],
                 sink: Callable[[Event], Any], timeout: float, queue_timeout: float, prompt_tokens: Optional[int] = None):
        self.id, self.model, self.adapter, self.sequences = id, model, adapter, sequences
        # n choices of one prompt count it once, as OpenAI's usage does
        self.prompt_tokens = prompt_tokens if prompt_tokens is not None else sum(len(s.prompt) for s in sequences)
        self.sink = sink
        self.arrived = time.monotonic()
        self.deadline = self.arrived + timeout
        self.queue_deadline = self.arrived + queue_timeout
        self.first_token_at: Optional[float] = None
        self.cancelled = False   # the client went away: the engine drops the job at its next step
        self.pinned = False      # holds its adapter in memory (between admission and the end)
        self.ended = False

    def emit(self, event: Event) -> None:
        self.sink(event)

    @property
    def completion_tokens(self) -> int:
        return sum(len(s.out) for s in self.sequences)

    @property
    def done(self) -> bool:
        return all(s.finish is not None for s in self.sequences)
