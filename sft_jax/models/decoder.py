"""The decoder-only contracts, and the pieces every decoder family shares: the batch
contract's defaults and masks (`decoder_inputs`) and the LM head (`lm_logits`).

Decoder batch contract (every decoder-only family)
--------------------------------------------------
    input_ids    int [B, T]
    positions    int [B, T]  position of each token within its sequence (restarts at 0 for
                             every packed sequence; left padding: real tokens count from 0).
                             Default: arange(T) (with a cache: index + arange(T)).
    segment_ids  int [B, T]  which sequence a token belongs to; 0 = padding. Attention
                             never crosses segments and is causal within one.
                             Default: all ones.

`__call__(input_ids, *, positions=None, segment_ids=None, cache=None, deterministic=True,
lm_head=False)` returns `{'logits': float32 [B, T, V], 'hidden_states': [B, T, D] (after
the final norm), 'cache': the updated cache, or None without one}` ('logits' is absent
when the module is built with `with_lm_head=False`, as inside a `SequenceClassifier`; with
`lm_head=True` it is replaced by 'lm_head', an `lm_head.LmHead` giving the same logits
from hidden states). Dropout draws from the 'dropout' rng when `deterministic=False`. A
loss mask is the task's business.

KV cache contract (functional: the cache is an explicit pytree, in and out)
--------------------------------------------------------------------------
`init_cache(config, batch_size, max_length, dtype=None)` returns

    {'index': int32 [],             number of filled slots (the same for every row)
     'segment_ids': int32 [B, S],   segment of the token in each slot; 0 = empty or padding
     'layers': [{'k': [B, S, K, H], 'v': [B, S, K, H]}, ...]}   one dict per layer,
                                    keys as attention uses them (RoPE: rotated);
                                    S = max_length, dtype = config.dtype

All leaves have the batch first (except 'index'), so a caller may slice, gather or reorder
rows (beam search) with a plain `jax.tree.map`. Calling with `cache=` writes the T new
tokens' keys/values and segment ids at slots [index, index + T) (`lax.dynamic_update_slice`)
and returns the cache with index + T; a query at slot index + t attends to slot s iff
cache segment_ids[s] != 0, it equals the query's segment id, and s <= index + t (causal by
slot; with a sliding window W also index + t - s < W). Positions come from the caller, so
a left-padded prompt (pads with segment 0, real tokens at positions 0, 1, ...) followed by
one token per step at position = number of real tokens so far gives the logits of the
unpadded sequence. The caller keeps index + T <= max_length (beyond it
`dynamic_update_slice` clamps the start and overwrites the last slots).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from sft_jax.models import axes, common, layers, lm_head

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
    segment_ids = layers.segments_or_ones(segment_ids, b, t)
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
    as_head: bool = False,
) -> Array | lm_head.LmHead:  # B T V float32
    """Tied (`embed.attend`) or untied (`lm_head`, no bias) LM head, in float32; with
    `as_head` the `lm_head.LmHead` that computes them instead."""
    if cfg.tie_word_embeddings:
        if as_head:
            return lm_head.tied(embed)
        logits = embed.attend(x)
    else:
        dense = layers.DenseGeneral(
            features=cfg.vocab_size,
            kernel_axes=(axes.EMBED, axes.VOCAB),
            use_bias=False,
            dtype=dtype,
            param_dtype=param_dtype,
            kernel_init=init,
            name="lm_head",
        )
        if as_head:
            return lm_head.untied(dense, x)
        logits = dense(x)
    logits = nn.with_logical_constraint(logits, (axes.BATCH, axes.LENGTH, axes.VOCAB))
    return logits.astype(jnp.float32)


def init_cache(
    config: Any,
    batch_size: int,
    max_length: int,
    dtype: Any = None,
    *,
    num_layers: int | None = None,
    num_kv_heads: int | None = None,
    head_dim: int | None = None,
) -> dict[str, Any]:
    """An empty KV cache (the contract above) for `config`: its `num_hidden_layers`,
    `num_key_value_heads` and `head_dim` unless given; dtype: `config.dtype` unless given."""
    return layers.init_kv_cache(
        batch_size,
        max_length,
        num_layers=config.num_hidden_layers if num_layers is None else num_layers,
        num_kv_heads=config.num_key_value_heads if num_kv_heads is None else num_kv_heads,
        head_dim=config.head_dim if head_dim is None else head_dim,
        dtype=jnp.dtype(config.dtype if dtype is None else dtype),
    )


def next_cache(
    cache: Mapping[str, Any] | None,
    index: Array | None,
    length: int,
    key_segments: Array,
    new_layers: list[Any],
    **extra: Array,
) -> dict[str, Any] | None:
    """The cache after a call that wrote `length` tokens (None without a cache): index +
    length, the key segment ids, the layers' new keys/values (and any `extra` leaves)."""
    if cache is None:
        return None
    return {"index": index + length, "segment_ids": key_segments, **extra, "layers": new_layers}


