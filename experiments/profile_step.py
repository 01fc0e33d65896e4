"""Where the time of one of our train steps goes: a `jax.profiler` trace, summed per XLA op.

    python -m experiments.profile_step --family gpt2 --shape 4x128
    python -m experiments.profile_step --family llama --shape 1x512 --out /tmp/prof
    python -m experiments.profile_step --decode 1     # greedy decoding, batch 1

Builds the benchmark's train step for a `--suite cpu` family (`bench_worker.JaxSide`:
the product's model, optimizer and `steps.compile_train_step`), runs `--warmup` steps,
then traces `--steps` steps and prints (a) the median step time, (b) the time per op
kind (the fusion name without its number: `ynn_fusion` are dots, `copy_bitcast_fusion`
transposing copies, ...), (c) the slowest single ops with the HLO they compute, their
input count and their consumer. XLA:CPU runs independent ops on several threads at once,
so op times can add up to more than the step time. With `--out` the trace
(`*.trace.json.gz`, for Perfetto) and the compiled HLO text stay in that directory.

`--decode BATCH` profiles greedy `generation.generate` instead (the cpu suite's decode
model, prompt length and new tokens), per decoding step (one new token for every row).
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
        if e.get("ph") == "X" and not name.startswith(("$", "ThunkExecutor", "Slinky", "end:",
                                                       "PjitFunction", "CommonPjRt", "np.")):
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


def _summary(title: str, ops: dict[str, float], units: int, unit: str, hlo: str,
             top: int) -> str:
    kinds: dict[str, float] = collections.Counter()
    counts: dict[str, int] = collections.Counter()
    for name, us in ops.items():
        kind = re.sub(r"\.\d+$", "", name)
        kinds[kind] += us
        counts[kind] += 1

    def ms(us: float) -> float:
        return us / units / 1e3

    lines = [f"{title}, op time {ms(sum(ops.values())):.1f} ms/{unit}", "",
             f"ms/{unit}  ops  kind"]
    lines += [f"{ms(us):7.2f} {counts[k]:5d}  {k}" for k, us in kinds.most_common(12)]
    lines += ["", f"ms/{unit}  op: what it computes"]
    lines += [f"{ms(us):7.2f}  {name}: {_describe(hlo, name)}"
              for name, us in ops.most_common(top)]
    return "\n".join(lines)


def profile(family: str, batch: int, seq: int, steps: int, warmup: int, top: int,
            out: Path) -> str:
    """The train step of `family` at batch x seq."""
    import jax

    from experiments.bench_worker import JaxSide

    suite = benchmark.SUITES["cpu"]
    hf = suite.families[family]
    side = JaxSide()
    _, _, state, step, mesh = side._train_state(hf, "float32", "none", suite.optim, 0)
    batch_arrays = side._to_device(bm.make_batch(hf, batch, seq, 1), mesh)
    rng = jax.random.key(1)
    compiled = step.lower(state, batch_arrays, rng).compile()
    hlo = compiled.as_text()
    (out / "train_step.hlo.txt").write_text(hlo)

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
    title = f"{family} {batch}x{seq}: step {np.median(times):.3f} s (median of {steps})"
    return _summary(title, _op_durations(out / "trace"), steps, "step", hlo, top)


def profile_decode(batch: int, top: int, out: Path) -> str:
    """Greedy `generation.generate` of the cpu suite's decode model, prompts and length."""
    import jax

    from experiments.bench_worker import JaxSide

    d = benchmark.SUITES["cpu"].decode
    side = JaxSide()
    side.decode_setup(d["hf"], "float32")
    args = dict(batch=batch, prompt_len=d["prompt_len"], new_tokens=d["new_tokens"])
    side.decode_run(repeats=1, **args)  # compiles
    with jax.profiler.trace(str(out / "trace"), create_perfetto_trace=True):
        times = side.decode_run(repeats=0, **args)["first_s"]
    n = d["new_tokens"]
    title = (f"greedy decoding, batch {batch}, {d['prompt_len']}-token prompts, {n} new "
             f"tokens: {times:.2f} s, {batch * n / times:.1f} tokens/s (traced run)")
    return _summary(title, _op_durations(out / "trace"), n, "step", "", top)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", choices=sorted(benchmark.SUITES["cpu"].families))
    parser.add_argument("--decode", type=int, metavar="BATCH",
                        help="profile greedy decoding at this batch instead of a train step")
    parser.add_argument("--shape", default="4x128", help="BATCHxSEQ (default 4x128)")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--out", type=Path, help="keep the trace and the HLO here")
    args = parser.parse_args(argv)
    if (args.family is None) == (args.decode is None):
        parser.error("give one of --family (a train step) or --decode BATCH")
    try:
        batch, seq = (int(x) for x in args.shape.split("x"))
    except ValueError:
        parser.error(f"--shape {args.shape!r}: expected BATCHxSEQ, e.g. 4x128")
    with tempfile.TemporaryDirectory(prefix="sft-jax-profile-") as tmp:
        out = args.out or Path(tmp)
        out.mkdir(parents=True, exist_ok=True)
        if args.decode:
            print(profile_decode(args.decode, args.top, out))
        else:
            print(profile(args.family, batch, seq, args.steps, args.warmup, args.top, out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
