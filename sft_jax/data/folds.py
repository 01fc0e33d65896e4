"""Seeded subsets and K-fold cross-validation splits of a list of records.

`subset_indices` draws a (stratified) random subset; `fold_ids` deals records into K
stratified folds; `cross_validation` turns one pool (`data.train` under `data.folds = K`)
into the train / validation / test splits of fold `data.fold`:
  - a record's fold is its `fold` field (an integer, or a string of digits as CSV gives,
    in 0..K-1; anything else is a `UserInputError` naming its place) when it has one;
    the records without one are dealt into folds by `fold_ids` seeded with
    `data.fold_seed` (independent of `seed`);
  - test = the records of fold `data.fold`; validation = a `subset_indices` draw of
    `data.cv_validation_fraction` of the other folds' records (rounded, at least 1;
    none at fraction 0), seeded with `seed`; train = the rest.
Stratification is by the label of each record when labels are given (classification),
else the draws are plain random ones. Splits keep the pool's order.
"""

from __future__ import annotations

from collections.abc import Sequence

import ml_collections
import numpy as np

from sft_jax.errors import UserInputError

FOLD_FIELD = "fold"


def _by_label(labels: Sequence[str] | None, count: int) -> dict[str, list[int]]:
    """Indices grouped by label, labels sorted; one group "" without labels."""
    if labels is None:
        return {"": list(range(count))}
    groups: dict[str, list[int]] = {}
    for i, name in enumerate(labels):
        groups.setdefault(name, []).append(i)
    return {name: groups[name] for name in sorted(groups)}


def subset_indices(size: int, labels: Sequence[str] | None, count: int, seed: int
                   ) -> list[int]:
    """Sorted indices of a random subset of `size` of `count` items (numpy's generator
    seeded with `seed`). With `labels` (one per item) it is stratified: each label gets
    its share of `size` by the largest-remainder rule (floor of size·n_label/count, the
    rest to the largest fractions, ties in label order), drawn at random among its items."""
    rng = np.random.default_rng(seed)
    if labels is None:
        return sorted(int(i) for i in rng.choice(count, size, replace=False))
    groups = _by_label(labels, count)
    exact = [size * len(members) / count for members in groups.values()]
    shares = [int(e) for e in exact]
    by_remainder = sorted(range(len(groups)), key=lambda j: (-(exact[j] - shares[j]), j))
    for j in by_remainder[: size - sum(shares)]:
        shares[j] += 1
    chosen: list[int] = []
    for members, share in zip(groups.values(), shares, strict=True):
        chosen.extend(members[int(i)] for i in rng.choice(len(members), share, replace=False))
    return sorted(chosen)


def fold_ids(labels: Sequence[str] | None, count: int, folds: int, seed: int) -> list[int]:
    """A fold in 0..folds-1 for each of `count` items: per label (sorted), the label's
    items in a random order (numpy's generator seeded with `seed`) get folds 0, 1, ...,
    folds-1, 0, ... continuing across labels, so every fold holds each label's share
    (± 1) and the folds' sizes differ by at most 1."""
    rng = np.random.default_rng(seed)
    out = [0] * count
    offset = 0
    for members in _by_label(labels, count).values():
        for j, p in enumerate(rng.permutation(len(members))):
            out[members[int(p)]] = (offset + j) % folds
        offset += len(members)
    return out


def record_folds(records: Sequence[dict], labels: Sequence[str] | None, folds: int,
                 seed: int) -> list[int]:
    """Each record's fold: its `fold` field, checked to be in 0..folds-1 (`UserInputError`
    naming the record's place otherwise), or `fold_ids` over the records without one."""
    out: list[int | None] = []
    for r in records:
        value = r.get(FOLD_FIELD)
        if value is None:
            out.append(None)
            continue
        fold = value if isinstance(value, int) and not isinstance(value, bool) else (
            int(value) if isinstance(value, str) and value.isdigit() else -1)
        if not 0 <= fold < folds:
            raise UserInputError(f"{r.get('_where', 'record')}: field {FOLD_FIELD!r} is "
                                 f"{value!r}, expected an integer in 0..{folds - 1} "
                                 f"(data.folds={folds})")
        out.append(fold)
    missing = [i for i, f in enumerate(out) if f is None]
    if missing:
        sub = None if labels is None else [labels[i] for i in missing]
        for i, fold in zip(missing, fold_ids(sub, len(missing), folds, seed), strict=True):
            out[i] = fold
    return [int(f) for f in out]  # type: ignore[arg-type]


def cross_validation(pool: Sequence[dict], labels: Sequence[str] | None,
                     data: ml_collections.ConfigDict, seed: int) -> dict[str, list[dict]]:
    """`{"train", "validation", "test"}` of fold `data.fold` of `data.folds` over `pool`
    (see the module docstring); `labels` (one per record) stratify. Validation is absent
    at `data.cv_validation_fraction = 0`. A `UserInputError` names the config key when
    the held-out fold or the training part is empty."""
    folds, fold = int(data.folds), int(data.fold)
    ids = record_folds(pool, labels, folds, int(data.get("fold_seed", 0)))
    test = [r for r, f in zip(pool, ids, strict=True) if f == fold]
    rest = [i for i, f in enumerate(ids) if f != fold]
    if not test:
        raise UserInputError(f"data.fold: fold {fold} of data.train has no records "
                             f"({len(pool)} records in {folds} folds)")
    fraction = float(data.get("cv_validation_fraction", 0.1))
    size = max(1, round(fraction * len(rest))) if fraction > 0 else 0
    if size >= len(rest):
        raise UserInputError(f"data.cv_validation_fraction: {fraction} of the "
                             f"{len(rest)} records outside fold {fold} leaves none to train")
    rest_labels = None if labels is None else [labels[i] for i in rest]
    held = {rest[j] for j in subset_indices(size, rest_labels, len(rest), seed)}
    splits = {"train": [pool[i] for i in rest if i not in held],
              "validation": [pool[i] for i in rest if i in held], "test": test}
    return splits if size else {"train": splits["train"], "test": test}
