"""Where a run records its metrics: metrics.jsonl and TensorBoard event files.

Only process 0 writes. Each logged event is one JSON object per line of
`workdir/metrics.jsonl`: {"step": int, "split": "train"|"validation"|..., <metric>: value}
(plus `"replica": k` in runs with `train.replicas` > 1); a remote workdir's (gs://...) is
rewritten whole at each record (`sft_jax.storage`). Every JSON file the run writes
is strict JSON: a non-finite number (NaN, +-inf) is written as `null` (`to_json`).
Scalars also go to TensorBoard (`workdir/tensorboard/`) as `<split>/<metric>`, unless the writer
is made with `tensorboard=False`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import jax
import numpy as np

from sft_jax import storage


def peak_rss_mb() -> float:
    """This process's peak resident memory so far, in MiB (`getrusage`'s ru_maxrss: KiB on
    Linux, bytes on macOS)."""
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def jsonable(value: Any) -> Any:
    """`value` with arrays as lists, numpy scalars as Python ones and non-finite floats as
    None."""
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray | jax.Array):
        return jsonable(np.asarray(value).tolist())
    if isinstance(value, np.generic):
        return jsonable(value.item())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def to_json(value: Any, **kwargs) -> str:
    """Strict JSON of `value` (`jsonable`: non-finite numbers as null); raises ValueError
    rather than write a bare NaN."""
    return json.dumps(jsonable(value), allow_nan=False, **kwargs)


class MetricWriter:
    def __init__(self, workdir: str | Path, tensorboard: bool = True, fresh: bool = False):
        """`tensorboard=False`: metrics.jsonl only (a run with nothing to plot over steps);
        `fresh=True`: metrics.jsonl starts empty (a run with nothing to resume, whose
        earlier records in the directory are not its own)."""
        self.enabled = jax.process_index() == 0
        self.path = storage.path(workdir) / "metrics.jsonl"
        self._tb = self._lines = None
        if self.enabled:
            if fresh:
                storage.write_text(self.path, "")
            self._lines = storage.AppendLines(self.path)  # a remote one: read once, here
            if tensorboard:
                self._tb = storage.tensorboard_writer(storage.path(workdir) / "tensorboard")

    def write(self, step: int, split: str, metrics: dict, replica: int | None = None) -> None:
        """One record; `replica` (runs with `train.replicas` > 1) is added to it as
        `"replica": k` and to the TensorBoard tags as `<split>/<metric>/replica-k`."""
        if not self.enabled:
            return
        record = {"step": int(step), "split": split, **jsonable(metrics)}
        suffix = ""
        if replica is not None:
            record["replica"] = int(replica)
            suffix = f"/replica-{replica}"
        self._lines.append(to_json(record) + "\n")
        if self._tb is None:
            return
        for name, value in metrics.items():
            if np.ndim(value) == 0 and isinstance(record[name], int | float):
                self._tb.add_scalar(f"{split}/{name}{suffix}", float(value), int(step))
        self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
