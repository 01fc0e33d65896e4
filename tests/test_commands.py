"""The `sft-jax` command: its console, `eval` (the final evaluation's code, no training),
`--help` of every subcommand, and one-line errors for unknown subcommands and flags."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, apply_overrides, cli_args, load_config, tiny_overrides

from sft_jax import cli, console


def sft_jax_cmd(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "sft_jax.cli", *args]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "JAX_PLATFORMS": "cpu"})


def results(workdir: Path) -> dict:
    return json.loads((workdir / "results.json").read_text())


def same_metrics(a: dict, b: dict) -> None:
    """Equal numeric metrics per split (params_from names the source and may differ)."""
    assert a.keys() == b.keys()
    for split in a:
        numbers = {k: v for k, v in a[split].items() if isinstance(v, float)}
        assert numbers, split
        for name, value in numbers.items():
            assert b[split][name] == pytest.approx(value, abs=1e-6), (split, name)


@pytest.fixture()
def tiny(tiny_bert_dir, tiny_corpus_dir) -> dict:
    return tiny_overrides(tiny_bert_dir, tiny_corpus_dir)


def test_a_run_shows_a_short_console_and_eval_reproduces_its_final_evaluation(tmp_path, tiny):
    """`sft-jax train` on the `:runlocal` classification config (tiny model and data, the
    progress display on), its console read as CI reads it (not a terminal); then
    `sft-jax eval` of the run's export/, and `sft_jax.evaluate` of its best/."""
    run = tmp_path / "run"
    overrides = {**tiny, "train.progress_bar": True}
    proc = sft_jax_cmd("train", "--config=configs/classification.py:runlocal",
                       f"--workdir={run}", *cli_args(overrides))
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = (proc.stdout + proc.stderr).splitlines()
    assert 8 <= len(lines) <= 40, "\n".join(lines)
    # No library's own lines: INFO/DEBUG records, or a "[name]" line printed by a library's
    # own handler (transformers' "PyTorch was not found" on a machine without torch).
    library = [ln for ln in lines if re.search(r"\b(INFO|DEBUG)\b|orbax|absl|^\[[\w.]+\]", ln)]
    assert library == [], library
    assert "\r" not in proc.stderr  # plain lines, no carriage-return bars
    assert re.search(r"^classification: .*SequenceClassifier", proc.stderr, re.M)
    assert re.search(r"^step 4/4  loss \d\.\d{4}  lr ", proc.stderr, re.M)
    assert re.search(r"^step 2 validation: loss .* accuracy", proc.stderr, re.M)
    assert re.search(r"^  test +\d\.\d{4} ", proc.stdout, re.M)  # the results table
    assert f"export: {run / 'export'}" in proc.stdout
    log = (run / "log.txt").read_text()
    assert re.search(r" INFO absl: .*[Cc]heckpoint", log)  # orbax's lines are kept there
    assert "INFO sft_jax.trainer: classification: " in log
    assert len(log.splitlines()) > 3 * len(lines)

    import sft_jax

    run_results = results(run)
    for model in ("export", "best"):
        out = tmp_path / f"eval-{model}"
        if model == "export":
            proc = sft_jax_cmd("eval", "--config=configs/classification.py:runlocal",
                               f"--model={run / model}", f"--workdir={out}",
                               *cli_args(overrides))
            assert proc.returncode == 0, proc.stderr[-3000:]
        else:
            sft_jax.evaluate(apply_overrides(load_config(), overrides), out, run / model)
        same_metrics(run_results, results(out))
        assert (out / "predictions" / "test.jsonl").read_text() == \
            (run / "predictions" / "test.jsonl").read_text()
        assert not (out / "export").exists() and not (out / "checkpoints").exists()


