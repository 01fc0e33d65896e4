"""One side of a benchmark measurement, in its own process (`benchmark.py` starts it).

Protocol: one JSON object per line on stdin (`{"op": NAME, ...arguments}`), one JSON
object per line back on the process's original stdout (`{"ok": result}` or
`{"error": message}`); everything libraries print goes to stderr. A process serves one
side only (ours: JAX; theirs: PyTorch), so its peak RSS (`stats`) is that side's alone.

JAX ops:   peak, train_setup, train_run, decode_setup, decode_run, packing, scaling, stats
torch ops: torch_peak, torch_train_setup, train_run, torch_decode_setup, decode_run, stats
`train_run` / `decode_run` time steps of whatever the last setup built, so the parent can
alternate between the two sides' processes.
"""

from __future__ import annotations

import dataclasses
import json
import os
import resource
import sys
import time
import traceback
from typing import Any

import numpy as np

from experiments import bench_data
from experiments import bench_models as bm


def _median(xs: list[float]) -> float:
    return float(np.median(xs)) if xs else float("nan")


class JaxSide:
    """Our product: registry models, `optim.make_optimizer`, `state.create_train_state`,
    `steps.make_train_step` + `steps.compile_train_step`, `generation.generate`."""

    def __init__(self) -> None:
        import jax

        self.jax = jax
        self.run = None

    # ---------------------------------------------------------------- shared pieces

    def _build(self, hf: dict, dtype: str, remat: str = "none"):
        from sft_jax.models import registry

        module, cfg = registry.build_model(
            hf, num_labels=bm.NUM_LABELS if bm.is_encoder(hf) else None, dtype=dtype)
        if remat != "none":
            cfg = dataclasses.replace(cfg, remat_policy=remat)
            module = module.clone(config=cfg)
        return module, cfg

    def _train_state(self, hf: dict, dtype: str, remat: str, optim_args: dict, seed: int):
        from sft_jax import config as config_lib
        from sft_jax import optim, parallel, steps
        from sft_jax import state as state_lib

        module, cfg = self._build(hf, dtype, remat)
        base = config_lib.base_config()
        o = base.optim
        o.learning_rate, o.weight_decay = optim_args["lr"], optim_args["wd"]
        o.b1, o.b2, o.eps = optim_args["b1"], optim_args["b2"], optim_args["eps"]
        o.max_grad_norm = optim_args["max_grad_norm"]
        o.schedule, o.warmup_steps, o.warmup_ratio = "constant", 0, 0.0
        tx, schedule = optim.make_optimizer(o, 1000)
        mesh = parallel.make_mesh(base.mesh)
        rules = parallel.logical_rules(base.mesh)
        state, shardings = state_lib.create_train_state(
            module, bm.init_batch(hf), None, tx, mesh, rules, seed)[:2]
        step = steps.compile_train_step(
            steps.make_train_step(bm.loss_fn(module, hf), tx, schedule), "jit", mesh, shardings)
        return module, cfg, state, step, mesh

    def _to_device(self, batch: dict, mesh) -> dict:
        from sft_jax import parallel

        return parallel.to_global(parallel.split_micro_batches(batch, 1), mesh, leading=1)

    # ------------------------------------------------------------------------ ops

    def peak(self, dtype: str, n: int, repeats: int) -> dict:
        jnp = self.jax.numpy
        a = self.jax.random.normal(self.jax.random.key(0), (n, n), jnp.dtype(dtype))
        b = self.jax.random.normal(self.jax.random.key(1), (n, n), jnp.dtype(dtype))
        if jnp.dtype(dtype) == jnp.float32:
            f = self.jax.jit(lambda a, b: a @ b)
        else:  # float32 results, as the models' dense products (`models.dense_dot`)
            f = self.jax.jit(lambda a, b: jnp.matmul(a, b, preferred_element_type=jnp.float32))
        f(a, b).block_until_ready()
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            f(a, b).block_until_ready()
            times.append(time.perf_counter() - t)
        return {"flops_per_s": 2.0 * n**3 / min(times),
                "flops_per_s_median": 2.0 * n**3 / _median(times), "n": n, "dtype": dtype}

    def train_setup(self, hf: dict, batch: int, seq: int, dtype: str, optim: dict,
                    seed: int = 0, data_seed: int = 1, n_batches: int = 1,
                    remat: str = "none", export_dir: str | None = None,
                    highest_precision: bool = False) -> dict:
        from sft_jax.hf import export
        from sft_jax.models import layers

        if highest_precision:
            self.jax.config.update("jax_default_matmul_precision", "highest")
        t0 = time.perf_counter()
        _, cfg, state, step, mesh = self._train_state(hf, dtype, remat, optim, seed)
        if export_dir:
            export.export_pretrained(export_dir, module_config=cfg, params=state.params,
                                     tokenizer=None)
        batches = [bm.make_batch(hf, batch, seq, data_seed + i) for i in range(n_batches)]
        device_batches = [self._to_device(b, mesh) for b in batches]
        rng = self.jax.random.key(seed + 1)
        t1 = time.perf_counter()
        lowered = step.lower(state, device_batches[0], rng)
        t2 = time.perf_counter()
        compiled = lowered.compile()
        t3 = time.perf_counter()
        n_matmul = bm.matmul_params(state.params, hf)
        self.run = {"kind": "train", "step": compiled, "state": state, "rng": rng,
                    "batches": device_batches, "i": 0}
        return {"setup_s": t1 - t0, "lower_s": t2 - t1, "compile_s": t3 - t2,
                "params": layers.count_params(state.params),
                "matmul_params": n_matmul, "memory": _xla_memory(compiled),
                "real_tokens": [bm.real_tokens(b) for b in batches]}

    def train_run(self, steps: int) -> dict:
        run = self.run
        times, losses = [], []
        for _ in range(steps):
            batch = run["batches"][run["i"] % len(run["batches"])]
            run["i"] += 1
            t = time.perf_counter()
            run["state"], metrics = run["step"](run["state"], batch, run["rng"])
            loss = self.jax.block_until_ready(metrics["loss"])
            times.append(time.perf_counter() - t)
            losses.append(float(loss))
        return {"times": times, "losses": losses}

    def decode_setup(self, hf: dict, dtype: str, seed: int = 0,
                     export_dir: str | None = None) -> dict:
        from flax import linen as nn

        from sft_jax.hf import export
        from sft_jax.models import registry

        module, cfg = self._build(hf, dtype)
        init = self.jax.jit(lambda r: nn.unbox(module.init(r, **bm.init_batch(hf))["params"]))
        params = init(self.jax.random.key(seed))
        if export_dir:
            export.export_pretrained(export_dir, module_config=cfg, params=params, tokenizer=None)

        class Decoder:  # long-lived: `generate` caches its programs per bound method
            def step(self, params, input_ids, positions, segment_ids, cache):
                out = module.apply({"params": params}, input_ids, positions=positions,
                                   segment_ids=segment_ids, cache=cache)
                return out["logits"], out["cache"]

            def init_cache(self, batch_size, max_length):
                return registry.init_cache(cfg, batch_size, max_length)

        self.run = {"kind": "decode", "decoder": Decoder(), "params": params,
                    "vocab": hf["vocab_size"]}
        return {"matmul_params": bm.matmul_params(params, hf)}

    def decode_run(self, batch: int, prompt_len: int, new_tokens: int, repeats: int,
                   seed: int = 2) -> dict:
        from sft_jax import generation

        dec, params = self.run["decoder"], self.run["params"]
        prompts = bench_data.prompts(self.run["vocab"], batch, prompt_len, seed)

        def once():
            t = time.perf_counter()
            out = generation.generate(dec.step, params, dec.init_cache, prompts,
                                      max_new_tokens=new_tokens, pad_id=bm.PAD_ID,
                                      batch_size=batch)
            return time.perf_counter() - t, out

        first, out = once()
        times = [once()[0] for _ in range(repeats)]
        return {"first_s": first, "times": times, "tokens": out}

    def packing(self, **kwargs) -> dict:
        return bench_data.packing_vs_padding(self, **kwargs)

    def scaling(self, hf: dict, dtype: str, optim: dict, runs: list[dict]) -> list[dict]:
        """Each run: {batch, seq, layers, remat, steps}; steps=0 compiles only (memory)."""
        out = []
        for r in runs:
            model_hf = bm.with_layers(hf, r["layers"])
            _, _, state, step, mesh = self._train_state(model_hf, dtype, r["remat"], optim, 0)
            batch = self._to_device(bm.make_batch(model_hf, r["batch"], r["seq"], 1,
                                                  min_fill=1.0), mesh)
            rng = self.jax.random.key(1)
            t = time.perf_counter()
            compiled = step.lower(state, batch, rng).compile()
            row = {**r, "compile_s": time.perf_counter() - t, "memory": _xla_memory(compiled),
                   "matmul_params": bm.matmul_params(state.params, model_hf)}
            times = []
            for i in range(r["steps"] + 1 if r["steps"] else 0):
                t = time.perf_counter()
                state, metrics = compiled(state, batch, rng)
                self.jax.block_until_ready(metrics["loss"])
                if i:  # the first step is a warm-up
                    times.append(time.perf_counter() - t)
            row["step_s_median"] = _median(times) if times else None
            out.append(row)
            del state, compiled
        return out

    def stats(self) -> dict:
        device = self.jax.devices()[0]
        mem = device.memory_stats() if device.platform != "cpu" else None
        return {"peak_rss_bytes": _peak_rss(),
                "device_peak_bytes": (mem or {}).get("peak_bytes_in_use")}


