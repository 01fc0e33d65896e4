"""Beam-search bookkeeping on arrays, step by step as Hugging Face transformers 5 does it.

No model here: `search_step` takes the next-token log-probabilities of the running beams
and returns the new beam state, the running beam each new beam continues (its parent,
for reordering the KV cache) and the token it feeds next. `generation.loop` drives it in a
`lax.while_loop`. Shapes: B inputs, W = num_beams, C = candidates per input, N =
max_new_tokens, V vocab.

The rules (`GenerationMixin._beam_search` and helpers):
  * Running beams start as one beam with score 0 and W-1 copies with -1e9.
  * Each step adds the log-softmax of every running beam to its score and keeps the top
    C = max(2, 1 + number of stop tokens) * W of the W*V continuations (the candidates).
  * A candidate "stops" if its token is a stop token or it reaches N tokens. The best W
    candidates that do not stop (stopped ones get -1e9 added) run on.
  * A stopped candidate among the top W candidates becomes a finished hypothesis with
    score sum_logprobs / generated_length ** length_penalty, where generated_length
    counts the new tokens, the stop token included (the prompt of a decoder-only model or
    the decoder start token of an encoder-decoder is not counted). It enters the W
    finished slots of its input if it beats the worst one, unless the input is closed:
    early_stopping=True closes an input once its W slots hold finished hypotheses;
    otherwise an input closes when its W slots are full and the best running score,
    divided by length ** length_penalty, cannot beat the worst finished score, with
    length = the running length (early_stopping=False, or "never" with
    length_penalty <= 0) or N ("never" with length_penalty > 0).
  * The loop ends when no input can improve, when early_stopping=True and every input is
    full, or when every candidate stopped (at N tokens).
Excluded scores are made by adding -1e9 in float32, in the same order as Hugging Face, so
that the same candidates win; the length penalty divides by float32(n ** length_penalty)
computed in double precision, as PyTorch does. Length penalty and early stopping are
arrays (`Scoring`), so changing them compiles nothing; num_beams and the number of stop
tokens set shapes (`Beam`).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

NEG = -1.0e9  # the score offset that excludes a candidate


class Beam(NamedTuple):
    """Static beam-search settings (part of the jit cache key)."""

    num_beams: int
    num_stops: int = 0  # number of distinct stop tokens: it sets the candidates per step

    @property
    def candidates(self) -> int:
        return max(2, 1 + self.num_stops) * self.num_beams


class Scoring(NamedTuple):
    """Length penalty and early stopping as arrays (arguments, not compiled in)."""

    penalties: jax.Array  # float32 [N]: entry n-1 is n ** length_penalty
    bounds: jax.Array  # float32 [N]: the divisor of the best running score after step n-1
    early_stopping: jax.Array  # bool scalar: early_stopping is True


def scoring(length_penalty: float, early_stopping: bool | str,
            max_new_tokens: int) -> Scoring:
    """The `Scoring` of these settings; powers in double precision, then rounded to
    float32 (as PyTorch divides a float32 tensor by a Python float)."""
    penalties = np.array([n ** length_penalty for n in range(1, max_new_tokens + 1)],
                         np.float64).astype(np.float32)
    bounds = penalties
    if early_stopping == "never" and length_penalty > 0.0:
        bounds = np.full_like(penalties, penalties[-1])
    return Scoring(penalties, bounds, np.bool_(early_stopping is True))


class BeamState(NamedTuple):
    running: jax.Array  # B W N tokens of the running beams (pad after the current step)
    running_scores: jax.Array  # B W summed log-probs
    finished: jax.Array  # B W N finished hypotheses, best first
    finished_scores: jax.Array  # B W length-penalised scores (-1e9: empty slot)
    finished_lengths: jax.Array  # B W int32 tokens in each hypothesis
    is_finished: jax.Array  # B W bool, the slot holds a finished hypothesis
    improvable: jax.Array  # B bool, the input's finished hypotheses may still change
    all_stopped: jax.Array  # bool scalar, every candidate of the last step stopped


def init_state(done: jax.Array, beam: Beam, max_new_tokens: int, pad_id: int) -> BeamState:
    """The state before the first step; `done` [B] marks filler rows (never improvable)."""
    batch, width = done.shape[0], beam.num_beams
    tokens = jnp.full((batch, width, max_new_tokens), pad_id, jnp.int32)
    first = jnp.where(jnp.arange(width) == 0, 0.0, NEG).astype(jnp.float32)
    return BeamState(
        running=tokens,
        running_scores=jnp.broadcast_to(first, (batch, width)),
        finished=tokens,
        finished_scores=jnp.full((batch, width), NEG, jnp.float32),
        finished_lengths=jnp.zeros((batch, width), jnp.int32),
        is_finished=jnp.broadcast_to(done[:, None], (batch, width)),
        improvable=~done,
        all_stopped=jnp.bool_(False),
    )


def _take(x: jax.Array, index: jax.Array) -> jax.Array:
    """x [B, K, ...] gathered along axis 1 with index [B, J] -> [B, J, ...]."""
    index = index.reshape(index.shape + (1,) * (x.ndim - 2))
    return jnp.take_along_axis(x, index, axis=1)


def search_step(state: BeamState, log_probs: jax.Array, step: jax.Array, stops: jax.Array,
                beam: Beam, scoring: Scoring) -> tuple[BeamState, jax.Array, jax.Array]:
    """One step: log_probs [B, W, V] of the running beams (processed, not yet summed) at
    generation step `step` (0-based) -> (state, parents [B, W], next tokens [B, W])."""
    batch, width, vocab = log_probs.shape
    n = state.running.shape[-1]
    k = beam.candidates
    total = (log_probs + state.running_scores[:, :, None]).reshape(batch, width * vocab)
    top_scores, top_index = jax.lax.top_k(total, k)  # B C
    parents, tokens = top_index // vocab, (top_index % vocab).astype(jnp.int32)
    candidates = _take(state.running, parents)  # B C N
    candidates = jnp.where(jnp.arange(n) == step, tokens[:, :, None], candidates)
    stopped = jnp.isin(tokens, stops) | (step + 1 >= n)  # B C

    # The best W candidates that did not stop run on.
    running_scores = top_scores + jnp.where(stopped, NEG, 0.0).astype(jnp.float32)
    running_scores, keep = jax.lax.top_k(running_scores, width)  # B W
    running = _take(candidates, keep)
    parents = _take(parents, keep)

    # Stopped candidates among the top W may enter the finished slots.
    entering = stopped & (jnp.arange(k) < width)
    scores = top_scores / scoring.penalties[step]
    full = jnp.all(state.is_finished, axis=-1, keepdims=True) & scoring.early_stopping
    scores = scores + jnp.where(full, NEG, 0.0).astype(jnp.float32)
    scores = scores + jnp.where(~state.improvable[:, None], NEG, 0.0).astype(jnp.float32)
    scores = scores + jnp.where(~entering, NEG, 0.0).astype(jnp.float32)
    merged_scores = jnp.concatenate([state.finished_scores, scores], axis=1)  # B W+C
    finished_scores, best = jax.lax.top_k(merged_scores, width)
    lengths = jnp.broadcast_to(step + 1, (batch, k)).astype(jnp.int32)
    finished = _take(jnp.concatenate([state.finished, candidates], axis=1), best)
    finished_lengths = _take(jnp.concatenate([state.finished_lengths, lengths], axis=1), best)
    is_finished = _take(jnp.concatenate([state.is_finished, entering], axis=1), best)

    # Can the best running beam still beat the worst finished hypothesis?
    best_running = running_scores[:, :1] / scoring.bounds[step]
    worst = jnp.where(is_finished, jnp.min(finished_scores, axis=1, keepdims=True), NEG)
    improvable = state.improvable & jnp.any(best_running > worst, axis=-1)

    new = BeamState(running=running, running_scores=running_scores, finished=finished,
                    finished_scores=finished_scores, finished_lengths=finished_lengths,
                    is_finished=is_finished, improvable=improvable,
                    all_stopped=jnp.all(stopped))
    return new, parents, _take(tokens, keep)


def unfinished(state: BeamState, scoring: Scoring) -> jax.Array:
    """bool scalar: whether the search goes on (the step limit aside)."""
    open_beam = ~(jnp.all(state.is_finished) & scoring.early_stopping)
    return jnp.any(state.improvable) & open_beam & ~state.all_stopped
