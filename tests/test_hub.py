"""``push_to_hub`` offline: huggingface_hub's repository and upload calls are replaced by fakes
that record what would be sent; the uploaded folder must be an adapter that ``peft`` loads."""

from __future__ import annotations

import inspect
import shutil
from types import SimpleNamespace

import huggingface_hub
import peft
import pytest
import torch
import transformers
from tiny_models import example_inputs, model_outputs, randomize_lora_weights, tiny_llama

import peftkit as pk

pytestmark = pytest.mark.usefixtures("torch_single_thread")


class FakeHub:
    """Stands in for ``HfApi.create_repo`` / ``HfApi.upload_folder``; keeps a copy of each upload."""

    def __init__(self, tmp_path):
        self.root, self.calls, self.uploads = tmp_path, [], []

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", repo_id, kwargs))
        return SimpleNamespace(repo_id=f"me/{repo_id}" if "/" not in repo_id else repo_id)

    def upload_folder(self, *, repo_id, folder_path, **kwargs):
        copy = self.root / f"upload{len(self.uploads)}"
        shutil.copytree(folder_path, copy)
        self.uploads.append(copy)
        self.calls.append(("upload_folder", repo_id, kwargs))
        return SimpleNamespace(commit_url=f"https://huggingface.co/{repo_id}/commit/abc")


@pytest.fixture
def hub(tmp_path, monkeypatch):
    fake = FakeHub(tmp_path)
    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", fake.create_repo)
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", fake.upload_folder)
    return fake


def test_push_to_hub_uploads_an_adapter_peft_loads(hub):
    model = pk.get_peft_model(tiny_llama(), pk.LoraConfig(r=4, target_modules=["q_proj"], task_type="CAUSAL_LM"))
    randomize_lora_weights(model)
    url = model.push_to_hub("contact-lora", private=True, commit_message="first", revision="dev", tags=["demo"])
    assert url == "https://huggingface.co/me/contact-lora/commit/abc"
    (_, repo, create), (_, same_repo, upload) = hub.calls
    assert repo == "contact-lora" and same_repo == "me/contact-lora" and create["private"] is True
    assert upload["commit_message"] == "first" and upload["revision"] == "dev" and upload["create_pr"] is False
    folder = hub.uploads[0]
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "adapter_config.json", "adapter_model.safetensors"]
    card = (folder / "README.md").read_text()
    assert "library_name: peft" in card and "- demo" in card and "- lora" in card
    loaded = peft.PeftModel.from_pretrained(tiny_llama(), folder)
    inputs = example_inputs("llama")
    torch.testing.assert_close(model_outputs(loaded, inputs), model_outputs(model.eval(), inputs))


def test_every_adapter_goes_up_in_one_commit(hub):
    model = pk.get_peft_model(tiny_llama(), pk.LoraConfig(r=4, target_modules=["q_proj"]))
    model.add_adapter("other", pk.LoraConfig(r=2, target_modules=["v_proj"]))
    model.push_to_hub("me/two")
    assert [c[0] for c in hub.calls] == ["create_repo", "upload_folder"]
    assert (hub.uploads[0] / "other" / "adapter_model.safetensors").is_file()


def test_config_push_to_hub(hub):
    pk.LoraConfig(r=8, target_modules=["q_proj"]).push_to_hub("me/config")
    assert pk.PeftConfig.from_pretrained(hub.uploads[0]).r == 8


def test_signature_is_peft_s():
    ours = inspect.signature(pk.PeftModel.push_to_hub).parameters
    theirs = inspect.signature(peft.PeftModel.push_to_hub).parameters
    assert list(ours) == list(theirs)
    assert all(ours[name].kind == theirs[name].kind for name in ours)
    assert transformers.utils.PushToHubMixin.push_to_hub is peft.PeftModel.push_to_hub
