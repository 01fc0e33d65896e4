"""Where a run's arrays live and how its steps run there: one object per parallelism.

`train.py` speaks only to a `Placement`; `for_config` is the one place that picks the
parallelism (`config.train.parallelism`):

- `MeshPlacement` (`jit`): one program over the (data, fsdp, tensor) mesh. Its `context()`
  (`parallel.sharding_context`) sets the mesh and the logical-axis rules, so the models'
  `nn.with_logical_constraint` calls shard their activations; the loop enters it around
  state creation, every step and every evaluation, prediction and export call.
- `PmapPlacement` (`pmap`): plain data parallelism, a thin adapter over the same steps.
  The state is created on one device, then replicated on every local device; batches get
  a leading device axis; the step `psum`s over `steps.PMAP_AXIS`. Its context sets
  nothing: a `pmap` program has no mesh for the constraints to name.

The operations, in the jit form and what they become under `pmap`:

| operation                        | jit                    | pmap                          |
|----------------------------------|------------------------|-------------------------------|
| `train_batch(rows, k)`           | [k, b, ...] global     | [devices, k, b/devices, ...]  |
| `eval_batch(rows)`               | [b, ...] global        | [devices, b/devices, ...]     |
| `to_steps(tree)`                 | the tree itself        | a copy on each local device   |
| `from_steps(tree)`               | the tree itself        | replica 0, on `mesh`          |
| `host_metrics(metrics)`          | numpy                  | numpy of device 0's (psummed) |
| `host_rows(outputs)`             | numpy                  | numpy, device axis flattened  |

`from_steps` gives the jit form of a tree (for checkpoints, best params, evaluation
callbacks and export); `to_steps` is its inverse.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping

import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from sft_jax import parallel, steps


class MeshPlacement:
    """`jit` over `parallel.make_mesh(config.mesh)`, state sharded by the logical rules."""

    mode = "jit"
    axis_name: str | None = None  # the collective axis the train step sums over

    def __init__(self, config: ml_collections.ConfigDict):
        self.mesh = self._make_mesh(config)
        self.rules = parallel.logical_rules(config.mesh)

    @staticmethod
    def _make_mesh(config: ml_collections.ConfigDict) -> jax.sharding.Mesh:
        return parallel.make_mesh(config.mesh)

    def context(self) -> contextlib.AbstractContextManager:
        """Enter around tracing and running anything that applies the model."""
        return parallel.sharding_context(self.mesh, self.rules)

    def compile_train_step(self, train_step: Callable, state_shardings,
                           frozen: bool = False) -> Callable:
        return steps.compile_train_step(train_step, self.mode, self.mesh, state_shardings,
                                        frozen=frozen)

    def compile_eval_step(self, eval_fn: Callable) -> Callable:
        return steps.compile_eval_step(eval_fn, self.mode, self.mesh)

    def train_batch(self, batch: Mapping[str, np.ndarray], micro_batches: int) -> dict:
        """This process's rows -> the train step's [k, b, ...] micro-batches."""
        return parallel.to_global(parallel.split_micro_batches(batch, micro_batches),
                                  self.mesh, leading=1)

    def eval_batch(self, batch: Mapping[str, np.ndarray]) -> dict:
        """This process's rows -> the eval step's [b, ...] batch."""
        return parallel.to_global(batch, self.mesh, leading=0)

    def to_steps(self, tree):
        return tree

    def from_steps(self, tree):
        return tree

    def host_metrics(self, metrics: Mapping[str, jax.Array]) -> dict[str, np.ndarray]:
        """The step's metrics as float64 numpy ([K] with replicas, else scalars)."""
        return {k: np.asarray(v, np.float64) for k, v in metrics.items()}

    def host_rows(self, outputs: Mapping[str, jax.Array]) -> dict[str, np.ndarray]:
        """The eval step's per-row outputs (already every process's rows) as numpy."""
        return {k: np.asarray(v) for k, v in outputs.items()}


class PmapPlacement(MeshPlacement):
    """`pmap` over the local devices; the state is created on a one-device mesh and
    replicated by `to_steps`."""

    mode = "pmap"
    axis_name = steps.PMAP_AXIS

    @staticmethod
    def _make_mesh(config: ml_collections.ConfigDict) -> jax.sharding.Mesh:
        return jax.sharding.Mesh(np.asarray(jax.local_devices()[:1]).reshape(1, 1, 1),
                                 parallel.MESH_AXES)

    def context(self) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    def train_batch(self, batch: Mapping[str, np.ndarray], micro_batches: int) -> dict:
        return parallel.to_pmap(batch, micro_batches)

    def eval_batch(self, batch: Mapping[str, np.ndarray]) -> dict:
        return {k: v[:, 0] for k, v in parallel.to_pmap(batch, 1).items()}

    def to_steps(self, tree):
        return parallel.replicate(tree)

    def from_steps(self, tree):
        return jax.device_put(parallel.unreplicate(tree), parallel.replicated(self.mesh))

    def host_metrics(self, metrics: Mapping[str, jax.Array]) -> dict[str, np.ndarray]:
        # Every device holds the same (psummed) metrics.
        return {k: np.asarray(v, np.float64).reshape(-1)[0] for k, v in metrics.items()}

    def host_rows(self, outputs: Mapping[str, jax.Array]) -> dict[str, np.ndarray]:
        rows = {k: np.asarray(v).reshape((-1, *v.shape[2:])) for k, v in outputs.items()}
        if jax.process_count() > 1:
            rows = {k: np.asarray(multihost_utils.process_allgather(v)).reshape(
                (-1, *v.shape[1:])) for k, v in rows.items()}
        return rows


def for_config(config: ml_collections.ConfigDict) -> MeshPlacement:
    """The placement `config.train.parallelism` ('jit' or 'pmap') names."""
    placements: dict[str, type[MeshPlacement]] = {"jit": MeshPlacement, "pmap": PmapPlacement}
    return placements[config.train.parallelism](config)
