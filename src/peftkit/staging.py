"""Writing several files into a folder so that a failure leaves nothing half new: everything is
written into a temporary folder beside the target, and moved in only when all of it is written.

If the target does not exist yet, the finished folder is renamed into place (one atomic step).
If it exists, each finished file replaces its namesake by a rename, and files of the target that
were not written again are kept. A failure while writing (a name the OS rejects, a full disk, an
error while computing a tensor) removes the temporary folder and leaves the target as it was; a
process killed mid-write leaves at most a hidden ``.<name>.<random>.saving`` folder beside it.

>>> with staged_folder("out/adapters") as stage:                     # doctest: +SKIP
...     write_everything(stage)
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from typing import Iterator

from .errors import PathError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _planned_moves(stage: str, target: str) -> list[tuple[str, str]]:
    """``(staged file, destination)`` pairs; a destination blocked by a folder, or below a file,
    is a :class:`PathError` raised before anything moves."""
    moves = []
    for folder, _, files in os.walk(stage):
        rel = os.path.relpath(folder, stage)
        dest_dir = target if rel == "." else os.path.join(target, rel)
        if os.path.exists(dest_dir) and not os.path.isdir(dest_dir):
            raise PathError(f"cannot save into {dest_dir!r}: a file of that name is in the way; nothing was written")
        for name in files:
            dest = os.path.join(dest_dir, name)
            if os.path.isdir(dest):
                raise PathError(f"cannot save {dest!r}: a folder of that name is in the way; nothing was written")
            moves.append((os.path.join(folder, name), dest))
    return moves


@contextlib.contextmanager
def staged_folder(target: str | os.PathLike) -> Iterator[str]:
    """Yield an empty temporary folder beside ``target``; when the block ends without an error,
    move its contents into ``target`` (see the module docstring), else remove it.

    Example:
        >>> with staged_folder("out") as stage:                                    # doctest: +SKIP
        ...     open(os.path.join(stage, "a.json"), "w").write("{}")
    """
    target = os.path.abspath(os.fspath(target))
    if os.path.exists(target) and not os.path.isdir(target):
        raise PathError(f"{target!r} is a file; pass a folder to write into")
    parent = os.path.dirname(target)
    os.makedirs(parent, exist_ok=True)
    stage = tempfile.mkdtemp(prefix=f".{os.path.basename(target)}.", suffix=".saving", dir=parent)
    try:
        os.chmod(stage, 0o777 & ~_umask())  # mkdtemp makes it private; the folder it becomes should not be
        yield stage
        if not os.path.exists(target):
            os.rename(stage, target)
            return
        moves = _planned_moves(stage, target)
        for source, dest in moves:
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            os.replace(source, dest)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
