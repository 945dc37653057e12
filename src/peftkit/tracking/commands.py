"""The ``peftkit runs`` command group (list, show, diff, compare, plot, report, rm, reproduce) and
the tracking parts of ``peftkit train`` (``--sweep``, ``--from-run``). Every command takes
``--dir`` (the runs folder, default ``runs``); a run is named by its folder name, a unique prefix
or unique part of it, or its path.

Example:
    $ peftkit runs list --where adapter.method=lora --sort eval.loss
    $ peftkit runs diff 20261122-1924 20261122-1931
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from typing import Any, Callable, Optional

from ..errors import PeftkitError
from . import records, views
from .catalog import Catalog, RunsError


def _runs_dir_from_paths(args: argparse.Namespace) -> None:
    """A run named by its path needs no --dir: without one (and without a ./runs folder), the
    runs folder is the one that holds the first run given as a path."""
    if getattr(args, "dir", "runs") != "runs" or os.path.isdir("runs"):
        return
    names = [getattr(args, "run", None), *(getattr(args, "runs", None) or [])]
    paths = [n for n in names if isinstance(n, str) and (os.sep in n.rstrip(os.sep) or n.startswith("."))]
    if paths and records.is_run_dir(os.path.abspath(paths[0])):
        args.dir = os.path.dirname(os.path.abspath(paths[0]).rstrip(os.sep))


def _guard(work: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        try:
            _runs_dir_from_paths(args)
            return work(args)
        except PeftkitError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    return run


def _select(catalog: Catalog, args: argparse.Namespace) -> list[records.Run]:
    """Runs named on the command line, else a sweep's, else those passing --where (sorted by --sort)."""
    if getattr(args, "runs", None):
        return catalog.resolve_all(args.runs)
    only = [r.id for r in catalog.sweep_runs(args.sweep)] if getattr(args, "sweep", None) else None
    chosen = catalog.select(getattr(args, "where", None) or (), getattr(args, "sort", None), only)
    if only is not None and not getattr(args, "sort", None):
        order = {run_id: i for i, run_id in enumerate(only)}
        chosen.sort(key=lambda r: order[r.id])
    return chosen


def cmd_list(args: argparse.Namespace) -> int:
    with Catalog(args.dir) as catalog:
        runs = _select(catalog, args)
        if args.json:
            print(json.dumps([r.fields() for r in runs], indent=2, default=str))
        else:
            print(views.list_text(runs, catalog.groups()))
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    with Catalog(args.dir) as catalog:
        run = catalog.resolve(args.run)
        if args.json:
            print(json.dumps(records.to_json(run), indent=2, default=str))
        elif args.fields:
            print("\n".join(f"{k} = {json.dumps(v, default=str)}" for k, v in run.fields().items()))
        elif args.config:  # as it is on disk, damaged bytes shown as U+FFFD
            with open(os.path.join(run.path, records.CONFIG_FILE), encoding="utf-8", errors="replace") as f:
                print(f.read(), end="")
        else:
            print(views.show_text(catalog, run, catalog.groups()))
    return 0


def cmd_diff(args: argparse.Namespace) -> int:
    with Catalog(args.dir) as catalog:
        a, b = catalog.resolve(args.run_a), catalog.resolve(args.run_b)
        print(views.diff_text(a, b))
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from .plots import plot_runs

    if not args.runs and not args.sweep:
        raise RunsError("name the runs to compare (RUN RUN ...) or a sweep (--sweep ID)")
    with Catalog(args.dir) as catalog:
        runs = _select(catalog, args)
        print(views.compare_text(runs))
        if not args.no_plot:
            title = f"sweep {runs[0].info['sweep']['id']}" if args.sweep else None
            out = plot_runs(runs, args.out, title=title or "")
            print(f"\nplot: {out}" if out else "\n(no metrics logged yet: no plot)")
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from .plots import plot_runs

    with Catalog(args.dir) as catalog:
        runs = catalog.resolve_all(args.runs)
        out = plot_runs(runs, args.out)
    if out is None:
        raise RunsError(f"nothing to plot: {', '.join(r.id for r in runs)} logged no metrics yet")
    print(out)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from .report import write_report

    with Catalog(args.dir) as catalog:
        runs = _select(catalog, args)
        if not runs:
            raise RunsError(f"no runs to report on in {args.dir}" + (" (with these filters)" if args.where else ""))
        out = write_report(catalog, runs, args.out, title=args.title)
    print(f"{out}: {len(runs)} run(s)")
    return 0


