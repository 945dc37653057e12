"""Building a server from :class:`~.settings.ServeSettings` and running it under uvicorn.

:func:`build_context` loads the base model once, wraps it in a :class:`~peftkit.model.PeftModel`
with no adapter, registers the adapters (command line, YAML file, watched directories), loads the
ones that fit the memory budget, and checks with a two-token probe that the model's cache can be
batched. :func:`run` serves it; on SIGINT/SIGTERM the server stops accepting connections, lets
running requests finish for ``shutdown_grace`` seconds, then cancels the rest and exits.

>>> run(ServeSettings(model="smollm2-135m-instruct", adapters={"contacts": "runs/x"}))  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import logging
import socket
from typing import Any, Iterator, Optional

import torch

from ..errors import ConfigError, PeftkitError
from ..names import BASE_ADAPTER
from .context import ServeContext
from .errors import ServeError
from .metrics import ServeMetrics
from .runner import ModelRunner
from .scheduler import Engine
from .settings import ServeSettings
from .sources import read_source
from .store import AdapterStore

log = logging.getLogger("peftkit.serve")


def _eos_ids(model: Any, tokenizer: Any) -> set[int]:
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids = configured if isinstance(configured, (list, tuple)) else [configured]
    return {int(i) for i in [*ids, tokenizer.eos_token_id] if i is not None}


def build_context(settings: ServeSettings, model: Any = None, tokenizer: Any = None) -> ServeContext:
    """Everything the app needs, with the engine not yet started. ``model`` / ``tokenizer`` may be
    given (already loaded: a plain causal LM, or a PeftModel without adapters) instead of loading
    ``settings.model``.

    Example:
        >>> ctx = build_context(ServeSettings(model="smollm2-135m-instruct"))   # doctest: +SKIP
    """
    from ..model import PeftModel
    from ..models import load_model, load_tokenizer

    if settings.threads:
        torch.set_num_threads(settings.threads)
    if tokenizer is None:
        tokenizer = load_tokenizer(settings.model)
    if model is None:
        model = load_model(settings.model, dtype=settings.dtype)
        model.to(settings.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    peft_model = model if isinstance(model, PeftModel) else PeftModel(model, None)
    peft_model.eval()
    base = peft_model.get_base_model()
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    metrics = ServeMetrics()
    store = AdapterStore(peft_model, settings.adapter_memory, settings.max_loaded_adapters,
                         tuple(settings.adapter_dirs), metrics)
    _register(store, settings)
    runner = ModelRunner(peft_model, pad_id)
    runner.prefill([[pad_id, pad_id]], [BASE_ADAPTER])  # fails now, not on the first request, for unbatchable caches
    vocab = base.get_output_embeddings().weight.shape[0] if base.get_output_embeddings() is not None \
        else base.config.vocab_size
    engine = Engine(runner, store, _eos_ids(base, tokenizer), settings, metrics)
    return ServeContext(settings, tokenizer, engine, store, metrics, runner.context_length, int(vocab), runner.device)


def _register(store: AdapterStore, settings: ServeSettings) -> None:
    """Register the named adapters (a bad folder stops the start: it is the operator's typo),
    scan the watched directories, and load what fits the budget (a file that fails to load is
    logged and refused per request, so the others are served)."""
    problems = []
    for name, path in settings.adapters.items():
        try:
            store.add(read_source(name, path, "command line"))
        except ServeError as e:
            problems.append((f"adapter {name}", e.message))
    if problems:
        raise ConfigError("Cannot serve these adapters:", problems)
    store.rescan()
    for name in store.names():
        try:
            if store.acquire(name):
                store.release(name)
        except ServeError as e:
            log.warning("%s", e.message)


def bound_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (port 0: a free one)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def uvicorn_server(ctx: ServeContext, log_level: str = "info") -> Any:
    """A ``uvicorn.Server`` for ``ctx`` whose shutdown first refuses new requests (503), then
    waits ``shutdown_grace`` seconds for running ones."""
    import uvicorn

    from .app import create_app

    class Server(uvicorn.Server):
        async def shutdown(self, sockets: Optional[list] = None) -> None:
            ctx.engine.drain()
            await super().shutdown(sockets)

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            # uvicorn raises the SIGINT/SIGTERM it caught again once it has shut down, so the
            # process would die by the signal (Ctrl-C: a KeyboardInterrupt traceback); a graceful
            # stop is a normal end of `peftkit serve` (exit code 0)
            with super().capture_signals():
                try:
                    yield
                finally:
                    self._captured_signals.clear()

    config = uvicorn.Config(create_app(ctx), log_level=log_level, timeout_graceful_shutdown=ctx.settings.shutdown_grace,
                            lifespan="on", access_log=False)
    return Server(config)


def run(settings: ServeSettings, log_level: str = "info") -> int:
    """Load, serve until SIGINT/SIGTERM, shut down gracefully. Returns the exit code."""
    logging.basicConfig(level=getattr(logging, log_level.upper(), logging.INFO), format="%(levelname)s %(message)s")
    if settings.host not in ("127.0.0.1", "localhost", "::1") and not settings.api_keys:
        log.warning("serving on %s without an API key: anyone who can reach this address can use the server "
                    "(pass --api-key or set PEFTKIT_API_KEY)", settings.host)
    try:
        sock = bound_socket(settings.host, settings.port)
    except OSError as e:
        raise PeftkitError(f"cannot listen on {settings.host}:{settings.port}: {e.strerror or e}") from None
    ctx = build_context(settings)
    host, port = sock.getsockname()[:2]
    print(f"peftkit serve: {settings.base_name} with {len(ctx.store.names())} adapter(s) on http://{host}:{port}/v1",
          flush=True)
    uvicorn_server(ctx, log_level).run(sockets=[sock])
    return 0
