"""The implementations behind `layers.dot_product_attention` (`model.attention`).

    xla        einsum, mask, float32 softmax, einsum: the [B, N, T, S] float32 scores are
               held at once (and kept for the backward pass).
    blockwise  keys and values in blocks of `block` slots, an online softmax over the
               blocks with float32 accumulators (running max, normaliser, output); each
               block's step is rematerialised, so neither pass holds more than one block
               of [B, N, T, block] scores. Same masks, bias and results as `xla` (to
               float32 rounding); dropout draws its own bits per block. An additive bias
               (T5's relative positions) is broadcast to [B, N, T, S] first (and, when
               it trains, so is its gradient): with a bias the scores' memory is not
               saved, and `auto` does not choose it. With one block (S <= block) the
               `xla` path runs instead: it holds the same scores, and the one-step loop
               gave NaN query and key gradients with a bias under jit (XLA:CPU, jax
               0.10.2; `tests/test_fast_paths.py`).
    cudnn      `jax.nn.dot_product_attention(implementation="cudnn")`: cuDNN's fused
               (flash) attention, GPU only, float16/bfloat16, no attention dropout.
    auto       per call, from the backend and the shapes (`choose`): on CPU `xla` up to
               `CPU_BLOCKWISE_FROM` keys, `blockwise` from there (rows of more than one
               query, no bias); on GPU `cudnn` where it applies (float16/bfloat16, no
               dropout, head size a multiple of 8 up to 128, even query and key
               lengths), else `xla`; elsewhere `xla`.

Every implementation takes q [B, T, N, H], k/v [B, S, K, H] (N = K * G, query head n
reads kv head n // G), a boolean mask and an additive bias broadcastable to [B, N, T, S],
and returns [B, T, N, H] in `dtype`. A masked logit is float32's min, so a row without a
visible key attends uniformly, as `xla` does.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from sft_jax.errors import UserInputError
from sft_jax.models import dense_dot

Array = jax.Array

IMPLEMENTATIONS = ("auto", "xla", "blockwise", "cudnn")
DEFAULT_BLOCK = 512
# `auto` on CPU: key lengths from which `blockwise` beats `xla` (one train step of
# forward + backward, measured on XLA:CPU; BENCHMARKS.md).
CPU_BLOCKWISE_FROM = 2048


def check_implementation(name: str, block: int, *, where: str = "model.attention") -> None:
    """A `UserInputError` naming `where` for an unknown implementation, a block < 1, or
    `cudnn` on a backend other than GPU."""
    if name not in IMPLEMENTATIONS:
        raise UserInputError(f"{where}: unknown attention {name!r} "
                             f"({', '.join(IMPLEMENTATIONS)})")
    if isinstance(block, bool) or not isinstance(block, int) or block < 1:
        raise UserInputError(f"{where}_block: {block!r} is not a positive integer")
    if name == "cudnn" and jax.default_backend() != "gpu":
        raise UserInputError(f"{where}: cudnn needs a GPU (the backend is "
                             f"{jax.default_backend()}); use auto, xla or blockwise")


def _cudnn_applies(query: Array, key_length: int, dropout: bool) -> bool:
    """cuDNN's fused kernel: float16/bfloat16, no dropout, a head size that is a multiple
    of 8 up to 128, and even query and key lengths (JAX refuses odd ones in training,
    "Unsupported sequence length", seen on an H200 with jax 0.11.2)."""
    t, h = query.shape[1], query.shape[-1]
    return (query.dtype in (jnp.bfloat16, jnp.float16) and not dropout
            and h <= 128 and h % 8 == 0 and t % 2 == 0 and key_length % 2 == 0)


def choose(name: str, query: Array, key_length: int, dropout: bool,
           bias: Array | None = None) -> str:
    """The implementation `name` ('auto' resolved by the backend and the shapes) runs."""
    if name != "auto":
        return name
    backend = jax.default_backend()
    if backend == "gpu" and _cudnn_applies(query, key_length, dropout):
        return "cudnn"
    if (backend == "cpu" and bias is None and query.shape[1] > 1
            and key_length >= CPU_BLOCKWISE_FROM):
        return "blockwise"
    return "xla"


def _full(x: Array | None, b: int, n: int, t: int, s: int) -> Array | None:
    """x broadcast to [B, N', T, S], N' = 1 when x's head axis is 1, else N."""
    if x is None:
        return None
    heads = n if x.shape[1] != 1 else 1
    return jnp.broadcast_to(x, (b, heads, t, s))


def _grouped(x: Array | None, b: int, k: int, g: int, t: int, s: int) -> Array | None:
    """x broadcast to [B, K, G, T, S], or [B, 1, 1, T, S] when its head axis is 1."""
    x = _full(x, b, k * g, t, s)
    if x is None:
        return None
    return x.reshape(b, k, g, t, s) if x.shape[1] != 1 else x.reshape(b, 1, 1, t, s)


def blockwise_attention(
    query: Array,  # B T N H
    key: Array,  # B S K H
    value: Array,  # B S K H
    *,
    mask: Array | None,  # bool, broadcastable to B N T S
    bias: Array | None,  # broadcastable to B N T S
    scale: float,
    block: int,
    dropout_rate: float = 0.0,
    dropout_rng: Array | None = None,
    dtype: Any = jnp.float32,
) -> Array:  # B T N H
    """Attention over key blocks with an online softmax (the module docstring)."""
    b, t, n, h = query.shape
    s, k_heads = key.shape[1], key.shape[2]
    g = n // k_heads
    block = min(block, s)
    blocks = -(-s // block)
    pad = blocks * block - s
    real = jnp.arange(blocks * block) < s  # S' : False on the padding slots
    mask = _grouped(mask, b, k_heads, g, t, s)  # B K' G' T S
    bias = _grouped(bias, b, k_heads, g, t, s)  # B K' G' T S

    def split(x: Array | None, axis: int) -> Array | None:
        """x with its S axis padded to S' and cut into blocks, the block index first."""
        if x is None:
            return None
        widths = [(0, 0)] * x.ndim
        widths[axis] = (0, pad)
        x = jnp.pad(x, widths)
        x = x.reshape(*x.shape[:axis], blocks, block, *x.shape[axis + 1:])
        return jnp.moveaxis(x, axis, 0)

    q = query.reshape(b, t, k_heads, g, h)  # B T K G H
    ks, vs = split(key, 1), split(value, 1)  # blocks B block K H
    masks, biases = split(mask, 4), split(bias, 4)  # blocks B K' G' T block
    reals = real.reshape(blocks, block)
    keep_prob = 1.0 - dropout_rate
    dropout = dropout_rng is not None and dropout_rate > 0.0

    @jax.checkpoint
    def step(carry, xs):
        m, total, acc = carry  # B K G T, B K G T, B K G T H (float32)
        i, kb, vb, mb, bb, rb = xs
        logits = dense_dot.einsum("BTKGH,BSKH->BKGTS", q, kb, out_dtype=jnp.float32)
        logits = logits * scale  # B K G T block
        if bb is not None:
            logits = logits + bb.astype(jnp.float32)
        if mb is not None:
            logits = jnp.where(mb, logits, jnp.finfo(jnp.float32).min)
        logits = jnp.where(rb, logits, -jnp.inf)  # padding slots carry no weight
        m_new = jnp.maximum(m, jnp.max(logits, axis=-1))
        p = jnp.exp(logits - m_new[..., None])  # B K G T block
        correction = jnp.exp(m - m_new)
        total = total * correction + jnp.sum(p, axis=-1)
        if dropout:
            keep = jax.random.bernoulli(jax.random.fold_in(dropout_rng, i), keep_prob, p.shape)
            p = jnp.where(keep, p / keep_prob, 0.0)
        pv = dense_dot.einsum("BKGTS,BSKH->BKGTH", p.astype(dtype), vb.astype(dtype),
                              out_dtype=jnp.float32)
        acc = acc * correction[..., None] + pv
        return (m_new, total, acc), None

    init = (jnp.full((b, k_heads, g, t), -jnp.inf, jnp.float32),
            jnp.zeros((b, k_heads, g, t), jnp.float32),
            jnp.zeros((b, k_heads, g, t, h), jnp.float32))
    (_, total, acc), _ = jax.lax.scan(step, init, (jnp.arange(blocks), ks, vs, masks, biases,
                                               reals))
    out = (acc / total[..., None]).astype(dtype)  # B K G T H
    return jnp.moveaxis(out, 3, 1).reshape(b, t, n, h)  # B T N H


def cudnn_attention(
    query: Array,  # B T N H
    key: Array,  # B S K H
    value: Array,  # B S K H
    *,
    mask: Array | None,
    bias: Array | None,
    scale: float,
    dropout: bool,
    dtype: Any,
) -> Array:  # B T N H
    """`jax.nn.dot_product_attention` on cuDNN (GPU; float16/bfloat16; no dropout)."""
    if dropout:
        raise UserInputError("model.attention: cudnn has no attention dropout "
                             "(set model.dropout=0 or use xla / blockwise)")
    if query.dtype not in (jnp.bfloat16, jnp.float16):
        raise UserInputError(f"model.attention: cudnn needs model.dtype bfloat16 or "
                             f"float16, not {query.dtype}")
    b, t, n, _ = query.shape
    s = key.shape[1]
    bias = None if bias is None else _full(bias.astype(query.dtype), b, n, t, s)
    return jax.nn.dot_product_attention(
        query, key, value.astype(query.dtype), bias=bias, mask=_full(mask, b, n, t, s),
        scale=scale, implementation="cudnn").astype(dtype)
