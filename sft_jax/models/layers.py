"""Shared transformer pieces: dense with logical axes, norms, embeddings, masks, attention.

Einsum alphabet (the one used everywhere in `sft_jax.models`):

    B batch    T query length   S key length   N query heads   K key/value heads
    G query heads per kv head (N = K * G)       H head dim      D model dim
    F mlp dim  V vocab

e.g. `jnp.einsum('BTNH,BSNH->BNTS', q, k)`. Shapes are written as trailing comments
(`# B T D`). Every parameter is created through `nn.with_logical_partitioning` with the
names from `axes.py`.

Masks are boolean, True = may attend, shaped to broadcast against the attention logits
[B, N, T, S] (usually [B, 1, T, S] or [B, 1, 1, S]). Build them with `padding_mask`,
`causal_mask`, `segment_mask` and join them with `combine_masks`, so that an encoder
(padding), a decoder (causal + padding) and a packed batch (segment ids) all feed the same
`Attention`. An additive `bias` (e.g. T5 relative positions) goes in separately.

Decoders build their mask with `decoder_mask` from segment ids and slots, and keep
keys/values in an explicit KV cache (`init_kv_cache`, passed to
`Attention(kv_cache=..., cache_index=...)`); the cache contract is documented in
`decoder.py`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from sft_jax.models import attention as attention_impl
from sft_jax.models import axes
from sft_jax.models import dense_dot as dense_dot_lib
from sft_jax.models.dense_dot import dense_dot

Array = jax.Array
Dtype = Any
Initializer = Callable[..., Array]

DEFAULT_INIT: Initializer = nn.initializers.normal(0.02)  # BERT's initializer_range

# HF `hidden_act` name -> function. `gelu` is the exact erf form, `gelu_new` /
# `gelu_pytorch_tanh` the tanh approximation.
ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
    "tanh": jnp.tanh,
}


def _as_tuple(x: int | Sequence[int]) -> tuple[int, ...]:
    return (x,) if isinstance(x, int) else tuple(x)


class DenseGeneral(nn.Module):
    """`y = x · W + b` contracting the last `in_dims` axes of `x` against W's first axes.

    Unlike `nn.DenseGeneral`, the kernel is created with its full shape (no flattening), so
    the logical names always match the array rank.

    Attributes:
      features: output shape (an int or a tuple, e.g. `(N, H)` for a q projection).
      kernel_axes: logical names of the kernel, input dims first, then output dims.
      in_dims: how many trailing input axes are contracted (2 for an out projection
        `[.., N, H] -> [.., D]`).
    """

    features: int | tuple[int, ...]
    kernel_axes: tuple[str, ...]
    in_dims: int = 1
    use_bias: bool = True
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    kernel_init: Initializer = DEFAULT_INIT
    bias_init: Initializer = nn.initializers.zeros_init()
    precision: jax.lax.Precision | None = None

    @nn.compact
    def __call__(self, x: Array) -> Array:
        features = _as_tuple(self.features)
        in_shape = x.shape[x.ndim - self.in_dims :]
        kernel_shape = in_shape + features
        if len(self.kernel_axes) != len(kernel_shape):
            raise ValueError(f"kernel_axes {self.kernel_axes} do not match shape {kernel_shape}")
        kernel = self.param(
            "kernel",
            nn.with_logical_partitioning(self.kernel_init, self.kernel_axes),
            kernel_shape,
            self.param_dtype,
        )
        x = x.astype(self.dtype)
        kernel = jnp.asarray(kernel, self.dtype)
        y = dense_dot(x, kernel, self.in_dims, self.precision)
        if self.use_bias:
            bias = self.param(
                "bias",
                nn.with_logical_partitioning(self.bias_init, self.kernel_axes[self.in_dims :]),
                features,
                self.param_dtype,
            )
            y = y + jnp.asarray(bias, self.dtype)
        return y


def layer_norm(
    *, epsilon: float, dtype: Dtype, param_dtype: Dtype, name: str | None = None
) -> nn.LayerNorm:
    """LayerNorm over the last axis (D) with ('embed',) scale and bias.

    Statistics are computed in float32 with the two-pass variance (as PyTorch does), so
    fp32 parity with Hugging Face holds to ~1e-6.
    """
    return nn.LayerNorm(
        epsilon=epsilon,
        dtype=dtype,
        param_dtype=param_dtype,
        use_fast_variance=False,
        scale_init=nn.with_logical_partitioning(nn.initializers.ones_init(), (axes.EMBED,)),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), (axes.EMBED,)),
        name=name,
    )


def rms_norm(
    *,
    epsilon: float,
    dtype: Dtype,
    param_dtype: Dtype,
    name: str | None = None,
    axis: str = axes.EMBED,
) -> nn.RMSNorm:
    """RMSNorm over the last axis (D) with an ('embed',) scale (Llama, T5); `axis` names
    another last axis (Qwen3's per-head q/k norms: ('kv',)).

    `x / sqrt(mean(x²) + eps) * scale`, statistics in float32.
    """
    return nn.RMSNorm(
        epsilon=epsilon,
        dtype=dtype,
        param_dtype=param_dtype,
        scale_init=nn.with_logical_partitioning(nn.initializers.ones_init(), (axis,)),
        name=name,
    )


def embed(
    num_embeddings: int,
    features: int,
    *,
    row_axis: str,
    dtype: Dtype,
    param_dtype: Dtype,
    init: Initializer = DEFAULT_INIT,
    name: str | None = None,
) -> nn.Embed:
    """A lookup table [num_embeddings, D] named (row_axis, 'embed')."""
    return nn.Embed(
        num_embeddings=num_embeddings,
        features=features,
        dtype=dtype,
        param_dtype=param_dtype,
        embedding_init=nn.with_logical_partitioning(init, (row_axis, axes.EMBED)),
        name=name,
    )


def neftune_noise(x: Array, segment_ids: Array, alpha: float, rng: Array) -> Array:
    """NEFTune (Jain et al. 2023): x [B, L, D] + U(-1, 1) · alpha / sqrt(L·D) per element,
    where L is the length of the example the token belongs to: the tokens of its row with
    the same segment id (segment_ids [B, L]: 0 = padding, which gets no noise; a padded
    row holds one segment, a packed row several, each noised as it would be alone). As
    the paper's reference code, and unlike a padded-length L, the scale does not depend
    on the padding or packing of the batch."""
    b, t, d = x.shape
    segments = jnp.asarray(segment_ids, jnp.int32)
    counts = jax.vmap(lambda s: jnp.bincount(s, length=t + 1))(segments)  # B L+1
    lengths = jnp.take_along_axis(counts, segments, axis=1)  # B L: the segment's length
    scale = alpha / jnp.sqrt(jnp.maximum(lengths, 1).astype(jnp.float32) * d)
    scale = jnp.where(segments > 0, scale, 0.0)[..., None]  # B L 1
    noise = jax.random.uniform(rng, (b, t, d), jnp.float32, -1.0, 1.0) * scale
    return x + noise.astype(x.dtype)


def neftune(module: nn.Module, x: Array, segment_ids: Array | None, *,
            deterministic: bool) -> Array:
    """`neftune_noise` on the input token embeddings x [B, L, D] of `module` (its
    config's `neftune_alpha`, rng stream 'dropout') in a non-deterministic call with
    alpha > 0; x itself otherwise (evaluation, generation, alpha = 0: the same program).
    `segment_ids` None: every token is real. Each family calls it once per token lookup
    (encoder-decoders: on both sides), on the lookup's output: BART's after its
    `embed_scale`, Gemma 3's before its sqrt(D) scale, BERT's before the position and
    token-type embeddings are added."""
    alpha = float(getattr(module.config, "neftune_alpha", 0.0))
    if deterministic or alpha <= 0:
        return x
    return neftune_noise(x, segments_or_ones(segment_ids, *x.shape[:2]), alpha,
                         module.make_rng("dropout"))


# ----------------------------------------------------------------------------- masks


def padding_mask(key_mask: Array) -> Array:
    """[B, S] (1 = token, 0 = padding) -> bool [B, 1, 1, S]: queries see only real keys."""
    return key_mask.astype(bool)[:, None, None, :]


def causal_mask(length: int, key_length: int | None = None) -> Array:
    """bool [1, 1, T, S]: query t sees keys s <= t + (S - T) (S > T when keys are cached)."""
    key_length = length if key_length is None else key_length
    t = jnp.arange(length)[:, None] + (key_length - length)
    s = jnp.arange(key_length)[None, :]
    return (s <= t)[None, None]


def segment_mask(query_segments: Array, key_segments: Array | None = None) -> Array:
    """bool [B, 1, T, S]: same non-zero segment id (packed batches; 0 = padding)."""
    key_segments = query_segments if key_segments is None else key_segments
    same = query_segments[:, :, None] == key_segments[:, None, :]
    return (same & (key_segments[:, None, :] != 0))[:, None]


def decoder_mask(
    query_segments: Array,  # B T int
    key_segments: Array,  # B S int (0 = padding / empty cache slot)
    query_slots: Array,  # T int: the key slot each query occupies
    *,
    sliding_window: int | None = None,
) -> Array:  # bool B 1 T S
    """Causal + segment mask by slot: query t sees key slot s iff the key's segment is
    non-zero and equals the query's, and s <= query_slots[t] (and, with a sliding window
    W, query_slots[t] - s < W, as Mistral / Hugging Face's sliding-window mask).

    Without a cache the slots are `arange(T)` and S = T; with one, S is the cache length
    and the T new tokens sit at slots `index + arange(T)`.
    """
    key_slots = jnp.arange(key_segments.shape[1])
    visible = key_slots[None, :] <= query_slots[:, None]  # T S
    if sliding_window is not None:
        visible &= query_slots[:, None] - key_slots[None, :] < sliding_window
    same = query_segments[:, :, None] == key_segments[:, None, :]  # B T S
    return (same & (key_segments[:, None, :] != 0) & visible[None])[:, None]


def segments_or_ones(segment_ids: Array | None, b: int, length: int) -> Array:
    """int32 segment ids [B, L]; None: every token is real (one segment, all ones)."""
    if segment_ids is None:
        return jnp.ones((b, length), jnp.int32)
    return jnp.asarray(segment_ids, jnp.int32)


def positions_from_segments(segment_ids: Array) -> Array:
    """[B, T] segment ids -> [B, T] int32 positions restarting at 0 with every run of equal
    ids (packed rows: 0 1 2 0 1; a left-padded row's first real token gets 0)."""
    t = jnp.arange(segment_ids.shape[1], dtype=jnp.int32)
    starts = jnp.concatenate(
        [
            jnp.ones_like(segment_ids[:, :1], dtype=bool),
            segment_ids[:, 1:] != segment_ids[:, :-1],
        ],
        axis=1,
    )  # B T
    first = jax.lax.cummax(jnp.where(starts, t[None, :], 0), axis=1)  # B T
    return t[None, :] - first


def combine_masks(*masks: Array | None) -> Array | None:
    """Logical AND of the given boolean masks (None entries are skipped)."""
    present = [m for m in masks if m is not None]
    if not present:
        return None
    out = present[0]
    for m in present[1:]:
        out = jnp.logical_and(out, m)
    return out


# ------------------------------------------------------------------------- attention


def dot_product_attention(
    query: Array,  # B T N H
    key: Array,  # B S K H
    value: Array,  # B S K H
    *,
    mask: Array | None = None,  # bool, broadcastable to B N T S
    bias: Array | None = None,  # additive, broadcastable to B N T S
    scale: float | None = None,
    dropout_rate: float = 0.0,
    dropout_rng: Array | None = None,
    dtype: Dtype = jnp.float32,
    implementation: str = "xla",
    block: int = attention_impl.DEFAULT_BLOCK,
) -> Array:  # B T N H
    """Scaled dot-product attention with grouped-query support (N = K * G).

    Query head n reads key/value head n // G, as Hugging Face's `repeat_kv` does. Logits
    and softmax run in float32; masked logits are set to float32's min (HF adds the
    dtype's min), so a row without any visible key is uniform rather than NaN.
    Attention-probability dropout is applied when `dropout_rng` is given.
    `implementation` ('xla', 'blockwise' over key blocks of `block`, 'cudnn', 'auto')
    and what each holds in memory: `sft_jax.models.attention`.
    """
    b, t, n, h = query.shape
    k_heads = key.shape[2]
    if n % k_heads:
        raise ValueError(f"{n} query heads are not a multiple of {k_heads} kv heads")
    g = n // k_heads
    scale = h**-0.5 if scale is None else scale
    dropout = dropout_rng is not None and dropout_rate > 0.0
    implementation = attention_impl.choose(implementation, query, key.shape[1], dropout,
                                           bias)
    if implementation == "blockwise" and key.shape[1] > block:
        # (one block holds the whole [T, S] scores: the einsum path below runs instead)
        return attention_impl.blockwise_attention(
            query, key, value, mask=mask, bias=bias, scale=scale, block=block,
            dropout_rate=dropout_rate, dropout_rng=dropout_rng, dtype=dtype)
    if implementation == "cudnn":
        return attention_impl.cudnn_attention(query, key, value, mask=mask, bias=bias,
                                              scale=scale, dropout=dropout, dtype=dtype)
    q = query.reshape(b, t, k_heads, g, h)  # B T K G H
    logits = dense_dot_lib.einsum("BTKGH,BSKH->BKGTS", q, key, out_dtype=jnp.float32)
    logits = logits.reshape(b, n, t, -1) * scale  # B N T S
    if bias is not None:
        logits = logits + bias.astype(jnp.float32)
    if mask is not None:
        logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(logits, axis=-1)  # B N T S
    if dropout_rng is not None and dropout_rate > 0.0:
        keep = jax.random.bernoulli(dropout_rng, 1.0 - dropout_rate, probs.shape)
        probs = jnp.where(keep, probs / (1.0 - dropout_rate), 0.0)
    probs = probs.astype(dtype).reshape(b, k_heads, g, t, -1)  # B K G T S
    out = dense_dot_lib.einsum("BKGTS,BSKH->BTKGH", probs, value.astype(dtype))
    return out.reshape(b, t, n, h)  # B T N H


QKTransform = Callable[[Array, Array], tuple[Array, Array]]



def with_qk_norm(transform: QKTransform, norm: Callable[[str], nn.Module]) -> QKTransform:
    """`transform` (e.g. RoPE) applied to `norm('q_norm')(q)` and `norm('k_norm')(k)`: the
    per-head norms over H of q [B, T, N, H] and k [B, S, K, H] before the rotation.

    `Attention` calls its `qk_transform` inside its own call, so the norms that `norm(name)`
    builds there are children of the attention module (`.../attention/q_norm`).
    """

    def normed(q: Array, k: Array) -> tuple[Array, Array]:  # B T N H, B S K H
        return transform(norm("q_norm")(q), norm("k_norm")(k))

    return normed

class Attention(nn.Module):
    """Multi-head (or grouped-query) attention: q/k/v projections, attention, out projection.

    Parameters (logical names): query ('embed','heads','kv'), key/value ('embed','heads',
    'kv') or ('embed','kv_heads','kv') when `num_kv_heads` differs, out ('heads','kv',
    'embed'); biases drop the input axes.

    Reuse: Llama passes `num_kv_heads`, `use_bias=False` and a `qk_transform` applying
    rotary embeddings; T5 passes `scale=1.0` and a relative-position `bias`; a decoder
    passes `combine_masks(causal_mask(T), padding_mask(m))` or a `decoder_mask`.

    `use_bias` covers q/k/v and, unless `out_bias` says otherwise, the out projection
    (Qwen2: q/k/v biases, none on out). `implementation` and `block` choose how the
    scores are computed (`dot_product_attention`; a family passes its config's
    `attention_options`).

    KV cache: with `kv_cache={'k': [B,S,K,H], 'v': [B,S,K,H]}` and `cache_index` (int32
    scalar), the T new keys/values (after `qk_transform`) are written at slots
    [cache_index, cache_index + T), the queries attend over all S slots (the `mask` must
    be [.., T, S] and hide empty slots), and the call returns `(out, updated kv_cache)`.
    """

    num_heads: int
    head_dim: int
    num_kv_heads: int | None = None
    use_bias: bool = True
    out_bias: bool | None = None
    dropout_rate: float = 0.0
    scale: float | None = None
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    kernel_init: Initializer = DEFAULT_INIT
    implementation: str = "xla"
    block: int = attention_impl.DEFAULT_BLOCK

    @nn.compact
    def __call__(
        self,
        inputs_q: Array,  # B T D
        inputs_kv: Array | None = None,  # B S D (None: self-attention)
        *,
        mask: Array | None = None,
        bias: Array | None = None,
        qk_transform: QKTransform | None = None,
        kv_cache: dict[str, Array] | None = None,
        cache_index: Array | None = None,
        deterministic: bool = True,
    ) -> Array | tuple[Array, dict[str, Array]]:  # B T D (, cache)
        inputs_kv = inputs_q if inputs_kv is None else inputs_kv
        model_dim = inputs_q.shape[-1]
        kv_heads = self.num_kv_heads or self.num_heads
        kv_head_axis = axes.HEADS if kv_heads == self.num_heads else axes.KV_HEADS

        def proj(name: str, heads: int, head_axis: str) -> DenseGeneral:
            return DenseGeneral(
                features=(heads, self.head_dim),
                kernel_axes=(axes.EMBED, head_axis, axes.KV),
                use_bias=self.use_bias,
                dtype=self.dtype,
                param_dtype=self.param_dtype,
                kernel_init=self.kernel_init,
                name=name,
            )

        q = proj("query", self.num_heads, axes.HEADS)(inputs_q)  # B T N H
        k = proj("key", kv_heads, kv_head_axis)(inputs_kv)  # B S K H
        v = proj("value", kv_heads, kv_head_axis)(inputs_kv)  # B S K H
        q = nn.with_logical_constraint(q, (axes.BATCH, axes.LENGTH, axes.HEADS, axes.KV))
        if qk_transform is not None:
            q, k = qk_transform(q, k)
        if kv_cache is not None:
            if cache_index is None:
                raise ValueError("kv_cache needs cache_index")
            kv_cache = write_kv_cache(kv_cache, k, v, cache_index)
            k, v = kv_cache["k"], kv_cache["v"]  # B S K H
        dropout_rng = None
        if not deterministic and self.dropout_rate > 0.0:
            dropout_rng = self.make_rng("dropout")
        out = dot_product_attention(
            q,
            k,
            v,
            mask=mask,
            bias=bias,
            scale=self.scale,
            dropout_rate=self.dropout_rate,
            dropout_rng=dropout_rng,
            dtype=self.dtype,
            implementation=self.implementation,
            block=self.block,
        )  # B T N H
        out = nn.with_logical_constraint(out, (axes.BATCH, axes.LENGTH, axes.HEADS, axes.KV))
        out = DenseGeneral(
            features=model_dim,
            kernel_axes=(axes.HEADS, axes.KV, axes.EMBED),
            in_dims=2,
            use_bias=self.use_bias if self.out_bias is None else self.out_bias,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            kernel_init=self.kernel_init,
            name="out",
        )(out)  # B T D
        return out if kv_cache is None else (out, kv_cache)


class Mlp(nn.Module):
    """Feed-forward block `wo(act(wi(x)))`, or gated `wo(act(wi_0(x)) * wi_1(x))` (Llama).

    Parameters: wi / wi_0 / wi_1 ('embed','mlp'), wo ('mlp','embed').
    """

    hidden_dim: int
    activation: str = "gelu"
    gated: bool = False
    use_bias: bool = True
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    kernel_init: Initializer = DEFAULT_INIT

    @nn.compact
    def __call__(self, x: Array) -> Array:  # B T D -> B T D
        def dense(features: int, kernel_axes: tuple[str, str], name: str) -> DenseGeneral:
            return DenseGeneral(
                features=features,
                kernel_axes=kernel_axes,
                use_bias=self.use_bias,
                dtype=self.dtype,
                param_dtype=self.param_dtype,
                kernel_init=self.kernel_init,
                name=name,
            )

        act = ACTIVATIONS[self.activation]
        if self.gated:
            h = act(dense(self.hidden_dim, (axes.EMBED, axes.MLP), "wi_0")(x))
            h = h * dense(self.hidden_dim, (axes.EMBED, axes.MLP), "wi_1")(x)  # B T F
        else:
            h = act(dense(self.hidden_dim, (axes.EMBED, axes.MLP), "wi")(x))  # B T F
        h = nn.with_logical_constraint(h, (axes.BATCH, axes.LENGTH, axes.MLP))
        return dense(x.shape[-1], (axes.MLP, axes.EMBED), "wo")(h)  # B T D


def init_kv_cache(
    batch_size: int,
    max_length: int,
    *,
    num_layers: int,
    num_kv_heads: int,
    head_dim: int,
    dtype: Dtype = jnp.float32,
) -> dict[str, Any]:
    """An empty decoder KV cache (the contract is documented in `sft_jax/models/decoder.py`):

    {'index': int32 [], 'segment_ids': int32 [B, S],
     'layers': [{'k': [B, S, K, H], 'v': [B, S, K, H]}, ...]}   (S = max_length)
    """
    shape = (batch_size, max_length, num_kv_heads, head_dim)
    return {
        "index": jnp.zeros((), jnp.int32),
        "segment_ids": jnp.zeros((batch_size, max_length), jnp.int32),
        "layers": [
            {"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)} for _ in range(num_layers)
        ],
    }


def attend(
    attention: Attention,
    x: Array,  # B T D
    mask: Array | None,
    kv_cache: dict[str, Array] | None,
    cache_index: Array | None,
    deterministic: bool,
    **kwargs: Any,
) -> tuple[Array, dict[str, Array] | None]:
    """`attention` self-attending over `x`, always as (output [B, T, D], updated layer
    cache or None): the one shape of a decoder layer's call with or without a cache."""
    out = attention(
        x, mask=mask, kv_cache=kv_cache, cache_index=cache_index, deterministic=deterministic,
        **kwargs,
    )
    return out if kv_cache is not None else (out, None)


def write_kv_cache(
    kv_cache: dict[str, Array], k: Array, v: Array, cache_index: Array
) -> dict[str, Array]:
    """One layer's cache {'k', 'v'} [B, S, K, H] with the T new keys/values k, v
    [B, T, K, H] written at slots [cache_index, cache_index + T), in the cache's dtype."""
    start = (0, cache_index, 0, 0)
    return {
        "k": jax.lax.dynamic_update_slice(kv_cache["k"], k.astype(kv_cache["k"].dtype), start),
        "v": jax.lax.dynamic_update_slice(kv_cache["v"], v.astype(kv_cache["v"].dtype), start),
    }


def count_params(params: Any) -> int:
    """Number of scalar parameters in a (possibly boxed) tree."""
    leaves = jax.tree_util.tree_leaves(nn.meta.unbox(params))
    return int(sum(np.prod(x.shape) for x in leaves))


@jax.custom_vjp
def _dense_cotangent(x: Array) -> Array:
    return x


def _dense_cotangent_fwd(x: Array) -> tuple[Array, None]:
    return x, None


def _dense_cotangent_bwd(_: None, g: Array) -> tuple[Array]:
    eye = jnp.eye(g.shape[-1], dtype=g.dtype)  # D D
    return (jnp.matmul(g, eye, precision=jax.lax.Precision.HIGHEST),)


_dense_cotangent.defvjp(_dense_cotangent_fwd, _dense_cotangent_bwd)


def materialize_cotangent(x: Array) -> Array:  # B T D -> B T D
    """Identity whose backward pass, on XLA:CPU, computes the cotangent of `x` into a buffer.

    For models whose layer stack XLA:CPU compiles badly: in the backward pass the gradient
    of the residual stream is a chain of elementwise adds, one per layer, and XLA:CPU's
    fusion may copy the rest of that chain into every consumer that needs it transposed
    (each layer's output-projection weight gradients), recomputing it once per layer:
    O(layers²) elementwise work. Passing the cotangent through a product with the
    identity, which XLA does not fuse into elementwise loops, makes it a buffer that each
    layer reads once. The product is exact (one non-zero term per output) and costs
    2·D FLOPs per element. `jax.lax.optimization_barrier` would state the intent, but
    XLA:CPU removes barriers before fusion. Other backends get `x` unchanged.

    A family opts in where its profile shows the duplicated chain (GPT-2 and T5 use
    it; BENCHMARKS.md has the measurements and why Llama and BERT do not).
    """
    if jax.default_backend() != "cpu":
        return x
    return _dense_cotangent(x)
