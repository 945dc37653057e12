"""The adapter contract and the peft interop checks, written once for any layer-wrapping method and
any model: a :class:`Subject` is a model (tiny transformers model or toy) with its inputs; a test
class that subclasses :class:`MethodContract` says how to build an adapter on a subject and gets
the contract tests run on each of its ``SUBJECTS`` (used by the IA³, LoHa and LoKr tests)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import peft
import torch
import torch.nn as nn
from safetensors.torch import load_file
from tiny_models import example_inputs, make_model
from toy_models import TOYS

import peftkit as pk

ATOL = 1e-5


@dataclass(frozen=True)
class Subject:
    """A base model to adapt, the modules to target on it, and its inputs."""

    name: str
    make_base: Callable[[], nn.Module]
    targets: Any
    make_inputs: Callable[[int], Any]  # batch size -> a tensor, or a dict of keyword tensors

    def run(self, model: nn.Module, inputs: Any = None, **kwargs: Any) -> torch.Tensor:
        inputs = self.make_inputs(3) if inputs is None else inputs
        with torch.no_grad():
            out = model(**inputs, **kwargs) if isinstance(inputs, dict) else model(inputs, **kwargs)
        return out.logits if hasattr(out, "logits") else out

    def loss(self, model: nn.Module) -> torch.Tensor:
        inputs = self.make_inputs(2)
        if isinstance(inputs, dict):
            return model(**inputs, labels=inputs["input_ids"]).loss
        return model(inputs).float().pow(2).mean()

    @staticmethod
    def row(inputs: Any, i: int) -> Any:
        if isinstance(inputs, dict):
            return {k: v[i : i + 1] for k, v in inputs.items()}
        return inputs[i : i + 1]


def hf_subject(family: str, targets: Any = None, label: Optional[str] = None) -> Subject:
    """A tiny transformers model of ``tiny_models.FAMILIES``; ``label`` names a second setting."""
    return Subject(label or family, lambda: make_model(family), targets,
                   lambda b: example_inputs(family, batch_size=b, with_labels=False))


def toy_subject(name: str, targets: Any = None, label: Optional[str] = None) -> Subject:
    """A toy of ``toy_models.TOYS``; ``label`` names a second setting of the same toy."""
    toy = next(t for t in TOYS if t.name == name)
    return Subject(label or name, toy.model, toy.targets if targets is None else targets, toy.inputs)


def base_state(model: nn.Module, marker: str) -> dict[str, torch.Tensor]:
    """The base model's own tensors (adapter tensors left out), under the plain model's names."""
    return {k.replace(".base_layer", ""): v.clone() for k, v in model.state_dict().items() if marker not in k}


def first_adapter_layer_input(subject: Subject, model: pk.PeftModel) -> tuple[pk.AdapterLayer, torch.Tensor]:
    """The first adapter layer of the model (in module order), and the input it receives."""
    layer = next(m for m in model.modules() if isinstance(m, pk.AdapterLayer))
    seen: list[torch.Tensor] = []
    handle = layer.register_forward_pre_hook(lambda _m, args: seen.append(args[0]) if not seen else None)
    subject.run(model)
    handle.remove()
    return layer, seen[0]


class MethodContract:
    """Contract tests for one method. Subclasses set ``SUBJECTS``, ``marker`` (a substring of
    every adapter parameter name) and implement :meth:`adapted`."""

    SUBJECTS: list[Subject] = []
    marker = ""
    identity_at_init = True

    def pytest_generate_tests(self, metafunc):  # pytest calls this per test of the class
        if "subject" in metafunc.fixturenames:
            metafunc.parametrize("subject", self.SUBJECTS, ids=[s.name for s in self.SUBJECTS])

    def config(self, subject: Subject, **kw: Any) -> pk.PeftConfig:
        """The method's config for ``subject`` (trained-like, non-identity values unless ``kw`` says)."""
        raise NotImplementedError

    def adapted(self, subject: Subject, name: str = "default", seed: int = 0,
                model: Optional[pk.PeftModel] = None, **kw: Any) -> pk.PeftModel:
        torch.manual_seed(100 + seed)
        cfg = self.config(subject, **kw)
        if model is None:
            return pk.get_peft_model(subject.make_base(), cfg, adapter_name=name).eval()
        model.add_adapter(name, cfg)
        return model

    def identity_config(self, subject: Subject) -> pk.PeftConfig:
        raise NotImplementedError

    # ------------------------------------------------------------------ the contract
    def test_identity_at_init(self, subject):
        model = pk.get_peft_model(subject.make_base(), self.identity_config(subject))
        torch.testing.assert_close(subject.run(model), subject.run(subject.make_base()), atol=0, rtol=0)

    def test_adapter_changes_output_and_disabled_equals_base(self, subject):
        expected = subject.run(subject.make_base())
        model = self.adapted(subject)
        assert not torch.allclose(subject.run(model), expected, atol=1e-4)
        with model.disable_adapter():
            torch.testing.assert_close(subject.run(model), expected, atol=0, rtol=0)
        assert not torch.allclose(subject.run(model), expected, atol=1e-4)

    def test_merged_equals_unmerged_and_unmerge_restores(self, subject):
        model = self.adapted(subject)
        unmerged = subject.run(model)
        before = base_state(model.get_base_model(), self.marker)
        model.merge_adapter()
        torch.testing.assert_close(subject.run(model), unmerged, atol=ATOL, rtol=0)
        model.merge_adapter()  # merging twice is harmless
        torch.testing.assert_close(subject.run(model), unmerged, atol=ATOL, rtol=0)
        model.unmerge_adapter()
        after = base_state(model.get_base_model(), self.marker)
        for k in before:
            torch.testing.assert_close(after[k], before[k], atol=ATOL, rtol=1e-5, msg=k)
        torch.testing.assert_close(subject.run(model), unmerged, atol=ATOL, rtol=0)

    def test_merge_and_unload_returns_plain_model(self, subject):
        model = self.adapted(subject)
        expected = subject.run(model)
        plain = model.merge_and_unload(safe_merge=True)
        assert not any(isinstance(m, pk.AdapterLayer) for m in plain.modules())
        torch.testing.assert_close(subject.run(plain), expected, atol=ATOL, rtol=0)

    def test_save_load_round_trip_is_exact(self, subject, tmp_path):
        model = self.adapted(subject)
        expected = subject.run(model)
        model.save_pretrained(tmp_path)
        loaded = pk.PeftModel.from_pretrained(subject.make_base(), tmp_path)
        assert torch.equal(subject.run(loaded), expected)
        saved, got = pk.get_peft_model_state_dict(model), pk.get_peft_model_state_dict(loaded)
        assert saved.keys() == got.keys() and all(torch.equal(got[k], saved[k]) for k in saved)

    def test_only_adapter_parameters_train(self, subject):
        model = self.adapted(subject).train()
        trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        assert trainable and all(self.marker in n for n in trainable), trainable
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
        subject.loss(model).backward()
        assert all(p.grad is None for n, p in model.named_parameters() if n not in trainable)
        opt.step()
        for n, p in model.named_parameters():
            assert (not torch.equal(p, before[n])) == (n in trainable), n

    def test_mixed_batch_equals_per_row_runs(self, subject):
        model = self.adapted(subject, name="a", seed=0)
        self.adapted(subject, name="b", seed=1, model=model)
        names = ["a", "b", pk.BASE_ADAPTER, "b", "a"]
        inputs = subject.make_inputs(len(names))
        mixed = subject.run(model, inputs, adapter_names=names)
        for i, name in enumerate(names):
            if name == pk.BASE_ADAPTER:
                with model.disable_adapter():
                    row = subject.run(model, subject.row(inputs, i))
            else:
                model.set_adapter(name)
                row = subject.run(model, subject.row(inputs, i))
            torch.testing.assert_close(mixed[i : i + 1], row, atol=ATOL, rtol=0)

    def test_delete_restores_base(self, subject):
        model = self.adapted(subject, name="a", seed=0)
        self.adapted(subject, name="b", seed=1, model=model)
        model.delete_adapter("a")
        assert model.active_adapters == ["b"] and all("a" not in m.adapter_names for m in model.modules()
                                                       if isinstance(m, pk.AdapterLayer))
        model.delete_adapter("b")
        assert not any(isinstance(m, pk.AdapterLayer) for m in model.modules())
        torch.testing.assert_close(subject.run(model), subject.run(subject.make_base()), atol=0, rtol=0)

    def test_two_active_adapters_combine(self, subject):
        model = self.adapted(subject, name="a", seed=0)
        self.adapted(subject, name="b", seed=1, model=model)
        layer, x = first_adapter_layer_input(subject, model)
        with torch.no_grad():
            base = layer.base_layer(x)
            model.set_adapter("a")
            out_a = layer(x)
            model.set_adapter("b")
            out_b = layer(x)
            model.set_adapter(["a", "b"])
            both = layer(x)
        torch.testing.assert_close(both, self.combine(layer, x, base, out_a, out_b), atol=ATOL, rtol=1e-5)

    def combine(self, layer, x, base, out_a, out_b) -> torch.Tensor:
        """What two active adapters give at one layer: additive methods add their deltas."""
        return out_a + out_b - base


