"""A runs folder as the ``peftkit runs`` commands see it: its (synced) index, and runs named by
folder name: the exact name, else a unique prefix, else a unique part of it; a path to a run
folder works too. Every failure is a :class:`RunsError` that says what was found instead.

>>> catalog = Catalog("runs")                                         # doctest: +SKIP
>>> catalog.resolve("20261122-1924").id                               # doctest: +SKIP
'20261122-192453-quickstart-12785c'
"""

from __future__ import annotations

import difflib
import os
from typing import Iterable, Optional

from ..errors import PeftkitError
from . import query
from .index import RunIndex
from .records import Run, is_run_dir, read_run
from .versions import VersionGroup, version_groups


class RunsError(PeftkitError, ValueError):
    """A runs folder or run that cannot be found, or a name that fits several runs."""


class Catalog:
    """The runs folder ``runs_dir``, indexed and synced on opening."""

    def __init__(self, runs_dir: str = "runs"):
        if not os.path.isdir(runs_dir):
            where = "is not a folder" if os.path.exists(runs_dir) else "does not exist"
            raise RunsError(f"runs folder {runs_dir!r} {where} (in {os.getcwd()}); train a run first "
                            f"(peftkit train run.yaml) or pass --dir FOLDER (output.dir of your runs)")
        self.dir = runs_dir
        self.index = RunIndex(runs_dir)
        self.index.sync()

    def close(self) -> None:
        self.index.close()

    def __enter__(self) -> "Catalog":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def all(self) -> list[Run]:
        return self.index.load()

    def select(self, where: Iterable[str] = (), sort: Optional[str] = None, only: Optional[list[str]] = None) -> list[Run]:
        return query.select(self.index, where, sort, only)

    def groups(self) -> dict[str, VersionGroup]:
        """Config versions over *all* runs of the folder (a filtered list still shows re-runs)."""
        return version_groups(self.all())

    def resolve(self, name: str) -> Run:
        """The run called ``name`` (see the module docstring)."""
        path = os.path.abspath(name)
        if os.sep in name.rstrip(os.sep) or name.startswith("."):
            if not is_run_dir(path):
                raise RunsError(f"{name}: not a run folder (no run.json there)")
            if os.path.dirname(path) == self.index.runs_dir:
                return self.index.load([os.path.basename(path)])[0]
            return read_run(path)  # a run in another folder: read directly
        ids = self.index.ids()
        if name in ids:
            return self.index.load([name])[0]
        matches = [i for i in ids if i.startswith(name)] or [i for i in ids if name in i]
        if len(matches) == 1:
            return self.index.load(matches)[0]
        if not matches:
            close = difflib.get_close_matches(name, ids, n=3, cutoff=0.5)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise RunsError(f"no run {name!r} in {self.dir} ({len(ids)} runs; see peftkit runs list --dir "
                            f"{self.dir}){hint}")
        shown = "\n  ".join(matches[:10]) + (f"\n  ... and {len(matches) - 10} more" if len(matches) > 10 else "")
        raise RunsError(f"{name!r} fits {len(matches)} runs in {self.dir}; give more of the name:\n  {shown}")

    def resolve_all(self, names: Iterable[str]) -> list[Run]:
        return [self.resolve(n) for n in names]

    def sweep_runs(self, sweep: str) -> list[Run]:
        """The runs of one sweep, by sweep id (a unique prefix is enough), in grid order."""
        sweeps = sorted({r.info["sweep"]["id"] for r in self.all() if isinstance(r.info.get("sweep"), dict)})
        matches = [s for s in sweeps if s == sweep] or [s for s in sweeps if s.startswith(sweep)]
        if len(matches) != 1:
            found = ", ".join(sweeps) or "none"
            what = "fits several sweeps" if matches else "is no sweep"
            raise RunsError(f"{sweep!r} {what} in {self.dir} (sweeps: {found})")
        runs = [r for r in self.all() if (r.info.get("sweep") or {}).get("id") == matches[0]]
        return sorted(runs, key=lambda r: (r.info["sweep"].get("index", 0), r.id))
