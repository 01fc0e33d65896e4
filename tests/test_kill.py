"""Interrupted runs resume exactly, as the README claims: the CLI runs as a subprocess that
is killed with SIGKILL between checkpoints (and, for classification, first during a
checkpoint write and then stopped with Ctrl-C, SIGINT), and started again each time with
the same command; the run then ends with the uninterrupted run's per-step losses,
data-iterator state and every array of its final state (params, optimizer state, step),
bitwise. For classification, dialogue and seq2seq (T5 from scratch with its own
tokenizer), with dropout on.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from conftest import REPO, cli_args, read_metrics, tiny_overrides

STEPS, EVERY = 12, 3  # checkpoints at 3, 6, 9, 12
COMMON = {"train.steps": STEPS, "checkpoint.every": EVERY, "train.eval_every": 0,
          "train.log_every": 1, "checkpoint.export": False, "train.progress_bar": False,
          "data.validation": "", "data.test": ""}
TMP = ".orbax-checkpoint-tmp"


def start(workdir: Path, config: str, overrides: dict, log: Path) -> subprocess.Popen:
    """`python -m sft_jax.main` in the background; its output goes to `log` (a pipe left
    unread would fill up and block it)."""
    cmd = [sys.executable, "-m", "sft_jax.main", f"--config={config}", f"--workdir={workdir}",
           *cli_args(overrides)]
    with log.open("a") as out:
        return subprocess.Popen(cmd, cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, "JAX_PLATFORMS": "cpu"})


def finish(proc: subprocess.Popen, log: Path, status: int) -> str:
    """Waits for `proc`; asserts its exit status; returns its log."""
    try:
        proc.wait(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
    text = log.read_text()
    assert proc.returncode == status, (proc.returncode, text[-3000:])
    return text


def signal_when(proc: subprocess.Popen, ready: Callable[[], bool], sig: int, log: Path) -> None:
    """Sends `sig` as soon as `ready()` (polled every 2 ms) holds while `proc` runs."""
    deadline = time.monotonic() + 600
    while not ready():
        assert proc.poll() is None, f"exited {proc.returncode} too early:\n" + \
            log.read_text()[-3000:]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.002)
    proc.send_signal(sig)


def saved_steps(workdir: Path) -> set[int]:
    """Steps of the finalized checkpoints."""
    names = os.listdir(workdir / "checkpoints") if (workdir / "checkpoints").is_dir() else []
    return {int(n) for n in names if n.isdigit()}


def writing(workdir: Path, step: int) -> bool:
    """A checkpoint of `step` is being written (orbax's temporary directory exists)."""
    names = os.listdir(workdir / "checkpoints") if (workdir / "checkpoints").is_dir() else []
    return any(n.startswith(f"{step}{TMP}") for n in names)


def train_rows_after(workdir: Path, offset: int) -> list[dict]:
    """Train rows of metrics.jsonl written past byte `offset` (by the current process)."""
    path = workdir / "metrics.jsonl"
    if not path.exists():
        return []
    with path.open() as f:
        f.seek(offset)
        lines = f.read().split("\n")[:-1]  # complete lines only
    return [r for r in map(json.loads, lines) if r["split"] == "train"]


def final_checkpoint(workdir: Path) -> tuple[dict, str]:
    """Every array of the final state by its path, and the data-iterator state."""
    import jax
    import orbax.checkpoint as ocp

    path = workdir / "checkpoints" / str(STEPS)
    state = ocp.StandardCheckpointer().restore(path / "state")
    arrays = {jax.tree_util.keystr(k): np.asarray(v)
              for k, v in jax.tree_util.tree_leaves_with_path(state)}
    return arrays, (path / "data" / "metadata").read_text()


def losses_by_step(workdir: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(workdir)}  # later rows win


def interrupted_run_equals_uninterrupted(tmp_path: Path, config: str, overrides: dict,
                                         every_signal: bool, kept: tuple[str, ...] = ()
                                         ) -> None:
    """`every_signal`: SIGKILL during a checkpoint write, then Ctrl-C, then SIGKILL between
    checkpoints; else one SIGKILL between checkpoints. `kept`: files (relative to the
    workdir) that the first run writes and every resumed run must reuse unchanged."""
    overrides = {**overrides, **COMMON}
    reference, workdir = tmp_path / "reference", tmp_path / "run"
    ref_log, log = tmp_path / "reference.log", tmp_path / "run.log"
    ref = start(reference, config, overrides, ref_log)  # alongside the interrupted runs
    stopped, offset = 0, 0
    if every_signal:
        # SIGKILL while the checkpoint of step 2*EVERY is being written (the one of EVERY
        # is complete): the partial one is not used, the complete one is.
        proc = start(workdir, config, overrides, log)
        signal_when(proc, lambda: writing(workdir, 2 * EVERY), signal.SIGKILL, log)
        finish(proc, log, -signal.SIGKILL)
        assert saved_steps(workdir) == {EVERY}, os.listdir(workdir / "checkpoints")
        assert writing(workdir, 2 * EVERY)

        # Ctrl-C soon after the resumed run's first step: it saves where it stopped.
        offset = (workdir / "metrics.jsonl").stat().st_size
        proc = start(workdir, config, overrides, log)
        signal_when(proc, lambda: train_rows_after(workdir, offset), signal.SIGINT, log)
        text = finish(proc, log, 130)
        assert "interrupted: stopped at step" in text
        stopped = int(text.rsplit("interrupted: stopped at step ", 1)[1].split(";")[0])
        assert EVERY < stopped < STEPS and stopped in saved_steps(workdir)
        assert train_rows_after(workdir, offset)[0]["step"] == EVERY + 1
        offset = (workdir / "metrics.jsonl").stat().st_size

    # SIGKILL between checkpoints: once a periodic checkpoint past `stopped` is complete
    # and a step past it is logged.
    def past_a_checkpoint() -> bool:
        rows, last = train_rows_after(workdir, offset), max(saved_steps(workdir), default=0)
        return last > stopped and bool(rows) and rows[-1]["step"] > last

    proc = start(workdir, config, overrides, log)
    signal_when(proc, past_a_checkpoint, signal.SIGKILL, log)
    finish(proc, log, -signal.SIGKILL)
    assert STEPS not in saved_steps(workdir)
    assert train_rows_after(workdir, offset)[0]["step"] == stopped + 1
    first = {name: (workdir / name).read_bytes() for name in kept}

    # The same command again runs to the end.
    finish(start(workdir, config, overrides, log), log, 0)
    finish(ref, ref_log, 0)
    assert len(read_metrics(workdir)) > STEPS  # some steps ran twice
    assert {name: (workdir / name).read_bytes() for name in kept} == first
    assert losses_by_step(workdir) == losses_by_step(reference)
    (ours, data), (theirs, ref_data) = final_checkpoint(workdir), final_checkpoint(reference)
    assert data == ref_data
    assert ours.keys() == theirs.keys() and len(ours) > 10
    for name, array in theirs.items():
        assert ours[name].dtype == array.dtype, name
        assert np.array_equal(ours[name], array), name


def test_classification_resumes_bitwise(tmp_path, tiny_bert_dir, tiny_corpus_dir):
    interrupted_run_equals_uninterrupted(
        tmp_path, "configs/classification.py:runlocal",
        {**tiny_overrides(tiny_bert_dir, tiny_corpus_dir), "model.dropout": 0.1},
        every_signal=True)


def test_dialogue_resumes_bitwise(tmp_path, tiny_chat_model):
    interrupted_run_equals_uninterrupted(
        tmp_path, "configs/dialogue.py:runlocal",
        {"model.checkpoint": tiny_chat_model, "model.dropout": 0.1}, every_signal=False)


def test_seq2seq_resumes_bitwise(tmp_path):
    """T5 from scratch: the tokenizer trained by the first run is the one resumed runs use."""
    interrupted_run_equals_uninterrupted(tmp_path, "configs/translation.py:runlocal", {},
                                         every_signal=False, kept=("tokenizer/tokenizer.json",))
