"""``peftkit runs reproduce RUN``: train RUN's exact resolved config (its ``config.yaml``) again,
into a new run of the same runs folder. The new run.json records ``reproduces: RUN``; its parent is
RUN's parent (a reproduction starts from the same adapter the original started from, if any). Both
runs then share a config version, and ``runs list`` says whether their results agree (see
:mod:`peftkit.tracking.versions`). Before training, the data files are checked against the sha256
recorded by the original run (and the adapter it started from against its fingerprint), so a changed
file is named instead of showing up as a changed result.

>>> reproduce(catalog.resolve("20261122-1924"), "runs")   # doctest: +SKIP
'runs/20261122-201510-quickstart-12785c'
"""

from __future__ import annotations

import json
import os
from typing import Callable, Optional

from ..errors import ConfigError
from .diff import environment_diff
from .env import file_digest
from .lineage import ADAPTER_CONFIG, adapter_fingerprint
from .records import CONFIG_FILE, Run, read_run
from .table import fmt_value
from .versions import AGREE_RTOL, compare_results


def changed_inputs(run: Run) -> list[str]:
    """The data files, and the adapter it started from, whose content differs from what ``run``
    trained on, as sentences."""
    changes = []
    parent, old = run.info.get("parent_adapter"), run.info.get("parent_fingerprint")
    if parent and old:
        exists = os.path.isfile(os.path.join(parent, ADAPTER_CONFIG))
        new = adapter_fingerprint(parent) if exists else None
        if new != old:
            now = "is missing" if new is None else f"has changed ({old[7:19]} then, {new[7:19]} now)"
            changes.append(f"adapter.from {parent} {now}")
    for role, recorded in (run.info.get("data") or {}).items():
        path, old = recorded.get("path"), recorded.get("sha256")
        if not path or not old:
            continue  # a Hub dataset id: nothing to compare
        new = file_digest(os.path.expanduser(path))
        if new != old:
            now = "is missing" if new is None else f"has changed (sha256 {old[:12]} then, {new[:12]} now)"
            changes.append(f"data.{role} {path} {now}")
    return changes


def reproduce(original: Run, runs_dir: str, echo: Callable[[str], None] = print,
              train: Optional[Callable[..., str]] = None) -> str:
    """Train ``original``'s config again into ``runs_dir``; report whether the results agree.
    Returns the new run folder."""
    if train is None:
        from ..train.runner import train_from_config as train
    config = os.path.join(original.path, CONFIG_FILE)
    if not os.path.isfile(config):
        raise ConfigError(f"Cannot reproduce {original.id}:", [("", f"{config} is missing")])
    for change in changed_inputs(original):
        echo(f"warning: {change}; the results may differ for that reason")
    echo(f"reproducing {original.id} (config version {original.version})")
    try:
        run_dir = train(config, [f"output.dir={json.dumps(runs_dir)}"], extra={"reproduces": original.id})
    except ConfigError as e:
        started_in = (original.info.get("environment") or {}).get("cwd")
        if started_in and os.path.abspath(started_in) != os.getcwd():
            raise ConfigError(f"{e.args[0].splitlines()[0]} (the original run started in {started_in}: relative "
                              f"paths in its config are read from the current directory; run reproduce from there)",
                              e.problems) from None
        raise
    new = read_run(run_dir)
    agree, worst, metrics = compare_results([original, new])
    if agree is None:
        echo(f"{new.id}: status {new.status}; results not comparable with {original.id} (status {original.status})")
    else:
        word = "agree" if agree else "DIFFER"
        echo(f"{new.id}: results {word} with {original.id} on {', '.join(metrics)} (largest relative difference "
             f"{worst:.2g}; agreement means <= {AGREE_RTOL:g})")
    for d in environment_diff(original, new):
        echo(f"  environment: {d.key} {fmt_value(d.values[0])} then, {fmt_value(d.values[1])} now")
    return run_dir
