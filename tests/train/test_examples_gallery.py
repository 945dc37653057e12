"""The task gallery (examples/tasks): one YAML per task, each validates with its model swapped for a
tiny one of the same family (offline), and trains for two steps on it; the examples on bundled
models validate as shipped."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from tiny_assets import tiny_bert_dir, tiny_model_dir
from tiny_task_assets import skip_without_task_extras, tiny_llava_dir, tiny_t5_dir, tiny_whisper_dir

from peftkit.cli import main
from peftkit.models import list_bundled_models
from peftkit.train.model_check import validate_run
from peftkit.train.tasks.catalog import TASKS

pytestmark = pytest.mark.usefixtures("torch_single_thread")
skip_without_task_extras()

REPO = Path(__file__).resolve().parents[2]
GALLERY = sorted((REPO / "examples" / "tasks").glob("*.yaml"))
TINY = {"sft": tiny_model_dir, "dpo": tiny_model_dir, "classification": tiny_bert_dir,
        "token_classification": tiny_bert_dir, "seq2seq": tiny_t5_dir, "speech_to_text": tiny_whisper_dir,
        "vision_sft": tiny_llava_dir}
BUNDLED = {name for m in list_bundled_models() for name in (m.name, *m.aliases)}


def task_of(path: Path) -> str:
    return yaml.safe_load(path.read_text())["train"]["task"]


def test_the_gallery_has_an_example_for_every_task():
    assert sorted({task_of(p) for p in GALLERY}) == sorted(TASKS)


def test_the_readme_links_every_example():
    readme = (REPO / "README.md").read_text()
    assert all(f"examples/tasks/{p.name}" in readme for p in GALLERY)


@pytest.mark.parametrize("path", GALLERY, ids=lambda p: p.stem)
def test_example_validates_and_trains_two_steps_on_a_tiny_model(path, tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)  # data paths are relative to the repository root
    overrides = [f"model.name={TINY[task_of(path)](tmp_path)}", "train.max_steps=2", "train.batch_size=2",
                 "train.eval_steps=2", "train.save_steps=2", "eval.num_examples=2", "eval.at_start=false",
                 "eval.max_new_tokens=3", f"output.dir={tmp_path / 'runs'}"]
    assert validate_run(str(path), overrides) == []
    assert main(["train", str(path), *overrides]) == 0
    [run] = list((tmp_path / "runs").iterdir())
    assert (run / "adapter" / "adapter_model.safetensors").exists()


@pytest.mark.parametrize("path", [p for p in GALLERY if yaml.safe_load(p.read_text())["model"]["name"] in BUNDLED],
                         ids=lambda p: p.stem)
def test_examples_on_bundled_models_validate_as_shipped(path, monkeypatch):
    monkeypatch.chdir(REPO)
    assert validate_run(str(path)) == []
