"""Decoder-only batches: one example per row (padding) or several per row (packing).

Batch contract for decoder-only training and evaluation, every field int32 [B, L]:
    input_ids    token ids; `pad_id` on padding
    positions    the token's position in its segment: 0, 1, ... restarting at every
                 segment; 0 on padding
    segment_ids  1..n numbering the examples of a row from the left; 0 = padding
    loss_mask    1 where the token is a target, i.e. trained to be predicted from the tokens
                 before it in its segment (see `data.chat`); 0 on padding
Token t attends to token s iff `segment_ids[s] == segment_ids[t] != 0` and s <= t
(`models.layers.segment_mask` & `causal_mask`). The output at t predicts `input_ids[t+1]`,
weighted by `loss_mask[t+1]`, only when t+1 is in the same segment: the last token of
each segment, and padding, have no target (`next_token_targets`). A padded batch is a
packed batch with one segment per row, so models and losses never know which they got.
Batches from `pipeline.TrainIterator`/`eval_batches` also carry `example_mask` [B] (0 on
filler rows, which are all padding) and, for eval, `index` [B].

Examples are dicts of 1-D int arrays `input_ids` and `loss_mask` (`chat.encode_example`).

Use with the pipeline:
  padding   `TrainIterator(LazyMap(examples, single_segment), buckets=bucket_lengths(M),
            pad_values=pad_values(pad_id), ...)`: one example per row, L per batch from
            the buckets (one program per bucket).
  packing   `rows = as_rows(pack_examples(examples, length=L))`, then
            `TrainIterator(rows, buckets=[L], pad_values=pad_values(pad_id), ...)`: the
            rows are packed once, before training, and the iterator shuffles rows.
            One program. Exact resume holds because the rows are a pure function of the
            example list (its order included), `length` and `strategy`: the same data,
            tokenizer and config give the same rows, and the iterator's (seed, epoch, step)
            state indexes them; a changed data set changes the row count, which
            `TrainIterator.set_state` reports. The price: examples sharing a row share it
            in every epoch (the rows, not the examples, are reshuffled).
  eval      one example per row (`single_segment` with `eval_batches`): per-token losses
            do not depend on the layout, so there is no reason to pack.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

from sft_jax.data.pipeline import pad_batch
from sft_jax.errors import UserInputError

FIELDS: tuple[str, ...] = ("input_ids", "positions", "segment_ids", "loss_mask")
Example = Mapping[str, np.ndarray]


def pad_values(pad_id: int) -> dict[str, int]:
    """`pad_values` for `pad_batch`/`TrainIterator`/`eval_batches` under the contract."""
    return {"input_ids": int(pad_id), "positions": 0, "segment_ids": 0, "loss_mask": 0}


def _check(example: Example, i: int, limit: int | None, what: str) -> tuple[np.ndarray, ...]:
    ids = np.asarray(example["input_ids"], np.int32)
    mask = np.asarray(example["loss_mask"], np.int32)
    if ids.ndim != 1 or ids.shape != mask.shape or len(ids) == 0:
        raise ValueError(f"example {i}: input_ids {ids.shape} and loss_mask {mask.shape} must "
                         "be 1-D, non-empty and of the same length")
    if limit is not None and len(ids) > limit:
        raise UserInputError(f"example {i} has {len(ids)} tokens, more than the {what} "
                             f"{limit}; the examples' max length must not exceed it")
    return ids, mask


def single_segment(example: Example) -> dict[str, np.ndarray]:
    """One example as one segment: `positions` 0..T-1, `segment_ids` 1 (all [T])."""
    ids, mask = _check(example, 0, None, "")
    return {"input_ids": ids, "positions": np.arange(len(ids), dtype=np.int32),
            "segment_ids": np.ones_like(ids), "loss_mask": mask}


def pad_examples(
    examples: Sequence[Example],
    *,
    buckets: Sequence[int],
    pad_id: int = 0,
    batch_size: int | None = None,
) -> dict[str, np.ndarray]:
    """One example per row, right-padded to the smallest bucket that holds the longest.

    Returns the contract's fields, [B, L] with B = `batch_size` (default: one row per
    example; extra rows are all padding).
    """
    for i, ex in enumerate(examples):
        _check(ex, i, buckets[-1], "last bucket")
    rows = [single_segment(ex) for ex in examples]
    batch = pad_batch(rows, batch_size=len(rows) if batch_size is None else batch_size,
                      buckets=buckets, pad_values=pad_values(pad_id),
                      like=single_segment({"input_ids": [0], "loss_mask": [0]}))
    return {k: batch[k] for k in FIELDS}


def _first_fit(lengths: Sequence[int], capacity: int) -> list[int]:
    """Row of each item under first-fit: the lowest-numbered row with room, in the order
    given. A max segment tree over (potential) rows finds it in O(log n)."""
    size = 1 << max(0, (len(lengths) - 1).bit_length())
    tree = [capacity] * (2 * size)  # room left; every row starts empty
    rows = []
    for need in lengths:
        node = 1
        while node < size:
            node = 2 * node if tree[2 * node] >= need else 2 * node + 1
        rows.append(node - size)
        tree[node] -= need
        node //= 2
        while node:
            tree[node] = max(tree[2 * node], tree[2 * node + 1])
            node //= 2
    return rows


def pack_examples(
    examples: Sequence[Example],
    *,
    length: int,
    strategy: Literal["first_fit", "sequential"] = "first_fit",
    pad_id: int = 0,
) -> dict[str, np.ndarray]:
    """Several examples per row of `length` tokens; the contract's fields, [R, length].

    `first_fit` (first-fit decreasing): examples taken longest first (ties in input
    order), each into the first row with room — rows end up nearly full. `sequential`:
    examples in input order, a new row whenever the next one does not fit — rows keep the
    data order. Examples are never split; segment ids number a row's examples 1..n in the
    order they were placed. Deterministic: the same examples give the same rows.
    """
    if length <= 0:
        raise UserInputError(f"pack length {length} must be positive")
    checked = [_check(ex, i, length, "pack length") for i, ex in enumerate(examples)]
    lengths = [len(ids) for ids, _ in checked]
    if strategy == "first_fit":
        order = sorted(range(len(checked)), key=lambda i: -lengths[i])
        placed = _first_fit([lengths[i] for i in order], length)
        row_lists = [[] for _ in range(max(placed, default=-1) + 1)]
        for i, r in zip(order, placed, strict=True):
            row_lists[r].append(i)
    elif strategy == "sequential":
        row_lists, used = [], length
        for i, n in enumerate(lengths):
            if used + n > length:
                row_lists.append([])
                used = 0
            row_lists[-1].append(i)
            used += n
    else:
        raise UserInputError(f"packing strategy {strategy!r}: expected 'first_fit' or "
                             "'sequential'")

    out = {k: np.zeros((len(row_lists), length), np.int32) for k in FIELDS}  # R L
    out["input_ids"][:] = pad_id
    for r, members_of_row in enumerate(row_lists):
        at = 0
        for seg, i in enumerate(members_of_row, start=1):
            ids, mask = checked[i]
            end = at + len(ids)
            out["input_ids"][r, at:end] = ids
            out["positions"][r, at:end] = np.arange(len(ids))
            out["segment_ids"][r, at:end] = seg
            out["loss_mask"][r, at:end] = mask
            at = end
    return out


class LazyMap(Sequence):
    """`fn(items[i])` computed on access: each process builds only the rows it reads."""

    def __init__(self, items: Sequence, fn):
        self.items, self.fn = items, fn

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i):
        return self.fn(self.items[i])


def as_rows(batch: Mapping[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
    """The rows of a batch as a list of per-row dicts (features for `TrainIterator`)."""
    n = len(next(iter(batch.values())))
    return [{k: v[r] for k, v in batch.items()} for r in range(n)]


def padding_stats(batches: Iterable[Mapping[str, np.ndarray]]) -> dict[str, float]:
    """`{"real_tokens", "padded_tokens", "waste"}` over batches (or rows) of the contract;
    waste = padded / all tokens."""
    real = padded = 0
    for batch in batches:
        seg = np.asarray(batch["segment_ids"])
        n_real = int(np.count_nonzero(seg))
        real, padded = real + n_real, padded + seg.size - n_real
    total = real + padded
    return {"real_tokens": real, "padded_tokens": padded,
            "waste": padded / total if total else 0.0}


def next_token_targets(
    input_ids: jax.Array,  # B L
    segment_ids: jax.Array,  # B L
    loss_mask: jax.Array,  # B L
) -> tuple[jax.Array, jax.Array]:
    """`(targets int32 [B, L], weights float32 [B, L])` for the output at each position.

    `targets[:, t] = input_ids[:, t+1]`; `weights[:, t]` is `loss_mask[:, t+1]` where t+1
    is in the same (non-padding) segment as t, else 0 (so across segment boundaries, on
    padding and at the last column). Targets with weight 0 are set to 0. Works under jit.
    """
    def shift(x: jax.Array) -> jax.Array:
        return jnp.concatenate([x[..., 1:], jnp.zeros_like(x[..., :1])], axis=-1)

    input_ids, segment_ids, loss_mask = map(jnp.asarray, (input_ids, segment_ids, loss_mask))
    next_seg = shift(segment_ids)
    keep = (next_seg == segment_ids) & (segment_ids != 0) & (shift(loss_mask) != 0)
    targets = jnp.where(keep, shift(input_ids), 0).astype(jnp.int32)
    return targets, keep.astype(jnp.float32)