# ---------------------------------------------------------------------------------------------- peft interop
def _keys_and_shapes(folder: Path) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in load_file(folder / "adapter_model.safetensors").items()}


def _saved_and_reloaded(subject: Subject, saver: Any, config: Any, loader: Any, folder: Path, x: Any) -> tuple:
    """``saver`` (peft or peftkit) adapts a fresh base and saves; ``loader`` loads the folder onto
    another fresh base and must give the same outputs. Returns (saving model, loaded model)."""
    model = saver.get_peft_model(subject.make_base(), config).eval()
    model.save_pretrained(folder)
    want = subject.run(model, x)
    assert not torch.allclose(want, subject.run(subject.make_base(), x), atol=1e-4), "the adapter has no effect"
    loaded = loader.PeftModel.from_pretrained(subject.make_base(), folder)
    torch.testing.assert_close(subject.run(loaded, x), want, atol=ATOL, rtol=1e-5)
    return model, loaded


def assert_interop_both_ways(subject: Subject, ours_cls: type, theirs_cls: type, settings: dict, tmp_path: Path) -> None:
    """The same non-identity config (``settings``) in peftkit (``ours_cls``) and in peft
    (``theirs_cls``): each library loads the other's checkpoint with the same outputs (fp32, 1e-5),
    the files have the same keys and shapes, each config file loads in the other library, and both
    merge the adapter into the same model."""
    torch.manual_seed(0)
    x = subject.make_inputs(3)
    from_peft, from_pk = tmp_path / "peft", tmp_path / "peftkit"
    _, loaded = _saved_and_reloaded(subject, peft, theirs_cls(**settings), pk, from_peft, x)
    file = load_file(from_peft / "adapter_model.safetensors")
    state = pk.get_peft_model_state_dict(loaded)
    assert state.keys() == file.keys() and all(torch.equal(state[k], file[k]) for k in file)
    model, ref_loaded = _saved_and_reloaded(subject, pk, ours_cls(**settings), peft, from_pk, x)

    assert _keys_and_shapes(from_pk) == _keys_and_shapes(from_peft)
    assert type(peft.PeftConfig.from_pretrained(str(from_pk))) is theirs_cls
    assert type(pk.PeftConfig.from_pretrained(from_peft)) is ours_cls
    ours_json = json.loads((from_pk / "adapter_config.json").read_text())
    theirs_json = json.loads((from_peft / "adapter_config.json").read_text())
    assert not set(ours_json) - set(theirs_json), "keys peft does not write"

    merged_ours = model.merge_and_unload()
    merged_theirs = ref_loaded.merge_and_unload()
    torch.testing.assert_close(subject.run(merged_ours, x), subject.run(merged_theirs, x), atol=ATOL, rtol=1e-5)
