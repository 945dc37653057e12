"""The HTTP API (FastAPI): OpenAI's ``/v1/models``, ``/v1/chat/completions`` and
``/v1/completions``, vLLM's ``/v1/load_lora_adapter`` and ``/v1/unload_lora_adapter``, and
``/health`` and ``/metrics``.

Requests are read and checked here (size, API key, fields, limits) and handed to the engine as
jobs; every error is a JSON body in OpenAI's shape with a 4xx/5xx status. The routes never touch
the model: they talk to the engine thread through :class:`~.scheduler.Engine`.

>>> app = create_app(ctx)                # doctest: +SKIP
>>> uvicorn.run(app, host="127.0.0.1")   # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
from contextlib import asynccontextmanager
from typing import Any, Callable, Optional

from fastapi import FastAPI
from pydantic import BaseModel, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response

from .context import ServeContext
from .errors import ServeError, internal, invalid
from .jobs import Failure
from .protocol import ChatCompletionRequest, CompletionRequest, LoadLoraRequest, UnloadLoraRequest
from .responses import EventFeed, EventStream, chat_body, collect, completion_body, first_event, stream
from .sources import allowed_path, read_source

log = logging.getLogger("peftkit.serve")
OPEN_PATHS = ("/health",)  # answered without an API key (load balancers, probes)


class BodyTooLarge(ServeError):
    def __init__(self, limit: int):
        super().__init__(413, f"the request body is larger than {limit} bytes, this server's limit", code="body_too_large")


class Guard:
    """ASGI middleware: the API key, and the body size limit (by Content-Length, and by counting
    what arrives, for bodies sent without one)."""

    def __init__(self, app: Any, keys: list[str], max_body: int):
        self.app, self.keys, self.max_body = app, [k.encode() for k in keys], max_body

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        error = self._refusal(scope["path"], headers)
        if error is not None:
            return await JSONResponse(error.body(), status_code=error.status)(scope, receive, send)
        seen = 0

        async def counted() -> dict:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_body:
                raise BodyTooLarge(self.max_body)
            return message

        await self.app(scope, counted, send)

    def _refusal(self, path: str, headers: dict) -> Optional[ServeError]:
        if self.keys and path not in OPEN_PATHS:
            given = headers.get(b"authorization", b"")
            token = given[7:].strip() if given[:7].lower() == b"bearer " else b""
            if not any(hmac.compare_digest(token, key) for key in self.keys):
                return ServeError(401, "Incorrect API key provided: send 'Authorization: Bearer <key>' with a key this "
                                       "server was started with (--api-key or PEFTKIT_API_KEY)", code="invalid_api_key")
        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body):
            return BodyTooLarge(self.max_body)
        return None


async def _parse(request: Request, model: type[BaseModel]) -> Any:
    """The body as ``model``; a 400 naming the first bad field."""
    try:
        data = json.loads(await request.body())
    except (ValueError, UnicodeDecodeError) as e:
        raise invalid(f"the request body is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise invalid("the request body must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or None
        raise invalid(f"{where or 'body'}: {first['msg']}", param=where) from None


def create_app(ctx: ServeContext) -> FastAPI:
    """The FastAPI application for a built :class:`~.context.ServeContext` (engine started and
    stopped with the application's lifespan).

    Example:
        >>> app = create_app(build_context(ServeSettings(model="smollm2-135m-instruct")))  # doctest: +SKIP
    """

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        ctx.engine.start()
        try:
            yield
        finally:
            ctx.engine.stop()

    app = FastAPI(title="peftkit serve", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(Guard, keys=ctx.settings.api_keys, max_body=ctx.settings.max_body_bytes)

    @app.exception_handler(ServeError)
    async def _serve_error(_: Request, error: ServeError) -> JSONResponse:
        return JSONResponse(error.body(), status_code=error.status)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, error: Exception) -> JSONResponse:
        log.exception("request failed")
        failure = internal(error)
        return JSONResponse(failure.body(), status_code=failure.status)

    @app.get("/health")
    async def health() -> JSONResponse:
        alive = ctx.engine.alive
        body = {"status": "ok" if alive else "stopped", "model": ctx.settings.base_name,
                "adapters": len(ctx.store.names()), "adapters_loaded": len(ctx.store.resident()), **ctx.engine.stats()}
        return JSONResponse(body, status_code=200 if alive else 503)

    @app.get("/metrics")
    async def metrics() -> Response:
        body, content_type = ctx.metrics.render()
        return Response(body, media_type=content_type)

    @app.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [_model_card(ctx, n) for n in [ctx.settings.base_name, *ctx.store.names()]]}

    @app.get("/v1/models/{name:path}")
    async def model(name: str) -> dict:
        ctx.resolve(name)
        return _model_card(ctx, name)

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Response:
        return await _generate(ctx, request, chat=True)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return await _generate(ctx, request, chat=False)

    @app.post("/v1/load_lora_adapter")
    async def load(request: Request) -> Response:
        req = await _parse(request, LoadLoraRequest)
        path = allowed_path(req.lora_path, ctx.settings.adapter_dirs)
        source = await run_in_threadpool(read_source, req.lora_name, path, "load_lora_adapter")
        await asyncio.wrap_future(ctx.engine.call(lambda: ctx.store.load_now(source)))
        return PlainTextResponse(f"Success: LoRA adapter '{req.lora_name}' added successfully.")

    @app.post("/v1/unload_lora_adapter")
    async def unload(request: Request) -> Response:
        req = await _parse(request, UnloadLoraRequest)
        ctx.store.remove(req.lora_name)
        ctx.engine.call(ctx.store.collect)  # frees it now unless requests still use it
        return PlainTextResponse(f"Success: LoRA adapter '{req.lora_name}' removed successfully.")

    return app


def _model_card(ctx: ServeContext, name: str) -> dict[str, Any]:
    base = ctx.settings.base_name
    return {"id": name, "object": "model", "created": int(time.time()), "owned_by": "peftkit",
            "root": base, "parent": None if name == base else base}


async def _generate(ctx: ServeContext, request: Request, chat: bool) -> Response:
    """Parse, check, queue and answer one chat or text completion request."""
    endpoint = "chatcmpl" if chat else "cmpl"
    model = "unknown"
    try:
        req = await _parse(request, ChatCompletionRequest if chat else CompletionRequest)
        model = ctx.label(req.model)
        adapter = ctx.resolve(req.model)
        if chat:
            prompts = [await run_in_threadpool(ctx.chat_tokens, req)]
        else:
            prompts = [await run_in_threadpool(ctx.prompt_tokens, p) for p in req.prompts()]
        feed = EventFeed()
        job = ctx.job(endpoint, req, adapter, prompts, feed.sink, default_max_tokens=None if chat else 16)
        ctx.engine.submit(job)
    except ServeError as e:  # refused before it reached the engine (the engine counts the rest)
        ctx.metrics.requests.labels(endpoint=endpoint, model=model, status=str(e.status)).inc()
        raise
    echoes = [""] * len(job.sequences)
    if not chat and req.echo:
        texts = [ctx.tokenizer.decode(p, skip_special_tokens=True) for p in prompts]
        echoes = [texts[s.index // req.n] for s in job.sequences]
    first = await first_event(feed, job, ctx.engine, request)
    if first is None:  # the client left
        return Response(status_code=499)
    if isinstance(first, Failure):
        raise first.error
    if req.stream:
        return EventStream(stream(feed, job, ctx.engine, first, chat, req.include_usage, echoes))
    result = await collect(feed, job, ctx.engine, request, first)
    if result is None:
        return Response(status_code=499)
    if result.failure is not None:
        raise result.failure.error
    return JSONResponse(chat_body(job, result) if chat else completion_body(job, result, echoes))
