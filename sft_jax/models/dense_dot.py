"""The dense product `x · W` of `layers.DenseGeneral` and of the LM head, with gradients
multiplied in the compute dtype and accumulated in float32.

`dense_dot(x, w, in_dims)` contracts the last `in_dims` axes of x with the first `in_dims`
axes of w (no batch axes): x [..., I] · w [I, F] -> [..., F].

In float32 it is one `jax.lax.dot_general`, differentiated by JAX. In a lower precision
(x and w both bfloat16 or float16) each of the three products of a training step, the
forward x·W, the input gradient g·Wᵀ and the weight gradient xᵀ·g, takes its operands in
that dtype and returns float32 (`preferred_element_type`), cast back to the dtype after:
the accumulation PyTorch's autocast does too. On CPUs with AMX or AVX512-BF16, XLA:CPU
runs bf16 × bf16 -> f32 several times faster than bf16 × bf16 -> bf16 or float32
(`python -m experiments.bf16_matmul`; BENCHMARKS.md has the table). JAX's own gradient of
a `preferred_element_type=float32` product multiplies the float32 cotangent by a bfloat16
operand, a mixed product XLA:CPU computes in float32; hence the custom VJP, which casts
the cotangent to the compute dtype first (it arrives in that dtype from the cast anyway).
The weight gradient contracts x's leading axes; XLA:CPU runs that fast over two axes
([B, T, I]) and at a fifth of the speed over one ([T, I], a 2-D input), so a 2-D input
gets a leading axis of 1 for it (same product; the bf16_matmul table has both forms).

`einsum(spec, a, b, out_dtype)` does the same for the two products of attention (scores
q·kᵀ and probabilities·v, with batch axes): in float32 it is `jnp.einsum` (float32 result),
in a lower precision a custom VJP multiplies every product's operands in that dtype into
float32 and casts the result to `out_dtype` (float32 for the scores, the compute dtype for
the attention output).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

Array = jax.Array


def dense_dot(x: Array, w: Array, in_dims: int = 1,
              precision: jax.lax.Precision | None = None) -> Array:
    """x [..., I] · w [I, F] -> [..., F] in x's dtype (see the module docstring)."""
    if x.dtype != w.dtype or x.dtype == jnp.float32 or x.dtype == jnp.float64:
        return jax.lax.dot_general(x, w, _contract_trailing(x, in_dims), precision=precision)
    return _low_precision_dot(x, w, in_dims, precision)


def _contract_trailing(x: Array, in_dims: int):
    return ((tuple(range(x.ndim - in_dims, x.ndim)), tuple(range(in_dims))), ((), ()))


def _f32_product(a: Array, b: Array, contract, precision) -> Array:
    return jax.lax.dot_general(a, b, (contract, ((), ())), precision=precision,
                               preferred_element_type=jnp.float32)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _low_precision_dot(x: Array, w: Array, in_dims: int, precision) -> Array:
    return _f32_product(x, w, _contract_trailing(x, in_dims)[0], precision).astype(x.dtype)


def _fwd(x: Array, w: Array, in_dims: int, precision) -> tuple[Array, tuple[Array, Array]]:
    return _low_precision_dot(x, w, in_dims, precision), (x, w)


def _bwd(in_dims: int, precision, residuals: tuple[Array, Array], g: Array):
    x, w = residuals  # x [..., I], w [I, F], g [..., F]
    g = g.astype(x.dtype)
    lead = tuple(range(x.ndim - in_dims))  # the axes x and g share
    out_dims = w.ndim - in_dims
    # g [..., F] · w [I, F] over F -> [..., I]
    dx = _f32_product(g, w, (tuple(range(g.ndim - out_dims, g.ndim)),
                             tuple(range(in_dims, w.ndim))), precision)
    if len(lead) == 1:  # x [T, I]: XLA:CPU contracts two leading axes fast, one slowly
        x, g, lead = x[None], g[None], (0, 1)
    # x [..., I] · g [..., F] over the shared axes -> [I, F]
    dw = _f32_product(x, g, (lead, lead), precision)
    return dx.astype(x.dtype), dw.astype(w.dtype)


_low_precision_dot.defvjp(_fwd, _bwd)


def einsum(spec: str, a: Array, b: Array, out_dtype=None) -> Array:
    """`jnp.einsum(spec, a, b)` with float32 accumulation, returned in `out_dtype` (default
    a's dtype); see the module docstring. Every letter of an operand must appear in the
    other operand or in the output (no axis summed within one operand)."""
    out_dtype = jnp.dtype(out_dtype or a.dtype)
    _gradient_specs(spec)  # checked in every dtype, not only where the VJP needs it
    if a.dtype != b.dtype or a.dtype == jnp.float32 or a.dtype == jnp.float64:
        return jnp.einsum(spec, a, b, preferred_element_type=jnp.float32).astype(out_dtype)
    return _low_precision_einsum(spec, out_dtype, a, b)


def _gradient_specs(spec: str) -> tuple[str, str]:
    """For `a,b->out`: the specs of a's gradient (out, b -> a) and b's (a, out -> b)."""
    inputs, out = spec.replace(" ", "").split("->")
    a, b = inputs.split(",")
    for operand, other in ((a, b), (b, a)):
        if set(operand) - set(other) - set(out):
            raise ValueError(f"einsum {spec!r}: an axis of {operand!r} is summed within it")
    return f"{out},{b}->{a}", f"{a},{out}->{b}"


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _low_precision_einsum(spec: str, out_dtype, a: Array, b: Array) -> Array:
    return jnp.einsum(spec, a, b, preferred_element_type=jnp.float32).astype(out_dtype)


def _einsum_fwd(spec, out_dtype, a, b):
    return _low_precision_einsum(spec, out_dtype, a, b), (a, b)


def _einsum_bwd(spec, out_dtype, residuals, g):
    a, b = residuals
    g = g.astype(a.dtype)  # the cotangent in the compute dtype, as autocast has it
    spec_a, spec_b = _gradient_specs(spec)
    da = jnp.einsum(spec_a, g, b, preferred_element_type=jnp.float32)
    db = jnp.einsum(spec_b, a, g, preferred_element_type=jnp.float32)
    return da.astype(a.dtype), db.astype(b.dtype)


_low_precision_einsum.defvjp(_einsum_fwd, _einsum_bwd)
