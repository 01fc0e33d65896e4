"""Where the time of one of our train steps goes: a `jax.profiler` trace, summed per XLA op.

    python -m experiments.profile_step --family gpt2 --shape 4x128
    python -m experiments.profile_step --family llama --shape 1x512 --out /tmp/prof

Builds the benchmark's train step for a `--suite cpu` family (`bench_worker.JaxSide`:
the product's model, optimizer and `steps.compile_train_step`), runs `--warmup` steps,
then traces `--steps` steps and prints (a) the median step time, (b) the time per op
kind (the fusion name without its number: `ynn_fusion` are dots, `copy_bitcast_fusion`
transposing copies, ...), (c) the slowest single ops with the HLO they compute, their
input count and their consumer. XLA:CPU runs independent ops on several threads at once,
so op times can add up to more than the step time. With `--out` the trace
(`*.trace.json.gz`, for Perfetto) and the compiled HLO text stay in that directory.
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from experiments import bench_models as bm
from experiments import benchmark


def _op_durations(trace_dir: Path) -> dict[str, float]:
    """XLA op name -> total microseconds in the trace (one entry per thunk name)."""
    (path,) = trace_dir.glob("**/*.trace.json.gz")
    with gzip.open(path) as f:
        events = json.load(f)["traceEvents"]
    total: dict[str, float] = collections.Counter()
    for e in events:
        name = e.get("name", "")
        if e.get("ph") == "X" and not name.startswith(("$", "ThunkExecutor", "Slinky",
                                                       "PjitFunction", "CommonPjRt")):
            total[name] += e["dur"]
    return total


def _describe(hlo: str, op: str) -> str:
    """`shape = kind(...)`, input count and first consumer of `op` in the compiled HLO."""
    m = re.search(r"\n\s*(?:ROOT )?%" + re.escape(op) + r" = (\S+) (\w+)\(([^\n]*)", hlo)
    if not m:
        return ""
    shape, kind, rest = m.groups()
    inputs = rest.split(")", 1)[0].count("%")
    name = re.search(r'op_name="([^"]*)"', rest)
    user = re.search(r"\n\s*(?:ROOT )?%([\w.]+) = [^\n]*%" + re.escape(op) + r"[,)]", hlo)
    where = name.group(1).split("/")[-3:] if name else []
    return (f"{shape} {kind}, {inputs} inputs, -> {user.group(1) if user else '-'}"
            f"  [{'/'.join(where)}]")


def profile(family: str, batch: int, seq: int, steps: int, warmup: int, top: int,
            out: Path) -> str:
    import jax

    from experiments.bench_worker import JaxSide

    suite = benchmark.SUITES["cpu"]
    hf = suite.families[family]
    side = JaxSide()
    _, _, state, step, mesh = side._train_state(hf, "float32", "none", suite.optim, 0)
    batch_arrays = side._to_device(bm.make_batch(hf, batch, seq, 1), mesh)
    rng = jax.random.key(1)
    compiled = step.lower(state, batch_arrays, rng).compile()
    (out / "train_step.hlo.txt").write_text(compiled.as_text())

    def run(n: int) -> list[float]:
        nonlocal state
        times = []
        for _ in range(n):
            t = time.perf_counter()
            state, metrics = compiled(state, batch_arrays, rng)
            jax.block_until_ready(metrics["loss"])
            times.append(time.perf_counter() - t)
        return times

    run(warmup)
    with jax.profiler.trace(str(out / "trace"), create_perfetto_trace=True):
        times = run(steps)
    ops = _op_durations(out / "trace")
    kinds: dict[str, float] = collections.Counter()
    counts: dict[str, int] = collections.Counter()
    for name, us in ops.items():
        kind = re.sub(r"\.\d+$", "", name)
        kinds[kind] += us
        counts[kind] += 1
    hlo = compiled.as_text()

    def ms(us: float) -> float:
        return us / steps / 1e3

    lines = [f"{family} {batch}x{seq}: step {np.median(times):.3f} s (median of {steps}), "
             f"op time {ms(sum(ops.values())):.0f} ms/step", "", "ms/step  ops  kind"]
    lines += [f"{ms(us):7.1f} {counts[k]:4d}  {k}" for k, us in kinds.most_common(12)]
    lines += ["", "ms/step  op: what it computes"]
    lines += [f"{ms(us):7.1f}  {name}: {_describe(hlo, name)}"
              for name, us in ops.most_common(top)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", choices=sorted(benchmark.SUITES["cpu"].families),
                        required=True)
    parser.add_argument("--shape", default="4x128", help="BATCHxSEQ (default 4x128)")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--out", type=Path, help="keep the trace and the HLO here")
    args = parser.parse_args(argv)
    try:
        batch, seq = (int(x) for x in args.shape.split("x"))
    except ValueError:
        parser.error(f"--shape {args.shape!r}: expected BATCHxSEQ, e.g. 4x128")
    with tempfile.TemporaryDirectory(prefix="sft-jax-profile-") as tmp:
        out = args.out or Path(tmp)
        out.mkdir(parents=True, exist_ok=True)
        print(profile(args.family, batch, seq, args.steps, args.warmup, args.top, out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
