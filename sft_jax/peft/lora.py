"""LoRA as a weight delta on kernels of any param tree: W' = W + (alpha / r) · A·B.

No model code changes: the model is applied to params whose target kernels already
hold the delta, `combine`d inside the train step from the frozen base and the adapter.

Shapes. Our `DenseGeneral` kernels keep their heads: a kernel is [*I, *O] with `in_dims`
input axes, e.g. query [D, N, H] (I = (D,)), attention out [N, H, D] (I = (N, H)), mlp
[D, F]. Seen as a matrix [prod(I), prod(O)] it is the transpose of the Hugging Face
`nn.Linear` weight [out_features, in_features] (the converters in `sft_jax/hf/` reshape
exactly so). The adapter of a kernel is

    A  lora_a  [in_features, r]   PEFT's lora_A.weight [r, in_features], transposed
    B  lora_b  [r, out_features]  PEFT's lora_B.weight [out_features, r], transposed

and the delta is `(A @ B).reshape(kernel.shape)`. `in_dims` comes from the kernel's
logical axis names: inputs first, so 2-D kernels have one input axis and a 3-D kernel
contracts the model width ('embed') on whichever end it sits.

Initialisation as PEFT (`init_lora_weights=True`): A ~ kaiming-uniform with a = sqrt(5)
on the [r, in] weight, i.e. U(-1/sqrt(in), 1/sqrt(in)); B = 0, so a fresh adapter leaves
the model exactly as it was.

Dropout. PEFT drops the adapter's input (y = x·W + s·dropout(x)·A·B). A weight delta has no
input of its own to drop, so only `lora_dropout = 0` is implemented (bad input otherwise);
with dropout 0 both are the same function. Everything else — the merged export, the
adapter in PEFT's layout — is exact.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
from flax import traverse_util

from sft_jax.errors import UserInputError
from sft_jax.peft.freeze import Path, matches, path_str

A, B = "lora_a", "lora_b"


@dataclasses.dataclass(frozen=True)
class Target:
    """One kernel with an adapter: its path, shape, and matrix view [d_in, d_out]."""

    path: Path
    shape: tuple[int, ...]
    d_in: int
    d_out: int


def in_dims(shape: Sequence[int], names: Sequence[str | None] | None, where: str) -> int:
    """Number of leading input axes of a kernel, from its logical axis names."""
    if len(shape) == 2:
        return 1
    if names and names[0] == "embed":
        return 1
    if names and names[-1] == "embed":
        return len(shape) - 1
    raise UserInputError(
        f"peft.lora_targets: cannot tell the input axes of {where} {tuple(shape)} "
        f"(logical axes {names}); target 2-D kernels or projections from/to the model width"
    )


def find_targets(
    shapes: Mapping[Path, tuple[int, ...]],
    names: Mapping[Path, Sequence[str | None] | None],
    patterns,
    exclude: set[Path],
) -> list[Target]:
    """Kernels (leaves named 'kernel', >= 2-D) whose path matches, minus `exclude`."""
    targets = []
    for path, shape in sorted(shapes.items()):
        if path[-1] != "kernel" or len(shape) < 2 or path in exclude:
            continue
        if not matches(path, patterns):
            continue
        k = in_dims(shape, names.get(path), path_str(path))
        targets.append(Target(path, tuple(shape), math.prod(shape[:k]), math.prod(shape[k:])))
    return targets


def init(targets: Sequence[Target], rank: int, rng: jax.Array, dtype=jnp.float32) -> dict:
    """Nested {<kernel path>: {lora_a, lora_b}}: A kaiming-uniform (PEFT), B zeros."""
    flat = {}
    for i, t in enumerate(targets):
        bound = 1.0 / math.sqrt(t.d_in)
        a = jax.random.uniform(jax.random.fold_in(rng, i), (t.d_in, rank), dtype, -bound, bound)
        flat[(*t.path, A)] = a
        flat[(*t.path, B)] = jnp.zeros((rank, t.d_out), dtype)
    return traverse_util.unflatten_dict(flat)


def delta(a: jax.Array, b: jax.Array, scale: float, shape: Sequence[int]) -> jax.Array:
    """scale · A @ B in the kernel's shape (full precision: it is added to the weight)."""
    ab = jnp.matmul(a, b, precision=jax.lax.Precision.HIGHEST)  # d_in d_out
    return (scale * ab).reshape(shape)


def apply(flat_params: dict, adapters: Mapping, targets: Sequence[Target], scale: float) -> None:
    """Adds each target's delta to its kernel in `flat_params` (a flat {path: leaf} dict)."""
    for t in targets:
        node = adapters
        for key in t.path:
            node = node[key]
        w = flat_params[t.path]
        flat_params[t.path] = w + delta(node[A], node[B], scale, t.shape).astype(w.dtype)
