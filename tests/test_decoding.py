"""`sft_jax.generation.generate` on a tiny pure-JAX LM that follows the step_fn/cache contract.

The toy LM (embeddings + learned positions + one causal attention layer + output
projection) has a cached `toy_step` and an independent, uncached `toy_full_logits`; greedy
decoding through the cache must equal argmax decoding by repeated full forwards.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sft_jax import generation
from sft_jax.errors import UserInputError

V, D, MAX_POS = 24, 16, 96
PAD = 0
TRACES = {"step": 0}


def init_params(seed: int = 2) -> dict:
    rng = np.random.default_rng(seed)
    n = lambda shape, scale: jnp.asarray(scale * rng.normal(size=shape), jnp.float32)
    return {"embed": n((V, D), 1.0), "pos": n((MAX_POS, D), 1.0), "wq": n((D, D), D**-0.5),
            "wk": n((D, D), D**-0.5), "wv": n((D, D), D**-0.5), "out": n((D, V), 1.5)}


def init_cache(batch: int, max_length: int) -> dict:
    zeros = jnp.zeros((batch, max_length, 1, D), jnp.float32)  # B S K H
    return {"index": jnp.int32(0), "segment_ids": jnp.zeros((batch, max_length), jnp.int32),
            "layers": [{"k": zeros, "v": zeros}]}


def _head(params, x, attended):
    return jnp.tanh(x + attended) @ params["out"]  # B T V


def toy_step(params, input_ids, positions, segment_ids, cache):
    """The decoder contract: write T tokens at slots [index, index+T), attend with cache."""
    TRACES["step"] += 1
    x = params["embed"][input_ids] + params["pos"][positions]  # B T D
    q, k, v = x @ params["wq"], x @ params["wk"], x @ params["wv"]
    index = cache["index"]
    layer = cache["layers"][0]
    keys = jax.lax.dynamic_update_slice(layer["k"], k[:, :, None], (0, index, 0, 0))
    values = jax.lax.dynamic_update_slice(layer["v"], v[:, :, None], (0, index, 0, 0))
    segs = jax.lax.dynamic_update_slice(cache["segment_ids"], segment_ids, (0, index))
    t, s = input_ids.shape[1], keys.shape[1]
    q_slot = index + jnp.arange(t)
    visible = ((segs[:, None, :] != 0) & (segs[:, None, :] == segment_ids[:, :, None])
               & (jnp.arange(s)[None, None, :] <= q_slot[None, :, None]))  # B T S
    scores = jnp.einsum("BTD,BSD->BTS", q, keys[:, :, 0]) * D**-0.5
    probs = jax.nn.softmax(jnp.where(visible, scores, jnp.finfo(jnp.float32).min), axis=-1)
    logits = _head(params, x, jnp.einsum("BTS,BSD->BTD", probs, values[:, :, 0]))
    new_cache = {"index": index + t, "segment_ids": segs, "layers": [{"k": keys, "v": values}]}
    return logits, new_cache


@jax.jit
def _full_logits(params, ids):  # [T] -> [T, V], no cache
    t = ids.shape[0]
    x = params["embed"][ids] + params["pos"][jnp.arange(t)]  # T D
    q, k, v = x @ params["wq"], x @ params["wk"], x @ params["wv"]
    scores = (q @ k.T) * D**-0.5
    scores = jnp.where(jnp.tril(jnp.ones((t, t), bool)), scores, -jnp.inf)
    return _head(params, x, jax.nn.softmax(scores, axis=-1) @ v)


def toy_full_logits(params, ids) -> np.ndarray:
    """Logits [T, V] of a full forward over `ids`, right-padded to MAX_POS (invisible to
    the earlier tokens under the causal mask) so that one program serves every length."""
    padded = np.zeros((MAX_POS,), np.int32)
    padded[: len(ids)] = ids
    return np.asarray(_full_logits(params, jnp.asarray(padded)))[: len(ids)]


def reference_greedy(params, prompt, max_new_tokens, stops=()):
    ids, out = list(prompt), []
    for _ in range(max_new_tokens):
        token = int(np.argmax(toy_full_logits(params, ids)[-1]))
        out.append(token)
        ids.append(token)
        if token in stops:
            break
    return out


filter_jit = jax.jit(generation.filter_logits, static_argnums=1)

PROMPTS = [[5, 9, 3], [7, 1, 2, 8, 11, 4, 6], [13], [3, 3, 17, 2, 9, 21, 5, 6, 7, 1, 12, 15],
           [20, 2, 19, 4, 8]]
N_NEW = 10


@pytest.fixture(scope="module")
def params():
    return init_params()


@pytest.fixture(scope="module")
def greedy_ref(params):
    return [reference_greedy(params, p, N_NEW) for p in PROMPTS]


def gen(params, prompts, **kw):
    kw.setdefault("max_new_tokens", N_NEW)
    return generation.generate(toy_step, params, init_cache, prompts, pad_id=PAD, **kw)


def test_greedy_with_cache_equals_uncached_argmax(params, greedy_ref):
    out = gen(params, PROMPTS)
    assert out == greedy_ref
    assert len({tuple(o) for o in out}) > 1  # the toy LM's outputs depend on the prompt
    assert all(len(set(o)) > 1 for o in out)


def test_left_padding_and_batching_do_not_change_a_row(params, greedy_ref):
    long_prompt = [(3 * i + 1) % V for i in range(21)]  # bucket 32: the others get >20 pads
    # batch_size=5 fills the batch with dummy rows (and reuses the program of the first test)
    alone = [gen(params, [p], batch_size=5)[0] for p in PROMPTS[:2]]
    together = gen(params, [PROMPTS[0], long_prompt, PROMPTS[1]], batch_size=5)
    assert alone == greedy_ref[:2]
    assert [together[0], together[2]] == greedy_ref[:2]
    assert together[1] == reference_greedy(params, long_prompt, N_NEW)


def test_stop_tokens_end_rows_independently(params, greedy_ref):
    stops = (greedy_ref[0][3], greedy_ref[1][2])
    out = gen(params, PROMPTS, stop_token_ids=stops)
    for got, ref in zip(out, greedy_ref, strict=True):
        cut = next((i + 1 for i, t in enumerate(ref) if t in stops), len(ref))
        assert got == ref[:cut]
    assert out[0][-1] in stops and len(out[0]) <= 4 and len(out[1]) <= 3


def test_top_k_1_and_tiny_top_p_are_greedy(params, greedy_ref):
    rng = jax.random.key(1)
    assert gen(params, PROMPTS, temperature=1.5, top_k=1, rng=rng) == greedy_ref
    assert gen(params, PROMPTS, temperature=1.5, top_p=1e-6, rng=rng) == greedy_ref


def test_sampling_is_deterministic_and_respects_top_k(params, greedy_ref):
    rng = jax.random.key(7)
    first = gen(params, PROMPTS, temperature=2.0, top_k=3, rng=rng)
    assert gen(params, PROMPTS, temperature=2.0, top_k=3, rng=rng) == first
    # A prompt's sample depends on rng and its index, not on the other rows of its batch.
    assert gen(params, PROMPTS[:3], temperature=2.0, top_k=3, rng=rng,
               batch_size=len(PROMPTS)) == first[:3]
    assert gen(params, PROMPTS, temperature=2.0, top_k=3, rng=jax.random.key(8)) != first
    assert first != greedy_ref
    for prompt, sample in zip(PROMPTS, first, strict=True):
        logits = toy_full_logits(params, prompt + sample)
        for step, token in enumerate(sample):
            top3 = np.argsort(-logits[len(prompt) - 1 + step])[:3]
            assert token in top3


def test_filter_logits_matches_hugging_face_warpers():
    import torch
    from transformers.generation.logits_process import (
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    logits = np.random.default_rng(0).normal(size=(6, 40)).astype(np.float32) * 2
    for temperature, top_k, top_p in [(0.7, 5, 1.0), (1.3, 8, 0.6), (1.0, 0, 0.05)]:
        scores = torch.from_numpy(logits)
        scores = TemperatureLogitsWarper(temperature)(None, scores)
        if top_k:
            scores = TopKLogitsWarper(top_k)(None, scores)
        if top_p < 1.0:
            scores = TopPLogitsWarper(top_p)(None, scores)
        ours = filter_jit(jnp.asarray(logits), generation.Sampling(temperature, top_k, top_p))
        np.testing.assert_array_equal(np.isfinite(np.asarray(ours)), np.isfinite(scores.numpy()))
        kept = np.isfinite(scores.numpy())
        np.testing.assert_allclose(np.asarray(ours)[kept], scores.numpy()[kept], rtol=1e-6)


def test_top_p_keeps_the_smallest_set_reaching_p():
    probs = np.array([[0.15, 0.5, 0.05, 0.3]])
    for p, expect in [(0.5, {1}), (0.8, {1, 3}), (0.81, {0, 1, 3})]:
        out = filter_jit(jnp.log(jnp.asarray(probs)), generation.Sampling(1.0, 0, p))
        assert set(np.flatnonzero(np.isfinite(np.asarray(out[0])))) == expect, p


def test_few_programs_are_compiled(params):
    TRACES["step"] = 0  # counts traces of toy_step: prefill + loop body per program
    gen(params, [[1, 2, 3]], max_new_tokens=3)
    assert TRACES["step"] == 2
    gen(params, [[4, 5, 6, 7, 8, 9, 10]], max_new_tokens=3, stop_token_ids=(3,))
    gen(params, [[4, 5], [9]], max_new_tokens=3, batch_size=1)  # same shapes: reused
    assert TRACES["step"] == 2
    gen(params, [list(range(1, 18))], max_new_tokens=3)  # prompt bucket 32: new program
    assert TRACES["step"] == 4


def test_bad_arguments_are_user_errors(params):
    with pytest.raises(UserInputError, match="prompt 1 is empty"):
        gen(params, [[1], []])
    with pytest.raises(UserInputError, match="needs an rng"):
        gen(params, [[1]], temperature=1.0)
    with pytest.raises(UserInputError, match="top_p"):
        gen(params, [[1]], temperature=1.0, top_p=0.0, rng=jax.random.key(0))
