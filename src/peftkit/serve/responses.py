"""From engine events to OpenAI's response bodies: whole JSON objects, or server-sent events.

The engine thread hands events to the request's event loop (:class:`EventFeed`). A non-streaming
request collects them into one ``chat.completion`` / ``text_completion`` object; a streaming one
sends a chunk per text piece and ends with ``data: [DONE]``. Both wait for the first event before
answering, so a request that fails before its first token (adapter cannot load, queue timeout)
gets a plain HTTP error. While waiting, the client is watched: one that leaves is cancelled.

>>> sse({"a": 1})
'data: {"a": 1}\\n\\n'
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any, AsyncIterator, Optional

from starlette.requests import Request
from starlette.responses import StreamingResponse

from .jobs import Delta, Done, Event, Failure, Finish, Job
from .scheduler import Engine

HEARTBEAT_SECONDS = 1.0


def sse(data: Any) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


class EventFeed:
    """A job's events, moved from the engine thread into this request's event loop."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue[Event] = asyncio.Queue()

    def sink(self, event: Event) -> None:
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, event)
        except RuntimeError:  # the loop is closed (server stopped): nobody is listening
            pass

    async def next(self, timeout: float) -> Optional[Event]:
        """The next event, or None after ``timeout`` seconds without one."""
        try:
            return await asyncio.wait_for(self.queue.get(), timeout)
        except asyncio.TimeoutError:
            return None


async def first_event(feed: EventFeed, job: Job, engine: Engine, request: Request) -> Optional[Event]:
    """Wait for the job's first event; None (and the job cancelled) if the client leaves first."""
    while True:
        event = await feed.next(HEARTBEAT_SECONDS)
        if event is not None:
            return event
        if await request.is_disconnected():
            engine.cancel(job)
            return None


class Collected:
    """The events of a whole job, for a non-streaming answer."""

    def __init__(self, choices: int):
        self.texts = [""] * choices
        self.reasons: list[Optional[str]] = [None] * choices
        self.done: Optional[Done] = None
        self.failure: Optional[Failure] = None

    def add(self, event: Event) -> bool:
        """Record ``event``; True when it was the last one."""
        if isinstance(event, Delta):
            self.texts[event.index] += event.text
        elif isinstance(event, Finish):
            self.reasons[event.index] = event.reason
        elif isinstance(event, Done):
            self.done = event
        else:
            self.failure = event
        return isinstance(event, (Done, Failure))


async def collect(feed: EventFeed, job: Job, engine: Engine, request: Request, first: Event) -> Optional[Collected]:
    """Every event of the job (None if the client left meanwhile)."""
    result = Collected(len(job.sequences))
    event: Optional[Event] = first
    while not result.add(event):
        event = await first_event(feed, job, engine, request)
        if event is None:
            return None
    return result


def usage(done: Done) -> dict[str, int]:
    return {"prompt_tokens": done.prompt_tokens, "completion_tokens": done.completion_tokens,
            "total_tokens": done.prompt_tokens + done.completion_tokens}


def _head(job: Job, kind: str) -> dict[str, Any]:
    return {"id": job.id, "object": kind, "created": int(time.time()), "model": job.model}


def chat_body(job: Job, result: Collected) -> dict[str, Any]:
    choices = [{"index": i, "message": {"role": "assistant", "content": text}, "logprobs": None,
                "finish_reason": reason} for i, (text, reason) in enumerate(zip(result.texts, result.reasons))]
    return {**_head(job, "chat.completion"), "choices": choices, "usage": usage(result.done)}


def completion_body(job: Job, result: Collected, echoes: list[str]) -> dict[str, Any]:
    choices = [{"index": i, "text": echoes[i] + text, "logprobs": None, "finish_reason": reason}
               for i, (text, reason) in enumerate(zip(result.texts, result.reasons))]
    return {**_head(job, "text_completion"), "choices": choices, "usage": usage(result.done)}


class EventStream(StreamingResponse):
    """``text/event-stream`` whose generator is always closed, so a client that leaves mid-stream
    cancels its job at once."""

    def __init__(self, content: AsyncIterator[str]):
        super().__init__(content, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.body_iterator.aclose()  # type: ignore[union-attr]


async def stream(feed: EventFeed, job: Job, engine: Engine, first: Event, chat: bool, include_usage: bool,
                 echoes: list[str]) -> AsyncIterator[str]:
    """The job's events as OpenAI's stream chunks; the job is cancelled if the stream is closed early."""
    kind = "chat.completion.chunk" if chat else "text_completion"
    head = _head(job, kind)

    def chunk(index: int, content: Optional[str], reason: Optional[str], role: bool = False) -> str:
        if chat:
            delta = ({"role": "assistant", "content": content or ""} if role else
                     ({"content": content} if content is not None else {}))
            choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": reason}
        else:
            choice = {"index": index, "text": content or "", "logprobs": None, "finish_reason": reason}
        return sse({**head, "choices": [choice]})

    try:
        for i, echo in enumerate(echoes):
            if chat or echo:
                yield chunk(i, echo, None, role=chat)
        event: Optional[Event] = first
        while True:
            if event is None:
                yield ": keep-alive\n\n"  # also tells a stream whose client left, at the next send
            elif isinstance(event, Delta):
                yield chunk(event.index, event.text, None)
            elif isinstance(event, Finish):
                yield chunk(event.index, None, event.reason)
            elif isinstance(event, Done):
                if include_usage:
                    yield sse({**head, "choices": [], "usage": usage(event)})
                yield "data: [DONE]\n\n"
                return
            elif isinstance(event, Failure):
                yield sse(event.error.body())
                return
            event = await feed.next(HEARTBEAT_SECONDS)
    finally:
        if not job.ended:
            engine.cancel(job)
