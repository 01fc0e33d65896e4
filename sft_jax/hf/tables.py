"""The tensor-table engine every family's converter is declared with.

A family lists its tensors as `Entry` rows: our leaf path(s), the Hugging Face name
(without the model prefix), the HF shape, and the two reshapes. The engine reads a state
dict into our nested params (`take`: every tensor present and shape-checked, or one
`UserInputError` naming it), writes params back (`put`), and builds the common rows:
`same` (identical storage: norms, embedding tables, Conv1D), `layer_norm` (weight and
bias) and `linear` (a torch `Linear`, weight [out, in], <-> our kernel
[*in_shape, *out_shape], heads split out). The reading and writing shared by the
decoder-only families is `sft_jax/hf/decoder_tables.py`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np

from sft_jax.errors import UserInputError

log = logging.getLogger(__name__)

Params = dict[str, Any]
Path = tuple[str, ...]


class Entry:
    """One HF tensor and the leaf (or leaves) of ours it holds.

    `to_ours(hf_array) -> tuple of arrays` (one per path); `to_hf(*arrays) -> hf_array`.
    """

    def __init__(
        self,
        paths: Sequence[Path],
        hf_name: str,
        hf_shape: tuple[int, ...],
        to_ours: Callable[[np.ndarray], tuple[np.ndarray, ...]],
        to_hf: Callable[..., np.ndarray],
    ):
        self.paths, self.hf_name, self.hf_shape = tuple(paths), hf_name, hf_shape
        self.to_ours, self.to_hf = to_ours, to_hf


def same(path: Path, hf_name: str, hf_shape: tuple[int, ...]) -> Entry:
    """A tensor stored identically on both sides (norms, embedding tables, Conv1D)."""
    return Entry([path], hf_name, hf_shape, lambda x: (x,), lambda x: x)


def linear(
    path: Path,
    hf: str,
    in_shape: tuple[int, ...],
    out_shape: tuple[int, ...],
    *,
    bias: bool,
) -> list[Entry]:
    """A torch Linear `hf` (weight [out, in]) <-> our kernel [*in_shape, *out_shape]."""
    d_in, d_out = int(np.prod(in_shape)), int(np.prod(out_shape))
    kernel_shape = (*in_shape, *out_shape)
    out = [
        Entry(
            [(*path, "kernel")],
            f"{hf}.weight",
            (d_out, d_in),
            lambda w: (w.T.reshape(kernel_shape),),
            lambda k: k.reshape(d_in, d_out).T,
        )
    ]
    if bias:
        out.append(
            Entry(
                [(*path, "bias")],
                f"{hf}.bias",
                (d_out,),
                lambda b: (b.reshape(out_shape),),
                lambda b: b.reshape(d_out),
            )
        )
    return out


def layer_norm(path: Path, hf: str, d: int) -> list[Entry]:
    """A LayerNorm `hf` (weight, bias [D]) <-> our norm scale, bias [D]."""
    return [same((*path, "scale"), f"{hf}.weight", (d,)), same((*path, "bias"), f"{hf}.bias", (d,))]


def has_all(state: Mapping[str, np.ndarray], prefix: str, entries: Sequence[Entry]) -> bool:
    return all(prefix + e.hf_name in state for e in entries)


def take(
    state: Mapping[str, np.ndarray],
    entries: Sequence[Entry],
    prefix: str,
    dtype: Any,
    *,
    where: str,
) -> Params:
    """Our (nested dict) params from the HF tensors `prefix + entry.hf_name`."""
    missing = [e.hf_name for e in entries if prefix + e.hf_name not in state]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise UserInputError(f"{where}: missing weight {prefix}{missing[0]}{more}")
    params: Params = {}
    for e in entries:
        value = np.asarray(state[prefix + e.hf_name])
        if value.shape != e.hf_shape:
            raise UserInputError(
                f"{where}: weight {prefix}{e.hf_name} has shape {list(value.shape)}, "
                f"config.json implies {list(e.hf_shape)}"
            )
        for path, leaf in zip(e.paths, e.to_ours(value), strict=True):
            node = params
            for key in path[:-1]:
                node = node.setdefault(key, {})
            node[path[-1]] = np.ascontiguousarray(leaf.astype(dtype))
    return params


def to_numpy(params: Any) -> Any:
    """Unbox flax metadata and fetch to host as float32 numpy arrays."""
    params = nn.meta.unbox(params)
    return jax.tree_util.tree_map(lambda x: np.asarray(jax.device_get(x), np.float32), params)


def put(params: Params, entries: Sequence[Entry], prefix: str, out: dict[str, np.ndarray]):
    """Write HF tensors `prefix + entry.hf_name` from our (numpy) params into `out`."""
    for e in entries:
        leaves = []
        for path in e.paths:
            node = params
            for key in path:
                node = node[key]
            leaves.append(node)
        out[prefix + e.hf_name] = np.ascontiguousarray(e.to_hf(*leaves), dtype=np.float32)


def detect_prefix(
    state: Mapping[str, np.ndarray],
    probe: str,
    prefixes: Sequence[str],
    *,
    where: str,
    what: str,
    shown: str | None = None,
) -> str:
    """The first of `prefixes` under which `probe` exists; the error names `probe` under
    `shown` (default: the first prefix)."""
    for prefix in prefixes:
        if prefix + probe in state:
            return prefix
    shown = prefixes[0] if shown is None else shown
    raise UserInputError(f"{where}: missing weight {shown}{probe} (not a {what} checkpoint?)")


def log_unused(state: Mapping[str, np.ndarray], known: set[str], ignored: Sequence[str]) -> None:
    unused = [k for k in state if k not in known and not k.endswith(tuple(ignored))]
    if unused:
        log.warning("ignoring %d checkpoint tensors, e.g. %s", len(unused), unused[0])


def first_present(state: Mapping[str, np.ndarray], names: Sequence[str], *, where: str) -> str:
    """The first of `names` in `state`, or one `UserInputError` naming them all."""
    for name in names:
        if name in state:
            return name
    raise UserInputError(f"{where}: missing weight {names[0]} (nor {', '.join(names[1:])})")


def head_entries(hf_name: str, d_in: int, out: int, path: Path) -> list[Entry]:
    """A bias-free head (`lm_head`, `score`) [out, D] <-> kernel [D, out]."""
    return linear(path, hf_name, (d_in,), (out,), bias=False)
