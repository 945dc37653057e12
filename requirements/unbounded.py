"""Print peftkit's requirements (with the given extras) without version bounds, one per line.

``make test-latest`` installs these with ``--upgrade`` to try the newest releases of everything
peftkit and its tests use, whatever pyproject.toml's upper bounds say. torch is left out: the
Makefile installs the torch build first, and pip must not swap it for another build.

Example::

    python requirements/unbounded.py pyproject.toml dev > latest.txt
"""

from __future__ import annotations

import re
import sys
import tomllib


def requirement_names(pyproject: dict, extras: list[str]) -> list[str]:
    """Names of the project's dependencies plus those of ``extras``, following self-references
    such as ``peftkit[gguf,test]``."""
    project = pyproject["project"]
    optional = project.get("optional-dependencies", {})
    names: list[str] = []
    pending = list(project["dependencies"])
    seen_extras: set[str] = set()
    todo = list(extras)
    while todo:
        extra = todo.pop()
        if extra in seen_extras:
            continue
        seen_extras.add(extra)
        for req in optional.get(extra, []):
            own = re.fullmatch(rf"{project['name']}\[(.+)\]", req.strip())
            if own:
                todo.extend(e.strip() for e in own.group(1).split(","))
            else:
                pending.append(req)
    for req in pending:
        name = re.match(r"[A-Za-z0-9_.\-]+", req.strip()).group(0)
        if name.lower() != "torch" and name not in names:
            names.append(name)
    return names


if __name__ == "__main__":
    with open(sys.argv[1], "rb") as fh:
        print("\n".join(requirement_names(tomllib.load(fh), sys.argv[2:])))
