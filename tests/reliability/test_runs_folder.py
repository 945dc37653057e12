"""A runs folder where one file of one run is damaged (not UTF-8, not JSON/YAML, cut short, of the
wrong shape, an alias bomb, oversized): every `peftkit runs` command still works, the damaged run
is listed and `show` names the bad file, `rm` removes it, and the healthy runs are untouched."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from faults import folder_state

from peftkit.cli import main

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tracking"))
from fake_runs import make_run  # noqa: E402

GOOD, BAD = "20261122-100000-good-aaaaaa", "20261122-110000-bad-bbbbbb"


def laughs(levels: int = 9) -> str:
    lines = ["l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


DAMAGE = {
    "run.json not UTF-8": ("run.json", b'{"status": "\xff\xfe"}'),
    "run.json cut short": ("run.json", b'{"status": "completed", "config_h'),
    "run.json a list": ("run.json", b"[1, 2, 3]"),
    "run.json empty": ("run.json", b""),
    "run.json nested 100k deep": ("run.json", b"[" * 100_000 + b"]" * 100_000),
    "run.json wrong field types": ("run.json", json.dumps({"status": 5, "sweep": "x", "environment": [1], "seed": "0",
                                                           "started": 12, "final_metrics": "high"}).encode()),
    "run.json binary": ("run.json", bytes(range(256))),
    "config.yaml not UTF-8": ("config.yaml", b"model: {name: \xff}\n"),
    "config.yaml alias bomb": ("config.yaml", laughs().encode()),
    "config.yaml a list": ("config.yaml", b"- a\n- b\n"),
    "config.yaml sections of wrong types": ("config.yaml", b"adapter: [1, 2]\ntrain: 5\nmodel: {name: x}\n"),
    "config.yaml python tag": ("config.yaml", b"model: !!python/object/apply:os.system ['touch UNSAFE']\n"),
    "config.yaml not YAML": ("config.yaml", b"model: {name: [unclosed\n"),
    "metrics.jsonl not UTF-8": ("metrics.jsonl", b'{"step": 1, "loss": 1.0}\n\xff\xfe\xfd\n{"step": 2, "loss": 0.5}\n'),
    "metrics.jsonl bad JSON": ("metrics.jsonl", b'{"step": 1, "loss": 1.0}\n{"step": 2, "lo\n{"step": 3, "loss": 0.5}\n'),
    "metrics.jsonl wrong types": ("metrics.jsonl", b'{"step": "two", "loss": 1.0}\n{"step": 2, "loss": "low"}\n'
                                                  b'{"step": 3, "eval_loss": {"a": 1}}\n[1, 2]\n'),
    "metrics.jsonl binary": ("metrics.jsonl", bytes(range(256)) * 8),
    "metrics.jsonl deep line": ("metrics.jsonl", b"[" * 100_000 + b"]" * 100_000 + b"\n"),
}


@pytest.fixture
def runs_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    runs = tmp_path / "runs"
    make_run(runs, GOOD, evals={4: {"loss": 1.1}})
    make_run(runs, BAD, evals={4: {"loss": 1.3}}, train={"lr": 1e-3})
    assert main(["runs", "--dir", str(runs), "list"]) == 0  # the index exists before the damage
    return runs


def runs_cmd(runs: Path, *args: str) -> int:
    return main(["runs", "--dir", str(runs), *args])


@pytest.mark.parametrize("label", list(DAMAGE))
def test_one_damaged_file_is_named_and_hides_nothing(label, runs_dir, capsys, tmp_path):
    name, content = DAMAGE[label]
    (runs_dir / BAD / name).write_bytes(content)
    good_before = folder_state(runs_dir / GOOD)
    capsys.readouterr()
    assert runs_cmd(runs_dir, "list") == 0
    out = capsys.readouterr().out
    assert GOOD in out and BAD in out
    assert runs_cmd(runs_dir, "show", BAD) == 0
    assert str(runs_dir / BAD / name) in capsys.readouterr().out  # the bad file, by its path
    assert runs_cmd(runs_dir, "show", GOOD) == 0
    assert runs_cmd(runs_dir, "rm", "--yes", BAD) == 0
    assert not (runs_dir / BAD).exists()
    assert folder_state(runs_dir / GOOD) == good_before
    assert not (tmp_path / "UNSAFE").exists()


ALL_DAMAGED = {"run.json": b'{"status": "\xff', "config.yaml": laughs().encode(),
               "metrics.jsonl": b'\xff\n{"step": "x"}\n'}
COMMANDS = {
    "list --json": ["list", "--json"],
    "list --where": ["list", "--where", "adapter.r=8", "--sort", "-eval.loss"],
    "show --json": ["show", "--json", BAD],
    "show --fields": ["show", "--fields", BAD],
    "show --config": ["show", "--config", BAD],
    "diff": ["diff", GOOD, BAD],
    "compare": ["compare", "--no-plot", GOOD, BAD],
    "plot": ["plot", GOOD, BAD, "--out", "p.png"],
    "report": ["report", "--out", "r.html"],
}


@pytest.mark.parametrize("label", list(COMMANDS))
def test_every_runs_command_survives_a_run_with_every_file_damaged(label, runs_dir, capsys):
    for name, content in ALL_DAMAGED.items():
        (runs_dir / BAD / name).write_bytes(content)
    good_before = folder_state(runs_dir / GOOD)
    code = runs_cmd(runs_dir, *COMMANDS[label])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "Traceback" not in captured.err
    assert folder_state(runs_dir / GOOD) == good_before


def test_a_damaged_index_is_rebuilt(runs_dir, capsys):
    (runs_dir / ".peftkit-index.sqlite").write_bytes(b"not a database" * 100)
    for suffix in ("-wal", "-shm"):
        (runs_dir / f".peftkit-index.sqlite{suffix}").unlink(missing_ok=True)
    assert runs_cmd(runs_dir, "list") == 0
    assert GOOD in capsys.readouterr().out
