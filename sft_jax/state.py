"""`TrainState` and its initialisation straight into its shardings.

The full state is never built on the host: `jax.eval_shape` gives the abstract tree with
logical axis names, the rules give each leaf a `NamedSharding`, and a jitted init writes
every leaf directly where it lives. Pretrained weights are then placed leaf by leaf, each
process copying only the slices its devices hold.

With a `sft_jax.peft.Plan` the state holds only what trains (`params` = the trainable
tree, `opt_state` over it); the frozen base is returned beside the state, sharded like the
params it came from, and is passed to the steps as a separate, non-donated argument.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import linen as nn
from jax.sharding import Mesh

from sft_jax import parallel
from sft_jax.errors import UserInputError


@flax.struct.dataclass
class TrainState:
    step: jax.Array  # int32 scalar: optimizer updates done
    params: Any
    opt_state: Any


def _place(value: np.ndarray, like: jax.Array, sharding, where: str) -> jax.Array:
    value = np.asarray(value)
    if value.shape != like.shape:
        raise UserInputError(
            f"{where}: checkpoint shape {value.shape} does not match the model's {like.shape}"
        )
    value = value.astype(like.dtype)
    return jax.make_array_from_callback(value.shape, sharding, lambda idx: value[idx])


def overlay(params, pretrained: Mapping, shardings, prefix: str = "") -> Any:
    """Replaces the leaves of `params` found in the nested dict `pretrained`."""
    if not isinstance(pretrained, Mapping):
        return _place(pretrained, params, shardings, prefix.rstrip("/"))
    out = dict(params)
    for key, sub in pretrained.items():
        if key not in params:
            raise UserInputError(f"checkpoint: parameter {prefix}{key} does not exist in the model")
        out[key] = overlay(params[key], sub, shardings[key], f"{prefix}{key}/")
    return out


def _init_fn(module: nn.Module, init_batch: Mapping[str, np.ndarray]):
    def init_params(rng):
        return module.init({"params": rng, "dropout": rng}, **init_batch)["params"]

    return init_params


def abstract_params(module: nn.Module, init_batch: Mapping[str, np.ndarray], seed: int = 0):
    """The params' ShapeDtypeStructs, boxed with their logical axis names (no compute)."""
    return jax.eval_shape(_init_fn(module, init_batch), jax.random.key(seed))


def create_train_state(
    module: nn.Module,
    init_batch: Mapping[str, np.ndarray],
    pretrained: Mapping | None,
    tx: optax.GradientTransformation,
    mesh: Mesh,
    rules,
    seed: int,
    peft=None,
) -> tuple[TrainState, Any, Any]:
    """Returns the state, sharded over `mesh`, the tree of its shardings, and the frozen
    params (None without a `peft` plan)."""
    init_params = _init_fn(module, init_batch)
    rng = jax.random.key(seed)
    boxed = jax.eval_shape(init_params, rng)
    p_shardings = parallel.param_shardings(boxed, mesh, rules)
    params = jax.jit(lambda r: nn.unbox(init_params(r)), out_shardings=p_shardings)(rng)
    if pretrained:
        params = overlay(params, pretrained, p_shardings)
    frozen = None
    if peft is not None:
        p_shardings, _ = peft.shardings(p_shardings, mesh)
        adapters = jax.jit(peft.init_adapters, out_shardings=p_shardings.get("lora"))(
            jax.random.fold_in(rng, 1))
        params, frozen = peft.split(params, adapters)  # leaves stay where they are

    def init_state(params):
        return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))

    abstract = jax.eval_shape(init_state, params)
    shardings = _state_shardings(abstract, p_shardings, mesh)
    state = jax.jit(init_state, out_shardings=shardings, donate_argnums=0)(params)
    return state, shardings, frozen


def _state_shardings(abstract: TrainState, p_shardings, mesh: Mesh):
    """Optimizer moments (subtrees shaped like the params) follow the params' shardings;
    counters and other small leaves are replicated."""
    params_def = jax.tree.structure(abstract.params)

    def is_param_tree(x) -> bool:
        return jax.tree.structure(x) == params_def

    opt = jax.tree.map(
        lambda x: p_shardings if is_param_tree(x) else parallel.replicated(mesh),
        abstract.opt_state,
        is_leaf=is_param_tree,
    )
    return TrainState(step=parallel.replicated(mesh), params=p_shardings, opt_state=opt)


def abstract_like(tree, shardings) -> Any:
    """ShapeDtypeStructs carrying `shardings`: the restore target of a checkpoint."""
    return jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings
    )



def replica_shardings(shardings, mesh: Mesh):
    """Shardings of a tree stacked on a leading replica axis: that axis is not sharded,
    each replica's leaf is placed as `shardings` places a single one."""
    return jax.tree.map(
        lambda s: jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(None, *s.spec)),
        shardings)


class ReplicaStack:
    """Builds a tree stacked on a leading replica axis one replica at a time, so that at
    most K + 1 replicas are in memory (not 2K, as stacking K finished trees would be).

        stack = ReplicaStack(K, shardings)   # shardings from `replica_shardings`
        for k in range(K):
            stack.set(k, tree_k)
        stacked = stack.tree
    """

    def __init__(self, replicas: int, shardings):
        self.replicas, self.shardings, self.tree = replicas, shardings, None
        self._set = jax.jit(
            lambda stacked, tree, k: jax.tree.map(lambda a, x: a.at[k].set(x), stacked, tree),
            out_shardings=shardings, donate_argnums=0)

    def set(self, k: int, tree) -> None:
        if self.tree is None:
            self.tree = jax.jit(
                lambda t: jax.tree.map(
                    lambda x: jnp.zeros((self.replicas, *x.shape), x.dtype), t),
                out_shardings=self.shardings)(tree)
        self.tree = self._set(self.tree, tree, jnp.int32(k))


def replica(tree, k: int, shardings) -> Any:
    """Replica k of a tree stacked by `ReplicaStack`, placed by `shardings` (one replica's);
    sliced inside jit, so it works on arrays spread over several processes too."""
    return jax.jit(lambda t, i: jax.tree.map(lambda x: x[i], t),
                   out_shardings=shardings)(tree, jnp.int32(k))


def unstacked(tree, shardings) -> Any:
    """ShapeDtypeStructs of one replica of a stacked tree, carrying `shardings`."""
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape[1:], x.dtype, sharding=s),
                        tree, shardings)
