"""Autoregressive generation with a KV cache: greedy, sampling and beam search, for
decoder-only and encoder-decoder models.

The model is seen through two functions (the decoder contract):
    step_fn(params, input_ids [B,T], positions [B,T], segment_ids [B,T], cache)
        -> (logits float [B,T',V], cache)
        where only the last of the T' positions is read (T' = T, or 1 when the step
        computes the last position's logits alone, as `ChatModel.step` does)
    init_cache_fn(batch, max_length) -> cache
        e.g. `functools.partial(model.init_cache, config)`; a pytree
        {"index": int32 scalar (slots filled), "segment_ids": int32 [B,S] (0 = empty or
         padding), "layers": [{"k": [B,S,K,H], "v": [B,S,K,H]}, ...]} with S = max_length;
        every other leaf has the batch first (beam search reorders rows with `take_rows`).
`step_fn` writes the T new tokens at slots [index, index+T) and lets the token at slot q
attend to slot s iff `segment_ids[s] != 0`, same segment, and s <= q.
An encoder-decoder adds a third function, run once per batch before the decoder:
    encode_fn(params, source_ids [B,S'], source_segment_ids [B,S']) -> {name: [B, ...]}
whose entries (e.g. the encoder output and its segment ids) are added to the cache, so
that `step_fn` finds them there (and returns them unchanged) and beam search reorders them
with the rest; `sft_jax.generation.encdec` builds the three functions for a model family.

`generate` left-pads a batch of prompts to a bucket length P (pad slots: segment 0,
position 0; real tokens: segment 1, positions 0..len-1, so every row's last prompt token
sits at slot P-1), runs one prefill call over [B, P], then a jit-compiled `lax.while_loop`
that picks one token per row from the last logits and feeds it back (position = prompt
length + step) until every row has produced a stop token or `max_new_tokens` tokens.
Finished rows emit `pad_id` (and are trimmed from the result). The cache has
S = P + max_new_tokens slots. `generate_seq2seq` right-pads the sources to a bucket S'
(segment 1 on real tokens), encodes them once, and decodes from the prompt
[decoder_start_token_id] (P = 1).

Jit programs: one per (functions, batch size, prompt and source buckets, max_new_tokens,
sampling settings or num_beams, pad_id); stop tokens, length_penalty and early_stopping
are arguments (beam search: the number of stop tokens is static). Inputs are sorted by
length and cut into batches of `batch_size` (the last one completed with finished dummy
rows), and buckets are powers of two ≥ 16, so a run compiles a few programs.

Sampling follows Hugging Face's order: forced tokens (seq2seq `forced_bos_token_id` at
the first step, `forced_eos_token_id` at step max_new_tokens), then the filters of
`generation.sampling` (temperature, top-k, top-p; `temperature=0` is greedy). Each input
draws from its own key, `fold_in(fold_in(rng, input index), step)`, so a sample depends
on rng and the input's index, not on the batching.

Beam search (`num_beams > 1`, deterministic) follows transformers 5's `_beam_search`
(see `generation.beam_search`): `length_penalty` divides a hypothesis' summed log-probs by
(number of generated tokens, stop token included; neither the prompt nor the decoder
start token) ** length_penalty; `early_stopping` True / False / "never" as in Hugging
Face. The prefill runs once per input; its cache is copied to the input's num_beams rows,
which every step reorders (`take_rows`) after the beams that continue. Each input returns
its `num_return_sequences` best hypotheses (≤ num_beams), best first, consecutively in
the result list. A hypothesis ends with its stop token, or has max_new_tokens tokens.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from sft_jax import console
from sft_jax.errors import UserInputError
from sft_jax.generation import beam_search
from sft_jax.generation.beam_search import Beam
from sft_jax.generation.sampling import Forced, Sampling, force_tokens, sample_tokens

StepFn = Callable[..., tuple[jax.Array, Any]]
InitCacheFn = Callable[[int, int], Any]
EncodeFn = Callable[..., dict[str, Any]]


class Encoder(NamedTuple):
    """The encoder side of an encoder-decoder run: `encode_fn` (hashable, stable), the
    token-id sources (one per prompt), and the forced tokens."""

    encode_fn: EncodeFn
    sources: Sequence[Sequence[int]]
    forced: Forced = Forced()

MIN_PROMPT_BUCKET = 16


def prompt_bucket(length: int, minimum: int = MIN_PROMPT_BUCKET) -> int:
    """The padded prompt length: the smallest power of two ≥ max(length, minimum)."""
    return 1 << max(0, (max(length, minimum) - 1).bit_length())


def take_rows(cache: Any, rows: jax.Array) -> Any:
    """The cache with batch rows `rows` [R] (reordered, repeated): every leaf but 'index'."""
    return {name: value if name == "index" else jax.tree.map(lambda x: x[rows], value)
            for name, value in cache.items()}


class _Loop(NamedTuple):
    step: jax.Array  # int32 scalar: tokens emitted so far
    logits: jax.Array  # B V, the logits to pick the next token from
    cache: Any
    tokens: jax.Array  # B N, emitted tokens (pad_id after a row finished)
    done: jax.Array  # B bool
    count: jax.Array  # B int32, tokens emitted before finishing (stop token included)


class _BeamLoop(NamedTuple):
    step: jax.Array
    logits: jax.Array  # (B W) V
    cache: Any  # (B W) rows
    beams: beam_search.BeamState


@functools.lru_cache(maxsize=32)
def _generate_fn(step_fn: StepFn, init_cache_fn: InitCacheFn, encode_fn: EncodeFn | None,
                 max_new_tokens: int, sampling: Sampling, beam: Beam | None, forced: Forced,
                 pad_id: int) -> Callable:
    """The jitted generation program for one model and one set of static settings:
    (params, input_ids, positions, segment_ids [B,P], lengths, done [B], rng, rows [B],
    stops, sources, scoring) -> (tokens [B, R, N], counts [B, R]), R = 1 or num_beams."""
    n = max_new_tokens

    def prefill(params, input_ids, positions, segment_ids, sources):
        batch, prompt_len = input_ids.shape  # B P
        cache = init_cache_fn(batch, prompt_len + n)
        if encode_fn is not None:
            cache = {**cache, **encode_fn(params, *sources)}
        logits, cache = step_fn(params, input_ids, positions, segment_ids, cache)
        return logits[:, -1].astype(jnp.float32), cache

    def feed(params, token, positions, cache):  # token, positions [R]
        logits, cache = step_fn(params, token[:, None], positions[:, None],
                                jnp.ones_like(token)[:, None], cache)
        return logits[:, -1].astype(jnp.float32), cache

    def sample(params, input_ids, positions, segment_ids, lengths, done, rng, rows, stops,
               sources, scoring):
        del scoring  # beam search only
        batch = input_ids.shape[0]
        row_keys = jax.vmap(jax.random.fold_in, (None, 0))(rng, rows)  # one key per input
        logits, cache = prefill(params, input_ids, positions, segment_ids, sources)
        state = _Loop(step=jnp.int32(0), logits=logits, cache=cache,
                      tokens=jnp.full((batch, n), pad_id, jnp.int32),
                      done=done, count=jnp.zeros((batch,), jnp.int32))

        def cond(s: _Loop) -> jax.Array:
            return (s.step < n) & ~jnp.all(s.done)

        def body(s: _Loop) -> _Loop:
            keys = jax.vmap(jax.random.fold_in, (0, None))(row_keys, s.step)
            token = sample_tokens(force_tokens(s.logits, s.step, forced, n), keys, sampling)
            token = jnp.where(s.done, pad_id, token)  # B
            count = s.count + (~s.done).astype(jnp.int32)
            done = s.done | jnp.isin(token, stops)
            tokens = jax.lax.dynamic_update_slice(s.tokens, token[:, None], (0, s.step))
            logits, cache = feed(params, token, lengths + s.step, s.cache)
            return _Loop(step=s.step + 1, logits=logits, cache=cache, tokens=tokens,
                         done=done, count=count)

        final = jax.lax.while_loop(cond, body, state)
        return final.tokens[:, None], final.count[:, None]

    def search(params, input_ids, positions, segment_ids, lengths, done, rng, rows, stops,
               sources, scoring):
        del rng, rows  # deterministic
        batch, width = input_ids.shape[0], beam.num_beams
        logits, cache = prefill(params, input_ids, positions, segment_ids, sources)
        copies = jnp.repeat(jnp.arange(batch), width)  # (B W): W copies of each input
        lengths = lengths[copies]
        state = _BeamLoop(step=jnp.int32(0), logits=logits[copies],
                          cache=take_rows(cache, copies),
                          beams=beam_search.init_state(done, beam, n, pad_id))

        def cond(s: _BeamLoop) -> jax.Array:
            return (s.step < n) & beam_search.unfinished(s.beams, scoring)

        def body(s: _BeamLoop) -> _BeamLoop:
            log_probs = force_tokens(jax.nn.log_softmax(s.logits, axis=-1), s.step, forced, n)
            beams, parents, token = beam_search.search_step(
                s.beams, log_probs.reshape(batch, width, -1), s.step, stops, beam, scoring)
            rows = (jnp.arange(batch)[:, None] * width + parents).reshape(-1)  # (B W)
            logits, cache = feed(params, token.reshape(-1), lengths + s.step,
                                 take_rows(s.cache, rows))
            return _BeamLoop(step=s.step + 1, logits=logits, cache=cache, beams=beams)

        final = jax.lax.while_loop(cond, body, state).beams
        return final.finished, final.finished_lengths

    return jax.jit(sample if beam is None else search)


def _settings(max_new_tokens, temperature, top_k, top_p, rng, num_beams, length_penalty,
              early_stopping, num_return_sequences, stop_token_ids):
    """Checked (Sampling, Beam | None, Scoring, rng, stop ids) from the user's settings."""
    if max_new_tokens <= 0:
        raise UserInputError(f"max_new_tokens={max_new_tokens}: must be positive")
    if temperature < 0 or top_k < 0 or not 0.0 < top_p <= 1.0:
        raise UserInputError(f"sampling settings temperature={temperature}, top_k={top_k}, "
                             f"top_p={top_p}: need temperature ≥ 0, top_k ≥ 0, 0 < top_p ≤ 1")
    if num_beams < 1 or not 1 <= num_return_sequences <= num_beams:
        raise UserInputError(f"num_beams={num_beams}, num_return_sequences="
                             f"{num_return_sequences}: need 1 ≤ num_return_sequences ≤ num_beams")
    if not (isinstance(early_stopping, bool) or early_stopping == "never"):
        raise UserInputError(f"early_stopping={early_stopping!r}: must be True, False or 'never'")
    stops = tuple(dict.fromkeys(int(t) for t in stop_token_ids))
    beam = None
    if num_beams > 1:
        if temperature > 0:
            raise UserInputError(f"num_beams={num_beams} with temperature={temperature}: "
                                 "beam search is deterministic (use temperature=0)")
        beam = Beam(int(num_beams), len(stops))
    scoring = beam_search.scoring(float(length_penalty), early_stopping, int(max_new_tokens))
    if temperature == 0:
        rng = jax.random.key(0) if rng is None else rng  # unused
        return Sampling(), beam, scoring, rng, stops
    if rng is None:
        raise UserInputError(f"temperature={temperature} samples and needs an rng key")
    return Sampling(float(temperature), int(top_k), float(top_p)), None, scoring, rng, stops


