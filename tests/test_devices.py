"""infer_device: peft's device choice."""

from __future__ import annotations

import torch

from peftkit.devices import infer_device


def test_infer_device_prefers_cuda_and_falls_back_to_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert infer_device() == "cuda"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    for name in ("xpu", "npu"):
        backend = getattr(torch, name, None)
        if backend is not None:
            monkeypatch.setattr(backend, "is_available", lambda: False)
    assert infer_device() == "cpu"


def test_no_split_modules_walks_nested_transformers_models():
    from peftkit.devices import no_split_modules

    class Block(torch.nn.Module):
        pass

    class Inner(torch.nn.Module):
        _no_split_modules = ["InnerLayer"]

        def __init__(self):
            super().__init__()
            self.block = Block()

    class Outer(torch.nn.Module):
        _no_split_modules = ["Block"]

        def __init__(self):
            super().__init__()
            self.inner = Inner()
            self.kept = Block()

    assert no_split_modules(Outer()) == {"Block", "InnerLayer"}
    assert no_split_modules(torch.nn.Linear(2, 2)) == set()


def test_no_split_modules_of_a_transformers_model_equal_peft():
    from peft.utils.other import _get_no_split_modules
    from tiny_models import tiny_llama

    from peftkit.devices import no_split_modules

    model = tiny_llama()
    assert no_split_modules(model) == set(_get_no_split_modules(model)) == {"LlamaDecoderLayer"}
