"""K replicas in one compiled program (`train.replicas=K`) vs K sequential runs.

Both sides train the same config for the same number of updates per replica, through the
real command line (`python -m sft_jax.main`, one process per run, each compiling its own
programs as a user's runs started by hand do, unless JAX_COMPILATION_CACHE_DIR is set in
the environment, which they inherit; a sweep's runs share a cache), with evaluation,
checkpoint saves and export switched off so that what differs is training alone: the
replicas side is one process with `train.replicas=K`, the sequential side K processes
with seeds seed..seed+K-1. Measured per side:
  wall_s             process wall time, summed over the side's processes (start-up, model
                     loading and compilation included: what a user waits for)
  train_s            seconds inside the training loop (the runs' `session` records)
  examples_per_s     K * steps * batch / train_s, and per wall second
  peak_rss_bytes     the largest peak RSS of the side's processes (`os.wait4`)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
QUIET = {"train.progress_bar": False, "train.eval_every": 0, "checkpoint.every": 0,
         "checkpoint.export": False, "checkpoint.best_metric": "", "eval.splits": "()",
         "eval.write_predictions": False}


def _run(config: str, workdir: Path, overrides: dict[str, Any], log: Path) -> dict:
    """One `sft_jax.main` process: wall seconds, peak RSS, the run's training seconds."""
    cmd = [sys.executable, "-m", "sft_jax.main", f"--config={config}", f"--workdir={workdir}",
           *(f"--config.{k}={v}" for k, v in {**QUIET, **overrides}.items())]
    start = time.perf_counter()
    with log.open("a") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed; see {log}")
    sessions = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text()
                .splitlines() if '"session"' in line]
    return {"wall_s": wall, "train_s": sum(s["train_seconds"] for s in sessions),
            "peak_rss_bytes": usage.ru_maxrss * 1024}


def _side(runs: list[dict], examples: int) -> dict:
    wall, train = sum(r["wall_s"] for r in runs), sum(r["train_s"] for r in runs)
    return {"processes": len(runs), "wall_s": wall, "train_s": train,
            "examples_per_s": examples / train, "examples_per_wall_s": examples / wall,
            "peak_rss_bytes": max(r["peak_rss_bytes"] for r in runs)}


def measure(name: str, config: str, overrides: dict[str, Any], steps: int, batch: int,
            ks: list[int], tmp: Path, log: Path) -> list[dict]:
    """One row per K: both sides and the ratios (replicas / sequential throughput)."""
    rows = []
    seed = int(overrides.get("seed", 0))
    common = {**overrides, "train.steps": steps, "train.batch_size": batch}
    for k in ks:
        examples = k * steps * batch
        one = _run(config, tmp / f"{name}-replicas-{k}", {**common, "train.replicas": k}, log)
        seq = [_run(config, tmp / f"{name}-seq-{k}-{s}", {**common, "seed": seed + s}, log)
               for s in range(k)]
        replicas, sequential = _side([one], examples), _side(seq, examples)
        rows.append({
            "name": name, "config": config, "replicas": k, "steps": steps, "batch": batch,
            "one_program": replicas, "sequential": sequential,
            "wall_speedup": sequential["wall_s"] / replicas["wall_s"],
            "train_speedup": sequential["train_s"] / replicas["train_s"],
        })
        print(f"[benchmark] replicas {name} K={k}: wall {replicas['wall_s']:.0f} s vs "
              f"{sequential['wall_s']:.0f} s sequential", file=sys.stderr)
    return rows
