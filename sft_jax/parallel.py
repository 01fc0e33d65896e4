"""Devices: multi-host set-up, the mesh, logical-axis shardings, host batches -> global arrays.

Two modes, chosen by `config.train.parallelism`:
- `jit`: one program over a `Mesh` with axes (data, fsdp, tensor). Parameters carry logical
  axis names (`sft_jax.models.axes`); `config.mesh.rules` map them to mesh axes. Batches are
  global `jax.Array`s sharded over (data, fsdp) along the batch dimension. Programs are
  traced inside `sharding_context`, so the models' activation constraints apply too.
- `pmap`: plain data parallelism over the local devices, state replicated.

`sft_jax.placement` puts these pieces together, one object per mode.

Each process feeds only its own rows (`jax.make_array_from_process_local_data`).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping, Sequence

import jax
import ml_collections
import numpy as np
from flax import linen as nn
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from sft_jax.data.pipeline import pad_to_lengths
from sft_jax.errors import UserInputError

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

log = logging.getLogger(__name__)


def initialize_distributed(config: ml_collections.ConfigDict) -> None:
    """Calls `jax.distributed.initialize` when the config asks for several processes (a
    config without a `distributed` section runs in one)."""
    dist = config.get("distributed")
    if dist is None:
        return
    if dist.coordinator_address:
        if dist.num_processes < 1 or dist.process_id < 0:
            raise UserInputError(
                "distributed.coordinator_address is set: set distributed.num_processes and "
                "distributed.process_id too"
            )
        jax.distributed.initialize(
            coordinator_address=dist.coordinator_address,
            num_processes=dist.num_processes,
            process_id=dist.process_id,
            local_device_ids=list(dist.local_device_ids) or None,
        )
    elif dist.initialize:  # TPU pods, SLURM, ...: JAX detects the cluster itself.
        jax.distributed.initialize()


def make_mesh(mesh_config: ml_collections.ConfigDict) -> Mesh:
    """A (data, fsdp, tensor) mesh over all devices; one axis may be -1 (the rest)."""
    n = jax.device_count()
    shape = [int(mesh_config[a]) for a in MESH_AXES]
    if shape.count(-1) > 1:
        raise UserInputError("mesh: at most one of mesh.data/fsdp/tensor may be -1")
    known = int(np.prod([s for s in shape if s != -1]))
    if -1 in shape:
        if known <= 0 or n % known:
            raise UserInputError(f"mesh: {shape} does not divide the {n} devices")
        shape[shape.index(-1)] = n // known
    if int(np.prod(shape)) != n:
        raise UserInputError(
            f"mesh: data*fsdp*tensor = {int(np.prod(shape))} but there are {n} devices"
        )
    devices = np.asarray(jax.devices()).reshape(shape)
    return Mesh(devices, MESH_AXES)


def logical_rules(mesh_config: ml_collections.ConfigDict) -> tuple:
    """`config.mesh.rules` as flax's logical-axis rules: ((logical name, mesh axes), ...)."""
    return tuple((name, tuple(axes) if isinstance(axes, list) else axes)
                 for name, axes in mesh_config.rules)


@contextlib.contextmanager
def sharding_context(mesh: Mesh, rules) -> Iterator[None]:
    """`mesh` as the context mesh (`jax.set_mesh`) and `rules` as flax's logical-axis rules.

    Inside it, `nn.with_logical_constraint(x, names)` in a traced function becomes a
    sharding constraint of x over `mesh` (a logical name without a rule, or whose mesh axes
    are already taken by an earlier dimension, leaves its dimension unconstrained).
    Outside it, flax makes those calls no-ops: they need both the rules and a context mesh
    (`with mesh:` does not set the latter). While it is entered, `jit` runs on `mesh`
    (an argument committed to other devices is an error) and `pmap` cannot run.
    """
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        yield


def _fits(shape: Sequence[int], spec: PartitionSpec, mesh: Mesh) -> PartitionSpec:
    """Drops the sharding of any dimension the mesh axes do not divide evenly."""
    out = []
    for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec)), strict=True):
        if axes is None:
            out.append(None)
            continue
        names = axes if isinstance(axes, tuple) else (axes,)
        size = int(np.prod([mesh.shape[a] for a in names]))
        out.append(axes if dim % size == 0 else None)
    return PartitionSpec(*out)


