"""Autoregressive generation with a KV cache, for any decoder-only model.

The model is seen through two functions (the decoder-only model contract):
    step_fn(params, input_ids [B,T], positions [B,T], segment_ids [B,T], cache)
        -> (logits float [B,T,V], cache)
    init_cache_fn(batch, max_length) -> cache
        e.g. `functools.partial(model.init_cache, config)`; a pytree
        {"index": int32 scalar (slots filled), "segment_ids": int32 [B,S] (0 = empty or
         padding), "layers": [{"k": [B,S,K,H], "v": [B,S,K,H]}, ...]} with S = max_length.
`step_fn` writes the T new tokens at slots [index, index+T) and lets the token at slot q
attend to slot s iff `segment_ids[s] != 0`, same segment, and s <= q.

`generate` left-pads a batch of prompts to a bucket length P (pad slots: segment 0,
position 0; real tokens: segment 1, positions 0..len-1, so every row's last prompt token
sits at slot P-1), runs one prefill call over [B, P], then a jit-compiled `lax.while_loop`
that samples one token per row from the last logits and feeds it back (position = prompt
length + step) until every row has produced a stop token or `max_new_tokens` tokens.
Finished rows emit `pad_id` (and are trimmed from the result). The cache has
S = P + max_new_tokens slots.

Jit programs: one per (step_fn, batch size, prompt bucket, max_new_tokens, sampling
settings, pad_id); stop tokens are an argument. Prompts are sorted by length and cut
into batches of `batch_size` (the last one completed with finished dummy rows), and P is
a power of two ≥ 16, so a run compiles a few programs.

Sampling follows Hugging Face's order: logits / temperature, then top-k (keep the logits
≥ the k-th largest), then top-p (keep the smallest set of most probable tokens whose
probability sums to ≥ p; always the most probable one). `temperature=0` is greedy
(argmax). Each prompt draws from its own key, `fold_in(fold_in(rng, prompt index), step)`,
so a prompt's sample depends on rng and its index, not on the batching or on the other
prompts.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from sft_jax.errors import UserInputError

StepFn = Callable[..., tuple[jax.Array, Any]]
InitCacheFn = Callable[[int, int], Any]

MIN_PROMPT_BUCKET = 16


class Sampling(NamedTuple):
    """Static sampling settings (part of the jit cache key)."""

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0


def prompt_bucket(length: int, minimum: int = MIN_PROMPT_BUCKET) -> int:
    """The padded prompt length: the smallest power of two ≥ max(length, minimum)."""
    return 1 << max(0, (max(length, minimum) - 1).bit_length())


def filter_logits(logits: jax.Array, sampling: Sampling) -> jax.Array:
    """[..., V] float32 logits / temperature, with what top-k/top-p exclude set to -inf."""
    logits = logits.astype(jnp.float32)
    if sampling.temperature > 0:
        logits = logits / sampling.temperature
    vocab = logits.shape[-1]
    if 0 < sampling.top_k < vocab:
        kth = jax.lax.top_k(logits, sampling.top_k)[0][..., -1:]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    if sampling.top_p < 1.0:
        order = jnp.argsort(-logits, axis=-1)  # most probable first
        sorted_logits = jnp.take_along_axis(logits, order, axis=-1)
        probs = jax.nn.softmax(sorted_logits, axis=-1)
        before = jnp.cumsum(probs, axis=-1) - probs  # mass of the more probable tokens
        keep_sorted = (before < sampling.top_p).at[..., 0].set(True)
        keep = jnp.put_along_axis(jnp.zeros_like(keep_sorted), order, keep_sorted, axis=-1,
                                  inplace=False)
        logits = jnp.where(keep, logits, -jnp.inf)
    return logits


def sample_tokens(logits: jax.Array, keys: jax.Array, sampling: Sampling) -> jax.Array:
    """One token per row from logits [B, V], row b drawing with keys[b]; int32 [B]."""
    if sampling.temperature <= 0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    filtered = filter_logits(logits, sampling)
    return jax.vmap(jax.random.categorical)(keys, filtered).astype(jnp.int32)


class _Loop(NamedTuple):
    step: jax.Array  # int32 scalar: tokens emitted so far
    logits: jax.Array  # B V, the logits to sample the next token from
    cache: Any
    tokens: jax.Array  # B N, emitted tokens (pad_id after a row finished)
    done: jax.Array  # B bool
    count: jax.Array  # B int32, tokens emitted before finishing (stop token included)


@functools.lru_cache(maxsize=32)
def _generate_fn(step_fn: StepFn, init_cache_fn: InitCacheFn, max_new_tokens: int,
                 sampling: Sampling, pad_id: int) -> Callable:
    """The jitted generation program for one model and one set of static settings."""

    def run(params, input_ids, positions, segment_ids, lengths, done, rng, rows, stops):
        batch, prompt_len = input_ids.shape  # B P
        row_keys = jax.vmap(jax.random.fold_in, (None, 0))(rng, rows)  # one key per prompt
        cache = init_cache_fn(batch, prompt_len + max_new_tokens)
        logits, cache = step_fn(params, input_ids, positions, segment_ids, cache)
        state = _Loop(step=jnp.int32(0), logits=logits[:, -1].astype(jnp.float32),
                      cache=cache,
                      tokens=jnp.full((batch, max_new_tokens), pad_id, jnp.int32),
                      done=done, count=jnp.zeros((batch,), jnp.int32))

        def cond(s: _Loop) -> jax.Array:
            return (s.step < max_new_tokens) & ~jnp.all(s.done)

        def body(s: _Loop) -> _Loop:
            keys = jax.vmap(jax.random.fold_in, (0, None))(row_keys, s.step)
            token = sample_tokens(s.logits, keys, sampling)  # B
            token = jnp.where(s.done, pad_id, token)
            count = s.count + (~s.done).astype(jnp.int32)
            done = s.done | jnp.isin(token, stops)
            tokens = jax.lax.dynamic_update_slice(s.tokens, token[:, None], (0, s.step))
            logits, cache = step_fn(params, token[:, None], (lengths + s.step)[:, None],
                                    jnp.ones((batch, 1), jnp.int32), s.cache)
            return _Loop(step=s.step + 1, logits=logits[:, -1].astype(jnp.float32),
                         cache=cache, tokens=tokens, done=done, count=count)

        final = jax.lax.while_loop(cond, body, state)
        return final.tokens, final.count

    return jax.jit(run)


def generate(
    step_fn: StepFn,
    params: Any,
    init_cache_fn: InitCacheFn,
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    temperature: float = 0.0,
    top_k: int = 0,
    top_p: float = 1.0,
    stop_token_ids: Sequence[int] = (),
    pad_id: int,
    rng: jax.Array | None = None,
    batch_size: int | None = None,
) -> list[list[int]]:
    """The continuation of each prompt (token ids), ending with the stop token if one came.

    `prompts`: lists of token ids (non-empty). `temperature=0` is greedy (top-k/top-p are
    then irrelevant); sampling needs `rng` (a PRNG key). `batch_size` (default: all
    prompts at once) is the number of rows per generation call. `step_fn`, `init_cache_fn`
    must be hashable and stable across calls (module-level functions or long-lived
    partials) for their compiled programs to be reused.
    """
    if max_new_tokens <= 0:
        raise UserInputError(f"max_new_tokens={max_new_tokens}: must be positive")
    if temperature < 0 or top_k < 0 or not 0.0 < top_p <= 1.0:
        raise UserInputError(f"sampling settings temperature={temperature}, top_k={top_k}, "
                             f"top_p={top_p}: need temperature ≥ 0, top_k ≥ 0, 0 < top_p ≤ 1")
    if temperature == 0:
        sampling, rng = Sampling(), jax.random.key(0) if rng is None else rng  # rng unused
    elif rng is None:
        raise UserInputError(f"temperature={temperature} samples and needs an rng key")
    else:
        sampling = Sampling(float(temperature), int(top_k), float(top_p))
    for i, p in enumerate(prompts):
        if len(p) == 0:
            raise UserInputError(f"prompt {i} is empty; generation needs at least one token")
    if not prompts:
        return []
    batch = len(prompts) if batch_size is None else int(batch_size)
    if batch <= 0:
        raise UserInputError(f"batch_size={batch_size}: must be positive")
    run = _generate_fn(step_fn, init_cache_fn, int(max_new_tokens), sampling, int(pad_id))
    # Stop ids are an argument, padded with -1 to a multiple of 8: no recompiling per set.
    stops = np.full((-(-max(len(stop_token_ids), 1) // 8) * 8,), -1, np.int32)
    stops[: len(stop_token_ids)] = stop_token_ids

    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    results: list[list[int]] = [[] for _ in prompts]
    for start in range(0, len(order), batch):
        rows = order[start:start + batch]
        prompt_len = prompt_bucket(max(len(prompts[i]) for i in rows))
        ids = np.full((batch, prompt_len), pad_id, np.int32)  # B P
        pos = np.zeros((batch, prompt_len), np.int32)
        seg = np.zeros((batch, prompt_len), np.int32)
        lengths = np.ones((batch,), np.int32)
        done = np.ones((batch,), bool)  # dummy rows (past len(rows)) start finished
        for b, i in enumerate(rows):
            n = len(prompts[i])
            ids[b, prompt_len - n:] = prompts[i]
            pos[b, prompt_len - n:] = np.arange(n)
            seg[b, prompt_len - n:] = 1
            lengths[b], done[b] = n, False
        seg[len(rows):, -1] = 1  # dummy rows: one pad token, so no row attends to nothing
        row_ids = np.zeros((batch,), np.uint32)
        row_ids[: len(rows)] = rows
        tokens, count = jax.device_get(run(params, ids, pos, seg, lengths, done, rng, row_ids,
                                           stops))
        for b, i in enumerate(rows):
            results[i] = [int(t) for t in tokens[b, : count[b]]]
    return results
