"""`models.dense_dot`: float32 is jax's own product and gradient; in bfloat16 the forward
product and both gradients multiply bfloat16 operands into float32, against float32
references, under jit, grad and vmap (replicas). The same for `einsum`, attention's two
products."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sft_jax.models import dense_dot as dense_dot_lib
from sft_jax.models.dense_dot import dense_dot

CASES = [  # (x shape, w shape, in_dims)
    ((6, 8), (8, 12), 1),  # rows of an LM head: T D · D V
    ((2, 5, 8), (8, 12), 1),  # B T D · D F
    ((2, 5, 8), (8, 3, 4), 1),  # a q projection: B T D · D N H
    ((2, 5, 3, 4), (3, 4, 8), 2),  # an out projection: B T N H · N H D
]


def _case(x_shape, w_shape, in_dims):
    """x, w and a cotangent g of the product's shape, float32."""
    kx, kw, kg = jax.random.split(jax.random.key(0), 3)
    g_shape = x_shape[: len(x_shape) - in_dims] + w_shape[in_dims:]
    return (jax.random.normal(kx, x_shape), jax.random.normal(kw, w_shape),
            jax.random.normal(kg, g_shape))


def _jax_dot(x, w, in_dims, precision=None):
    contract = (tuple(range(x.ndim - in_dims, x.ndim)), tuple(range(in_dims)))
    return jax.lax.dot_general(x, w, (contract, ((), ())), precision=precision)


@pytest.mark.parametrize("x_shape, w_shape, in_dims", CASES)
def test_float32_is_jax_dot_general_and_its_gradient(x_shape, w_shape, in_dims):
    x, w, g = _case(x_shape, w_shape, in_dims)
    out, pull = jax.vjp(lambda x, w: dense_dot(x, w, in_dims), x, w)
    ref, ref_pull = jax.vjp(lambda x, w: _jax_dot(x, w, in_dims), x, w)
    np.testing.assert_array_equal(out, ref)
    for got, want in zip(pull(g), ref_pull(g), strict=True):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("x_shape, w_shape, in_dims", CASES)
def test_bfloat16_products_accumulate_in_float32(x_shape, w_shape, in_dims):
    """Forward and gradients equal the float32 products of the bfloat16 operands up to the
    final rounding to bfloat16, with bfloat16 results."""
    x, w, g = (a.astype(jnp.bfloat16) for a in _case(x_shape, w_shape, in_dims))
    out, pull = jax.vjp(lambda x, w: dense_dot(x, w, in_dims), x, w)
    dx, dw = jax.jit(pull)(g)
    assert out.dtype == dx.dtype == dw.dtype == jnp.bfloat16

    exact = jax.lax.Precision.HIGHEST
    f32 = [a.astype(jnp.float32) for a in (x, w, g)]
    ref, ref_pull = jax.vjp(lambda x, w: _jax_dot(x, w, in_dims, exact), *f32[:2])
    ref_dx, ref_dw = ref_pull(f32[2])
    for got, want in ((out, ref), (dx, ref_dx), (dw, ref_dw)):  # within bf16 rounding
        np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(want),
                                   rtol=2**-8, atol=2**-8)


def test_bfloat16_gradient_under_vmap_equals_each_replica_alone():
    x, w, g = (a.astype(jnp.bfloat16) for a in _case((2, 5, 8), (8, 12), 1))
    xs, ws = jnp.stack([x, x * 2]), jnp.stack([w, -w])

    def grads(x, w):
        return jax.grad(lambda x, w: jnp.sum(dense_dot(x, w).astype(jnp.float32)
                                             * g.astype(jnp.float32)), argnums=(0, 1))(x, w)

    batched = jax.vmap(grads)(xs, ws)
    for i in range(2):
        for got, want in zip((b[i] for b in batched), grads(xs[i], ws[i]), strict=True):
            np.testing.assert_array_equal(np.asarray(got, np.float32),
                                          np.asarray(want, np.float32))