def test_evaluate_a_fresh_head_equals_a_zero_step_run(tmp_path, tiny):
    """The Python face: `sft_jax.evaluate` of the base model (a fresh head, seeded as a
    run's) gives the metrics of `sft_jax.train` with train.steps=0."""
    import sft_jax

    config = apply_overrides(load_config(), {**tiny, "train.steps": 0})
    zero = sft_jax.train(config, tmp_path / "zero")
    evaluated = sft_jax.evaluate(config, tmp_path / "eval", model=tiny["model.checkpoint"])
    same_metrics(zero, evaluated)
    assert evaluated["test"]["params_from"] == tiny["model.checkpoint"]
    assert results(tmp_path / "eval")["test"]["params_from"] == tiny["model.checkpoint"]
    assert (tmp_path / "eval" / "log.txt").is_file()  # the run's log, as from the CLI
    with pytest.raises(sft_jax.errors.UserInputError, match="is a run directory; evaluate"):
        sft_jax.evaluate(config, tmp_path / "other", model=tmp_path / "zero")
    with pytest.raises(sft_jax.errors.UserInputError, match="holds a training run's"):
        (tmp_path / "zero" / "checkpoints" / "1").mkdir(parents=True)
        sft_jax.evaluate(config, tmp_path / "zero")


def test_help_of_every_subcommand():
    for args in ([], *([name] for name in cli.SUBCOMMANDS)):
        proc = sft_jax_cmd(*args, "--help")
        assert proc.returncode == 0, (args, proc.stderr)
        assert "sft-jax" in proc.stdout and len(proc.stdout.splitlines()) >= 4, proc.stdout
    installed = shutil.which("sft-jax", path=str(Path(sys.executable).parent))
    if installed:  # the script pyproject.toml installs
        proc = subprocess.run([installed, "--help"], capture_output=True, text=True)
        assert proc.returncode == 0 and "subcommands:" in proc.stdout


@pytest.mark.parametrize("args, message", [
    (["bogus"], "unknown subcommand 'bogus'"),
    ([], "subcommands:"),
    (["train", "--bogus=1"], "Unknown command line flag 'bogus'"),
    (["eval", "--config=configs/classification.py", "--nope"], "Unknown command line flag"),
    (["report", "--bogus"], "Unknown command line flag 'bogus'"),
    (["sweep", "--bogus"], "Unknown command line flag 'bogus'"),
    (["predict", "--model=x", "--prompt=hi", "--bogus"], "unrecognized arguments: --bogus"),
    (["assets", "--bogus"], "--bogus: not a command"),
])
def test_unknown_subcommands_and_flags_are_one_line_and_status_2(args, message):
    proc = sft_jax_cmd(*args)
    assert proc.returncode == 2, proc.stderr
    if args:
        assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1, proc.stderr
    assert message in proc.stderr


def test_print_config_prints_the_resolved_config_and_exits():
    proc = sft_jax_cmd("train", "--config=configs/classification.py:runlocal",
                       "--config.optim.learning_rate=0.125", "--print_config")
    assert proc.returncode == 0, proc.stderr
    assert "learning_rate: 0.125" in proc.stdout and proc.stderr == ""


def test_plain_progress_lines_first_last_and_at_most_one_per_interval(caplog, monkeypatch):
    monkeypatch.setattr(console, "is_terminal", lambda: False)
    clock = iter([0.0, 1.0, 2.0, 3.0, 15.0, 16.0])
    monkeypatch.setattr(console.time, "perf_counter", lambda: next(clock))
    with caplog.at_level("INFO", logger="sft_jax"):
        progress = console.TrainProgress(0, 5, enabled=True)
        for step in range(1, 6):  # logged at every step, at t = 1, 2, 3, 15, 16
            progress.update(step, loss=1.0 / step, learning_rate=1e-3, rate=1234.0)
    shown = [r.getMessage() for r in caplog.records]
    assert [m.split()[1] for m in shown] == ["1/5", "4/5", "5/5"], shown
    assert shown[-1] == "step 5/5  loss 0.2000  lr 0.001  1.23k examples/s  eta 0:00"
