"""Every `UserInputError` of the engine (`sft_jax.trainer`, `sft_jax.parallel`,
`sft_jax.optim`; `sft_jax.placement` raises none of its own) as one table: each case calls
the function that checks the value, with the smallest input that trips it, and expects one
line naming the key. One case goes through the CLI, as a user meets it."""

from __future__ import annotations

from types import SimpleNamespace

import jax
import numpy as np
import pytest
from conftest import apply_overrides, load_config, tiny_overrides
from test_cli_errors import assert_user_error, run_cli

from sft_jax import optim, parallel
from sft_jax import trainer as trainer_lib
from sft_jax.errors import UserInputError


def check_config(overrides: dict, processes: int = 1):
    def call(monkeypatch):
        monkeypatch.setattr(jax, "process_count", lambda: processes)
        trainer_lib._check_config(apply_overrides(load_config(), overrides))
    return call


def make_mesh(data: int, fsdp: int = 1, tensor: int = 1):
    def call(monkeypatch):
        parallel.make_mesh({"data": data, "fsdp": fsdp, "tensor": tensor})
    return call


def initialize_distributed(monkeypatch):
    config = apply_overrides(load_config(), {
        "distributed.coordinator_address": "127.0.0.1:1234", "distributed.num_processes": 2})
    parallel.initialize_distributed(config)  # process_id is still -1


def pmap_batch(monkeypatch):  # 6 rows, 4 micro-batches, one device
    parallel.to_pmap({"input_ids": np.zeros((6, 8), np.int32)}, 4)


def schedule(monkeypatch):
    config = apply_overrides(load_config(), {"optim.schedule": "exponential"})
    optim.make_schedule(config.optim, 10)


def replicas_in_checkpoint(monkeypatch):
    trainer = SimpleNamespace(
        replicas=1, _replica_data_states=trainer_lib.Trainer._replica_data_states,
        checkpoints=SimpleNamespace(latest=SimpleNamespace(directory="/w/checkpoints")))
    trainer_lib.Trainer._check_data_state(trainer, {"replicas": [{}, {}]})


# case: (call, the error line's beginning, a fragment it holds)
CASES = {
    "parallelism": (check_config({"train.parallelism": "pjit"}), "train.parallelism: 'pjit'",
                    "jit or pmap"),
    "negative steps": (check_config({"train.steps": -1}), "train.steps:", ">= 0"),
    "no replica": (check_config({"train.replicas": 0}), "train.replicas:", ">= 1"),
    "replicas under pmap": (check_config({"train.replicas": 2, "train.parallelism": "pmap"}),
                            "train.replicas:", "parallelism=jit"),
    "batch size 0": (check_config({"train.batch_size": 0}), "train.batch_size", ">= 1"),
    "grad_accum 0": (check_config({"optim.grad_accum": 0}), "train.batch_size and "
                     "optim.grad_accum", ">= 1"),
    "batch over processes": (check_config({"train.batch_size": 5}, processes=2),
                             "train.batch_size: 5 x optim.grad_accum 1", "2 processes"),
    "replicas of a checkpoint": (replicas_in_checkpoint, "/w/checkpoints:",
                                 "train.replicas=1"),
    "distributed": (initialize_distributed, "distributed.coordinator_address",
                    "distributed.process_id"),
    "two -1 axes": (make_mesh(-1, -1), "mesh:", "at most one"),
    "-1 does not divide": (make_mesh(-1, 3), "mesh: [-1, 3, 1]", "does not divide"),
    "mesh size": (make_mesh(2), "mesh: data*fsdp*tensor = 2", "1 devices"),
    "pmap micro-batches": (pmap_batch, "train.batch_size: 6 rows", "4 micro-batches"),
    "schedule": (schedule, "optim.schedule: unknown schedule 'exponential'", "cosine"),
}


@pytest.mark.parametrize("case", CASES)
def test_engine_user_errors(case, monkeypatch):
    call, start, fragment = CASES[case]
    with pytest.raises(UserInputError) as err:
        call(monkeypatch)
    line = str(err.value)
    assert "\n" not in line and line.startswith(start) and fragment in line, line


def test_training_without_data_through_the_cli(tmp_path, tiny_bert_dir, tiny_corpus_dir):
    """A workdir that has its labels (so no split is needed to build them), trained
    without data."""
    workdir = tmp_path / "run"
    workdir.mkdir()
    (workdir / "labels.json").write_text('["neg", "pos"]')
    overrides = {**tiny_overrides(tiny_bert_dir, tiny_corpus_dir), "data.train": "",
                 "train.steps": 2}
    proc = run_cli(workdir, overrides)
    assert_user_error(proc, "data.train: required when train.steps > 0")
