"""`peftkit train` under faults: damaged checkpoints (resume verifies checksums and falls back to the
newest intact one, naming the bad file), a finished run that cannot continue (its record is left
exactly as it was), kill -9 at random moments while another process trains into the same runs
folder (resume ends bit-identical), and a disk that fills up mid-run."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from faults import folder_state, small_disk
from safetensors.torch import load_file
from tiny_assets import write_config

from peftkit.cli import main
from peftkit.errors import CheckpointError
from peftkit.train import state

FAST = {"max_steps": 4, "save_steps": 2, "eval_steps": 100}


def the_run(runs: Path, name: str = "") -> Path:
    (run,) = [p for p in runs.iterdir() if p.is_dir() and name in p.name]
    return run


def adapter(run: Path) -> dict[str, torch.Tensor]:
    return load_file(run / "adapter" / "adapter_model.safetensors")


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """One completed run (4 steps, checkpoints at 2 and 4), copied fresh for each test."""
    root = tmp_path_factory.mktemp("finished")
    config = write_config(root, train=FAST, eval={"metrics": ["loss"]})
    assert main(["train", str(config)]) == 0
    return root


@pytest.fixture
def run(finished, tmp_path):
    import shutil

    shutil.copytree(finished, tmp_path / "w")
    return the_run(tmp_path / "w" / "runs")


def flip_byte(path: Path, at: int = -20) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0xFF
    path.write_bytes(bytes(data))


DAMAGE = {
    "optimizer cut short": lambda c: (c / "optimizer.safetensors").write_bytes((c / "optimizer.safetensors").read_bytes()[:100]),
    "run state bit flip": lambda c: flip_byte(c / "run_state.safetensors"),
    "adapter bit flip": lambda c: flip_byte(c / "adapter" / "adapter_model.safetensors"),
    "state.json replaced": lambda c: (c / "state.json").write_text('{"progress": {"step": 999}}'),
    "a file removed": lambda c: (c / "run_state.safetensors").unlink(),
    "mark damaged": lambda c: (c / "COMPLETE").write_bytes(b"\xff\x00garbage"),
    "mark of the wrong shape": lambda c: (c / "COMPLETE").write_text('{"files": {"state.json": 5}}'),
    "mark names a file outside": lambda c: (c / "COMPLETE").write_text(
        '{"files": {"../../../../../../dev/zero": {"bytes": 0, "sha256": ""}}}'),
}
BAD_FILE = {"optimizer cut short": "optimizer.safetensors", "run state bit flip": "run_state.safetensors",
            "adapter bit flip": "adapter_model.safetensors", "state.json replaced": "state.json",
            "a file removed": "run_state.safetensors", "mark damaged": "COMPLETE",
            "mark of the wrong shape": "COMPLETE", "mark names a file outside": "outside the checkpoint"}


@pytest.mark.parametrize("label", list(DAMAGE))
def test_a_damaged_checkpoint_is_skipped_naming_its_bad_file(label, run):
    checkpoints = run / "checkpoints"
    DAMAGE[label](checkpoints / "step-00004")
    warned = []
    assert state.intact_checkpoint(str(checkpoints), warn=warned.append) == str(checkpoints / "step-00002")
    assert len(warned) == 1 and "step-00004" in warned[0] and BAD_FILE[label] in warned[0]


def test_a_checkpoint_from_before_checksums_is_read_in_full(run):
    checkpoints = run / "checkpoints"
    for step in ("step-00002", "step-00004"):
        (checkpoints / step / "COMPLETE").write_bytes(b"")  # as older peftkit wrote it
    assert state.intact_checkpoint(str(checkpoints)) == str(checkpoints / "step-00004")
    (checkpoints / "step-00004" / "optimizer.safetensors").write_bytes(b"\x00" * 16)
    with pytest.warns(UserWarning, match="step-00004.*optimizer.safetensors"):
        assert state.intact_checkpoint(str(checkpoints)) == str(checkpoints / "step-00002")


def test_resume_falls_back_and_ends_identical(run, capsys):
    expected = adapter(run)
    info = json.loads((run / "run.json").read_text())
    info["status"] = "failed"  # as a crash in the last step would leave it
    (run / "run.json").write_text(json.dumps(info))
    flip_byte(run / "checkpoints" / "step-00004" / "optimizer.safetensors")
    assert main(["train", "--resume", str(run)]) == 0
    err = capsys.readouterr().err
    assert "warning: checkpoint" in err and "step-00004" in err and "optimizer.safetensors" in err
    got = adapter(run)
    assert all(torch.equal(got[k], expected[k]) for k in expected)
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "completed" and info["resumed_from"].endswith("step-00002")


def test_no_intact_checkpoint_leaves_a_finished_run_as_it_was(run, capsys):
    for step in ("step-00002", "step-00004"):
        flip_byte(run / "checkpoints" / step / "state.json", at=2)
    before = folder_state(run)
    assert main(["train", "--resume", str(run)]) == 2
    err = capsys.readouterr().err
    assert "error: no intact checkpoint" in err and "Traceback" not in err
    assert folder_state(run) == before


def test_a_finished_run_that_cannot_continue_keeps_its_record(run, capsys):
    """The checkpoint is intact but no longer fits (the adapter section was overridden): the run
    stops before a new step, and run.json and metrics.jsonl are exactly as they were."""
    before = {name: (run / name).read_bytes() for name in ("run.json", "metrics.jsonl")}
    assert main(["train", "--resume", str(run), "adapter.r=8"]) == 2
    err = capsys.readouterr().err
    assert "error:" in err and "does not fit" in err and "left as it was" in err
    assert {name: (run / name).read_bytes() for name in before} == before


def test_resume_with_a_damaged_run_json_changes_nothing(run, capsys):
    (run / "run.json").write_bytes(b'{"status": "\xff')
    before = folder_state(run)
    assert main(["train", "--resume", str(run)]) == 2
    err = capsys.readouterr().err
    assert "run.json" in err and "not UTF-8" in err and "Traceback" not in err
    assert folder_state(run) == before


def test_a_disk_that_fills_up_mid_run(tmp_path, capsys):
    config = write_config(tmp_path, train=FAST, eval={"metrics": ["loss"]})
    with small_disk(tmp_path / "disk", size_kb=48) as disk:
        code = main(["train", str(config), f"output.dir={disk}"])
        err = capsys.readouterr().err
        assert code == 2 and "No space left on device" in err and str(disk) in err and "Traceback" not in err
        leftovers = [p for p in disk.rglob("*") if p.name.endswith((".tmp", ".saving"))]
        assert not leftovers, leftovers


def _spawn(args: list[str], log: Path) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}  # same threads: same sums
    return subprocess.Popen([sys.executable, "-m", "peftkit.cli", *args], env=env, stdout=subprocess.DEVNULL,
                            stderr=open(log, "wb"))


def _kill_at_random(proc: subprocess.Popen, metrics: Path, rng: random.Random, steps: int, events: list) -> None:
    """Once the run has logged two steps (which times one step), SIGKILL it after a random share of
    the time its remaining steps take: mid-step, mid-checkpoint or during the final save. Appends
    what happened to ``events``."""
    seen: list[float] = []
    deadline = time.time() + 300
    while proc.poll() is None and time.time() < deadline and len(seen) < 2:
        lines = len(metrics.read_text().splitlines()) if metrics.exists() else 0
        if lines > len(seen):
            seen.append(time.time())
        time.sleep(0.02)
    per_step = seen[1] - seen[0] if len(seen) == 2 else 0.2
    delay = rng.uniform(0, per_step * (steps - 1))
    time.sleep(delay)
    if proc.poll() is not None:
        events.append(f"finished before the kill ({delay:.2f}s)")
        return
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    events.append(f"killed {delay:.2f}s after step 2")


def _metrics_of(runs: Path, name: str) -> Path:
    """metrics.jsonl of the run called ``name`` in ``runs``, once the run folder exists."""
    deadline = time.time() + 300
    while time.time() < deadline:
        found = [p for p in runs.iterdir() if name in p.name] if runs.exists() else []
        if found:
            return found[0] / "metrics.jsonl"
        time.sleep(0.05)
    raise AssertionError(f"no run {name} in {runs}")


def test_kill_9_at_random_moments_in_a_shared_runs_folder_then_resume_is_bit_identical(tmp_path, capsys):
    """Two processes train into one runs folder (and its index) at once; one of them is SIGKILLed at a
    random moment (again after each resume, PEFTKIT_KILLS times in all; default 1) and resumed to
    the end (a checkpoint every step, so kills land mid-step and mid-save alike). Its adapter equals the uninterrupted run's, bit for
    bit, each step is logged once, and the index lists both runs as completed. The seed is printed."""
    seed = int(os.environ.get("PEFTKIT_KILL_SEED", random.randrange(10**6)))
    print(f"kill seed {seed} (PEFTKIT_KILL_SEED={seed} repeats it)")
    rng, events = random.Random(seed), []
    train = {"max_steps": 8, "save_steps": 1, "eval_steps": 100, "batch_size": 2}
    config = write_config(tmp_path, train=train, eval={"metrics": ["loss"]})
    runs = tmp_path / "runs"
    runs.mkdir()
    assert main(["runs", "--dir", str(runs), "list"]) == 0  # the index: both processes update it
    proc = _spawn(["train", str(config), "output.name=killed"], tmp_path / "log0")
    killer = threading.Thread(target=lambda: _kill_at_random(proc, _metrics_of(runs, "killed"), rng, 8, events))
    killer.start()
    assert main(["train", str(config), "output.name=whole"]) == 0  # meanwhile, in this process
    killer.join()
    expected = adapter(the_run(runs, "whole"))
    run = the_run(runs, "killed")
    for i in range(1, int(os.environ.get("PEFTKIT_KILLS", "1"))):  # more kills, each after a resume
        proc = _spawn(["train", "--resume", str(run)], tmp_path / f"log{i}")
        _kill_at_random(proc, run / "metrics.jsonl", rng, 8, events)
    assert main(["train", "--resume", str(run)]) == 0, (events, capsys.readouterr().err[-3000:])
    got = adapter(run)
    assert got.keys() == expected.keys()
    assert all(torch.equal(got[k], expected[k]) for k in expected), events
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]
    assert steps == list(range(1, 9)), (events, steps)
    assert not [p for p in (run / "checkpoints").iterdir() if p.name.endswith(".tmp")]
    capsys.readouterr()
    assert main(["runs", "--dir", str(runs), "list", "--json"]) == 0
    listed = {r["name"]: r["status"] for r in json.loads(capsys.readouterr().out)}
    assert listed == {"whole": "completed", "killed": "completed"}, events
    print(events)


def test_checkpoint_errors_are_checkpoint_errors(tmp_path):
    with pytest.raises(CheckpointError, match="every one is damaged"):
        (tmp_path / "checkpoints" / "step-00001").mkdir(parents=True)
        (tmp_path / "checkpoints" / "step-00001" / "COMPLETE").write_text('{"files": {"x": {"bytes": 1}}}')
        state.intact_checkpoint(str(tmp_path / "checkpoints"), warn=lambda m: None)
