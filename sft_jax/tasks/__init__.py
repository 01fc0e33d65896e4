"""Task families: the only code that knows both the data and the model.

A task turns records into features, owns the loss, the per-row eval outputs, the metrics,
the predictions file and the export. The train loop (`sft_jax.trainer`) only calls this
interface, so it never branches on a task or a model name. What tasks share lives once
in `tasks.base` (whose docstring says how to add a task); "seq2seq" resolves to
`tasks.encdec` or `tasks.prompted` by the model (`tasks.seq2seq.seq2seq_task`).
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import jax
import ml_collections
import numpy as np
from flax import linen as nn

from sft_jax.errors import UserInputError

# Name -> "module:callable" taking (config, workdir), resolved late so that importing one
# task never imports another.
TASKS = {
    "classification": "sft_jax.tasks.classification:ClassificationTask",
    "dialogue": "sft_jax.tasks.dialogue:DialogueTask",
    "seq2seq": "sft_jax.tasks.seq2seq:seq2seq_task",
}

# Tasks fitted without the train loop (no network): name -> "module:function" taking
# (config, workdir) and returning the results by split, run by `sft-jax train`.
FITTED = {
    "linear": "sft_jax.linear.task:train_and_evaluate",
}


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | Path) -> dict:
    """Runs `config`: the fit of its task when it is in `FITTED`, else the train loop
    (`sft_jax.trainer.train_and_evaluate`); returns the results by split."""
    target = FITTED.get(config.task, "sft_jax.trainer:train_and_evaluate")
    module_name, function = target.split(":")
    return getattr(importlib.import_module(module_name), function)(config, workdir)


def check_loop_task(name: str) -> None:
    """A UserInputError for a task in `FITTED`: it has no network to evaluate or to train
    step by step."""
    if name in FITTED:
        raise UserInputError(f"task: {name!r} has no network to evaluate or train step by "
                             f"step; `sft-jax train` fits and evaluates it")


class Task(Protocol):
    module: nn.Module
    pad_values: Mapping[str, int]  # pad value of each [B, L] feature
    # Optional `buckets`: padded lengths (a list, or per field a mapping) overriding
    # `data.buckets`, for tasks whose fields pad to lengths of their own (seq2seq).

    def init_batch(self) -> dict[str, np.ndarray]:
        """A small batch with the right keys and dtypes, for `module.init`."""

    def pretrained_params(self) -> Mapping | None:
        """Nested dict of numpy arrays overriding the fresh init (the checkpoint's weights)."""

    def train_features(self) -> Sequence[dict] | None:
        """Training examples (features are built lazily, per process), or None."""

    def train_lengths(self) -> Sequence[int] | None:
        """A cheap length per training example (e.g. characters), for length grouping."""

    def eval_features(self) -> dict[str, Sequence[dict]]:
        """Evaluation splits by name."""

    def loss_fn(self, params, batch: dict, rng: jax.Array, deterministic: bool):
        """(loss summed over the batch, {"weight": number of loss terms})."""

    def eval_fn(self, params, batch: dict) -> dict[str, jax.Array]:
        """Per-row outputs, [B, ...] each, including "index" and "example_mask"."""

    def evaluate(self, split: str, outputs: dict[str, np.ndarray], params=None
                 ) -> dict[str, Any]:
        """Metrics of a split from the per-example outputs (in example order); `params`
        (unreplicated) lets generative tasks decode and score text, a collective step
        every process takes."""

    def write_predictions(self, split: str, outputs: dict[str, np.ndarray], path: Path,
                          params=None) -> None:
        """predictions/<split>.jsonl (process 0 writes); `params` lets generative tasks
        sample responses, a collective step every process takes."""

    def data_stats(self) -> dict[str, Any]:
        """Counts worth logging once (examples kept/dropped, padding waste)."""

    def export(self, out_dir: Path, params) -> None:
        """A Hugging Face directory for the trained model."""


def get_task(config: ml_collections.ConfigDict, workdir: Path) -> Task:
    check_loop_task(config.task)
    if config.task not in TASKS:
        raise UserInputError(f"task: unknown task {config.task!r} (known: {sorted(TASKS)})")
    module_name, class_name = TASKS[config.task].split(":")
    return getattr(importlib.import_module(module_name), class_name)(config, workdir)
