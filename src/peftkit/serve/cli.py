"""``peftkit serve MODEL --adapter NAME=PATH ...``: the command's flags, mapped onto
:class:`~.settings.ServeSettings`.

Example:
    $ peftkit serve smollm2-135m-instruct --adapter contacts=runs/<id> --api-key sk-local
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys

from ..errors import PeftkitError

API_KEY_ENV = "PEFTKIT_API_KEY"


def add_parser(sub) -> None:
    """Add ``serve`` to the ``peftkit`` command's sub-parsers."""
    p = sub.add_parser("serve", help="serve a base model and its adapters behind an OpenAI-compatible API",
                       description="Serve MODEL and adapters at http://HOST:PORT/v1 (OpenAI's chat/completions API; "
                                   "a request's 'model' picks the adapter, MODEL itself the base model). "
                                   "Details: docs/serving.md")
    p.add_argument("model", help="base model: bundled name (smollm2-135m-instruct), local path or HF id")
    a = p.add_argument_group("adapters")
    a.add_argument("--adapter", action="append", default=[], metavar="[NAME=]PATH",
                   help="an adapter or run folder to serve as NAME (default: the folder's name); repeat for more")
    a.add_argument("--adapters", metavar="FILE.yaml", help="a YAML file of 'name: folder' lines")
    a.add_argument("--adapter-dir", action="append", default=[], metavar="DIR",
                   help="serve every adapter/run folder in DIR by its name, watch it for new ones, and allow "
                        "/v1/load_lora_adapter to load from it; repeat for more")
    a.add_argument("--watch-interval", type=float, default=5.0, help="seconds between rescans of --adapter-dir (default 5)")
    a.add_argument("--adapter-memory", default="1GiB", help="bytes of adapter weights kept in memory; least recently "
                                                            "used adapters are unloaded beyond it (default 1GiB)")
    a.add_argument("--max-loaded-adapters", type=int, help="at most this many adapters in memory")
    n = p.add_argument_group("network")
    n.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    n.add_argument("--port", type=int, default=8000, help="default 8000 (0: any free port)")
    n.add_argument("--api-key", action="append", default=[], metavar="KEY",
                   help=f"require 'Authorization: Bearer KEY' (repeat for several; or set {API_KEY_ENV}, comma-separated)")
    n.add_argument("--served-model-name", help="the name of the base model in requests (default: MODEL)")
    m = p.add_argument_group("model")
    m.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    m.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    m.add_argument("--threads", type=int, help="torch CPU threads")
    lim = p.add_argument_group("limits")
    lim.add_argument("--max-batch-size", type=int, default=32, help="sequences decoded together (default 32)")
    lim.add_argument("--max-concurrent-requests", type=int, default=64, help="requests queued or running; more get "
                                                                            "429 (default 64)")
    lim.add_argument("--max-prompt-tokens", type=int, help="longest prompt (default: the model's context)")
    lim.add_argument("--max-tokens", type=int, default=2048, help="largest max_tokens a request may ask (default 2048)")
    lim.add_argument("--max-body-size", default="2MiB", help="largest request body (default 2MiB)")
    lim.add_argument("--request-timeout", type=float, default=600.0, help="seconds per request (default 600)")
    lim.add_argument("--queue-timeout", type=float, default=120.0, help="seconds a request may wait to start (default 120)")
    lim.add_argument("--shutdown-grace", type=float, default=30.0, help="seconds running requests get to finish on "
                                                                       "SIGINT/SIGTERM (default 30)")
    p.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    p.set_defaults(func=_serve)


def settings_from_args(args: argparse.Namespace):
    """The :class:`~.settings.ServeSettings` the flags describe."""
    from .settings import ServeSettings, parse_size
    from .sources import adapter_specs, adapters_file

    adapters = adapters_file(args.adapters) if args.adapters else {}
    for name, path in adapter_specs(args.adapter).items():
        adapters[name] = path
    keys = list(args.api_key) + [k.strip() for k in os.environ.get(API_KEY_ENV, "").split(",") if k.strip()]
    return ServeSettings(
        model=args.model, served_model_name=args.served_model_name, adapters=adapters, adapter_dirs=args.adapter_dir,
        watch_interval=args.watch_interval, host=args.host, port=args.port, api_keys=keys, dtype=args.dtype,
        device=args.device, threads=args.threads, max_batch_size=args.max_batch_size,
        max_concurrent_requests=args.max_concurrent_requests, max_prompt_tokens=args.max_prompt_tokens,
        max_tokens=args.max_tokens, max_body_bytes=parse_size(args.max_body_size),
        request_timeout=args.request_timeout, queue_timeout=args.queue_timeout, shutdown_grace=args.shutdown_grace,
        adapter_memory=parse_size(args.adapter_memory), max_loaded_adapters=args.max_loaded_adapters)


def _serve(args: argparse.Namespace) -> int:
    missing = [m for m in ("fastapi", "uvicorn", "prometheus_client") if importlib.util.find_spec(m) is None]
    if missing:
        print(f"error: peftkit serve needs {', '.join(missing)}: pip install 'peftkit[serve]'", file=sys.stderr)
        return 2
    from .server import run

    try:
        return run(settings_from_args(args), log_level=args.log_level)
    except PeftkitError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
