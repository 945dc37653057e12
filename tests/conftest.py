"""Shared pytest fixtures: tiny offline models, example inputs, seeding.

The factories themselves live in ``tests/tiny_models.py`` so that test modules can import them
directly (``from tiny_models import make_model, example_inputs, randomize_lora_weights``); the
fixtures below are thin wrappers around them.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest
import torch

_TESTS_DIR = Path(__file__).resolve().parent
_SRC_DIR = _TESTS_DIR.parent / "src"

# Make `import tiny_models` work whatever pytest's import mode / rootdir is.
if str(_TESTS_DIR) not in sys.path:
    sys.path.insert(0, str(_TESTS_DIR))
# Let the suite run from a checkout where peftkit is not installed into the environment.
if importlib.util.find_spec("peftkit") is None and _SRC_DIR.is_dir():
    sys.path.insert(0, str(_SRC_DIR))

# Tests never touch the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import tiny_models  # noqa: E402

# Fail a test when peftkit's own code calls an API that warns it is deprecated (see the module).
pytest_plugins = ["deprecations_plugin"]


@pytest.fixture(autouse=True)
def _seeded():
    """Every test starts from the same global RNG state."""
    tiny_models.seed_everything(0)
    yield


@pytest.fixture
def torch_single_thread():
    """Run the test with one torch CPU thread (restored afterwards).

    For tiny models the intra-op thread pool costs far more than it saves, and on a busy 2-core
    machine its spinning threads make each millisecond matmul take 10-100x longer. Modules of
    tiny-model tests can make this autouse with ``pytestmark = pytest.mark.usefixtures(...)``.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def tiny_llama():
    """Factory: ``tiny_llama()`` -> a fresh Llama-style ``LlamaForCausalLM`` (same weights each call)."""
    return tiny_models.tiny_llama


@pytest.fixture
def tiny_gpt2():
    """Factory: ``tiny_gpt2()`` -> a fresh ``GPT2LMHeadModel`` (Conv1D projections)."""
    return tiny_models.tiny_gpt2


@pytest.fixture
def tiny_bert_classifier():
    """Factory: ``tiny_bert_classifier()`` -> a fresh ``BertForSequenceClassification`` (3 labels)."""
    return tiny_models.tiny_bert_classifier


@pytest.fixture
def tiny_bert_token_classifier():
    """Factory: ``tiny_bert_token_classifier()`` -> a fresh ``BertForTokenClassification``."""
    return tiny_models.tiny_bert_token_classifier


@pytest.fixture
def tiny_t5():
    """Factory: ``tiny_t5()`` -> a fresh ``T5ForConditionalGeneration``."""
    return tiny_models.tiny_t5


@pytest.fixture
def make_model():
    """Factory: ``make_model(family)`` for ``family`` in ``tiny_models.FAMILIES``."""
    return tiny_models.make_model


@pytest.fixture
def example_inputs():
    """Factory: ``example_inputs(family, batch_size=2, seq_len=8)`` -> dict of tensors."""
    return tiny_models.example_inputs


@pytest.fixture(params=tiny_models.FAMILIES)
def family(request):
    """Parametrizes a test over every tiny model family."""
    return request.param