EINSUMS = [  # (spec, a shape, b shape, out dtype in bfloat16): attention's two products
    ("BTKGH,BSKH->BKGTS", (2, 5, 2, 3, 4), (2, 7, 2, 4), jnp.float32),  # scores
    ("BKGTS,BSKH->BTKGH", (2, 2, 3, 5, 7), (2, 7, 2, 4), jnp.bfloat16),  # probs · v
    ("BKGTS,BSKH->BKGTH", (2, 2, 3, 5, 7), (2, 7, 2, 4), jnp.float32),  # blockwise's
]


def _einsum_case(spec, a_shape, b_shape):
    ka, kb, kg = jax.random.split(jax.random.key(1), 3)
    a, b = jax.random.normal(ka, a_shape), jax.random.normal(kb, b_shape)
    return a, b, jax.random.normal(kg, jnp.einsum(spec, a, b).shape)


@pytest.mark.parametrize("spec, a_shape, b_shape, out_dtype", EINSUMS)
def test_einsum_in_float32_is_jnp_einsum_and_its_gradient(spec, a_shape, b_shape, out_dtype):
    a, b, g = _einsum_case(spec, a_shape, b_shape)
    out, pull = jax.vjp(lambda a, b: dense_dot_lib.einsum(spec, a, b), a, b)
    ref, ref_pull = jax.vjp(
        lambda a, b: jnp.einsum(spec, a, b, preferred_element_type=jnp.float32), a, b)
    np.testing.assert_array_equal(out, ref)
    for got, want in zip(pull(g), ref_pull(g), strict=True):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("spec, a_shape, b_shape, out_dtype", EINSUMS)
def test_einsum_in_bfloat16_multiplies_bfloat16_into_float32(spec, a_shape, b_shape,
                                                              out_dtype):
    """Result in `out_dtype`, gradients in bfloat16, all within bfloat16 rounding of the
    float32 products of the same bfloat16 operands; and every product of the forward and
    backward pass takes two bfloat16 operands and returns float32 (no mixed-dtype dot,
    which XLA:CPU runs in float32)."""
    a, b, g = (x.astype(jnp.bfloat16) for x in _einsum_case(spec, a_shape, b_shape))

    def product(a, b):
        return dense_dot_lib.einsum(spec, a, b, out_dtype=out_dtype)

    out, pull = jax.vjp(product, a, b)
    da, db = jax.jit(pull)(g.astype(out_dtype))
    assert out.dtype == out_dtype and da.dtype == db.dtype == jnp.bfloat16

    exact = jax.lax.Precision.HIGHEST
    f32 = [x.astype(jnp.float32) for x in (a, b, g)]
    ref, ref_pull = jax.vjp(lambda a, b: jnp.einsum(spec, a, b, precision=exact), *f32[:2])
    for got, want in ((out, ref), *zip((da, db), ref_pull(f32[2]), strict=True)):
        np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(want),
                                   rtol=2**-7, atol=2**-7)

    def loss(a, b):
        return jnp.sum(product(a, b).astype(jnp.float32) * f32[2])

    jaxpr = jax.make_jaxpr(jax.grad(loss, argnums=(0, 1)))(a, b)
    dots = [e for e in _equations(jaxpr.jaxpr) if e.primitive.name == "dot_general"]
    assert len(dots) == 3
    for dot in dots:
        assert [v.aval.dtype for v in dot.invars] == [jnp.bfloat16, jnp.bfloat16]
        assert dot.outvars[0].aval.dtype == jnp.float32


def _equations(jaxpr):
    """Every equation of `jaxpr`, inside nested jaxprs (custom VJPs, pjit) too."""
    for eqn in jaxpr.eqns:
        yield eqn
        for param in eqn.params.values():
            inner = getattr(param, "jaxpr", param)
            if hasattr(inner, "eqns"):
                yield from _equations(inner)


def test_einsum_refuses_an_axis_summed_within_one_operand():
    a = jnp.ones((2, 3), jnp.bfloat16)
    with pytest.raises(ValueError, match="summed within"):
        dense_dot_lib.einsum("ij,jk->k", a, jnp.ones((3, 4), jnp.bfloat16))
