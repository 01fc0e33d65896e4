"""results.json of a run with `train.replicas` = K > 1: the mean and std over replicas."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def replica_summary(per_replica: Sequence[dict], seeds: Sequence[int]) -> dict[str, Any]:
    """results.json of a run with replicas: per split the mean of each numeric metric over
    replicas, under "std" their sample standard deviation (ddof=1), under "replicas" each
    replica's own results with its seed."""
    means: dict[str, Any] = {}
    stds: dict[str, Any] = {}
    for split, first in per_replica[0].items():
        means[split], stds[split] = {}, {}
        for name, value in first.items():
            if isinstance(value, bool) or not isinstance(value, int | float):
                means[split][name] = value  # e.g. params_from: each replica says its own
                continue
            values = np.asarray([r[split][name] for r in per_replica], np.float64)
            means[split][name] = float(values.mean())
            stds[split][name] = float(values.std(ddof=1))
        if "params_from" in first:
            means[split]["params_from"] = "mean over replicas"
    replicas = [{"replica": k, "seed": seed, **r}
                for k, (seed, r) in enumerate(zip(seeds, per_replica, strict=True))]
    return {**means, "std": stds, "replicas": replicas}
