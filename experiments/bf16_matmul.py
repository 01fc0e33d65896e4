"""How fast XLA:CPU multiplies in bfloat16: one square matmul, several formulations and
XLA flags, beside PyTorch on the same cores.

    python -m experiments.bf16_matmul --out bench/bf16-matmul        # n=2048, 10 repeats
    python -m experiments.bf16_matmul --n 256 --repeats 2 --out DIR  # a quick check

A training step in bfloat16 multiplies three ways per dense layer: the forward x·W, the
input gradient g·Wᵀ (the right operand transposed) and the weight gradient xᵀ·g (the
contraction over the leading axis). Each formulation below is a jitted `dot_general` of
two n×n arrays, timed as the best of `--repeats` calls after one warm-up:

    f32            float32 · float32 -> float32
    bf16           bfloat16 · bfloat16 -> bfloat16 (what `x @ w` gives)
    bf16->f32      bfloat16 · bfloat16 -> float32 (`preferred_element_type=float32`)
    bf16->f32->bf16  the same, cast back to bfloat16 in the same program
    bf16 x·Wᵀ      bfloat16 · bfloat16ᵀ -> float32 (the input-gradient layout)
    bf16 xᵀ·g      bfloat16ᵀ · bfloat16 -> float32 (the weight-gradient layout)
    bf16 xᵀ·g 3-D  the same product with x and g as [1, n, n], contracting two leading
                   axes, as a [B, T, D] activation's weight gradient does
    f32 x bf16     float32 · bfloat16 -> float32 (mixed operands)

for each XLA_FLAGS setting of `FLAG_SETTINGS` (XLA reads the flags once per process, so
each setting runs in a child process), then PyTorch's float32 and bfloat16 `torch.mm`
(`torch.set_num_threads` = the CPUs this process may use). The CPU's model and its
bfloat16-related `lscpu` flags (avx512_bf16, amx_bf16, amx_tile, avx512f) are recorded
with the table: these machines differ, and so does the answer. Writes `DIR/results.json`
and `DIR/results.md` and prints the table (GFLOP/s, 2·n³ per product).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import time
from pathlib import Path

FORMULATIONS = ("f32", "bf16", "bf16->f32", "bf16->f32->bf16", "bf16 x·Wᵀ", "bf16 xᵀ·g",
                "bf16 xᵀ·g 3-D", "f32 x bf16")
FLAG_SETTINGS = (
    "",
    "--xla_cpu_use_onednn=true",
    "--xla_cpu_experimental_onednn_fusion_type=dot",
    "--xla_cpu_use_xnnpack=true",
    "--xla_cpu_experimental_xnn_fusion_type=dot",
    "--xla_cpu_experimental_ynn_fusion_type=dot",
)
BF16_FLAGS = ("avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "avx512_vnni")


def cpu_description() -> dict:
    """`lscpu`'s model name and which of `BF16_FLAGS` the CPU has."""
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return {"model": "unknown (no lscpu)", "flags": {}}
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    flags = set(fields.get("Flags", "").split())
    return {"model": fields.get("Model name", "").strip(),
            "flags": {f: f in flags for f in BF16_FLAGS}}


