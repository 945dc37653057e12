"""``peftkit serve``: one base model, many adapters, one OpenAI-compatible endpoint.

The parts, one idea per module:

- :mod:`.app` - the HTTP API (FastAPI): OpenAI's chat / completions / models routes, vLLM's adapter
  load and unload routes, ``/health`` and ``/metrics``; API keys and body-size limit.
- :mod:`.scheduler` - the engine thread: continuous batching of every request, whatever adapter
  each uses, through :class:`~peftkit.model.PeftModel`'s mixed-adapter path (``adapter_names=``).
- :mod:`.store` - served adapter names, and the adapters in memory (LRU within a byte budget).
- :mod:`.kv`, :mod:`.runner`, :mod:`.sampling`, :mod:`.text` - the batch's attention cache, the two
  model calls, token choice, and text pieces with stop strings.
- :mod:`.protocol`, :mod:`.responses`, :mod:`.context`, :mod:`.errors` - OpenAI's request and
  response shapes and error bodies.
- :mod:`.server`, :mod:`.cli` - building it from :class:`ServeSettings` and running it (uvicorn).

Needs the ``serve`` extra (``pip install 'peftkit[serve]'``: fastapi, uvicorn, prometheus-client).

Example:
    >>> from peftkit.serve import ServeSettings, run
    >>> run(ServeSettings(model="smollm2-135m-instruct", adapters={"contacts": "runs/x"}))  # doctest: +SKIP
"""

from .settings import ServeSettings, parse_size

__all__ = ["ServeSettings", "parse_size", "build_context", "create_app", "run"]


def __getattr__(name: str):
    # the web stack is imported on first use, so `import peftkit.serve` stays light
    if name in ("build_context", "run"):
        from . import server

        return getattr(server, name)
    if name == "create_app":
        from .app import create_app

        return create_app
    raise AttributeError(name)
