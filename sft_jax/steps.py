"""Pure train and eval steps, and how they are compiled (`jit` over a mesh, or `pmap`).

A task supplies `loss_fn(params, batch, rng, deterministic) -> (loss_sum, aux)` where
`loss_sum` is the loss summed over the batch and `aux["weight"]` the number of loss terms
(examples, or tokens) in it. The step sums both over micro-batches (and devices under
`pmap`) and divides once, so the update does not depend on how the batch was split.

Partial training (`sft_jax.peft`): given `combine(trainable, frozen) -> params`, the step
takes the frozen params as a fourth argument (not donated) and differentiates the loss of
`combine(state.params, frozen)` with respect to `state.params` (the trainable tree) only;
the optimizer and the metrics (`grad_norm`, `param_norm`) see the trainable tree.

Non-finite guard: every step's metrics hold `finite` (1.0, or 0.0 when the loss, the
gradient norm or the updated params' norm is not finite), computed on device. With
`on_nonfinite="skip"` a non-finite update is not applied (params and optimizer state are
kept; the step counter still advances). `nonfinite_tracker` folds the flags of the steps
between two host checks on device, so the loop reads them only where it syncs anyway.
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
    on_nonfinite: str = "stop",
) -> Callable[..., tuple[TrainState, dict]]:
    """`train_step(state, batch, rng) -> (state, metrics)`; batch leaves are [k, b, ...].
    With `combine`: `train_step(state, batch, rng, frozen)`. `on_nonfinite="skip"` keeps
    the params and optimizer state of a step whose `finite` flag is 0; any other value
    applies every update (the loop decides what a flag means)."""

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
        loss, grad_norm, param_norm = loss_sum / denom, optax.global_norm(grads), \
            optax.global_norm(params)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & jnp.isfinite(param_norm)
        if on_nonfinite == "skip":
            params, opt_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old),
                                             (params, opt_state),
                                             (state.params, state.opt_state))
            param_norm = jnp.where(finite, param_norm, optax.global_norm(state.params))
        metrics = {
            "loss": loss,
            "grad_norm": grad_norm,
            "param_norm": param_norm,
            "learning_rate": schedule(state.step),
            "weight": weight,
            "finite": finite.astype(jnp.float32),
        }
        new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
        return new_state, metrics

    return train_step


def over_replicas(train_step, frozen: bool = False):
    """`train_step` mapped over a leading replica axis of the state, the batch
    ([K, k, b, ...]) and the rng ([K] keys); frozen params (if any) are shared."""
    in_axes = (0, 0, 0, None) if frozen else (0, 0, 0)
    return jax.vmap(train_step, in_axes=in_axes)


def nonfinite_tracker(mode: str) -> Callable:
    """`track(tracker, finite, step) -> tracker`, compiled for the placement `mode`
    (`jit` or `pmap`): `tracker` is None (nothing seen since the last host check) or
    (count, first), int32 arrays shaped like the step's `finite` metric ([] or [K]
    replicas; a leading device axis under pmap): how many steps since then had a 0 flag
    and the first of them (0 if none)."""

    def track(tracker, finite, step):
        bad = (finite == 0).astype(jnp.int32)
        count, first = tracker if tracker is not None else (
            jnp.zeros_like(bad), jnp.zeros_like(bad))
        first = jnp.where((bad > 0) & (count == 0), jnp.asarray(step, jnp.int32), first)
        return count + bad, first

    if mode == "pmap":
        return jax.pmap(track, axis_name=PMAP_AXIS, in_axes=(0, 0, None))
    return jax.jit(track)


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
