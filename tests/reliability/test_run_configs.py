"""The run YAML and its overrides: small files that would make unbounded work (alias bombs, self-
referring aliases, deep nesting, huge files), files that are not text, unsafe tags, and output
settings that would write outside the runs folder or cannot be written. Each is one ConfigError /
`error:` line naming the file or field, within limits of time and memory; messages never print an
expanded value."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml
from faults import read_only
from tiny_assets import write_config

from peftkit.cli import main
from peftkit.errors import ConfigError
from peftkit.train.config import load_run_config, validate_file


def laughs(levels: int, width: int = 9) -> str:
    lines = [f"l0: &l0 [{', '.join(['lol'] * width)}]"]
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * width)}]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


BAD_FILES = {
    "billion laughs": (laughs(9), "expands to more than 100,000 values"),
    "alias inside itself": ("model: &m {name: *m}\n", "recursive value"),
    "101 aliases": ("a: &a x\nb: [" + ", ".join(["*a"] * 101) + "]\n", "more than 100 aliases"),
    "nested 200 deep": ("x: " + "[" * 200 + "]" * 200 + "\n", "nested more than 64 levels"),
    "not UTF-8": (b"model: {name: \xff\xfe}\n", "not UTF-8 text \\(byte 14"),
    "random bytes": (bytes(range(256)) * 4, "not UTF-8|invalid YAML"),
    "NUL character": ("model: {name: a\x00b}\n", "invalid YAML"),
    "python tag": ("model: !!python/object/apply:os.system ['touch UNSAFE']\n", "invalid YAML.*constructor"),
    "tab indentation": ("model:\n\tname: x\n", "invalid YAML"),
    "empty": ("", "the file is empty"),
    "a list": ("- a\n- b\n", "top level must be a mapping"),
    "a long string": ("x" * 100_000 + "\n", "top level must be a mapping of sections, not 'xxxx"),
}


@pytest.mark.parametrize("label", list(BAD_FILES))
def test_bad_config_files_are_one_clear_problem(label, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    content, message = BAD_FILES[label]
    path = tmp_path / "run.yaml"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    problems = validate_file(path)
    assert len(problems) == 1 and problems[0][0] == "", problems
    assert str(path) in problems[0][1] and __import__("re").search(message, problems[0][1]), problems
    assert len(problems[0][1]) < 1000  # the value itself is never printed in full
    assert main(["validate", str(path)]) == 2
    assert str(path) in capsys.readouterr().err
    assert not (tmp_path / "UNSAFE").exists()


def test_a_config_file_over_the_size_limit_is_not_parsed(tmp_path):
    path = tmp_path / "run.yaml"
    with open(path, "wb") as f:
        f.truncate(5 << 20)
    (problem,) = validate_file(path)
    assert "larger than the 4,194,304-byte limit" in problem[1]


@pytest.mark.parametrize("what", ["missing", "a folder"])
def test_config_paths_that_are_not_files(what, tmp_path):
    path = tmp_path / "run.yaml"
    if what == "a folder":
        path.mkdir()
    (problem,) = validate_file(path)
    assert str(path) in problem[1] and ("no such file" in problem[1] or "directory" in problem[1])


def test_a_large_value_within_the_limits_is_quoted_short(tmp_path, monkeypatch):
    """~40,000 values pass the limits; the error about them quotes a few dozen characters."""
    config = write_config(tmp_path)
    text = laughs(5, width=7) + config.read_text().replace("model:\n", "model:\n  revision: *l4\n", 1)
    config.write_text(text)
    problems = validate_file(config)
    revision = next(msg for path, msg in problems if path == "model.revision")
    assert "got [[" in revision and len(revision) < 300
    assert any(path == "l0" for path, _ in problems)  # the helper keys are unknown sections


@pytest.mark.parametrize("override", ["train.lr=&a [*a]", "train.lr=[" + "[" * 100 + "]" * 101,
                                      "model.revision=!!python/name:os.system", "train.lr=*undefined"])
def test_bad_override_values(override, tmp_path):
    config = write_config(tmp_path)
    problems = validate_file(config, [override])
    assert [path for path, _ in problems] == [override.split("=")[0]], problems
    assert "not valid YAML" in problems[0][1]


def test_anchors_within_the_limits_still_work(tmp_path):
    config = write_config(tmp_path)
    text = config.read_text().replace("lr: 0.005", "lr: &rate 0.005").replace("seed: 0", "seed: 0\n  weight_decay: *rate")
    config.write_text(text)
    assert load_run_config(config).train.weight_decay == 0.005


@pytest.mark.parametrize("name", ["../escape", "/abs", ".", "..", "a/b", "a\\b"])
def test_output_name_must_be_one_folder_name(name, tmp_path):
    config = write_config(tmp_path)
    problems = validate_file(config, [f"output.name={name!r}".replace("'", '"') if "\\" not in name else "output.name='a\\b'"])
    assert [path for path, _ in problems] == ["output.name"] and "plain folder name" in problems[0][1]


def test_output_dir_blocked_by_a_file(tmp_path, capsys):
    config = write_config(tmp_path)
    (tmp_path / "blocker").write_text("x")
    for where in ("blocker", "blocker/runs"):
        problems = validate_file(config, [f"output.dir={tmp_path / where}"])
        assert [p for p, _ in problems] == ["output.dir"] and "a file is in the way" in problems[0][1]
    assert main(["train", str(config), f"output.dir={tmp_path / 'blocker'}"]) == 2
    assert "output.dir" in capsys.readouterr().err
    assert (tmp_path / "blocker").read_text() == "x"


def test_output_dir_on_a_read_only_folder(tmp_path, capsys):
    config = write_config(tmp_path)
    (tmp_path / "ro").mkdir()
    with read_only(tmp_path / "ro"):
        problems = validate_file(config, [f"output.dir={tmp_path / 'ro' / 'runs'}"])
        assert [p for p, _ in problems] == ["output.dir"] and "cannot write" in problems[0][1]
        assert main(["train", str(config), f"output.dir={tmp_path / 'ro' / 'runs'}"]) == 2
    assert "output.dir" in capsys.readouterr().err and not os.listdir(tmp_path / "ro")


DATA_FILES = {
    "binary jsonl": ("bad.jsonl", bytes(range(256)), "row 2: not UTF-8"),  # byte 10 ends row 1
    "latin-1 jsonl, row 3": ("bad.jsonl", b'{"text": "a"}\n{"text": "b"}\n{"text": "caf\xe9"}\n', "row 3: not UTF-8"),
    "binary csv": ("bad.csv", b"text\n\x80\x81\x82\n", "row 2: not UTF-8"),
    "binary json": ("bad.json", b"\x00\xff" * 64, "row 1: not UTF-8"),
    "garbage parquet": ("bad.parquet", b"PAR1 not really", "not a parquet file"),
}


@pytest.mark.parametrize("label", list(DATA_FILES))
def test_data_files_that_are_not_text_are_named_with_their_row(label, tmp_path, capsys, no_model_loading):
    name, content, message = DATA_FILES[label]
    (tmp_path / name).write_bytes(content)
    config = write_config(tmp_path, data={"train": str(tmp_path / name), "format": "text", "eval": None},
                          eval={"metrics": ["loss"]})
    assert main(["train", str(config)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") or "\nerror: " in err
    assert name in err and __import__("re").search(message, err) and "Traceback" not in err
    assert not (tmp_path / "runs").exists()


@pytest.fixture
def no_model_loading(monkeypatch):
    """Bad data must fail before any model is loaded: loading one fails the test."""
    from peftkit.train import prepare

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(prepare, "load_model", refuse)
    return refuse


def test_yaml_limits_hold_for_pyyaml_itself():
    """The loader is a SafeLoader: a plain yaml.load with it refuses unsafe tags too."""
    from peftkit.train.yaml_io import Loader

    with pytest.raises(yaml.YAMLError):
        yaml.load("!!python/object/apply:os.system ['true']", Loader=Loader)
    with pytest.raises(ConfigError):
        load_run_config(Path("/nonexistent/run.yaml"))