def cmd_rm(args: argparse.Namespace) -> int:
    with Catalog(args.dir) as catalog:
        runs = catalog.resolve_all(args.runs)
        everything = catalog.all()
        for run in runs:
            notes = [f"status {run.status}: it may still be training"] if run.status == "running" else []
            kids = [k.id for k in everything if k.info.get("parent") == run.id and k not in runs]
            if kids:
                notes.append(f"parent of {', '.join(kids)}")
            print(f"  {run.path}" + (f"  ({'; '.join(notes)})" if notes else ""))
        if not args.yes and not _confirm(f"remove {len(runs)} run folder(s) and everything in them? [y/N] "):
            print("nothing removed (pass --yes to remove without asking)")
            return 1
        for run in runs:
            shutil.rmtree(run.path)
        catalog.index.forget([r.id for r in runs])
    print(f"removed {len(runs)} run(s)")
    return 0


def _confirm(question: str) -> bool:
    try:
        return input(question).strip().lower() in ("y", "yes")
    except EOFError:  # no terminal (CI, a pipe): never remove without --yes
        print()
        return False


def cmd_reproduce(args: argparse.Namespace) -> int:
    from .reproduce import reproduce

    with Catalog(args.dir) as catalog:
        original = catalog.resolve(args.run)
    run_dir = reproduce(original, args.dir, echo=print)
    print(f"\nrun: {run_dir}")
    return 0


# ------------------------------------------------------------------------------------- peftkit train
def from_run_config(config: Optional[str], overrides: list[str], source: str, runs_dir: str = "runs") -> tuple[str, list[str]]:
    """``peftkit train [CONFIG] --from-run RUN``: start from RUN's adapter (``adapter.from``). With
    CONFIG, RUN may be a path or a run name in CONFIG's ``output.dir``; without one, RUN's own resolved
    config is trained (so the adapter section fits), and a name is looked up in ``runs_dir``.
    Returns (config, overrides)."""
    if config is None:
        if os.path.isdir(source):
            path = os.path.abspath(source)
        else:
            with Catalog(runs_dir) as catalog:
                path = catalog.resolve(source).path
        config, source = os.path.join(path, records.CONFIG_FILE), path
    return config, [*overrides, f"adapter.from={json.dumps(source)}"]


def train_sweep(config: str, overrides: list[str], specs: list[str]) -> int:
    """``peftkit train CONFIG --sweep KEY=V1,V2 ...``: every point of the grid; a summary at the end."""
    from .sweep import run_sweep
    from .table import format_table

    sid, points = run_sweep(config, overrides, specs)
    done = [p for p in points if p.run_dir]
    runs = {p.index: records.read_run(p.run_dir) for p in done}
    rows = [[str(p.index + 1), " ".join(p.overrides), runs[p.index].id if p.run_dir else "-",
             runs[p.index].status if p.run_dir else "failed", views.best_cell(runs[p.index]) if p.run_dir else "-"]
            for p in points]
    print(f"\nsweep {sid}: {sum(r.status == 'completed' for r in runs.values())} of {len(points)} runs completed")
    print(format_table(["#", "point", "run", "status", "best eval"], rows))
    if done:
        print(f"\ncompare:  peftkit runs compare --sweep {sid} --dir {os.path.dirname(done[0].run_dir)}")
    return 0 if all(r.status == "completed" for r in runs.values()) and len(runs) == len(points) else 1


