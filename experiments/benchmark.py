"""Training, decoding and packing throughput of sft_jax vs transformers PyTorch, same run.

    python -m experiments.benchmark --suite smoke --out /tmp/bench   # tiny sizes, ~1 min
    python -m experiments.benchmark --suite cpu --out bench/cpu      # real sizes, CPU
    python -m experiments.benchmark --suite gpu --out bench/gpu      # bf16, ~1B Llama
    python -m experiments.benchmark --suite cpu --only packing,decode --out DIR  # some sections
    python -m experiments.benchmark --suite cpu --dtype bfloat16 --only train --out DIR
    python -m experiments.benchmark --suite smoke --replicas_model DIR --out OUT  # other model

Writes `DIR/results.json` (schema below) and `DIR/results.md` (the same as tables), also
after a Ctrl-C or `timeout -s INT` (what was measured, and an `interrupted` error).
Every number comes from this one run; throughput is compared as ratios, ours/theirs.

What runs (each suite's sizes, step counts and batches are in `SUITES`):
1. peak: a jitted square matmul (the suite's dtype; bfloat16 products return float32, as
   the models' dense layers do: `models.dense_dot`), the best
   of `peak_repeats` (the least disturbed by other load; the median is kept too); every
   MFU below is model FLOPs/s over it (FLOP formula: `experiments/bench_models.py`).
2. train: per family and (batch, seq): our train step (`optim.make_optimizer` AdamW,
   `state.create_train_state`, `steps.make_train_step` + `steps.compile_train_step`, as
   `train.py` builds them) vs transformers PyTorch eager (and `torch.compile` where the
   suite asks) on the same weights (our init exported with `hf.export`), the same batch
   (rows padded from random lengths) and the same AdamW settings and decay mask. Each side
   is its own process (`bench_worker.py`): one warm-up step, then `rounds` rounds
   alternating ours, eager, compiled, `steps_per_round` steps each; step time = median.
   The warm-up step of each side starts from the same weights on the same batch: their
   losses must agree within `FIRST_LOSS_TOLERANCE` of the row's dtype (relative).
   `--dtype` runs the suite's rows (and decoding, packing, scaling) in another dtype:
   ours with `model.dtype` (float32 master params), theirs under `torch.autocast`.
3. same_loss: 20 fp32 steps on distinct batches from identical weights, no dropout:
   |loss_ours - loss_torch| / |loss_torch| at every step must stay below 1e-4.
4. packing: effective (non-padding) tokens/s of packed rows vs padded batches
   (`bench_data.py`).
5. decode: greedy `generation.generate` (KV cache) vs transformers `generate` on the same
   weights, batch 1 and 8, exactly `new_tokens` new tokens per row (no stop token).
6. scaling (ours only): step time vs sequence length and depth, with remat off/on, and
   XLA's peak memory (arguments + outputs + temporaries − donated) vs batch size.
7. replicas (ours only): `train.replicas=K` in one process vs K sequential runs of the
   same config through the command line, K from the suite (`bench_replicas.py`).

Threads: torch.set_num_threads(= the CPUs this process may use); XLA's CPU client uses
all of them by default; XLA_FLAGS is recorded as found (this script sets none). JAX
workers get XLA_PYTHON_CLIENT_PREALLOCATE=false, so device peaks are real.
With `fresh_processes` (cpu, gpu) every configuration gets new processes, so a peak RSS
belongs to one configuration; the smoke suite reuses two processes (RSS not per config).

results.json:
  schema "sft_jax.benchmark/1", suite, command, started (ISO time), wall_s,
  machine {backend, device, cpus, threads, xla_flags, platform, cpu {model, flags},
           versions {...}},
  peak {dtype, n, flops_per_s (best), flops_per_s_median, torch_flops_per_s},
  train [{family, model, batch, seq, dtype, params, matmul_params, flops_per_token,
          tokens_per_step, nonpad_tokens_per_step, first_loss_rel_diff,
          sides {ours|torch_eager|torch_compile: {first_loss, step_s_median, step_s, tokens_per_s,
                 nonpad_tokens_per_s, compile_s, peak_rss_bytes, device_peak_bytes, mfu,
                 xla_memory?} | {error}},
          ratio_vs_eager, ratio_vs_compile}],
  same_loss [{family, model, steps, batch, seq, lr, ours [..], torch [..],
              max_rel_diff, tolerance, passed}],
  packing {source, examples, max_length, batch, padding {...}, packing {...}, ratio,
           fill_at {L: {padding, packing, fill_ratio}}, mfu_padding, mfu_packing},
  decode [{model, batch, prompt_len, new_tokens, ours {tokens_per_s, time_s_median,
           first_s, mfu}, torch {...}, ratio, same_tokens_fraction}],
  scaling [{batch, seq, layers, remat, steps, step_s_median, tokens_per_s, mfu,
            compile_s, memory {argument, output, temp, alias, total}}],
  replicas [{name, config, replicas, steps, batch, one_program {processes, wall_s, train_s,
             examples_per_s, examples_per_wall_s, peak_rss_bytes}, sequential {...},
             wall_speedup, train_speedup}],
  targets [{name, value, goal, met}], pending [str], errors [str]
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from experiments import bench_models as bm
from experiments import bench_replicas, bench_report, bf16_matmul

SCHEMA = "sft_jax.benchmark/1"
REPO = Path(__file__).resolve().parents[1]
SAME_LOSS_TOLERANCE = 1e-4
FIRST_LOSS_TOLERANCE = bench_report.FIRST_LOSS_TOLERANCE


@dataclasses.dataclass(frozen=True)
class Suite:
    families: dict[str, dict]  # name -> HF config (sizes, dropout off)
    rows: tuple[tuple[str, int, int, str], ...]  # training rows: (name, batch, seq, dtype)
    dtype: str = "float32"
    torch_compile: tuple[tuple[str, int], ...] = ()  # (family, seq) rows also compiled
    steps_per_round: int = 1
    rounds: int = 2
    peak_n: int = 2048
    peak_repeats: int = 10
    fresh_processes: bool = True
    optim: dict = dataclasses.field(default_factory=lambda: dict(
        lr=1e-4, wd=0.01, b1=0.9, b2=0.999, eps=1e-8, max_grad_norm=1.0))
    same_loss: dict[str, dict] = dataclasses.field(default_factory=dict)
    same_loss_shape: tuple[int, int] = (2, 32)
    same_loss_lr: float = 1e-3
    packing: dict = dataclasses.field(default_factory=dict)
    decode: dict = dataclasses.field(default_factory=dict)
    scaling: dict = dataclasses.field(default_factory=dict)
    # replicas: {"ks": [K, ...], "runs": [{name, config, overrides, steps, batch}, ...]}
    replicas: dict = dataclasses.field(default_factory=dict)


def _no_dropout(d: dict[str, dict]) -> dict[str, dict]:
    return {k: bm.without_dropout(v) for k, v in d.items()}


def _rows(families: dict[str, dict], shapes: tuple[tuple[int, int], ...], dtype: str
          ) -> tuple[tuple[str, int, int, str], ...]:
    """Every family at every (batch, seq) its position table allows."""
    return tuple((name, b, s, dtype) for name, hf in families.items() for b, s in shapes
                 if s <= hf.get("max_position_embeddings", hf.get("n_positions", s)))


_REAL = _no_dropout({"bert": bm.MINILM, "llama": bm.SMOLLM2_135M, "gpt2": bm.GPT2_SMALL,
                     "t5": bm.T5_SMALL})
_TINY = _no_dropout(bm.TINY)
_SMOL4 = bm.with_layers(_REAL["llama"], 4)  # SmolLM2-135M shapes, 4 of its 30 layers
_1B = bm.without_dropout(bm.LLAMA_1B)

SUITES: dict[str, Suite] = {
    "smoke": Suite(
        families=_TINY, rows=(("bert", 4, 32, "float32"), ("llama", 4, 32, "bfloat16")),
        steps_per_round=2, rounds=1, peak_n=256, peak_repeats=3, fresh_processes=False,
        same_loss={"bert": _TINY["bert"], "llama": _TINY["llama"]}, same_loss_shape=(2, 16),
        packing=dict(hf=_TINY["llama"], max_length=32, batch=4, steps=1, source="synthetic",
                     n_examples=32, fill_lengths=[128]),
        decode=dict(hf=_TINY["llama"], batches=[1, 8], prompt_len=8, new_tokens=4, rounds=1),
        scaling=dict(hf=_TINY["llama"], seqs=[16], seq_layers=1, depths=[], depth_seq=16,
                     batches=[2], batch_seq=16, remats=["none", "full"], steps=1),
        replicas=dict(ks=[2], runs=[dict(
            name="minilm", config="configs/classification.py:runlocal", steps=2, batch=8,
            overrides={"data.limit_train": 32})]),
    ),
    "cpu": Suite(
        families=_REAL, rows=_rows(_REAL, ((4, 128), (1, 512)), "float32"),
        torch_compile=(("bert", 128),), steps_per_round=2, rounds=3,
        same_loss={"bert": _REAL["bert"], "llama": bm.with_layers(_REAL["llama"], 4),
                   "t5": _REAL["t5"]}, same_loss_shape=(8, 64),
        packing=dict(hf=_SMOL4, max_length=2048, batch=4, steps=1, source="chitchat",
                     n_examples=600, fill_lengths=[256, 512, 1024]),
        decode=dict(hf=_REAL["llama"], batches=[1, 8], prompt_len=32, new_tokens=32, rounds=2),
        scaling=dict(hf=_SMOL4, seqs=[128, 512, 2048], seq_layers=2, depths=[6],
                     depth_seq=512, batches=[1, 8], batch_seq=512, remats=["none", "full"],
                     steps=1),
        replicas=dict(ks=[1, 2, 4, 8], runs=[
            dict(name="minilm-l6 rotten-tomatoes", config="configs/classification.py",
                 steps=20, batch=32, overrides={"data.max_length": 64,
                                                "data.buckets": "(16,32,48,64)"}),
            # LoRA: the frozen 135M base is shared by the replicas, so K=8 fits in memory.
            dict(name="smollm2-135m LoRA chitchat", config="configs/dialogue.py", steps=3,
                 batch=2, overrides={"data.max_length": 128, "data.limit_train": 400,
                                     "data.limit_eval": 1, "peft.method": "lora"})]),
    ),
    "gpu": Suite(
        families={**_REAL, "llama-1b": _1B},
        rows=(("llama-1b", 4, 2048, "bfloat16"), ("llama", 8, 2048, "bfloat16"),
              ("gpt2", 8, 1024, "bfloat16"), ("t5", 16, 512, "bfloat16"),
              ("bert", 32, 512, "bfloat16")),
        dtype="bfloat16", steps_per_round=3, rounds=2, peak_n=8192, peak_repeats=20,
        same_loss={"bert": _REAL["bert"], "llama": bm.with_layers(_REAL["llama"], 4)},
        same_loss_shape=(4, 128),
        packing=dict(hf=bm.with_layers(_1B, 4), max_length=2048, batch=8, steps=3,
                     source="chitchat", n_examples=1000, fill_lengths=[512, 1024, 4096]),
        decode=dict(hf=_1B, batches=[1, 8], prompt_len=128, new_tokens=128, rounds=2),
        scaling=dict(hf=bm.with_layers(_1B, 4), seqs=[1024, 4096], seq_layers=4, depths=[8],
                     depth_seq=2048, batches=[1, 8], batch_seq=2048, remats=["none", "full"],
                     steps=3),
        replicas=dict(ks=[1, 2, 4, 8], runs=[
            dict(name="minilm-l6 rotten-tomatoes", config="configs/classification.py",
                 steps=100, batch=32, overrides={"data.max_length": 64,
                                                 "data.buckets": "(16,32,48,64)"}),
            dict(name="smollm2-135m chitchat", config="configs/dialogue.py", steps=20,
                 batch=4, overrides={"data.limit_eval": 1}),
            dict(name="smollm2-135m LoRA chitchat", config="configs/dialogue.py", steps=20,
                 batch=4, overrides={"data.limit_eval": 1, "peft.method": "lora"})]),
    ),
}


# ------------------------------------------------------------------------- processes


class Worker:
    """A `bench_worker` process; `call(op, **args)` -> its result (raises on error)."""

    def __init__(self, log_path: Path, threads: int) -> None:
        path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
        env = dict(os.environ, XLA_PYTHON_CLIENT_PREALLOCATE="false",
                   TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=path)
        self.log = log_path.open("a")
        self.threads = threads
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "experiments.bench_worker"], cwd=REPO, env=env,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True)

    def call(self, op: str, **args: Any) -> Any:
        self.proc.stdin.write(json.dumps({"op": op, "threads": self.threads, **args}) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"worker died during {op} (see {self.log.name})")
        reply = json.loads(line)
        if "error" in reply:
            raise RuntimeError(f"{op}: {reply['error']}")
        return reply["ok"]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.write('{"op": "quit"}\n')
            self.proc.stdin.flush()
            self.proc.wait(timeout=60)
        self.log.close()


class Pool:
    """Fresh processes per configuration, or (smoke) one JAX and one torch process."""

    def __init__(self, out: Path, threads: int, fresh: bool) -> None:
        self.out, self.threads, self.fresh = out, threads, fresh
        self.shared: dict[str, Worker] = {}
        self.live: list[Worker] = []
        self.count = 0

    def get(self, side: str) -> Worker:
        if not self.fresh:
            if side not in self.shared:
                self.shared[side] = Worker(self.out / f"worker-{side}.log", self.threads)
            return self.shared[side]
        self.count += 1
        self.live.append(Worker(self.out / f"worker-{self.count:02d}-{side}.log", self.threads))
        return self.live[-1]

    def release(self) -> None:
        """Ends the fresh processes (after each measurement)."""
        while self.live:
            self.live.pop().close()

    def close(self) -> None:
        self.release()
        for w in self.shared.values():
            w.close()


# ---------------------------------------------------------------------- measurements


def _median(xs: list[float]) -> float:
    return float(np.median(xs))


def run_train_row(pool: Pool, suite: Suite, peak: float, name: str, hf: dict, batch: int,
                  seq: int, dtype: str, compile_too: bool, tmp: Path) -> dict:
    export_dir = tmp / f"{name}-{batch}x{seq}-{dtype}"
    common = dict(hf=hf, batch=batch, seq=seq, dtype=dtype, optim=suite.optim)
    ours = pool.get("jax")
    setup = ours.call("train_setup", export_dir=str(export_dir), **common)
    tokens = batch * bm.tokens_per_row(hf, seq)
    nonpad = setup["real_tokens"][0]
    flops = bm.train_flops_per_token(setup["matmul_params"], hf, seq)
    row: dict[str, Any] = {
        "family": bm.family(hf), "model": name, "batch": batch, "seq": seq, "dtype": dtype,
        "params": setup["params"], "matmul_params": setup["matmul_params"],
        "flops_per_token": flops, "tokens_per_step": tokens, "nonpad_tokens_per_step": nonpad,
        "sides": {},
    }
    workers = {"ours": ours}
    first: dict[str, float] = {}
    first_loss: dict[str, float] = {}
    modes = ["eager", "compile"] if compile_too else ["eager"]
    for mode in modes:
        w = pool.get("torch")
        workers[f"torch_{mode}"] = w
        try:
            info = w.call("torch_train_setup", model_dir=str(export_dir), mode=mode, **common)
            row[f"attn_implementation_{mode}"] = info["attn_implementation"]
        except RuntimeError as err:
            row["sides"][f"torch_{mode}"] = {"error": str(err)}
    times: dict[str, list[float]] = {k: [] for k in workers}
    for r in range(suite.rounds + 1):  # round 0: one warm-up step each
        for side, w in workers.items():
            if "error" in row["sides"].get(side, {}):
                continue
            try:
                res = w.call("train_run", steps=1 if r == 0 else suite.steps_per_round)
            except RuntimeError as err:
                row["sides"][side] = {"error": str(err)}
                continue
            if r == 0:
                first[side] = res["times"][0]
                first_loss[side] = res["losses"][0]
            else:
                times[side] += res["times"]
    for side, w in workers.items():
        if "error" in row["sides"].get(side, {}):
            continue
        step = _median(times[side])
        compile_s = (setup["lower_s"] + setup["compile_s"] if side == "ours"
                     else max(first[side] - step, 0.0))
        row["sides"][side] = {
            "first_loss": first_loss[side], "step_s_median": step, "step_s": times[side],
            "first_step_s": first[side],
            "tokens_per_s": tokens / step, "nonpad_tokens_per_s": nonpad / step,
            "compile_s": compile_s, "mfu": flops * tokens / step / peak, **w.call("stats"),
        }
    row["sides"]["ours"]["xla_memory"] = setup["memory"]
    eager_loss = row["sides"].get("torch_eager", {}).get("first_loss")
    row["first_loss_rel_diff"] = (
        abs(row["sides"]["ours"]["first_loss"] - eager_loss) / abs(eager_loss)
        if eager_loss else None)
    for mode in ("eager", "compile"):
        theirs = row["sides"].get(f"torch_{mode}", {})
        row[f"ratio_vs_{mode}"] = (row["sides"]["ours"]["tokens_per_s"]
                                   / theirs["tokens_per_s"] if "tokens_per_s" in theirs
                                   else None)
    return row


def run_same_loss(pool: Pool, suite: Suite, name: str, hf: dict, tmp: Path) -> dict:
    batch, seq = suite.same_loss_shape
    steps = 20
    optim = {**suite.optim, "lr": suite.same_loss_lr}
    export_dir = tmp / f"same-loss-{name}"
    common = dict(hf=hf, batch=batch, seq=seq, dtype="float32", optim=optim, n_batches=steps)
    ours, theirs = pool.get("jax"), pool.get("torch")
    ours.call("train_setup", export_dir=str(export_dir), highest_precision=True, **common)
    theirs.call("torch_train_setup", model_dir=str(export_dir), **common)
    lo = ours.call("train_run", steps=steps)["losses"]
    lt = theirs.call("train_run", steps=steps)["losses"]
    rel = [abs(a - b) / max(abs(b), 1e-12) for a, b in zip(lo, lt, strict=True)]
    return {"family": bm.family(hf), "model": name, "steps": steps, "batch": batch,
            "seq": seq, "lr": optim["lr"], "ours": lo, "torch": lt, "max_rel_diff": max(rel),
            "tolerance": SAME_LOSS_TOLERANCE, "passed": max(rel) < SAME_LOSS_TOLERANCE}


def run_decode(pool: Pool, suite: Suite, peak: float, tmp: Path) -> list[dict]:
    d = suite.decode
    export_dir = tmp / "decode"
    ours, theirs = pool.get("jax"), pool.get("torch")
    info = ours.call("decode_setup", hf=d["hf"], dtype=suite.dtype, export_dir=str(export_dir))
    theirs.call("torch_decode_setup", hf=d["hf"], model_dir=str(export_dir), dtype=suite.dtype)
    rows = []
    for batch in d["batches"]:
        args = dict(batch=batch, prompt_len=d["prompt_len"], new_tokens=d["new_tokens"])
        res: dict[str, dict] = {"ours": {"times": []}, "torch": {"times": []}}
        for r in range(d["rounds"]):
            for side, w in (("ours", ours), ("torch", theirs)):
                out = w.call("decode_run", repeats=1, **args)
                if r == 0:
                    res[side]["first_s"], res[side]["tokens"] = out["first_s"], out["tokens"]
                res[side]["times"] += out["times"]
        keys = d["prompt_len"] + d["new_tokens"] / 2  # mean cached keys per new token
        flops = bm.decode_flops_per_token(info["matmul_params"], d["hf"], keys)
        row: dict[str, Any] = {"model": "decode", "batch": batch, **args}
        for side in ("ours", "torch"):
            t = _median(res[side]["times"])
            tps = batch * d["new_tokens"] / t
            row[side] = {"time_s_median": t, "times": res[side]["times"],
                         "first_s": res[side]["first_s"], "tokens_per_s": tps,
                         "mfu": flops * tps / peak}
        row["ratio"] = row["ours"]["tokens_per_s"] / row["torch"]["tokens_per_s"]
        same = [a == b for a, b in zip(res["ours"]["tokens"], res["torch"]["tokens"],
                                       strict=True)]
        row["same_tokens_fraction"] = float(np.mean(same))
        rows.append(row)
    return rows


def run_scaling(pool: Pool, suite: Suite, peak: float) -> list[dict]:
    s = suite.scaling
    runs, seen = [], set()

    def add(batch, seq, layers, remat, steps):
        key = (batch, seq, layers, remat, steps)
        if key not in seen:
            seen.add(key)
            runs.append(dict(batch=batch, seq=seq, layers=layers, remat=remat, steps=steps))

    for remat in s["remats"]:
        for seq in s["seqs"]:
            add(1, seq, s["seq_layers"], remat, s["steps"])
        for depth in s["depths"]:
            add(1, s["depth_seq"], depth, remat, s["steps"])
        for batch in s["batches"]:
            add(batch, s["batch_seq"], s["seq_layers"], remat, 0)  # compile only: memory
    w = pool.get("jax")
    rows = w.call("scaling", hf=s["hf"], dtype=suite.dtype, optim=suite.optim, runs=runs)
    for r in rows:
        hf = bm.with_layers(s["hf"], r["layers"])
        if r["step_s_median"]:
            tokens = r["batch"] * r["seq"]
            r["tokens_per_s"] = tokens / r["step_s_median"]
            r["mfu"] = (bm.train_flops_per_token(r["matmul_params"], hf, r["seq"])
                        * r["tokens_per_s"] / peak)
    return rows


def run_packing(pool: Pool, suite: Suite, peak: float) -> dict:
    p = suite.packing
    w = pool.get("jax")
    res = w.call("packing", dtype=suite.dtype, optim=suite.optim, **p)
    for name in ("padding", "packing"):
        res[f"mfu_{name}"] = res[name]["model_flops_per_s"] / peak
    return res


# ------------------------------------------------------------------------------ main


def machine(threads: int) -> dict:
    import jax
    import torch
    import transformers

    return {"backend": jax.default_backend(), "device": str(jax.devices()[0].device_kind),
            "cpus": os.cpu_count(), "threads": threads,
            "xla_flags": os.environ.get("XLA_FLAGS", ""), "platform": platform.platform(),
            "processor": platform.processor(), "cpu": bf16_matmul.cpu_description(),
            "versions": {"jax": jax.__version__, "torch": torch.__version__,
                         "transformers": transformers.__version__,
                         "python": platform.python_version()}}


SECTIONS = ("train", "same_loss", "packing", "decode", "scaling", "replicas")


def with_dtype(suite: Suite, dtype: str) -> Suite:
    """`suite` with every training row, decoding, packing and scaling in `dtype`."""
    return dataclasses.replace(suite, dtype=dtype,
                               rows=tuple((f, b, s, dtype) for f, b, s, _ in suite.rows))


def with_replicas_model(suite: Suite, checkpoint: str) -> Suite:
    """`suite` with every run of its replicas section on `checkpoint` (an asset name or a
    Hugging Face directory)."""
    runs = [{**run, "name": f"{run['name']}@{Path(checkpoint).name}",
             "overrides": {**run["overrides"], "model.checkpoint": checkpoint}}
            for run in suite.replicas.get("runs", [])]
    return dataclasses.replace(suite, replicas={**suite.replicas, "runs": runs})


def run_suite(name: str, out: Path, command: str, only: tuple[str, ...] = SECTIONS,
              dtype: str | None = None, replicas_model: str | None = None) -> dict:
    suite = SUITES[name] if dtype is None else with_dtype(SUITES[name], dtype)
    if replicas_model:
        suite = with_replicas_model(suite, replicas_model)
    out.mkdir(parents=True, exist_ok=True)
    threads = len(os.sched_getaffinity(0))
    start = time.perf_counter()
    result: dict[str, Any] = {
        "schema": SCHEMA, "suite": name, "command": command,
        "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": machine(threads), "train": [], "same_loss": [], "decode": [],
        "scaling": [], "replicas": [], "packing": None, "pending": [], "errors": [], "timings": {},
    }
    accel = result["machine"]["backend"] != "cpu"
    peak_dtype = "bfloat16" if accel else suite.dtype
    pool = Pool(out, threads, suite.fresh_processes)

    def section(key: str, fn):
        t = time.perf_counter()
        try:
            return fn()
        except Exception as err:  # recorded; the other sections still run
            result["errors"].append(f"{key}: {type(err).__name__}: {err}")
            return None
        finally:
            pool.release()
            result["timings"][key] = time.perf_counter() - t
            print(f"[benchmark] {key}: {result['timings'][key]:.0f} s", file=sys.stderr)

    try:
        with tempfile.TemporaryDirectory(prefix="sft-jax-bench-") as tmp_name:
            tmp = Path(tmp_name)

            def peak_fn():
                ours, theirs = pool.get("jax"), pool.get("torch")
                p = ours.call("peak", dtype=peak_dtype, n=suite.peak_n, repeats=suite.peak_repeats)
                q = theirs.call("torch_peak", dtype=peak_dtype, n=suite.peak_n,
                                repeats=suite.peak_repeats)
                return {**p, "torch_flops_per_s": q["flops_per_s"]}

            result["peak"] = section("peak", peak_fn)
            peak = result["peak"]["flops_per_s"] if result["peak"] else float("nan")
            for f, b, s, dtype in suite.rows if "train" in only else ():
                compile_too = (f, s) in suite.torch_compile
                row = section(f"train {f} {b}x{s} {dtype}", lambda f=f, b=b, s=s, d=dtype,
                              c=compile_too: run_train_row(pool, suite, peak, f,
                                                           suite.families[f], b, s, d, c, tmp))
                if row:
                    result["train"].append(row)
            for f, hf in suite.same_loss.items() if "same_loss" in only else ():
                row = section(f"same_loss {f}", lambda f=f, hf=hf: run_same_loss(
                    pool, suite, f, hf, tmp))
                if row:
                    result["same_loss"].append(row)
            if "packing" in only:
                result["packing"] = section("packing", lambda: run_packing(pool, suite, peak))
            if "decode" in only:
                result["decode"] = section(
                    "decode", lambda: run_decode(pool, suite, peak, tmp)) or []
            if "scaling" in only:
                result["scaling"] = section(
                    "scaling", lambda: run_scaling(pool, suite, peak)) or []
            for run in suite.replicas.get("runs", []) if "replicas" in only else ():
                result["replicas"] += section(f"replicas {run['name']}", lambda run=run:
                                              bench_replicas.measure(
                    **run, ks=suite.replicas["ks"], tmp=tmp, log=out / "replicas.log")) or []
    except KeyboardInterrupt:  # Ctrl-C (or `timeout -s INT`): keep what was measured
        result["errors"].append("interrupted: the sections after the last one timed did "
                                "not run")
        print("[benchmark] interrupted: writing what was measured", file=sys.stderr)
    finally:
        pool.close()
    result["targets"] = bench_report.targets(result)
    result["wall_s"] = time.perf_counter() - start
    (out / "results.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / "results.md").write_text(bench_report.markdown(result))
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", choices=sorted(SUITES), required=True)
    parser.add_argument("--out", type=Path, required=True, help="directory for the results")
    parser.add_argument("--only", default=",".join(SECTIONS),
                        help="comma-separated sections to run (default: all of "
                             f"{','.join(SECTIONS)}); the peak matmul always runs")
    parser.add_argument("--dtype", choices=sorted(FIRST_LOSS_TOLERANCE),
                        help="run the suite's rows in this dtype (default: the suite's own)")
    parser.add_argument("--replicas_model",
                        help="model.checkpoint of every run of the replicas section, an asset "
                             "or a Hugging Face directory of the runs' family (default: the "
                             "suite's own)")
    args = parser.parse_args(argv)
    only = tuple(x for x in args.only.split(",") if x)
    unknown = sorted(set(only) - set(SECTIONS))
    if unknown:
        parser.error(f"--only: unknown section(s) {', '.join(unknown)} "
                     f"(sections: {', '.join(SECTIONS)})")
    command = "python -m experiments.benchmark " + shlex.join(
        sys.argv[1:] if argv is None else argv)
    result = run_suite(args.suite, args.out, command, only, args.dtype, args.replicas_model)
    print((args.out / "results.md").read_text())
    return 1 if result["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
