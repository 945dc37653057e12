"""The import alias: ``import peft`` under peft_suite/alias gives peftkit's objects and stand-ins.

It runs in a subprocess: in this process ``peft`` is the real package (the interop tests use it).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _run(code: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "peft_suite" / "alias"), str(ROOT)])}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True)


def test_peft_names_resolve_to_peftkit_objects_and_stand_ins():
    done = _run("""
        import peft, peftkit
        from peft.tuners.lora import LoraLayer
        from peft.tuners.tuners_utils import BaseTunerLayer
        from peft.utils import ModulesToSaveWrapper, infer_device
        from peftkit.methods.lora_layers import LoraLayer as ours
        assert peft.LoraConfig is peftkit.LoraConfig and peft.get_peft_model is peftkit.get_peft_model
        assert LoraLayer is ours and BaseTunerLayer is peftkit.AdapterLayer
        assert ModulesToSaveWrapper is peftkit.ModulesToSaveWrapper and infer_device() == "cpu" or True
        boft = peft.BOFTConfig(target_modules=["x"])          # may be built (parametrize lists) ...
        try:
            boft.r                                             # ... but not used
        except peft.NotInPeftkit as error:
            print("NA", error)
        print(sorted([peft.BOFTConfig, peft.LoraConfig], key=lambda c: c.__name__)[0].__name__)
    """)
    assert done.returncode == 0, done.stderr
    assert "NA peft.BOFTConfig.r: peft method BOFT is not in peftkit" in done.stdout
    assert "BOFTConfig" in done.stdout


def test_missing_api_fails_when_called():
    done = _run("""
        import peft
        from peft.helpers import disable_input_dtype_casting
        try:
            disable_input_dtype_casting(None)
        except peft.MissingInPeftkit as error:
            print("MISSING", error)
    """)
    assert done.returncode == 0, done.stderr
    assert "MISSING peft.helpers.disable_input_dtype_casting" in done.stdout
