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