class TorchSide:
    """transformers PyTorch on the same weights (our init, exported) and batches."""

    def __init__(self, threads: int) -> None:
        import torch

        torch.set_num_threads(threads)
        torch.set_float32_matmul_precision("highest")
        self.torch = torch
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.run = None

    def _sync(self) -> None:
        if self.device == "cuda":
            self.torch.cuda.synchronize()

    def torch_peak(self, dtype: str, n: int, repeats: int) -> dict:
        torch = self.torch
        dt = getattr(torch, dtype)
        a = torch.randn(n, n, device=self.device).to(dt)
        b = torch.randn(n, n, device=self.device).to(dt)
        a @ b
        times = []
        for _ in range(repeats):
            self._sync()
            t = time.perf_counter()
            a @ b
            self._sync()
            times.append(time.perf_counter() - t)
        return {"flops_per_s": 2.0 * n**3 / min(times), "n": n, "dtype": dtype}

    def torch_train_setup(self, hf: dict, model_dir: str, batch: int, seq: int, dtype: str,
                          optim: dict, mode: str = "eager", data_seed: int = 1,
                          n_batches: int = 1) -> dict:
        torch = self.torch
        torch.manual_seed(0)
        model = bm.torch_model(model_dir, hf, self.device)
        opt = bm.torch_optimizer(model, optim)
        if mode == "compile":
            model = torch.compile(model)
        autocast = None if dtype == "float32" else getattr(torch, dtype)
        step = bm.torch_train_step(model, opt, optim["max_grad_norm"], autocast)
        batches = [bm.torch_inputs(bm.make_batch(hf, batch, seq, data_seed + i), hf, self.device)
                   for i in range(n_batches)]
        self.run = {"kind": "train", "step": step, "batches": batches, "i": 0}
        return {"attn_implementation": getattr(model.config, "_attn_implementation", None)}

    def train_run(self, steps: int) -> dict:
        run = self.run
        times, losses = [], []
        for _ in range(steps):
            inputs = run["batches"][run["i"] % len(run["batches"])]
            run["i"] += 1
            self._sync()
            t = time.perf_counter()
            loss = float(run["step"](inputs))
            times.append(time.perf_counter() - t)
            losses.append(loss)
        return {"times": times, "losses": losses}

    def torch_decode_setup(self, hf: dict, model_dir: str, dtype: str) -> dict:
        model = bm.torch_model(model_dir, hf, self.device).eval()
        if dtype != "float32":
            model = model.to(getattr(self.torch, dtype))
        model.generation_config.eos_token_id = None  # as ours: no stop token
        self.run = {"kind": "decode", "model": model, "vocab": hf["vocab_size"]}
        return {"attn_implementation": getattr(model.config, "_attn_implementation", None)}

    def decode_run(self, batch: int, prompt_len: int, new_tokens: int, repeats: int,
                   seed: int = 2) -> dict:
        torch = self.torch
        model = self.run["model"]
        prompts = bench_data.prompts(self.run["vocab"], batch, prompt_len, seed)
        ids = torch.as_tensor(np.asarray(prompts),
                              device=self.device).long()

        def once():
            self._sync()
            t = time.perf_counter()
            with torch.no_grad():
                out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                     max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                                     do_sample=False, pad_token_id=bm.PAD_ID)
            self._sync()
            return time.perf_counter() - t, out[:, prompt_len:].tolist()

        first, out = once()
        times = [once()[0] for _ in range(repeats)]
        return {"first_s": first, "times": times, "tokens": out}

    def stats(self) -> dict:
        dev = (self.torch.cuda.max_memory_allocated() if self.device == "cuda" else None)
        return {"peak_rss_bytes": _peak_rss(), "device_peak_bytes": dev}


