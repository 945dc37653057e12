"""`peftkit runs list | show | diff | compare | plot | rm` on synthetic run folders, and every error
case: unknown and ambiguous names, a missing runs folder, bad filters."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from fake_runs import make_run

from peftkit.cli import main

A, B, C = "20261122-100000-base-aaaaaa", "20261122-110000-wide-bbbbbb", "20261122-120000-base-aaaaaa"
RUNNING, FAILED, CHILD = "20261122-130000-lr-dddddd", "20261122-140000-bad-eeeeee", "20261122-150000-more-ffffff"


@pytest.fixture
def runs(tmp_path) -> Path:
    folder = tmp_path / "runs"
    make_run(folder, A, started="2026-11-22T10:00:00+00:00", evals={2: {"loss": 1.3}, 4: {"loss": 1.1}},
             output={"name": "base"})
    make_run(folder, B, started="2026-11-22T11:00:00+00:00", evals={4: {"loss": 0.9}}, adapter={"r": 16})
    make_run(folder, C, started="2026-11-22T12:00:00+00:00", evals={2: {"loss": 1.3}, 4: {"loss": 1.1}},
             output={"name": "base-again"}, info={"reproduces": A})
    make_run(folder, RUNNING, status="running", started="2026-11-22T13:00:00+00:00", train={"lr": 3e-4})
    make_run(folder, FAILED, status="failed", started="2026-11-22T14:00:00+00:00", losses=(), evals={},
             train={"lr": 1e-3}, info={"error": "TrainingError: loss is nan at step 3"})
    make_run(folder, CHILD, started="2026-11-22T15:00:00+00:00", evals={4: {"loss": 0.8}}, adapter={"r": 16},
             train={"max_steps": 8}, info={"parent": B, "parent_path": str(folder / B)})
    return folder


def run_cli(capsys, *args) -> tuple[int, str, str]:
    code = main(["runs", *args])
    out, err = capsys.readouterr()
    return code, out, err


def table_rows(out: str) -> list[list[str]]:
    lines = out.split("\n\n")[0].splitlines()
    return [line.split() for line in lines[2:]]


def test_list_is_an_aligned_table_with_versions_and_reruns(runs, capsys):
    code, out, _ = run_cli(capsys, "list", "--dir", str(runs))
    assert code == 0
    header, rule = out.splitlines()[:2]
    assert header.split() == ["run", "name", "status", "version", "method", "r", "steps", "result", "duration",
                              "re-runs"]
    assert len(rule.split()) == 10  # one dash run per column
    assert [r[0] for r in table_rows(out)] == [A, B, C, RUNNING, FAILED, CHILD]
    rows = {r[0]: r for r in table_rows(out)}
    assert rows[A][1:7] == ["base", "completed", rows[C][3], "lora", "8", "4"]
    assert rows[A][7:9] == ["loss", "1.1"] and rows[A][9] == "12s" and rows[A][-2:] == ["2x", "agree"]
    assert rows[B][5] == "16" and rows[FAILED][2] == "failed" and rows[FAILED][7] == "-"
    assert "config versions run more than once" in out and f"2 runs ({A}, {C}): agree on loss" in out
    column = header.index("status")  # aligned: every row's status starts under the header's
    assert all(line[column:].split()[0] in ("completed", "running", "failed") for line in out.splitlines()[2:8])


def test_list_filters_and_sorts(runs, capsys):
    def listed(*args):
        code, out, err = run_cli(capsys, "list", "--dir", str(runs), *args)
        assert code == 0, err
        return [r[0] for r in table_rows(out)] if "no runs match" not in out else []

    assert listed("--where", "adapter.r=16") == [B, CHILD]
    assert listed("--where", "adapter.method=lora", "--sort", "eval.loss") == [CHILD, B, A, C, RUNNING, FAILED]
    assert listed("--sort", "-eval.loss") == [A, C, RUNNING, B, CHILD, FAILED]  # ties: oldest first
    assert listed("--where", "status=completed", "--where", "adapter.r=8") == [A, C]
    assert listed("--where", "train.lr>2e-4", "--where", "train.lr<1e-3") == [RUNNING]
    assert listed("--where", "status!=completed") == [RUNNING, FAILED]
    assert listed("--where", "parent=null", "--where", "eval.loss<1") == [B]
    assert listed("--where", "name=base*") == [A, C]
    assert listed("--where", "adapter.target_modules=[q, v]") == [A, B, C, RUNNING, FAILED, CHILD]
    assert listed("--where", "adapter.r=99") == []


def test_list_json_has_every_field(runs, capsys):
    code, out, _ = run_cli(capsys, "list", "--dir", str(runs), "--json", "--where", "id=" + B)
    (fields,) = json.loads(out)
    assert fields["adapter.r"] == 16 and fields["eval.loss"] == 0.9 and fields["version"] and fields["steps"] == 4


@pytest.mark.parametrize("args, words", [
    (["list", "--where", "adpter.r=8"], "did you mean 'adapter.r'"),
    (["list", "--where", "adapter.r"], "expected KEY=VALUE"),
    (["list", "--sort", "eval.los"], "did you mean 'eval.loss'"),
    (["show", "zzz"], "no run 'zzz'"),
    (["show", "2026"], "fits 6 runs"),
    (["show", "base-aaaaaa"], "fits 2 runs"),
    (["diff", A, "nope"], "no run 'nope'"),
    (["compare"], "name the runs to compare"),
    (["compare", "--sweep", "x"], "is no sweep"),
    (["show", "./elsewhere/run"], "not a run folder"),
])
def test_errors_name_what_is_wrong(runs, capsys, args, words):
    code, out, err = run_cli(capsys, *args, "--dir", str(runs))
    assert code == 2 and words in err and err.startswith("error: "), err


def test_ambiguous_names_list_the_candidates(runs, capsys):
    _, _, err = run_cli(capsys, "show", "base-aaaaaa", "--dir", str(runs))
    assert A in err and C in err


def test_missing_runs_folder(tmp_path, capsys):
    code, _, err = run_cli(capsys, "list", "--dir", str(tmp_path / "nothing"))
    assert code == 2 and "does not exist" in err and "--dir" in err


def test_show_prints_version_lineage_and_results(runs, capsys):
    code, out, _ = run_cli(capsys, "show", "150000", "--dir", str(runs))  # a unique part of the name
    assert code == 0
    lines = dict(line.split(None, 1) for line in out.splitlines() if line.strip())
    assert lines["run"] == CHILD and lines["lineage"] == f"{CHILD} <- {B}" and lines["status"] == "completed"
    assert "eval.loss 0.8" in lines["results"] and lines["method"].split() == ["lora", "r=16"]
    _, out, _ = run_cli(capsys, "show", A, "--dir", str(runs))
    assert f"same version: {C}; results agree" in out
    _, out, _ = run_cli(capsys, "show", B, "--dir", str(runs))
    assert "children" in out and CHILD in out
    _, out, _ = run_cli(capsys, "show", FAILED, "--dir", str(runs))
    assert "loss is nan at step 3" in out
    _, out, _ = run_cli(capsys, "show", str(runs / A))  # a path works without --dir
    assert out.startswith("run ") and A in out.splitlines()[0]


def test_show_fields_json_and_config(runs, capsys):
    _, out, _ = run_cli(capsys, "show", B, "--dir", str(runs), "--fields")
    assert "adapter.r = 16" in out.splitlines() and "eval.loss = 0.9" in out.splitlines()
    _, out, _ = run_cli(capsys, "show", B, "--dir", str(runs), "--json")
    data = json.loads(out)
    assert data["id"] == B and data["config"]["adapter"]["r"] == 16 and data["summary"]["final"] == {"loss": 0.9}
    _, out, _ = run_cli(capsys, "show", B, "--dir", str(runs), "--config")
    assert out.startswith("# peftkit run config") and "r: 16" in out


def test_diff_lists_config_keys_then_results(runs, capsys):
    code, out, _ = run_cli(capsys, "diff", A, CHILD, "--dir", str(runs))
    assert code == 0
    config, results = out.split("\nresults\n")
    rows = {line.split()[0]: line.split()[1:] for line in config.splitlines()[6:] if line.startswith("  ")}
    assert rows["adapter.r"] == ["8", "16"] and rows["train.max_steps"] == ["4", "8"]
    assert rows["output.name"][:2] == ["base", "null"] and "(not part of the version)" in config
    assert "config versions:" in config and "3 key(s) differ" in config
    metrics = {line.split()[0]: line.split()[1:] for line in results.splitlines()[2:] if line.strip()}
    assert metrics["eval.loss"][:3] == ["1.1", "0.8", "-0.3"]
    _, out, _ = run_cli(capsys, "diff", A, C, "--dir", str(runs))
    assert "(the same)" in out and "output.name" in out and "adapter.r" not in out


def test_compare_prints_one_table_and_writes_one_plot(runs, tmp_path, capsys):
    out_png = tmp_path / "cmp.png"
    code, out, _ = run_cli(capsys, "compare", A, B, CHILD, "--dir", str(runs), "--out", str(out_png))
    assert code == 0
    header = out.splitlines()[0].split()
    assert header[:4] == ["run", "adapter.r", "train.max_steps", "eval.loss"] and "duration" in header
    assert "output.name" not in header  # where outputs go is not a difference worth a column
    assert [line.split()[0] for line in out.splitlines()[2:5]] == [A, B, CHILD]
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"plot: {out_png}" in out


def test_compare_a_sweep(tmp_path, capsys):
    runs = tmp_path / "runs"
    for i, r in enumerate((4, 8)):
        sweep = {"id": "sweep-20261122-100000-abcdef", "index": i, "size": 2, "point": {"adapter.r": r}}
        make_run(runs, f"2026112{i}-100000-lora-{i}", adapter={"r": r}, info={"sweep": sweep},
                 evals={4: {"loss": 1.0 - i / 10}})
    make_run(runs, "20261123-100000-other", evals={4: {"loss": 2.0}})
    code, out, _ = run_cli(capsys, "compare", "--sweep", "sweep-2026", "--dir", str(runs), "--no-plot")
    assert code == 0 and [line.split()[:2] for line in out.splitlines()[2:]] == [
        ["20261120-100000-lora-0", "4"], ["20261121-100000-lora-1", "8"]]
    _, out, _ = run_cli(capsys, "list", "--dir", str(runs), "--where", "sweep=sweep-20261122-100000-abcdef")
    assert len(table_rows(out)) == 2


def test_plot_writes_a_png_of_each_run(runs, tmp_path, capsys):
    out_png = tmp_path / "plots" / "p.png"
    code, out, _ = run_cli(capsys, "plot", A, B, "--dir", str(runs), "--out", str(out_png))
    assert code == 0 and out.strip() == str(out_png) and out_png.read_bytes()[:4] == b"\x89PNG"
    code, _, err = run_cli(capsys, "plot", FAILED, "--dir", str(runs), "--out", str(out_png))
    assert code == 2 and "logged no metrics" in err


def test_rm_asks_first_and_updates_the_index(runs, capsys, monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO(""))  # no terminal: nothing is removed without --yes
    code, out, _ = run_cli(capsys, "rm", B, "--dir", str(runs))
    assert code == 1 and "nothing removed" in out and f"parent of {CHILD}" in out and (runs / B).exists()
    monkeypatch.setattr("sys.stdin", io.StringIO("y\n"))
    code, out, _ = run_cli(capsys, "rm", FAILED, "--dir", str(runs))
    assert code == 0 and not (runs / FAILED).exists()
    code, out, _ = run_cli(capsys, "rm", B, RUNNING, "--dir", str(runs), "--yes")
    assert code == 0 and "removed 2 run(s)" in out and "it may still be training" in out
    _, out, _ = run_cli(capsys, "list", "--dir", str(runs))
    assert [r[0] for r in table_rows(out)] == [A, C, CHILD]
    _, out, _ = run_cli(capsys, "show", CHILD, "--dir", str(runs))
    assert f"{CHILD} <- {B} (not found)" in out  # lineage keeps the removed parent's name
