"""Sweep specs: splitting values, the grid, validation of every point before the first run, and the
sweep record each run gets (with a stand-in trainer; real sweeps train in test_e2e.py)."""

from __future__ import annotations

import pytest
import yaml
from fake_runs import BASE

from peftkit.errors import ConfigError
from peftkit.tracking.sweep import grid, parse_axes, plan, run_sweep, split_values


def test_values_split_at_top_level_commas():
    assert split_values("8,16, 32") == ["8", "16", "32"]
    assert split_values("[q_proj,v_proj],all-linear") == ["[q_proj,v_proj]", "all-linear"]
    assert split_values("'a,b',{x: 1, y: 2}") == ["'a,b'", "{x: 1, y: 2}"]


def test_grid_varies_the_last_axis_fastest():
    axes = parse_axes(["adapter.r=8,16,32", "train.lr=1e-4,3e-4"])
    points = grid(axes)
    assert len(points) == 6 and points[:2] == [["adapter.r=8", "train.lr=1e-4"], ["adapter.r=8", "train.lr=3e-4"]]
    assert points[-1] == ["adapter.r=32", "train.lr=3e-4"]


@pytest.mark.parametrize("specs, overrides, words", [
    (["adapter.r"], [], "is not KEY=V1,V2"),
    (["adapter.r="], [], "is not KEY=V1,V2"),
    (["adapter.r=8,,16"], [], "empty value"),
    (["adapter.r=8", "adapter.r=16"], [], "swept twice"),
    (["adapter.r=8,16"], ["adapter.r=4"], "both as an override and as a --sweep"),
])
def test_bad_sweep_specs(specs, overrides, words):
    with pytest.raises(ConfigError, match=words):
        parse_axes(specs, overrides)


def test_every_point_is_validated_before_any_run(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(BASE))
    with pytest.raises(ConfigError) as info:
        plan(str(config), [], ["adapter.r=8,0", "train.lr=1e-4,-1"])
    paths = [p for p, _ in info.value.problems]
    assert paths == ["adapter.r=8 train.lr=-1 -> train.lr", "adapter.r=0 train.lr=1e-4 -> adapter.r",
                     "adapter.r=0 train.lr=-1 -> adapter.r", "adapter.r=0 train.lr=-1 -> train.lr"]


def test_each_run_gets_its_point_and_a_failure_does_not_stop_the_sweep(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(BASE))
    calls = []

    def fake_train(path, overrides, extra):
        calls.append((overrides, extra))
        if "adapter.r=16" in overrides:
            raise RuntimeError("out of memory")
        return str(tmp_path / f"run{len(calls)}")

    sid, points = run_sweep(str(config), ["train.max_steps=2"], ["adapter.r=8,16,32"], train=fake_train,
                            echo=lambda line: None)
    assert sid.startswith("sweep-") and [p.run_dir is not None for p in points] == [True, False, True]
    assert points[1].error == "RuntimeError: out of memory"
    overrides, extra = calls[2]
    assert overrides == ["train.max_steps=2", "adapter.r=32"]
    assert extra == {"sweep": {"id": sid, "index": 2, "size": 3, "point": {"adapter.r": 32}}}


def test_train_cli_refuses_what_does_not_go_together(tmp_path, capsys):
    from peftkit.cli import main

    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(BASE))
    assert main(["train", "--resume", str(tmp_path), "--sweep", "adapter.r=8,16"]) == 2
    assert "does not go with --sweep" in capsys.readouterr().err
    assert main(["train", str(config), "--sweep", "adapter.r=8,0", "train.max_steps=2"]) == 2
    err = capsys.readouterr().err
    assert "Invalid sweep" in err and "adapter.r=0 -> adapter.r" in err and not (tmp_path / "runs").exists()
    assert main(["train"]) == 2 and "--from-run RUN" in capsys.readouterr().err
