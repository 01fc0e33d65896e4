"""Pieces shared by the decoder-only families: the batch contract's defaults and masks,
and the LM head (the contract itself is documented in `sft_jax/models/llama.py`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from sft_jax.models import axes, layers

Array = jax.Array


def decoder_inputs(
    input_ids: Array,
    positions: Array | None,
    segment_ids: Array | None,
    cache: Mapping[str, Any] | None,
    sliding_windows: set[int | None],
) -> tuple[Array, Array, dict[int | None, Array], Array | None, Array]:
    """Defaults and masks of the decoder batch contract, shared by the decoder families.

    Returns (positions [B,T], segment_ids [B,T], {window: mask [B,1,T,S]}, cache index or
    None, key segment ids [B,S] (the updated cache's, or segment_ids without a cache)).
    """
    b, t = input_ids.shape
    if segment_ids is None:
        segment_ids = jnp.ones((b, t), jnp.int32)
    segment_ids = jnp.asarray(segment_ids, jnp.int32)
    if cache is None:
        index, key_segments = None, segment_ids
        slots = jnp.arange(t)
    else:
        index = cache["index"]
        key_segments = jax.lax.dynamic_update_slice(cache["segment_ids"], segment_ids, (0, index))
        slots = index + jnp.arange(t)
    if positions is None:
        positions = jnp.broadcast_to(slots, (b, t))
    masks = {
        w: layers.decoder_mask(segment_ids, key_segments, slots, sliding_window=w)
        for w in sliding_windows
    }
    return jnp.asarray(positions, jnp.int32), segment_ids, masks, index, key_segments


def lm_logits(
    x: Array,  # B T D
    embed: nn.Embed,
    cfg: Any,
    init: layers.Initializer,
    *,
    dtype: Any,
    param_dtype: Any,
) -> Array:  # B T V float32
    """Tied (`embed.attend`) or untied (`lm_head`, no bias) LM head, in float32."""
    if cfg.tie_word_embeddings:
        logits = embed.attend(x)
    else:
        logits = layers.DenseGeneral(
            features=cfg.vocab_size,
            kernel_axes=(axes.EMBED, axes.VOCAB),
            use_bias=False,
            dtype=dtype,
            param_dtype=param_dtype,
            kernel_init=init,
            name="lm_head",
        )(x)
    logits = nn.with_logical_constraint(logits, (axes.BATCH, axes.LENGTH, axes.VOCAB))
    return logits.astype(jnp.float32)
