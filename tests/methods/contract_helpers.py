"""Checks shared by the method contract tests (bottleneck, BitFit, LN tuning): each test file
builds adapters its own way and hands the model here."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "train"))  # the tiny run assets
from tiny_assets import the_run, write_config  # noqa: E402
from tiny_models import example_inputs, model_outputs  # noqa: E402

import peftkit as pk  # noqa: E402
from peftkit.cli import main  # noqa: E402

ATOL = 1e-5


def logits(model: torch.nn.Module, family: str, **kwargs) -> torch.Tensor:
    return model_outputs(model, example_inputs(family, batch_size=3), **kwargs)["logits"]


def assert_save_load_exact(model: pk.PeftModel, make_base, family: str, tmp_path: Path) -> pk.PeftModel:
    """Saved and loaded onto a fresh base: bit-identical outputs and adapter tensors."""
    expected = logits(model, family)
    model.save_pretrained(tmp_path)
    loaded = pk.PeftModel.from_pretrained(make_base(), tmp_path)
    assert torch.equal(logits(loaded, family), expected)
    saved = pk.get_peft_model_state_dict(model)
    got = pk.get_peft_model_state_dict(loaded)
    assert saved.keys() == got.keys()
    assert all(torch.equal(got[k], saved[k]) for k in saved)
    return loaded


def assert_only_adapter_params_train(model: pk.PeftModel, family: str, marker: str) -> None:
    """Only parameters whose name contains ``marker`` get gradients and change in a step."""
    model.train()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(marker in n for n in trainable), trainable
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model(**example_inputs(family)).loss.backward()
    assert all(p.grad is None for n, p in model.named_parameters() if n not in trainable)
    opt.step()
    for n, p in model.named_parameters():
        assert (not torch.equal(p, before[n])) == (n in trainable), n
    model.eval()


def assert_mixed_batch_equals_per_row(model: pk.PeftModel, family: str, names: list[str]) -> None:
    """One forward with ``adapter_names`` equals running each row alone with its adapter."""
    inputs = example_inputs(family, batch_size=len(names), with_labels=False)
    with torch.no_grad():
        mixed = model(**inputs, adapter_names=names).logits
        for i, name in enumerate(names):
            row = {k: v[i : i + 1] for k, v in inputs.items()}
            if name == pk.BASE_ADAPTER:
                with model.disable_adapter():
                    expected = model(**row).logits
            else:
                model.set_adapter(name)
                expected = model(**row).logits
            torch.testing.assert_close(mixed[i : i + 1], expected, atol=ATOL, rtol=0)


def assert_delete_restores_base(model: pk.PeftModel, make_base, family: str, names: list[str], atol: float = 0.0) -> None:
    """Deleting every adapter leaves no adapter layer and the base model's outputs (``atol``: after
    a merge and unmerge, which restore the base weights up to rounding)."""
    for name in names:
        model.delete_adapter(name)
    assert not any(isinstance(m, pk.AdapterLayer) for m in model.modules())
    torch.testing.assert_close(logits(model.get_base_model(), family), logits(make_base(), family), atol=atol, rtol=0)


def train_losses(tmp_path: Path, adapter: dict, **train) -> list[float]:
    """``peftkit train`` on the tiny Llama with ``adapter`` as the whole adapter section; the step losses."""
    config = write_config(tmp_path, train={"save_steps": 100, "eval_steps": 100, **train})
    raw = yaml.safe_load(config.read_text())
    raw["adapter"] = adapter  # replace, not merge: the default section is LoRA's
    config.write_text(yaml.safe_dump(raw))
    assert main(["train", str(config)]) == 0
    run = the_run(tmp_path)
    assert (run / "adapter" / "adapter_model.safetensors").is_file()
    saved = json.loads((run / "adapter" / "adapter_config.json").read_text())
    assert saved["peft_type"] == pk.get_method(adapter["method"].upper()).peft_type
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["loss"] for line in lines if '"loss"' in line]
