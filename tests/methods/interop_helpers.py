"""Interop checks with the real ``peft`` for LoRA layer kinds: the same config built in both
libraries, saved by one and loaded by the other, must give identical outputs and the same file."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import peft
import torch
from safetensors.torch import load_file

import peftkit as pk

LIBRARIES = {"peft": peft, "peftkit": pk}


def randomize_adapters(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Every adapter tensor random (a fresh adapter is often a no-op, which would hide mistakes)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    return model


def saved_tensors(model, folder: Path) -> dict[str, torch.Tensor]:
    model.save_pretrained(folder)
    return load_file(str(folder / "adapter_model.safetensors"))


def assert_moves_both_ways(make_base: Callable[[], torch.nn.Module], run: Callable, tmp_path: Path,
                           config: str = "LoraConfig", atol: float = 1e-6, **config_kwargs) -> dict[str, torch.Tensor]:
    """Saved by peft, loaded by peftkit, and the other way round: the same outputs as the model that
    saved; both libraries write the same keys and shapes. Returns peftkit's saved tensors."""
    files = {}
    for source, target in (("peft", "peftkit"), ("peftkit", "peft")):
        src, dst = LIBRARIES[source], LIBRARIES[target]
        model = randomize_adapters(src.get_peft_model(make_base(), getattr(src, config)(**config_kwargs)))
        model.eval()
        expected = run(model)
        files[source] = saved_tensors(model, tmp_path / source)
        loaded = dst.PeftModel.from_pretrained(make_base(), tmp_path / source)
        loaded.eval()
        torch.testing.assert_close(run(loaded), expected, atol=atol, rtol=0, msg=f"saved by {source}, loaded by {target}")
    assert {k: v.shape for k, v in files["peft"].items()} == {k: v.shape for k, v in files["peftkit"].items()}
    return files["peftkit"]
