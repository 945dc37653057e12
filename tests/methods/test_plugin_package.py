"""A third-party method shipped as its own package (tests/plugin_pkg) plugs into peftkit through
the ``peftkit.methods`` entry point: installed with pip into a folder and put on PYTHONPATH, it
works end to end in a fresh process (get_peft_model, save, load, merge, ``peftkit train``)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml
from contract_helpers import the_run, write_config

pytestmark = pytest.mark.slow  # a pip build and four fresh Python processes: 30-100 s on 2 busy cores

PLUGIN_SRC = Path(__file__).resolve().parents[1] / "plugin_pkg"

CHECK = textwrap.dedent('''
    import sys
    import torch
    from transformers import AutoModelForCausalLM
    import peftkit as pk
    from peftkit.registry import get_method

    model_dir, out, run_adapter = sys.argv[1:4]
    spec = get_method("TOY_GAIN")
    assert type(spec).__module__ == "peftkit.registry" and spec.config_cls.__module__ == "peftkit_toy_gain"
    ids = torch.tensor([[5, 6, 7, 8]])
    base = AutoModelForCausalLM.from_pretrained(model_dir)
    expected = base(input_ids=ids).logits
    model = pk.get_peft_model(base, spec.config_cls(target_modules=["q_proj", "down_proj"], init_gain=0.5))
    assert [n for n, p in model.named_parameters() if p.requires_grad][0].endswith("q_proj.toy_gain.default")
    adapted = model(input_ids=ids).logits
    assert not torch.allclose(adapted, expected, atol=1e-4)
    model.save_pretrained(out)
    loaded = pk.PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model_dir), out)
    assert type(loaded.peft_config["default"]).__name__ == "ToyGainConfig"
    assert torch.equal(loaded(input_ids=ids).logits, adapted)
    merged = loaded.merge_and_unload()
    torch.testing.assert_close(merged(input_ids=ids).logits, adapted, atol=1e-5, rtol=0)
    trained = pk.PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model_dir), run_adapter)
    gains = [p for n, p in trained.named_parameters() if "toy_gain" in n]
    assert len(gains) == 14 and any(g.abs().sum() > 0 for g in gains)  # all-linear, 2 layers; trained
    print("plugin OK")
''')


def run(args: list[str], env: dict, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True, timeout=300)


def test_installed_plugin_package_works_end_to_end(tmp_path):
    # build from a copy, so setuptools' build files never land in the source tree
    source = shutil.copytree(PLUGIN_SRC, tmp_path / "pkg", ignore=shutil.ignore_patterns("build", "*.egg-info"))
    site = tmp_path / "site"
    install = run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                   "--no-index", "--target", str(site), str(source)], dict(os.environ), tmp_path)
    assert install.returncode == 0, install.stderr[-3000:]
    assert list(site.glob("peftkit_toy_gain-*.dist-info/entry_points.txt"))

    config = write_config(tmp_path, train={"max_steps": 4, "save_steps": 100, "eval_steps": 100})
    raw = yaml.safe_load(config.read_text())
    raw["adapter"] = {"method": "toy_gain", "target_modules": "all-linear"}
    config.write_text(yaml.safe_dump(raw))

    plain_env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env = {**plain_env, "PYTHONPATH": os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))}
    missing = run([sys.executable, "-m", "peftkit.cli", "validate", str(config)], plain_env, tmp_path)
    assert missing.returncode != 0 and "unknown method 'toy_gain'" in missing.stdout + missing.stderr

    trained = run([sys.executable, "-m", "peftkit.cli", "train", str(config)], env, tmp_path)
    assert trained.returncode == 0, trained.stderr[-3000:]
    adapter = the_run(tmp_path) / "adapter"
    assert json.loads((adapter / "adapter_config.json").read_text())["peft_type"] == "TOY_GAIN"

    script = tmp_path / "check.py"
    script.write_text(CHECK)
    model_dir = yaml.safe_load(config.read_text())["model"]["name"]
    checked = run([sys.executable, str(script), model_dir, str(tmp_path / "saved"), str(adapter)], env, tmp_path)
    assert checked.returncode == 0 and "plugin OK" in checked.stdout, checked.stderr[-3000:]
