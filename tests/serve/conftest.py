"""Serve tests reuse the tiny run assets of tests/train (a tiny Llama folder with a byte-level
tokenizer and a ChatML template). They need the ``serve`` extra and the ``openai``/``httpx``
test clients; without them the whole folder is skipped (``make test-oldest`` leaves the extra out)."""

import sys
from pathlib import Path

import pytest

for _module in ("fastapi", "uvicorn", "prometheus_client", "httpx", "openai"):
    pytest.importorskip(_module)

_TRAIN_TESTS = str(Path(__file__).resolve().parents[1] / "train")
if _TRAIN_TESTS not in sys.path:
    sys.path.insert(0, _TRAIN_TESTS)