# ------------------------------------------------------------------------------------- the parser
def join_sort_argument(argv: list[str]) -> list[str]:
    """``--sort -eval.loss`` -> ``--sort=-eval.loss``: argparse would take the descending key for an
    option of its own."""
    out = []
    for arg in argv:
        if out and out[-1] == "--sort" and arg.startswith("-") and len(arg) > 1:
            out[-1] = f"--sort={arg}"
        else:
            out.append(arg)
    return out


def add_parser(sub: Any) -> None:
    """Add ``peftkit runs ...`` to the top-level subparsers ``sub``."""
    runs = sub.add_parser("runs", help="list, compare, plot, report on and reproduce tracked runs",
                          description="Work with the run folders of a runs folder (output.dir). A run is named by its "
                                      "folder name; a unique prefix (or part) of it is enough.")
    runs.add_argument("--dir", default="runs", help="the runs folder (default: runs)")
    group = runs.add_subparsers(dest="runs_command", required=True, metavar="COMMAND")

    def command(name: str, func: Callable, help: str, **kw: Any) -> argparse.ArgumentParser:
        p = group.add_parser(name, help=help, description=kw.pop("description", help[0].upper() + help[1:] + "."))
        p.add_argument("--dir", default=argparse.SUPPRESS, help="the runs folder (default: runs)")
        p.set_defaults(func=_guard(func))
        return p

    def filters(p: argparse.ArgumentParser) -> None:
        p.add_argument("--where", action="append", metavar="KEY=VALUE",
                       help="keep runs where KEY (adapter.r, status, eval.loss, ...) =, !=, >, <, >=, <= VALUE; repeatable")
        p.add_argument("--sort", metavar="KEY", help="sort by KEY (a '-' prefix sorts descending), e.g. eval.loss")
        p.add_argument("--sweep", metavar="ID", help="only the runs of this sweep")

    p = command("list", cmd_list, "a table of the runs: id, name, status, config version, method, r, steps, best "
                                  "eval metric, duration, re-runs")
    filters(p)
    p.add_argument("--json", action="store_true", help="print every run's fields as JSON")
    p = command("show", cmd_show, "one run in full: status, version, results, lineage, environment")
    p.add_argument("run", help="run folder name, unique prefix, or path")
    p.add_argument("--json", action="store_true", help="print run.json, the config and the summary as JSON")
    p.add_argument("--fields", action="store_true", help="print every key that --where and --sort can use")
    p.add_argument("--config", action="store_true", help="print the run's resolved config.yaml")
    p = command("diff", cmd_diff, "config differences key by key, then result and environment differences")
    p.add_argument("run_a", metavar="RUN_A")
    p.add_argument("run_b", metavar="RUN_B")
    p = command("compare", cmd_compare, "runs side by side: one table and one plot")
    p.add_argument("runs", nargs="*", metavar="RUN")
    p.add_argument("--sweep", metavar="ID", help="compare the runs of this sweep")
    p.add_argument("--out", default="runs-compare.png", metavar="FILE", help="the plot (default runs-compare.png)")
    p.add_argument("--no-plot", action="store_true", help="print the table only")
    p = command("plot", cmd_plot, "PNG curves of loss, learning rate and eval metrics")
    p.add_argument("runs", nargs="+", metavar="RUN")
    p.add_argument("--out", default="runs-plot.png", metavar="FILE", help="the PNG file (default runs-plot.png)")
    p = command("report", cmd_report, "one static HTML page: runs table, config diffs, embedded plots")
    p.add_argument("runs", nargs="*", metavar="RUN", help="the runs to report on (default: all, or --where/--sweep)")
    filters(p)
    p.add_argument("--out", default="runs-report.html", metavar="FILE", help="the HTML file (default runs-report.html)")
    p.add_argument("--title", help="the page title")
    p = command("rm", cmd_rm, "remove run folders (asks first unless --yes)")
    p.add_argument("runs", nargs="+", metavar="RUN")
    p.add_argument("--yes", "-y", action="store_true", help="do not ask")
    p = command("reproduce", cmd_reproduce, "train a run's exact resolved config again, into a new run")
    p.add_argument("run", help="run folder name, unique prefix, or path")