def _peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def _xla_memory(compiled: Any) -> dict | None:
    """XLA's buffer assignment of a compiled program: arguments + outputs + temporaries
    − aliased (donated) bytes is what it needs at its peak."""
    try:
        m = compiled.memory_analysis()
    except Exception:  # not every backend reports it
        return None
    if m is None:
        return None
    out = {k: int(getattr(m, f"{k}_size_in_bytes", 0)) for k in
           ("argument", "output", "temp", "alias", "generated_code")}
    out["total"] = out["argument"] + out["output"] + out["temp"] - out["alias"]
    return out


def main() -> int:
    proto = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # whatever libraries print goes to stderr
    side: Any = None
    for line in sys.stdin:
        request = json.loads(line)
        op = request.pop("op")
        if op == "quit":
            break
        try:
            if side is None:
                threads = int(request.pop("threads", 0) or os.cpu_count() or 1)
                side = TorchSide(threads) if op.startswith("torch") else JaxSide()
            else:
                request.pop("threads", None)
            reply = {"ok": getattr(side, op)(**request)}
        except Exception as err:  # reported to the parent, which records it
            traceback.print_exc()
            reply = {"error": f"{type(err).__name__}: {str(err).splitlines()[0][:300]}"
                     if str(err) else type(err).__name__}
        proto.write(json.dumps(reply, default=_jsonable) + "\n")
        proto.flush()
    return 0


def _jsonable(x: Any) -> Any:
    if isinstance(x, np.integer | np.floating):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    raise TypeError(f"not JSON serialisable: {type(x)}")


if __name__ == "__main__":
    sys.exit(main())
