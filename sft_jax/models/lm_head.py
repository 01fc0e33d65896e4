"""A language-model head as data: what turns hidden states into logits, without the logits.

A model called with `lm_head=True` returns, instead of 'logits' [B, T, V], its final
hidden states 'hidden_states' [B, T, D] and an `LmHead`, whose call gives the same
float32 logits for any rows of hidden states. A loss can then compute the logits a few
rows at a time (`sft_jax.tasks.base.chunked_token_losses`), so that the [B·T, V] float32
logits and their gradient are never held at once. The head's arrays come from the model's
params inside `apply`, so gradients reach the token table or `lm_head` kernel through it.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import struct

from sft_jax.models import axes
from sft_jax.models.dense_dot import dense_dot

Array = jax.Array


@struct.dataclass
class LmHead:
    """`logits(x) = softcap(dot(scale · x, W) + bias)` in float32, x [..., D] -> [..., V].

    weight: the token table [V, D] (`transposed`, a tied head: `nn.Embed.attend`) or an
      `lm_head` kernel [D, V]; x and weight are cast to `dtype` (the model's compute
      dtype) for the product, as the model's own head does.
    bias: float32 [V] added without gradient (BART's `final_logits_bias`), or None.
    scale: multiplies x first (T5's tied head: d_model**-0.5), or None.
    softcap: `cap · tanh(logits / cap)` (Gemma's final soft-capping), or None.
    """

    weight: Array
    bias: Array | None = None
    transposed: bool = struct.field(pytree_node=False, default=False)
    scale: float | None = struct.field(pytree_node=False, default=None)
    softcap: float | None = struct.field(pytree_node=False, default=None)
    dtype: Any = struct.field(pytree_node=False, default=jnp.float32)

    def __call__(self, x: Array) -> Array:  # ... D -> ... V float32
        if self.scale is not None:
            x = x * self.scale
        x, weight = x.astype(self.dtype), self.weight.astype(self.dtype)
        logits = dense_dot(x, weight.T if self.transposed else weight)
        if x.ndim == 3:
            logits = nn.with_logical_constraint(logits, (axes.BATCH, axes.LENGTH, axes.VOCAB))
        logits = logits.astype(jnp.float32)
        if self.bias is not None:
            logits = logits + jax.lax.stop_gradient(jnp.asarray(self.bias, jnp.float32))
        if self.softcap is not None:
            logits = self.softcap * jnp.tanh(logits / self.softcap)
        return logits


def tied(table: nn.Embed, **kw: Any) -> LmHead:
    """The head of a bound, already called `nn.Embed` (its `attend`)."""
    return LmHead(table.embedding, transposed=True, dtype=table.dtype, **kw)


def untied(dense: nn.Module, x: Array, **kw: Any) -> LmHead:
    """The head of a `layers.DenseGeneral` [D -> V] without bias (`x` [.., D]: the hidden
    states, used only to create the kernel when the model is being initialised)."""
    if dense.is_initializing():
        dense(x)
    kernel = nn.meta.unbox(dense.variables["params"]["kernel"])  # D V
    return LmHead(kernel, dtype=dense.dtype, **kw)
