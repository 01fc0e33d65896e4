"""Fixed-shape batches from features: bucketed padding, seeded shuffling, per-process shards.

A *feature* is a dict made by a task: sequence fields are 1-D int (or float) arrays of
varying length (`input_ids`, `attention_mask`, ...), scalar fields are numbers (`label`).
Batches are dicts of numpy arrays with static shapes drawn from a small bucket set, so jit
compiles one program per bucket:
    sequence field   [B, L] int32 (float32 for float fields), L ∈ buckets, padded
    scalar field     [B]    int32 (float32), 0 in filler rows
    example_mask     [B]    float32, 1 real example, 0 filler row
    index            [B]    int32, eval only: position in `features`, -1 for filler

Sharding contract (train and eval): the order of one epoch (a seeded permutation π of the
N examples for training — optionally sorted by length inside windows of a few batches,
whose batches are then shuffled — for eval the identity, or an `order` such as
`length_order`'s, shortest first) defines global batch s = π[s*G:(s+1)*G];
process p of P yields the local batch of G/P examples π[s*G + j] with j ≡ p (mod P). The
union of all processes' local batches at step s is the global batch one process would see
with P = 1, and each process only reads (and `transform`s) its own examples.

The training iterator is built on grain: per epoch, `grain.MapDataset.source(features)
.shuffle(seed=hash(seed, epoch))[:S*G][p::P].map(transform).batch(G/P)` and the batch
for step s is read by random access. Grain's own `.repeat()` would run batches across
epoch boundaries (we drop each epoch's incomplete last global batch) and its checkpoint
state is tied to the process layout; indexing a per-epoch MapDataset gives the contract
above exactly, and a small state (seed, epoch, step) that is the same on every process.
The global batch stream does not depend on P, so a run may resume on another process
count. The permutation is grain's `index_shuffle`: the same for a given grain version.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import grain
import numpy as np

from sft_jax.errors import UserInputError

Buckets = Sequence[int] | Mapping[str, Sequence[int]]
Transform = Callable[[Any], dict]


def bucket_lengths(
    max_length: int,
    min_bucket: int = 16,
    *,
    explicit: Sequence[int] | None = None,
    config_key: str = "data.buckets",
) -> list[int]:
    """Padding lengths: powers of two from `min_bucket` up, capped and ending at max_length.

    `bucket_lengths(128) == [16, 32, 64, 128]`, `bucket_lengths(100) == [16, 32, 64, 100]`.
    An `explicit` list from the config is checked (positive, strictly increasing, ending at
    `max_length`) and returned instead.
    """
    if explicit is not None:
        out = [int(b) for b in explicit]
        if not out or out[0] <= 0 or any(a >= b for a, b in itertools.pairwise(out)):
            raise UserInputError(f"{config_key}: buckets {list(explicit)} must be positive "
                                 "and strictly increasing")
        if out[-1] != max_length:
            raise UserInputError(f"{config_key}: last bucket {out[-1]} must equal the max "
                                 f"length {max_length}")
        return out
    if max_length <= 0:
        raise UserInputError(f"max length must be positive, got {max_length}")
    out, b = [], 1 << max(0, math.ceil(math.log2(max(min_bucket, 1))))
    while b < max_length:
        out.append(b)
        b *= 2
    return [*out, max_length]


def _as_array(value: Any, field: str) -> np.ndarray:
    arr = np.asarray(value)
    if arr.dtype.kind not in "biuf" or arr.ndim > 1:
        raise TypeError(f"feature {field!r} must be a number or a 1-D numeric array, "
                        f"got {arr.dtype} with shape {arr.shape}")
    return arr


def _dtype(arr: np.ndarray) -> type:
    return np.float32 if arr.dtype.kind == "f" else np.int32


def pad_batch(
    examples: Sequence[Mapping[str, Any]],
    *,
    batch_size: int,
    buckets: Buckets,
    pad_values: Mapping[str, int | float],
    like: Mapping[str, Any] | None = None,
) -> dict[str, np.ndarray]:
    """Pad and stack up to `batch_size` examples into one fixed-shape batch.

    Sequence fields are padded with `pad_values[field]` (0 if absent) to L = the smallest
    bucket ≥ the longest sequence in the batch (one L for all fields; with a mapping
    `buckets[field]`, each field has its own L). Missing rows are filler rows (all padding,
    scalars 0, `example_mask` 0). `like`, an example, gives the fields when `examples` is
    empty (an all-filler batch).
    """
    if len(examples) > batch_size:
        raise ValueError(f"{len(examples)} examples do not fit in a batch of {batch_size}")
    template = examples[0] if examples else like
    if template is None:
        raise ValueError("an empty batch needs `like` to know its fields")
    if "example_mask" in template:
        raise ValueError("'example_mask' is reserved for pad_batch")
    cols = {k: [_as_array(ex[k], k) for ex in examples] for k in template}
    proto = {k: _as_array(template[k], k) for k in template}
    seq = [k for k in template if proto[k].ndim == 1]

    def bucket_for(need: int, fields: list[str]) -> int:
        bs = buckets[fields[0]] if isinstance(buckets, Mapping) else buckets
        for b in bs:
            if b >= need:
                return b
        raise ValueError(f"sequence length {need} of {'/'.join(fields)} exceeds the last "
                         f"bucket {bs[-1]}")

    groups = [[k] for k in seq] if isinstance(buckets, Mapping) else ([seq] if seq else [])
    lengths: dict[str, int] = {}
    for fields in groups:
        need = max((len(a) for k in fields for a in cols[k]), default=0)
        for k in fields:
            lengths[k] = bucket_for(need, fields)

    out: dict[str, np.ndarray] = {}
    for k in template:
        dtype = _dtype(proto[k])
        if k in lengths:
            arr = np.full((batch_size, lengths[k]), pad_values.get(k, 0), dtype)  # B L
            for i, a in enumerate(cols[k]):
                arr[i, : len(a)] = a
        else:
            arr = np.zeros((batch_size,), dtype)  # B
            arr[: len(examples)] = cols[k]
        out[k] = arr
    mask = np.zeros((batch_size,), np.float32)  # B
    mask[: len(examples)] = 1.0
    out["example_mask"] = mask
    return out


def steps_per_epoch(n_examples: int, global_batch_size: int) -> int:
    """Full global batches per epoch (the incomplete last batch is dropped)."""
    return n_examples // global_batch_size


def pad_to_lengths(batch: Mapping[str, np.ndarray], lengths: Mapping[str, int],
                   pad_values: Mapping[str, int | float]) -> dict[str, np.ndarray]:
    """Pads the last axis of each field named in `lengths` up to that length (with
    `pad_values[field]`, 0 if absent); fields already as long are kept."""
    padded = dict(batch)
    for k, length in lengths.items():
        v = batch[k]
        if v.shape[-1] < length:
            pad = [(0, 0)] * (v.ndim - 1) + [(0, length - v.shape[-1])]
            padded[k] = np.pad(v, pad, constant_values=pad_values.get(k, 0))
    return padded


def pad_to_common_length(
    batches: Sequence[Mapping[str, np.ndarray]], pad_values: Mapping[str, int | float]
) -> list[dict[str, np.ndarray]]:
    """Pads each [B, L] field of every batch to the longest L that field has in any of
    them, so that the batches stack into one array per field (replicas drawing their own
    batches from one step)."""
    longest: dict[str, int] = {}
    for batch in batches:
        for k, v in batch.items():
            if v.ndim >= 2:
                longest[k] = max(longest.get(k, 0), v.shape[-1])
    return [pad_to_lengths(batch, longest, pad_values) for batch in batches]


def _local_batch_size(global_batch_size: int, process_count: int) -> int:
    if global_batch_size <= 0 or global_batch_size % process_count:
        raise UserInputError(f"global batch size {global_batch_size} must be a positive "
                             f"multiple of the process count {process_count}")
    return global_batch_size // process_count


def _epoch_seed(seed: int, epoch: int) -> int:
    """A uint32 shuffle seed that depends on (seed, epoch), not on seed + epoch."""
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])


class TrainIterator:
    """Infinite iterator of padded local training batches; see the module docstring.

    Each epoch is shuffled with a permutation seeded from (seed, epoch) (identity when
    `shuffle=False`); with `lengths` (a cheap per-example length, e.g. characters) and
    `group_batches=k > 1`, each window of k global batches is sorted by length before it
    is cut into batches, and the batches are shuffled. An epoch yields
    `steps_per_epoch(N, G)` batches of `G / P` examples.
    `transform` (e.g. tokenization) is applied lazily, only to this process's examples.
    `get_state()` is `{"seed", "epoch", "step", "num_examples", "global_batch_size"}`,
    JSON-serialisable and the same on every process; `set_state` resumes exactly.
    """

    def __init__(
        self,
        features: Sequence[Any],
        *,
        global_batch_size: int,
        seed: int,
        buckets: Buckets,
        pad_values: Mapping[str, int | float],
        process_index: int = 0,
        process_count: int = 1,
        shuffle: bool = True,
        transform: Transform | None = None,
        lengths: Sequence[int] | None = None,
        group_batches: int = 0,
    ):
        if not 0 <= process_index < process_count:
            raise ValueError(f"process_index {process_index} not in [0, {process_count})")
        self._features = features
        self._global = global_batch_size
        self._local = _local_batch_size(global_batch_size, process_count)
        self._steps = steps_per_epoch(len(features), global_batch_size)
        if self._steps == 0:
            raise UserInputError(f"{len(features)} training examples are fewer than the "
                                 f"global batch size {global_batch_size}")
        self._buckets, self._pad_values = buckets, pad_values
        self._p, self._pc = process_index, process_count
        self._shuffle, self._transform = shuffle, transform
        self._seed, self._epoch, self._step = int(seed), 0, 0
        self._ds: grain.MapDataset | None = None  # this epoch's batches, built lazily
        if group_batches > 1 and lengths is None:
            raise ValueError("group_batches needs the examples' lengths")
        self._lengths = None if lengths is None else np.asarray(lengths)
        self._group = int(group_batches)

    @property
    def steps_per_epoch(self) -> int:
        return self._steps

    def _grouped_order(self, epoch: int) -> list[int]:
        """Shuffled, then sorted by length inside windows of `group` global batches, then
        the batches shuffled: batches of similar lengths pad far less (as HF's
        `group_by_length` or tf.data's bucketing), in an order every process derives from
        (seed, epoch) and the lengths alone."""
        seed = _epoch_seed(self._seed, epoch)
        perm = grain.MapDataset.source(range(len(self._features))).shuffle(seed=seed)
        order = np.fromiter((perm[i] for i in range(self._steps * self._global)), np.int64)
        window = self._group * self._global
        for start in range(0, len(order), window):
            chunk = order[start:start + window]
            order[start:start + window] = chunk[np.argsort(self._lengths[chunk], kind="stable")]
        batches = order.reshape(self._steps, self._global)
        batches = batches[np.random.default_rng(seed).permutation(self._steps)]
        return batches.reshape(-1).tolist()

    def _epoch_dataset(self, epoch: int) -> grain.MapDataset:
        if self._group > 1 and self._shuffle:
            order = self._grouped_order(epoch)
            ds = grain.MapDataset.source(order)[self._p :: self._pc]
            ds = ds.map(self._features.__getitem__)
        else:
            ds = grain.MapDataset.source(self._features)
            if self._shuffle:
                ds = ds.shuffle(seed=_epoch_seed(self._seed, epoch))
            ds = ds[: self._steps * self._global][self._p :: self._pc]  # this process's share
        if self._transform is not None:
            ds = ds.map(self._transform)
        return ds.batch(self._local, drop_remainder=True, batch_fn=self._pad)

    def _pad(self, examples: Sequence[Mapping[str, Any]]) -> dict[str, np.ndarray]:
        return pad_batch(examples, batch_size=self._local, buckets=self._buckets,
                         pad_values=self._pad_values)

    def __iter__(self) -> TrainIterator:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        if self._ds is None:
            self._ds = self._epoch_dataset(self._epoch)
        batch = self._ds[self._step]
        self._step += 1
        if self._step == self._steps:
            self._epoch, self._step, self._ds = self._epoch + 1, 0, None
        return batch

    def get_state(self) -> dict[str, int]:
        return {"seed": self._seed, "epoch": self._epoch, "step": self._step,
                "num_examples": len(self._features), "global_batch_size": self._global}

    def set_state(self, state: Mapping[str, int]) -> None:
        for key, mine in (("num_examples", len(self._features)),
                          ("global_batch_size", self._global)):
            if key in state and int(state[key]) != mine:
                raise UserInputError(f"cannot resume the data iterator: the checkpoint has "
                                     f"{key}={state[key]}, this run has {mine}")
        if not 0 <= int(state["step"]) < self._steps:
            raise ValueError(f"data iterator state step {state['step']} out of range")
        self._seed, self._epoch, self._step = (int(state["seed"]), int(state["epoch"]),
                                               int(state["step"]))
        self._ds = None


def length_order(features: Sequence[Mapping[str, Any]]) -> np.ndarray:
    """The positions of `features`, shortest first (by each example's longest sequence
    field; stable): visited in this order, most eval batches pad to a small bucket.
    [N] int64."""
    lengths = [max((len(v) for v in ex.values() if np.ndim(v) == 1), default=0)
               for ex in features]
    return np.argsort(np.asarray(lengths, np.int64), kind="stable")


def eval_batches(
    features: Sequence[Any],
    *,
    batch_size: int,
    buckets: Buckets,
    pad_values: Mapping[str, int | float],
    process_index: int = 0,
    process_count: int = 1,
    transform: Transform | None = None,
    order: Sequence[int] | None = None,
) -> Iterator[dict[str, np.ndarray]]:
    """Every example exactly once, as local batches of `batch_size / P` rows.

    `batch_size` is the global eval batch size. The examples are visited in `order` (a
    permutation of range(N), the same on every process; default: the identity), and the
    i-th visited goes to process i % P (the sharding contract with π = order); every
    process yields ceil(N / batch_size) batches, the last ones completed with filler rows
    (`example_mask` 0, `index` -1). `index` is the example's position in `features`.
    """
    local = _local_batch_size(batch_size, process_count)
    n = len(features)
    if order is not None and len(order) != n:
        raise ValueError(f"order has {len(order)} entries for {n} features")
    like = None
    for s in range(math.ceil(n / batch_size)):
        positions = [s * batch_size + process_index + k * process_count for k in range(local)]
        mine = [i if order is None else int(order[i]) for i in positions if i < n]
        examples = [features[i] for i in mine]
        if transform is not None:
            examples = [transform(ex) for ex in examples]
        if examples:
            like = examples[0]
        elif like is None:  # this process has no examples left: an all-filler batch
            like = transform(features[0]) if transform is not None else features[0]
        batch = pad_batch(examples, batch_size=local, buckets=buckets,
                          pad_values=pad_values, like=like)
        index = np.full((local,), -1, np.int32)  # B
        index[: len(mine)] = mine
        batch["index"] = index
        yield batch
