"""Serve tests reuse the tiny run assets of tests/train (a tiny Llama folder with a byte-level
tokenizer and a ChatML template). They need the ``serve`` extra and the ``openai``/``httpx``
test clients; without them the whole folder is skipped (``make test-oldest`` leaves the extra out)."""

import sys
from pathlib import Path

import pytest
import torch

for _module in ("fastapi", "uvicorn", "prometheus_client", "httpx", "openai"):
    pytest.importorskip(_module)

_TRAIN_TESTS = str(Path(__file__).resolve().parents[1] / "train")
if _TRAIN_TESTS not in sys.path:
    sys.path.insert(0, _TRAIN_TESTS)


@pytest.fixture(scope="module", autouse=True)
def _restore_torch_threads():
    """Servers built with ``ServeSettings(threads=1)`` set torch's thread count for the whole
    process; later tests (train runs compared bit for bit with a subprocess) get theirs back."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)