def _run_batches(run: Callable, params: Any, prompts: Sequence[Sequence[int]],
                 sources: Sequence[Sequence[int]] | None, *, batch_size: int | None,
                 prompt_minimum: int, pad_id: int, rng: jax.Array, stops: Sequence[int],
                 scoring: beam_search.Scoring, num_return_sequences: int) -> list[list[int]]:
    """Sort, batch and pad the inputs, run the program, gather each input's results."""
    for name, inputs in (("prompt", prompts), ("source", sources or ())):
        for i, p in enumerate(inputs):
            if len(p) == 0:
                raise UserInputError(f"{name} {i} is empty; generation needs at least one token")
    if not prompts:
        return []
    batch = len(prompts) if batch_size is None else int(batch_size)
    if batch <= 0:
        raise UserInputError(f"batch_size={batch_size}: must be positive")
    # Stop ids are an argument, padded with -1 to a multiple of 8: no recompiling per set.
    stop_ids = np.full((-(-max(len(stops), 1) // 8) * 8,), -1, np.int32)
    stop_ids[: len(stops)] = stops

    by = sources if sources is not None else prompts
    order = sorted(range(len(prompts)), key=lambda i: len(by[i]))
    results: list[list[int]] = [[] for _ in range(len(prompts) * num_return_sequences)]
    starts = range(0, len(order), batch)
    for start in console.progress(starts, "generate", total=len(starts)):
        rows = order[start:start + batch]
        prompt_len = prompt_bucket(max(len(prompts[i]) for i in rows), prompt_minimum)
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
        source_arrays = None
        if sources is not None:
            source_len = prompt_bucket(max(len(sources[i]) for i in rows))
            src = np.full((batch, source_len), pad_id, np.int32)  # B S'
            src_seg = np.zeros((batch, source_len), np.int32)
            src_seg[len(rows):, 0] = 1
            for b, i in enumerate(rows):
                src[b, : len(sources[i])] = sources[i]
                src_seg[b, : len(sources[i])] = 1
            source_arrays = (src, src_seg)
        row_ids = np.zeros((batch,), np.uint32)
        row_ids[: len(rows)] = rows
        tokens, count = jax.device_get(run(params, ids, pos, seg, lengths, done, rng, row_ids,
                                           stop_ids, source_arrays, scoring))
        for b, i in enumerate(rows):
            for r in range(num_return_sequences):
                results[i * num_return_sequences + r] = [
                    int(t) for t in tokens[b, r, : count[b, r]]]
    return results


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
    num_beams: int = 1,
    length_penalty: float = 1.0,
    early_stopping: bool | str = False,
    num_return_sequences: int = 1,
    encoder: Encoder | None = None,
) -> list[list[int]]:
    """The continuation of each prompt (token ids), ending with the stop token if one came.

    `prompts`: lists of token ids (non-empty). `temperature=0` is greedy (top-k/top-p are
    then irrelevant); sampling needs `rng` (a PRNG key). `num_beams > 1` is beam search
    (with temperature 0); the result then holds `num_return_sequences` hypotheses per
    prompt, best first (prompt i's at [i*n, (i+1)*n)). `batch_size` (default: all prompts
    at once) is the number of inputs per generation call (each takes num_beams rows).
    `step_fn`, `init_cache_fn` must be hashable and stable across calls (module-level
    functions or long-lived partials) for their compiled programs to be reused.
    `encoder` (see `generate_seq2seq`) makes it an encoder-decoder run.
    """
    sampling, beam, scoring, rng, stops = _settings(
        max_new_tokens, temperature, top_k, top_p, rng, num_beams, length_penalty,
        early_stopping, num_return_sequences, stop_token_ids)
    encode_fn, sources, forced = encoder if encoder is not None else (None, None, Forced())
    run = _generate_fn(step_fn, init_cache_fn, encode_fn, int(max_new_tokens), sampling, beam,
                       forced, int(pad_id))
    return _run_batches(run, params, prompts, sources, batch_size=batch_size,
                        prompt_minimum=MIN_PROMPT_BUCKET if encoder is None else 1,
                        pad_id=int(pad_id), rng=rng, stops=stops, scoring=scoring,
                        num_return_sequences=num_return_sequences)


def generate_seq2seq(
    encode_fn: EncodeFn,
    step_fn: StepFn,
    params: Any,
    init_cache_fn: InitCacheFn,
    sources: Sequence[Sequence[int]],
    *,
    decoder_start_token_id: int,
    forced_bos_token_id: int | None = None,
    forced_eos_token_id: int | Sequence[int] | None = None,
    **settings: Any,
) -> list[list[int]]:
    """The generated target of each source (token ids, without the start token), ending
    with the stop token if one came; `settings` are `generate`'s keywords (max_new_tokens,
    pad_id, sampling, beams, ...). `forced_bos_token_id` is the first token,
    `forced_eos_token_id` (one id or several) the token at step max_new_tokens (when a
    hypothesis gets there), as Hugging Face forces them. `encode_fn` must be hashable and
    stable, like `step_fn`."""
    if isinstance(forced_eos_token_id, int):
        forced_eos_token_id = [forced_eos_token_id]
    forced = Forced(-1 if forced_bos_token_id is None else int(forced_bos_token_id),
                    tuple(int(t) for t in forced_eos_token_id or ()))
    prompts = [[int(decoder_start_token_id)]] * len(sources)
    return generate(step_fn, params, init_cache_fn, prompts,
                    encoder=Encoder(encode_fn, sources, forced), **settings)