def param_shardings(abstract_boxed, mesh: Mesh, rules) -> object:
    """NamedShardings for a tree of (abstract) boxed params with logical axis names."""
    logical_specs = nn.get_partition_spec(abstract_boxed)
    mesh_specs = nn.logical_to_mesh(logical_specs, rules)
    # The boxes' values, with no constraint applied (these are shapes, not arrays).
    shapes = nn.meta.map_axis_meta(lambda x: x.unbox(apply_constraint=False), abstract_boxed)
    return jax.tree.map(
        lambda x, spec: NamedSharding(mesh, _fits(x.shape, spec, mesh)),
        shapes,
        mesh_specs,
        is_leaf=lambda x: isinstance(x, PartitionSpec),
    )


def batch_sharding(mesh: Mesh, ndim: int, leading: int = 1) -> NamedSharding:
    """Shards dim `leading` (after `leading` unsharded dims, e.g. micro-batches) over data/fsdp."""
    spec = [None] * leading + [BATCH_AXES] + [None] * (ndim - leading - 1)
    return NamedSharding(mesh, PartitionSpec(*spec))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def agree_on_length(batch: Mapping[str, np.ndarray], pad_values: Mapping[str, int]) -> dict:
    """Pads each [.., L] field to the longest L any process has for that field this step.

    Each process picks length buckets from its own rows (a seq2seq batch has one for the
    source fields and one for the target fields); a global array needs one shape.
    """
    batch = dict(batch)
    if jax.process_count() == 1:
        return batch
    seq_keys = sorted(k for k, v in batch.items() if v.ndim >= 2)
    if not seq_keys:
        return batch
    local = np.asarray([batch[k].shape[-1] for k in seq_keys], np.int32)  # fields
    longest = np.max(multihost_utils.process_allgather(local), axis=0)  # [procs, fields] -> fields
    return pad_to_lengths(batch, dict(zip(seq_keys, longest.tolist(), strict=True)),
                          pad_values)


def split_micro_batches(batch: Mapping[str, np.ndarray], k: int) -> dict:
    """[k*b, ...] -> [k, b, ...]: consecutive rows form a micro-batch."""
    out = {}
    for key, v in batch.items():
        if v.shape[0] % k:
            raise ValueError(f"batch of {v.shape[0]} rows does not split into {k} micro-batches")
        out[key] = v.reshape((k, v.shape[0] // k, *v.shape[1:]))
    return out


def to_global(batch: Mapping[str, np.ndarray], mesh: Mesh, leading: int = 1) -> dict:
    """Host-local rows -> global arrays sharded over data/fsdp along dim `leading`."""
    return {
        k: jax.make_array_from_process_local_data(batch_sharding(mesh, v.ndim, leading), v)
        for k, v in batch.items()
    }


def to_pmap(batch: Mapping[str, np.ndarray], k: int) -> dict:
    """[k*b, ...] local rows -> [devices, k, b/devices, ...] for `pmap` (micro-batch major)."""
    n = jax.local_device_count()
    out = {}
    for key, v in batch.items():
        rows = v.shape[0]
        if rows % (k * n):
            raise UserInputError(
                f"train.batch_size: {rows} rows per process do not split over "
                f"{k} micro-batches x {n} devices"
            )
        v = v.reshape((k, n, rows // (k * n), *v.shape[1:]))
        out[key] = np.swapaxes(v, 0, 1)
    return out


def replicate(tree):
    """Copies every leaf to each local device, stacked on a leading axis (for `pmap`)."""
    n = jax.local_device_count()
    stacked = jax.tree.map(lambda x: np.broadcast_to(np.asarray(x), (n, *np.shape(x))), tree)
    return jax.pmap(lambda t: t)(stacked)


def unreplicate(tree):
    """The first replica of each `pmap`-replicated leaf."""
    return jax.tree.map(lambda x: x[0], tree)


def to_host(tree):
    """numpy copies of every leaf; arrays spread over processes are gathered (collective:
    every process must call this)."""

    def get(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return np.asarray(x)

    return jax.tree.map(get, tree)


def log_devices() -> None:
    log.debug(
        "JAX %s: process %d of %d, %d local / %d global devices (%s)",
        jax.__version__, jax.process_index(), jax.process_count(),
        jax.local_device_count(), jax.device_count(), jax.devices()[0].platform,
    )
