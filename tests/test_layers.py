"""Shared layer helpers of `sft_jax/models/layers.py`."""

import jax
import jax.numpy as jnp
import numpy as np

from sft_jax.models import layers


def test_materialize_cotangent_changes_no_value_and_no_gradient():
    x = jax.random.normal(jax.random.key(0), (2, 5, 8))
    w = jax.random.normal(jax.random.key(1), (8, 8))

    def loss(x, through):
        h = layers.materialize_cotangent(x) if through else x
        return jnp.sum(jnp.tanh(h @ w) * h) + jnp.sum(h**2)

    assert float(loss(x, True)) == float(loss(x, False))
    plain, through = (jax.jit(jax.grad(loss), static_argnums=1)(x, t) for t in (False, True))
    np.testing.assert_array_equal(np.asarray(through), np.asarray(plain))
    # On XLA:CPU the cotangent goes through one extra dot; the forward has none.
    hlo = jax.jit(jax.grad(loss), static_argnums=1).lower(x, True).as_text()
    assert hlo.count("dot_general") == jax.jit(jax.grad(loss), static_argnums=1).lower(
        x, False).as_text().count("dot_general") + 1
