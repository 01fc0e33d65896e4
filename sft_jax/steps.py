"""Pure train and eval steps, and how they are compiled (`jit` over a mesh, or `pmap`).

A task supplies `loss_fn(params, batch, rng, deterministic) -> (loss_sum, aux)` where
`loss_sum` is the loss summed over the batch and `aux["weight"]` the number of loss terms
(examples, or tokens) in it. The step sums both over micro-batches (and devices under
`pmap`) and divides once, so the update does not depend on how the batch was split.

Partial training (`sft_jax.peft`): given `combine(trainable, frozen) -> params`, the step
takes the frozen params as a fourth argument (not donated) and differentiates the loss of
`combine(state.params, frozen)` with respect to `state.params` (the trainable tree) only;
the optimizer and the metrics (`grad_norm`, `param_norm`) see the trainable tree.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax import lax
from jax.sharding import Mesh

from sft_jax import parallel
from sft_jax.state import TrainState

LossFn = Callable[[Any, dict, jax.Array, bool], tuple[jax.Array, dict]]
PMAP_AXIS = "devices"


def _tree_add(a, b):
    return jax.tree.map(jnp.add, a, b)


def make_train_step(
    loss_fn: LossFn,
    tx: optax.GradientTransformation,
    schedule: optax.Schedule,
    axis_name: str | None = None,
    combine: Callable[[Any, Any], Any] | None = None,
) -> Callable[..., tuple[TrainState, dict]]:
    """`train_step(state, batch, rng) -> (state, metrics)`; batch leaves are [k, b, ...].
    With `combine`: `train_step(state, batch, rng, frozen)`."""

    def train_step(state: TrainState, batch: dict, rng: jax.Array, frozen=None):
        if combine is None:
            grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
        else:
            grad_fn = jax.value_and_grad(
                lambda p, *args: loss_fn(combine(p, frozen), *args), has_aux=True)
        rng = jax.random.fold_in(rng, state.step)
        if axis_name is not None:
            rng = jax.random.fold_in(rng, lax.axis_index(axis_name))

        def micro_step(carry, xs):
            grads, loss_sum, weight = carry
            micro_batch, index = xs
            (loss, aux), g = grad_fn(state.params, micro_batch, jax.random.fold_in(rng, index),
                                     False)
            return (_tree_add(grads, g), loss_sum + loss, weight + aux["weight"]), None

        num_micro = jax.tree.leaves(batch)[0].shape[0]
        zeros = jax.tree.map(jnp.zeros_like, state.params)
        init = (zeros, jnp.zeros((), jnp.float32), jnp.zeros((), jnp.float32))
        (grads, loss_sum, weight), _ = lax.scan(micro_step, init, (batch, jnp.arange(num_micro)))
        if axis_name is not None:
            grads, loss_sum, weight = lax.psum((grads, loss_sum, weight), axis_name)
        denom = jnp.maximum(weight, 1.0)
        grads = jax.tree.map(lambda g: g / denom, grads)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {
            "loss": loss_sum / denom,
            "grad_norm": optax.global_norm(grads),
            "param_norm": optax.global_norm(params),
            "learning_rate": schedule(state.step),
            "weight": weight,
        }
        new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
        return new_state, metrics

    return train_step


def over_replicas(train_step, frozen: bool = False):
    """`train_step` mapped over a leading replica axis of the state, the batch
    ([K, k, b, ...]) and the rng ([K] keys); frozen params (if any) are shared."""
    in_axes = (0, 0, 0, None) if frozen else (0, 0, 0)
    return jax.vmap(train_step, in_axes=in_axes)


def compile_train_step(train_step, mode: str, mesh: Mesh | None, state_shardings=None,
                       frozen: bool = False):
    """`jit` with the state donated and sharded as created, or `pmap` over local devices.
    `frozen`: the step takes frozen params (replicated under `pmap`) as a 4th argument.
    The step is traced at its first call: under `jit`, make that call (and any `.lower`)
    inside `parallel.sharding_context`, or the models' activation constraints are no-ops
    (`sft_jax.placement` pairs each mode with its context)."""
    if mode == "pmap":
        in_axes = (0, 0, None, 0) if frozen else (0, 0, None)
        return jax.pmap(train_step, axis_name=PMAP_AXIS, in_axes=in_axes, donate_argnums=0)
    metrics_sharding = parallel.replicated(mesh)
    return jax.jit(train_step, out_shardings=(state_shardings, metrics_sharding),
                   donate_argnums=0)


def compile_eval_step(eval_fn: Callable[[Any, dict], dict], mode: str, mesh: Mesh | None):
    """`eval_fn(params, batch) -> per-row outputs`; every process receives all rows."""
    if mode == "pmap":
        return jax.pmap(eval_fn, axis_name=PMAP_AXIS)
    return jax.jit(eval_fn, out_shardings=parallel.replicated(mesh))
