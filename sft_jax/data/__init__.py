"""Data: sources (files, tfds, corpus assets) → records; features → fixed-shape batches.

`sources.read_records(spec, config_key=...)` reads records with their place (`_where`);
tasks turn records into features; `pipeline` pads, buckets, shuffles and shards them into
numpy batches (`TrainIterator`, `eval_batches`); `folds` draws seeded subsets and the
splits of K-fold cross-validation. Nothing here knows about models.
"""

from sft_jax.data.pipeline import (
    TrainIterator,
    bucket_lengths,
    eval_batches,
    pad_batch,
    steps_per_epoch,
)
from sft_jax.data.sources import read_records

__all__ = [
    "TrainIterator",
    "bucket_lengths",
    "eval_batches",
    "pad_batch",
    "read_records",
    "steps_per_epoch",
]
