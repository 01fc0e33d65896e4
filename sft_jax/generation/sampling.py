"""Token choice: the one `Sampling` type, logit filters, forced tokens and stop tokens.

`Sampling` holds a generation run's settings. Its first three fields (temperature, top_k,
top_p) choose each token and are static in the compiled program; the others (how many
tokens, the seed, the batch size, extra stop tokens by name) are read by the callers that
run generation (`generation.chat.ChatModel`, the dialogue task, `python -m
sft_jax.predict`). `temperature=0` is greedy (argmax); otherwise logits / temperature,
then top-k (keep the logits ≥ the k-th largest), then top-p (keep the smallest set of most
probable tokens whose probability sums to ≥ p; always the most probable one), in Hugging
Face's order.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class Sampling:
    """Generation settings; hashable (the first three fields key compiled programs)."""

    temperature: float = 0.0  # 0 = greedy
    top_k: int = 0  # 0 = no top-k filter
    top_p: float = 1.0  # 1 = no top-p filter
    max_new_tokens: int = 64
    seed: int = 0
    batch_size: int = 8  # inputs per generation call
    stop_tokens: tuple[str, ...] = ()  # besides the tokenizer's EOS, e.g. "<|im_end|>"


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


class Forced(NamedTuple):
    """Static forced tokens: `bos` (-1: none) at the first step, one of `eos` at the last."""

    bos: int = -1
    eos: tuple[int, ...] = ()


def force_tokens(scores: jax.Array, step: jax.Array, forced: Forced,
                 max_new_tokens: int) -> jax.Array:
    """scores [R, V] with everything but the forced tokens of this step set to -inf and the
    forced tokens to 0 (Hugging Face's ForcedBOS/ForcedEOS logits processors)."""
    vocab = jnp.arange(scores.shape[-1])
    for tokens, at in (((forced.bos,) if forced.bos >= 0 else (), 0),
                       (forced.eos, max_new_tokens - 1)):
        if tokens:
            only = jnp.where(jnp.isin(vocab, jnp.asarray(tokens)), 0.0, -jnp.inf)
            scores = jnp.where(step == at, only.astype(scores.dtype), scores)
    return scores


def stop_token_ids(tokenizer: Any, names: Iterable[str] = ()) -> list[int]:
    """Sorted ids of the tokenizer's EOS and the tokens `names`; names the vocabulary lacks
    (None or the unknown token's id) are left out."""
    stops = set(tokenizer.convert_tokens_to_ids(list(names))) | {tokenizer.eos_token_id}
    stops -= {None, tokenizer.unk_token_id}
    return sorted(stops)
