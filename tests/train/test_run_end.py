"""Every run ends measured: a final evaluation and a final checkpoint at the last step whatever
eval_steps / save_steps are; `runs list` and `compare` show the run's primary metric; the train
summary and `peftkit eval` print counts (3/4) and the rows the adapter got wrong; tokens/s counts
training time only. One tiny run (5 steps, eval every 3, save every 2) serves every test."""

from __future__ import annotations

import contextlib
import io
import json
import os
from types import SimpleNamespace

import pytest
from tiny_assets import read_metrics, the_run, write_config

from peftkit.cli import main
from peftkit.train import loop as train_loop


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """``(run folder, what train printed)``; every evaluation "takes" 1000 s on the loop's clock."""
    root = tmp_path_factory.mktemp("run-end")
    config = write_config(root, train={"max_steps": 5, "eval_steps": 3, "save_steps": 2}, eval={"at_start": True})
    clock = {"offset": 0.0}
    real_time, real_evaluate = train_loop.time.time, train_loop.evaluate

    def slow_evaluate(*args, **kwargs):
        clock["offset"] += 1000.0
        return real_evaluate(*args, **kwargs)

    out, err = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        patch.setattr(train_loop, "time", SimpleNamespace(time=lambda: real_time() + clock["offset"]))
        patch.setattr(train_loop, "evaluate", slow_evaluate)
        assert main(["train", str(config)]) == 0
    return the_run(root), out.getvalue(), err.getvalue()


def _wrong(run):
    rows = json.loads((run / "eval_predictions.json").read_text())
    return rows, [r for r in rows if r["prediction"].strip() != r["reference"].strip()]


def test_the_last_step_is_evaluated_and_checkpointed_when_the_steps_do_not_divide(trained):
    run, *_ = trained
    evals = [r for r in read_metrics(run) if "eval_exact_match" in r and not r.get("final")]
    assert [r["step"] for r in evals] == [0, 3, 5]  # base model, eval_steps, and the last step
    assert sorted(os.listdir(run / "checkpoints")) == ["step-00002", "step-00004", "step-00005"]
    info = json.loads((run / "run.json").read_text())
    assert info["final_metrics"] == {k: v for k, v in evals[-1].items() if k.startswith("eval_")}
    assert info["eval_size"] == 4


def test_runs_list_and_compare_show_the_primary_metric_with_its_count(trained, capsys):
    run, *_ = trained
    final = json.loads((run / "run.json").read_text())["final_metrics"]["eval_exact_match"]
    assert main(["runs", "--dir", str(run.parent), "list"]) == 0
    table = capsys.readouterr().out
    assert "result" in table.splitlines()[0]
    assert f"exact_match {final:.4g} ({round(final * 4)}/4)" in table  # the task's metric, not the loss
    assert main(["runs", "--dir", str(run.parent), "compare", run.name, "--no-plot"]) == 0
    assert "eval.exact_match" in capsys.readouterr().out


def test_the_summary_prints_counts_and_the_failing_rows_with_expected_and_predicted(trained):
    run, out, _ = trained
    rows, wrong = _wrong(run)
    assert wrong, "a 5-step tiny model is expected to miss some rows"  # what the next lines check
    hits = len(rows) - len(wrong)
    assert f"({hits}/4)" in out and "base model: exact_match" in out and "step 5: exact_match" in out
    assert f"{len(wrong)} of 4 wrong" in out
    assert f"expected: {wrong[0]['reference']}" in out and f"got:      {wrong[0]['prediction'].strip()}" in out


def test_eval_prints_counts_and_the_failing_rows(trained, capsys):
    run, *_ = trained
    rows, wrong = _wrong(run)
    assert main(["eval", str(run)]) == 0
    out = capsys.readouterr().out
    assert f"({len(rows) - len(wrong)}/4)" in out and f"{len(wrong)} of 4 wrong" in out
    assert f"expected: {wrong[0]['reference']}" in out


def test_tokens_per_second_leaves_out_the_base_model_scoring_and_evaluations(trained):
    run, *_ = trained
    logged = [r for r in read_metrics(run) if "tokens_per_s" in r]
    assert [r["step"] for r in logged] == [1, 2, 3, 4, 5]
    # a batch holds ~4 x 25 tokens: counting one 1000 s evaluation would give about 0.1 tokens/s
    assert all(r["tokens_per_s"] > 1.0 for r in logged), logged


def test_long_phases_say_so_and_library_bars_and_reports_stay_out_of_the_log(trained):
    _, _, err = trained
    lines = err.splitlines()
    for phase in ("loading model", "scoring the base model (eval.at_start)", "final evaluation at step 5"):
        assert any(line.startswith(phase) and line.endswith(" ...") for line in lines), (phase, err)
        assert any(line.startswith(phase) and ": done in " in line for line in lines), (phase, err)
    for noise in ("Loading weights", "Generating train split", "LOAD REPORT", "\x1b["):
        assert noise not in err