def decoder_outputs(
    x: Array,  # B T D, after the final norm
    new_cache: dict[str, Any] | None,
    embed: nn.Embed,
    cfg: Any,
    init: layers.Initializer,
    *,
    with_lm_head: bool,
    dtype: Any,
    param_dtype: Any,
    as_head: bool = False,
) -> dict[str, Any]:
    """The decoder call's result (the contract above): hidden states, cache, and the
    logits of `lm_logits` unless `with_lm_head` is False ('lm_head' instead of 'logits'
    with `as_head`)."""
    out: dict[str, Any] = {"hidden_states": x, "cache": new_cache}
    if with_lm_head:
        out["lm_head" if as_head else "logits"] = lm_logits(
            x, embed, cfg, init, dtype=dtype, param_dtype=param_dtype, as_head=as_head)
    return out


class DecoderLM(nn.Module):
    """Base of the decoder-only families' causal LMs: the call contract above, over the
    family's layers. Parameters: `embed` (the token table, [V, D]), `layer_{i}`,
    `final_norm`, and `lm_head` when untied (none with `with_lm_head=False`).

    A family's module sets `layer_cls`: a layer called positionally (remat) as
    `layer(x, mask, *layer_args, layer_cache, cache_index, deterministic) -> (x, cache)`,
    and implements `embed_inputs` and `final_norm`; `layer_window` (the sliding window of
    a layer, default none), `layer_kwargs` (extra layer fields) and `materialize_cotangent`
    (`layers.materialize_cotangent` before each layer) are optional. The config provides
    `vocab_size`, `hidden_size`, `num_hidden_layers`, `initializer_range`,
    `tie_word_embeddings`, `remat_policy` and the dtypes.
    """

    config: Any
    with_lm_head: bool = True
    is_decoder: ClassVar[bool] = True
    layer_cls: ClassVar[type[nn.Module]]
    materialize_cotangent: ClassVar[bool] = False

    def embed_inputs(
        self, x: Array, positions: Array, *, init: layers.Initializer, deterministic: bool,
        dtype: Any, param_dtype: Any,
    ) -> tuple[Array, tuple[Any, ...]]:
        """(the first layer's input [B, T, D] from the token embeddings x [B, T, D], the
        family's extra layer arguments)."""
        raise NotImplementedError

    def final_norm(self, *, dtype: Any, param_dtype: Any) -> nn.Module:
        """The norm after the last layer, named 'final_norm'."""
        raise NotImplementedError

    def layer_window(self, layer: int) -> int | None:
        return None

    def layer_kwargs(self, layer: int) -> dict[str, Any]:
        return {}

    @nn.compact
    def __call__(
        self,
        input_ids: Array,  # B T
        *,
        positions: Array | None = None,  # B T
        segment_ids: Array | None = None,  # B T
        cache: Mapping[str, Any] | None = None,
        deterministic: bool = True,
        lm_head: bool = False,
    ) -> dict[str, Any]:
        cfg = self.config
        kw = cfg.dtypes
        init = nn.initializers.normal(cfg.initializer_range)
        windows = [self.layer_window(i) for i in range(cfg.num_hidden_layers)]
        positions, segment_ids, masks, index, key_segments = decoder_inputs(
            input_ids, positions, segment_ids, cache, set(windows)
        )
        embed = layers.embed(
            cfg.vocab_size, cfg.hidden_size, row_axis=axes.VOCAB, init=init, name="embed", **kw
        )
        tokens = layers.neftune(self, embed(input_ids), segment_ids,
                                deterministic=deterministic)  # B T D
        x, layer_args = self.embed_inputs(
            tokens, positions, init=init, deterministic=deterministic, **kw
        )  # B T D
        # Rematerialisation only in calls without a cache (training, scoring).
        policy = cfg.remat_policy if cache is None else "none"
        layer_cls = common.remat_layer(self.layer_cls, policy)
        new_layers = []
        for i in range(cfg.num_hidden_layers):
            if self.materialize_cotangent:
                x = layers.materialize_cotangent(x)
            layer = layer_cls(cfg, **self.layer_kwargs(i), name=f"layer_{i}")
            layer_cache = None if cache is None else cache["layers"][i]
            x, layer_cache = layer(x, masks[windows[i]], *layer_args, layer_cache, index,
                                   deterministic)
            new_layers.append(layer_cache)
        x = self.final_norm(**kw)(x)  # B T D
        new_cache = next_cache(cache, index, input_ids.shape[1], key_segments, new_layers)
        return decoder_outputs(x, new_cache, embed, cfg, init, with_lm_head=self.with_lm_head,
                               as_head=lm_head, **kw)
