"""Data of `benchmark.py`: decoding prompts, and packing vs padding on a length distribution.

Packing vs padding (`packing_vs_padding`, run inside a JAX worker): the examples are
either the `chitchat` asset's training conversations rendered with the SmolLM2 chat
template and tokenized with its tokenizer (when both assets are in the cache; the first
`n_examples` conversations, truncated to `max_length`; the loss mask covers every token,
since the layout, not the mask, sets the cost), or a synthetic log-normal length
distribution. Then, with the same model, optimizer and train step:

- padding: the examples in a seeded random order (the product's default, no
  `group_by_length`), `batch` per step, each batch padded to the smallest bucket of
  `pipeline.bucket_lengths(max_length)` that holds its longest example;
- packing: `packing.pack_examples(..., length=max_length)` (first-fit decreasing), rows
  in a seeded random order, `batch` rows per step.

One epoch of each is timed without running it all: every batch shape that occurs is
compiled and stepped `steps` times after a warm-up (median), and the epoch time is the sum
over batches of their shape's median. Effective tokens/s = non-padding tokens of the
epoch / epoch time. `fill` (non-padding fraction) is reported too, also for other
lengths (`fill_at`), which needs no timing.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from typing import Any

import numpy as np

from experiments import bench_models as bm
from sft_jax.data import packing, pipeline


def prompts(vocab: int, batch: int, length: int, seed: int) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return rng.integers(3, vocab, (batch, length)).tolist()


def chitchat_available() -> bool:
    from sft_jax import assets

    return all(assets.get(n).path().is_dir() for n in ("chitchat", "smollm2-135m-instruct"))


def chitchat_token_ids(n_examples: int) -> list[list[int]]:
    """The first `n_examples` `chitchat` training conversations as SmolLM2 chat tokens."""
    from sft_jax import assets
    from sft_jax.pretrained import load_tokenizer

    tokenizer = load_tokenizer(assets.get("smollm2-135m-instruct").path())
    with (assets.get("chitchat").path() / "train.jsonl").open() as f:
        records = [json.loads(line) for _, line in zip(range(n_examples), f, strict=False)]
    texts = [tokenizer.apply_chat_template(r["messages"], tokenize=False) for r in records]
    return tokenizer(texts)["input_ids"]


def synthetic_token_ids(n_examples: int, max_length: int, vocab: int, seed: int
                        ) -> list[list[int]]:
    """Log-normal lengths (median 0.3 * max_length, sigma 1), at least 4 tokens."""
    rng = np.random.default_rng(seed)
    lengths = np.maximum(4, rng.lognormal(np.log(0.3 * max_length), 1.0, n_examples))
    return [rng.integers(3, vocab, int(n)).tolist() for n in lengths]


def _examples(ids: list[list[int]], max_length: int) -> list[dict]:
    out = []
    for seq in ids:
        arr = np.asarray(seq[:max_length], np.int32)
        out.append({"input_ids": arr, "loss_mask": np.ones_like(arr)})
    return out


def layouts(ids: list[list[int]], max_length: int, batch: int, seed: int
            ) -> tuple[list[dict], list[dict]]:
    """(padded batches, packed batches) of one epoch, both [batch, L] per step."""
    examples = _examples(ids, max_length)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(examples))
    buckets = pipeline.bucket_lengths(max_length)
    padded = [packing.pad_examples([examples[i] for i in order[s:s + batch]], buckets=buckets,
                                   pad_id=bm.PAD_ID, batch_size=batch)
              for s in range(0, len(order), batch)]
    rows = packing.pack_examples(examples, length=max_length, pad_id=bm.PAD_ID)
    perm = rng.permutation(len(rows["input_ids"]))
    packed = []
    for s in range(0, len(perm), batch):
        take = perm[s:s + batch]
        b = {k: np.zeros((batch, max_length), np.int32) for k in packing.FIELDS}
        b["input_ids"][:] = bm.PAD_ID
        for k in packing.FIELDS:
            b[k][: len(take)] = rows[k][take]
        packed.append(b)
    return padded, packed


def fill(batches: list[dict]) -> float:
    return 1.0 - packing.padding_stats(batches)["waste"]


def packing_vs_padding(side: Any, hf: dict, dtype: str, optim: dict, max_length: int,
                       batch: int, steps: int, source: str, n_examples: int,
                       fill_lengths: list[int], seed: int = 0) -> dict:
    t0 = time.perf_counter()
    if source == "chitchat" and not chitchat_available():
        source = "synthetic (chitchat or smollm2-135m-instruct not in the asset cache)"
    if source == "chitchat":
        ids = chitchat_token_ids(n_examples)
    else:
        ids = synthetic_token_ids(n_examples, max_length, hf["vocab_size"], seed)
    lengths = np.asarray([len(x) for x in ids])
    padded, packed = layouts(ids, max_length, batch, seed)
    data_s = time.perf_counter() - t0

    _, _, state, step, mesh = side._train_state(hf, dtype, "none", optim, seed)
    rng = side.jax.random.key(seed + 1)
    n_matmul = bm.matmul_params(state.params, hf)
    result: dict[str, Any] = {
        "source": source, "examples": len(ids), "max_length": max_length, "batch": batch,
        "length_percentiles": {str(p): float(np.percentile(lengths, p))
                               for p in (10, 50, 90)},
        "truncated_fraction": float(np.mean(lengths > max_length)), "data_s": data_s,
        "matmul_params": n_matmul,
        "fill_at": {},
    }
    for length in fill_lengths:
        pad_l, pack_l = layouts(ids, length, batch, seed)
        result["fill_at"][str(length)] = {
            "padding": fill(pad_l), "packing": fill(pack_l),
            "fill_ratio": fill(pack_l) / fill(pad_l)}

    for name, batches in (("padding", padded), ("packing", packed)):
        shapes = Counter(b["input_ids"].shape[1] for b in batches)
        per_shape = {}
        for length in sorted(shapes):
            example = next(b for b in batches if b["input_ids"].shape[1] == length)
            device_batch = side._to_device(example, mesh)
            t = time.perf_counter()
            compiled = step.lower(state, device_batch, rng).compile()
            compile_s = time.perf_counter() - t
            times = []
            for i in range(steps + 1):
                t = time.perf_counter()
                state, metrics = compiled(state, device_batch, rng)
                side.jax.block_until_ready(metrics["loss"])
                if i:
                    times.append(time.perf_counter() - t)
            per_shape[str(length)] = {"batches": shapes[length], "compile_s": compile_s,
                                      "step_s_median": float(np.median(times))}
        epoch_s = sum(v["batches"] * v["step_s_median"] for v in per_shape.values())
        real = packing.padding_stats(batches)["real_tokens"]
        flops = sum(v["batches"] * batch * int(k) * bm.train_flops_per_token(n_matmul, hf, int(k))
                    for k, v in per_shape.items())
        result[name] = {"batches": len(batches), "fill": fill(batches), "shapes": per_shape,
                        "epoch_s": epoch_s, "real_tokens": real,
                        "effective_tokens_per_s": real / epoch_s,
                        "model_flops_per_s": flops / epoch_s}
    result["ratio"] = (result["packing"]["effective_tokens_per_s"]
                       / result["padding"]["effective_tokens_per_s"])
    return result