def _best(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def measure_jax(n: int, repeats: int) -> dict[str, float]:
    """GFLOP/s of each formulation, in this process (its XLA_FLAGS)."""
    import jax
    import jax.numpy as jnp

    f32, bf16 = jnp.float32, jnp.bfloat16
    a = jax.random.normal(jax.random.key(0), (n, n), f32)
    b = jax.random.normal(jax.random.key(1), (n, n), f32)
    lead, trail = (((0,), (0,)), ((), ())), (((1,), (1,)), ((), ()))
    cases = {
        "f32": (lambda x, y: x @ y, f32, f32),
        "bf16": (lambda x, y: x @ y, bf16, bf16),
        "bf16->f32": (lambda x, y: jnp.matmul(x, y, preferred_element_type=f32), bf16, bf16),
        "bf16->f32->bf16": (lambda x, y: jnp.matmul(x, y, preferred_element_type=f32)
                            .astype(bf16), bf16, bf16),
        "bf16 x·Wᵀ": (lambda x, y: jax.lax.dot_general(x, y, trail, preferred_element_type=f32),
                      bf16, bf16),
        "bf16 xᵀ·g": (lambda x, y: jax.lax.dot_general(x, y, lead, preferred_element_type=f32),
                      bf16, bf16),
        "bf16 xᵀ·g 3-D": (lambda x, y: jax.lax.dot_general(
            x[None], y[None], (((0, 1), (0, 1)), ((), ())), preferred_element_type=f32),
            bf16, bf16),
        "f32 x bf16": (lambda x, y: jnp.matmul(x, y, preferred_element_type=f32), f32, bf16),
    }
    out = {}
    for name in FORMULATIONS:
        fn, da, db = cases[name]
        f, x, y = jax.jit(fn), a.astype(da), b.astype(db)
        seconds = _best(lambda f=f, x=x, y=y: f(x, y).block_until_ready(), repeats)
        out[name] = 2.0 * n**3 / seconds / 1e9
    return out


def measure_torch(n: int, repeats: int) -> dict[str, float]:
    import torch

    torch.set_num_threads(len(os.sched_getaffinity(0)))
    out = {}
    for name, dtype in (("f32", torch.float32), ("bf16", torch.bfloat16)):
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        out[name] = 2.0 * n**3 / _best(lambda a=a, b=b: torch.mm(a, b), repeats) / 1e9
    return out


def _child(flags: str, n: int, repeats: int) -> dict:
    env = {**os.environ, "XLA_FLAGS": flags, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-m", "experiments.bf16_matmul", "--child",
                           "--n", str(n), "--repeats", str(repeats)],
                          capture_output=True, text=True, env=env,
                          cwd=Path(__file__).resolve().parents[1])
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines()
        return {"error": lines[-1] if lines else f"exit status {proc.returncode}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def markdown(result: dict) -> str:
    cpu = result["cpu"]
    has = ", ".join(f for f, on in cpu["flags"].items() if on) or "none"
    lacks = ", ".join(f for f, on in cpu["flags"].items() if not on) or "none"
    lines = [f"`{result['command']}` ({result['started']}, n={result['n']}, best of "
             f"{result['repeats']}); CPU: {cpu['model']}, {result['cpus']} cores; "
             f"flags present: {has}; absent: {lacks}.", "",
             "| XLA_FLAGS | " + " | ".join(FORMULATIONS) + " |",
             "|---|" + "---|" * len(FORMULATIONS)]
    for flags, row in result["jax"].items():
        cells = ([f"error: {row['error']}"] + [""] * (len(FORMULATIONS) - 1) if "error" in row
                 else [f"{row[name]:.0f}" for name in FORMULATIONS])
        lines.append(f"| {flags or '(none)'} | " + " | ".join(cells) + " |")
    torch_row = result["torch"]
    lines += ["", f"PyTorch `torch.mm`: float32 {torch_row['f32']:.0f}, bfloat16 "
              f"{torch_row['bf16']:.0f} GFLOP/s."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2048, help="the matrices are n×n")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--out", type=Path, help="directory for results.json and results.md")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(measure_jax(args.n, args.repeats)))
        return 0
    if args.out is None:
        parser.error("--out is required")
    command = "python -m experiments.bf16_matmul " + " ".join(
        sys.argv[1:] if argv is None else argv)
    result = {"command": command, "n": args.n, "repeats": args.repeats,
              "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
              "cpu": cpu_description(), "cpus": len(os.sched_getaffinity(0)), "jax": {}}
    for flags in FLAG_SETTINGS:
        result["jax"][flags] = _child(flags, args.n, args.repeats)
        print(f"[bf16_matmul] XLA_FLAGS={flags or '(none)'} done", file=sys.stderr)
    result["torch"] = measure_torch(args.n, args.repeats)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(result, indent=1) + "\n")
    (args.out / "results.md").write_text(markdown(result))
    print(markdown(result))
    return 1 if any("error" in row for row in result["jax"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
