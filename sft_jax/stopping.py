"""Early stopping (`train.early_stopping_patience`, `train.early_stopping_min_delta`).

The rule (`stop_index`): over the periodic evaluations of `eval.periodic_split` in step
order, an evaluation improves when its `checkpoint.best_metric` beats the reference by
more than `min_delta` in the direction of `checkpoint.best_mode` (the reference is the
value of the last improving evaluation; the first finite value always improves); a run
stops at the evaluation that makes `patience` evaluations in a row without improvement.
A non-finite value never improves. Patience 0: never stops.

Resume-safe: the state of the rule is the sequence of periodic values, which
metrics.jsonl holds (`sft_jax.runs` reads it: the last record of a step wins); a resumed
run reads those at or before its checkpoint's step, so a run killed at any step and
resumed stops at the step an uninterrupted one stops at.

Replicas (`train.replicas` = K > 1): each replica follows the rule on its own values;
the run stops once every replica has stopped improving (a replica that stopped earlier
trains on in the shared program; its best params stay those of its best evaluation).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import ml_collections

from sft_jax import runs


def stop_index(values: Sequence[float], *, patience: int, min_delta: float,
               mode: str) -> int | None:
    """The index of the evaluation in `values` (one metric value per periodic evaluation,
    in step order) at which the rule of the module docstring stops; None: train on."""
    if patience <= 0:
        return None
    reference, waited = None, 0
    for i, value in enumerate(values):
        value = float(value)
        better = math.isfinite(value) and (
            reference is None
            or (value > reference + min_delta if mode == "max"
                else value < reference - min_delta))
        reference, waited = (value, 0) if better else (reference, waited + 1)
        if waited >= patience:
            return i
    return None


def best_index(values: Sequence[float], mode: str) -> int | None:
    """The index of the best finite value (earliest on ties), as the best checkpoint
    keeps it; None if there is none."""
    finite = [(v, i) for i, v in enumerate(values) if math.isfinite(float(v))]
    if not finite:
        return None
    sign = -1.0 if mode == "max" else 1.0
    return min(finite, key=lambda vi: (sign * vi[0], vi[1]))[1]


class EarlyStopping:
    """The periodic values of one run's replicas and whether the run has stopped.

    `update(step, metrics)` after each periodic evaluation (metrics: one dict per
    replica); `stopped` is None while the run trains on, else what results.json holds
    under "stopped": {"step", "reason", "best_step"} (best_step: the step of the best
    periodic value, a list of one per replica when K > 1)."""

    def __init__(self, config: ml_collections.ConfigDict, replicas: int):
        train, checkpoint = config.train, config.checkpoint
        self.patience = int(train.get("early_stopping_patience", 0))
        self.min_delta = float(train.get("early_stopping_min_delta", 0.0))
        self.metric, self.mode = checkpoint.best_metric, checkpoint.best_mode
        self.split = config.eval.periodic_split
        self.replicas = replicas
        self.history: list[list[tuple[int, float]]] = [[] for _ in range(replicas)]
        self.stopped: dict[str, Any] | None = None

    def resume(self, workdir: str | Path, step: int) -> None:
        """The periodic values metrics.jsonl holds at or before `step` (the restored
        checkpoint's), then whether the run had stopped there."""
        if not self.patience or step == 0:
            return
        by_step: list[dict[int, float]] = [{} for _ in range(self.replicas)]
        for record in runs.read_records(workdir):
            k = int(record.get("replica", 0))
            if (record["split"] == self.split and "final" not in record
                    and record["step"] <= step and k < self.replicas
                    and self.metric in record):
                by_step[k][int(record["step"])] = float(record[self.metric])
        self.history = [sorted(values.items()) for values in by_step]
        self._decide()

    def update(self, step: int, metrics: Sequence[dict]) -> dict[str, Any] | None:
        """Adds one periodic evaluation (a metrics dict per replica); returns `stopped`."""
        if not self.patience:
            return None
        for k, values in enumerate(metrics):
            self.history[k].append((step, float(values.get(self.metric, math.nan))))
        return self._decide()

    def _decide(self) -> dict[str, Any] | None:
        stops, bests = [], []
        for values in self.history:
            metric = [v for _, v in values]
            stops.append(stop_index(metric, patience=self.patience,
                                    min_delta=self.min_delta, mode=self.mode))
            best = best_index(metric, self.mode)
            bests.append(None if best is None else values[best][0])
        if self.stopped is None and stops and all(i is not None for i in stops):
            step = max(values[i][0] for values, i in zip(self.history, stops, strict=True))
            self.stopped = {
                "step": step,
                "reason": f"early stopping: no improvement of {self.metric} > "
                          f"{self.min_delta:g} in {self.patience} evaluations",
                "best_step": bests[0] if self.replicas == 1 else bests}
        return self.stopped
