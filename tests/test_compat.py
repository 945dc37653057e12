"""peftkit.compat: the cache argument and activation checkpointing under whichever transformers
release is installed; and the test plugin that fails on deprecated calls from peftkit's code."""

from __future__ import annotations

import inspect
import sys
import warnings

import pytest
import torch
from deprecations_plugin import PEFTKIT_SOURCE, peftkit_caller
from tiny_models import example_inputs, make_model

from peftkit.compat import cache_kwarg, enable_activation_checkpointing, output_cache, pop_cache


@pytest.mark.parametrize("family", ["llama", "gpt2", "bert", "t5"])
def test_cache_kwarg_is_a_name_the_model_takes(family):
    model = make_model(family)
    name = cache_kwarg(model)
    assert name in ("cache", "past_key_values")
    # the model itself, or the backbone a task head passes **kwargs to, names it explicitly
    assert any(name in inspect.signature(m.forward).parameters for m in model.modules())


def test_a_cache_passed_under_cache_kwarg_is_used_without_warnings():
    model = make_model("llama").eval()
    ids = example_inputs("llama")["input_ids"]
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("error")
        cache = output_cache(model(input_ids=ids[:, :-1], use_cache=True))
        step = model(input_ids=ids[:, -1:], use_cache=True, **{cache_kwarg(model): cache}).logits[:, -1]
        full = model(input_ids=ids).logits[:, -1]
    torch.testing.assert_close(step, full, atol=1e-5, rtol=0)


def test_pop_cache_takes_either_name_and_removes_both():
    kwargs = {"cache": None, "past_key_values": "old", "input_ids": 1}
    assert pop_cache(kwargs) == "old" and kwargs == {"input_ids": 1}
    assert pop_cache({}) is None


def test_enable_activation_checkpointing_without_deprecation_warnings():
    model = make_model("llama")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        enable_activation_checkpointing(model, use_reentrant=False)
    assert any(getattr(m, "gradient_checkpointing", False) for m in model.modules())


def _run_as_if_in(filename: str, source: str, namespace: dict) -> None:
    exec(compile(source, filename, "exec"), namespace)


def test_plugin_blames_peftkit_code_that_calls_a_deprecated_api():
    def deprecated_library_function():  # stands for a library's warning site (here: this test file)
        return peftkit_caller(sys._getframe(0))

    namespace = {"deprecated_library_function": deprecated_library_function}
    _run_as_if_in(f"{PEFTKIT_SOURCE}/fake_caller.py", "result = deprecated_library_function()", namespace)
    assert namespace["result"] == f"{PEFTKIT_SOURCE}/fake_caller.py:1"


def test_plugin_ignores_deprecations_peftkit_issues_and_other_callers():
    namespace: dict = {"sys": sys, "peftkit_caller": peftkit_caller}
    _run_as_if_in(f"{PEFTKIT_SOURCE}/fake_issuer.py", "result = peftkit_caller(sys._getframe(0))", namespace)
    assert namespace["result"] is None  # peftkit warning about its own API
    assert peftkit_caller(sys._getframe(0)) is None  # a test calling a library directly


def test_plugin_looks_past_peftkit_s_attribute_forwarding():
    """PeftModel and adapter layers forward unknown attributes to the wrapped model; a deprecated
    attribute read through them is blamed on whoever read it (here a caller outside peftkit)."""

    def deprecated_library_function():
        return peftkit_caller(sys._getframe(0))

    forwarding = "def __getattr__():\n    return deprecated_library_function()\n"
    namespace = {"deprecated_library_function": deprecated_library_function}
    _run_as_if_in(f"{PEFTKIT_SOURCE}/fake_wrapper.py", forwarding, namespace)
    assert namespace["__getattr__"]() is None
    _run_as_if_in(f"{PEFTKIT_SOURCE}/fake_caller.py", "result = __getattr__()", namespace)
    assert namespace["result"] == f"{PEFTKIT_SOURCE}/fake_caller.py:1"  # peftkit code reading it is blamed
