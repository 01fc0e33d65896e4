"""What every task shares, each exactly once: records, the model and its errors, the
dropout override, chat encoding and packing, token-level loss and perplexity evaluation.

`TaskBase(config, workdir)` holds `config`, `workdir`, `records` (split -> records, each
with its place `_where`), `stats` (logged once) and the rows the train loop reads
(`_train_rows`, `_eval_rows`). A task calls, in its constructor:
  read_records(check)       data.train / validation / test (or, under data.folds, the
                            cross-validation splits of the pool data.train), cut to
                            data.limit_train / data.limit_eval, each record passed to
                            `check` (before the model loads; `check_field` gives
                            the one message for a missing or mistyped field)
  augment_training()        data.augment applied to the training records (EDA copies,
                            or back-translated paraphrases: a translation model runs)
  use_checkpoint(...)       model.checkpoint -> model_dir, tokenizer, hf_config (errors
                            name the config key); `with_dropout` applies model.dropout
  build(where, **head)      module, module_config from hf_config (`models.registry`)
  encode_chat(...)          records -> chat examples (`data.chat`), dropping those with no
                            target token left; `chat_rows` -> packed or padded rows
and evaluates with `token_outputs` (per row: summed loss and target count) and
`token_metrics` (loss and `metrics.perplexity` per target token).

How to add a task:
  1. One module `sft_jax/tasks/<name>.py`: a class taking (config, workdir) that
     subclasses `TaskBase` and implements the `Task` protocol of `sft_jax.tasks` that the
     base does not (init_batch, loss_fn, eval_fn, evaluate, write_predictions; the base
     gives data_stats, train_features, train_lengths, eval_features, pretrained_params,
     export). Its docstring states the record fields it reads and its batch contract.
  2. One line in `sft_jax.tasks.TASKS` naming it.
  3. One config file `configs/<name>.py` (`get_config(arg)`, a `:runlocal` variant);
     new keys get their defaults next to the code that reads them (`sft_jax.config`).
  4. A head in `sft_jax/models/heads.py` only if no existing module fits.
A task with no network to train step by step (the linear baselines, `sft_jax.linear`)
subclasses `TaskBase` for its records only, and names its `train_and_evaluate(config,
workdir)` in `sft_jax.tasks.FITTED` instead of step 2; it writes the run files the train
loop writes (`sft_jax.runs`).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from sft_jax import metrics as metrics_lib
from sft_jax import storage
from sft_jax.data import augment, chat, packing, sources
from sft_jax.data.folds import cross_validation, subset_indices
from sft_jax.data.packing import LazyMap
from sft_jax.errors import UserInputError
from sft_jax.generation import backtranslation
from sft_jax.hf import export as hf_export
from sft_jax.hf.checkpoint_dir import read_config
from sft_jax.models import registry
from sft_jax.models.attention import DEFAULT_BLOCK
from sft_jax.models.lm_head import LmHead
from sft_jax.pretrained import (
    check_model_files,
    load_tokenizer,
    pretrained_params,
    resolve_model_dir,
)

log = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")


def resolve(path_or_asset: str | Path, key: str) -> Path:
    """The model directory of a config value (`key` names it in errors)."""
    try:
        return resolve_model_dir(path_or_asset)
    except UserInputError as err:
        raise UserInputError(f"{key}: {err}") from None


def tokenizer_from(path_or_asset: str | Path, key: str) -> Any:
    """The tokenizer of a model directory or asset; an error naming `key` if it has none."""
    tokenizer = load_tokenizer(resolve(path_or_asset, key))
    if tokenizer is None:
        raise UserInputError(f"{key}: {path_or_asset} has no tokenizer files")
    return tokenizer


def checkpoint_kind(config: ml_collections.ConfigDict) -> str | None:
    """The family kind ('encoder', 'decoder', 'encoder-decoder') of `model.checkpoint`,
    None when it is not set."""
    if not config.model.checkpoint:
        return None
    model_dir = resolve(config.model.checkpoint, "model.checkpoint")
    return registry.get_family(read_config(model_dir), where=f"{model_dir}/config.json").kind


# What a record field's value is, in messages: JSON's names for Python's types.
_JSON_KINDS = ((bool, "a boolean"), (int, "a number"), (float, "a number"), (str, "a string"),
               (list, "a list"), (dict, "an object"))


def _json_kind(value: Any) -> str:
    return next((name for t, name in _JSON_KINDS if isinstance(value, t)),
                type(value).__name__)


def check_field(record: Mapping[str, Any], field: str, key: str,
                types: tuple[type, ...] = (str,)) -> None:
    """A `UserInputError` naming the record's place, `field` and its config `key` when the
    record lacks the field (or holds null) or its value is none of `types` (a boolean is
    not a number here): `x.jsonl:3: field 'text' is a number, expected a string
    (data.text_field)`."""
    where = record.get("_where", "record")
    if field not in record or record[field] is None:
        fields = ", ".join(sorted(k for k in record if not k.startswith("_")))
        raise UserInputError(f"{where}: missing field {field!r} ({key}; the record has: "
                             f"{fields})")
    value = record[field]
    if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
        expected = " or ".join(dict.fromkeys(_json_kind(t()) for t in types))
        raise UserInputError(f"{where}: field {field!r} is {_json_kind(value)}, expected "
                             f"{expected} ({key})")


def smoothed_cross_entropy(logits: jax.Array, targets: jax.Array, smoothing: float
                           ) -> jax.Array:
    """Per-token loss [...] from logits [..., V] and integer targets [...]:
    (1-ε)·(-log p[target]) + ε·mean_v(-log p[v]), ε = `smoothing` (0: plain NLL)."""
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    nll = -jnp.take_along_axis(logp, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
    if smoothing == 0:
        return nll
    # = softmax cross-entropy against optax.smooth_labels(one_hot(target), ε)
    return (1.0 - smoothing) * nll - smoothing * jnp.mean(logp, axis=-1)


def training_loss(smoothing: float) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """The training loss of logits [..., V] and integer targets [...] -> [...]: plain
    cross-entropy at ε = 0 (optax's), else `smoothed_cross_entropy` with ε = `smoothing`
    (`train.label_smoothing`). Evaluation is never smoothed."""
    if smoothing == 0:
        return optax.softmax_cross_entropy_with_integer_labels
    return functools.partial(smoothed_cross_entropy, smoothing=float(smoothing))


def chunked_token_losses(
    head: LmHead,
    hidden: jax.Array,  # B T D
    targets: jax.Array,  # B T int
    loss: Callable[[jax.Array, jax.Array], jax.Array],
    chunk: int,
) -> jax.Array:  # B T
    """`loss(head(hidden), targets)` computed about `chunk` tokens at a time: the same
    `chunk // B` positions of every row (so a batch split over devices stays split), whose
    float32 logits [B, chunk // B, V] are made, reduced to their losses and dropped, in the
    forward pass and again (rematerialised) in the backward pass: neither the [B·T, V]
    logits nor their gradient is ever held. Equal to the one-shot loss up to float
    rounding (`train.loss_chunk`; 0, or a batch of at most `chunk` tokens, computes it in
    one go)."""
    b, t, d = hidden.shape
    if chunk <= 0 or b * t <= chunk:
        return loss(head(hidden), targets)
    c = max(1, chunk // b)  # positions per row in one chunk
    pad = -t % c
    h = jnp.pad(hidden, ((0, 0), (0, pad), (0, 0))).reshape(b, -1, c, d)  # B n c D
    y = jnp.pad(targets, ((0, 0), (0, pad))).reshape(b, -1, c)  # B n c

    @jax.checkpoint
    def one(args: tuple[jax.Array, jax.Array]) -> jax.Array:  # B c
        return loss(head(args[0]), args[1])

    losses = jax.lax.map(one, (jnp.swapaxes(h, 0, 1), jnp.swapaxes(y, 0, 1)))  # n B c
    return jnp.swapaxes(losses, 0, 1).reshape(b, -1)[:, :t]  # B T


def lm_head_kwargs(chunk: int) -> dict[str, bool]:
    """The model call's keywords for a loss in chunks of about `chunk` tokens (0: none)."""
    return {"lm_head": True} if chunk > 0 else {}


def token_losses_of(out: Mapping[str, Any], targets: jax.Array,
                    loss: Callable[[jax.Array, jax.Array], jax.Array], chunk: int
                    ) -> jax.Array:  # B T
    """Per-token `loss` of a model call's output `out` (its 'logits', or with `chunk` > 0
    its 'lm_head' and 'hidden_states', as `lm_head_kwargs` asked) against targets [B, T]."""
    if chunk > 0:
        return chunked_token_losses(out["lm_head"], out["hidden_states"], targets, loss, chunk)
    return loss(out["logits"].astype(jnp.float32), targets)


def train_subset(data: ml_collections.ConfigDict, count: int, labels: Sequence[str] | None,
                 seed: int) -> range | list[int]:
    """The kept training records' indices under `data.train_size` (N > 0: N of them) or
    `data.train_fraction` (< 1: that share, rounded, at least 1): `subset_indices`; all
    of them otherwise. A size above `count` is a `UserInputError`."""
    size = int(data.get("train_size", 0))
    fraction = float(data.get("train_fraction", 1.0))
    if size > count:
        raise UserInputError(f"data.train_size: {size} is more than the {count} records of "
                             f"data.train")
    if not size and fraction < 1:
        size = max(1, round(fraction * count))
    if not size or size == count:
        return range(count)
    return subset_indices(size, labels, count, seed)


def token_outputs(losses: jax.Array, weights: jax.Array, batch: dict) -> dict[str, jax.Array]:
    """Per-row eval outputs from per-token losses and weights [B, L]: "nll" and "tokens"
    (sums over the row, [B]), with the batch's "index" and "example_mask"."""
    return {"nll": losses.sum(-1), "tokens": weights.sum(-1), "index": batch["index"],
            "example_mask": batch["example_mask"]}


def token_metrics(outputs: Mapping[str, np.ndarray]) -> dict[str, float]:
    """Loss and perplexity per target token of a split's `token_outputs`, and the count."""
    tokens = float(outputs["tokens"].sum())
    nll = float(outputs["nll"].sum())
    return {"loss": nll / max(tokens, 1.0),
            "perplexity": metrics_lib.perplexity(nll, max(tokens, 1.0)), "tokens": tokens}


def row_loss(outputs: Mapping[str, np.ndarray], i: int) -> dict[str, float]:
    """Example i's loss per target token and its target count, for predictions files."""
    tokens = float(outputs["tokens"][i])
    return {"loss": float(outputs["nll"][i]) / max(tokens, 1.0), "tokens": tokens}


class TaskBase:
    """Shared state and the parts of the `Task` protocol every task does the same way."""

    def __init__(self, config: ml_collections.ConfigDict, workdir: Path):
        self.config = config
        self.workdir = storage.path(workdir)  # local, or remote (gs://...)
        self.records: dict[str, list[dict]] = {}
        self.stats: dict[str, Any] = {}
        self.examples: dict[str, list[dict]] = {}  # split -> chat examples (decoder LMs)
        self.model_dir: Path | None = None
        self.head: dict[str, Any] = {}  # build_model's head settings (num_labels, pooling)
        self._train_rows: Sequence[dict] | None = None
        self._eval_rows: dict[str, Sequence[dict]] = {}

    # Records -----------------------------------------------------------------------------

    def read_records(self, check: Callable[[dict], None] | None = None,
                     label: Callable[[dict], str] | None = None) -> None:
        """`records` of every configured split, cut to the data limits, the training split
        then to `data.train_size` / `data.train_fraction` (`train_subset`, stratified by
        `label(record)` when given); `check(record)` raises on a bad record.

        With `data.folds = K` (cross-validation) `data.train` is the pool (cut to
        `data.limit_train`), split by `sft_jax.data.folds.cross_validation` into train,
        validation and test (the held-out fold `data.fold`), stratified by `label`; the
        two evaluated splits are then cut to `data.limit_eval`, the training part to
        `data.train_size` / `data.train_fraction` as above."""
        data = self.config.data
        seed = int(self.config.seed)
        labels_of = (lambda rs: None) if label is None else (lambda rs: [label(r) for r in rs])
        records: dict[str, list[dict]] = {}
        for split in SPLITS:
            if not data[split]:
                continue
            limit = data.limit_train if split == "train" else data.limit_eval
            part = sources.read_records(data[split], config_key=f"data.{split}",
                                        data_dir=data.tfds_data_dir or None)
            records[split] = part[:limit] if limit > 0 else part
            if check is not None:
                for r in records[split]:
                    check(r)
        if int(data.get("folds", 0)) and "train" in records:
            pool = records["train"]
            records = cross_validation(pool, labels_of(pool), data, seed)
            if data.limit_eval > 0:
                records.update({s: rs[:data.limit_eval] for s, rs in records.items()
                                if s != "train"})
        if "train" in records:
            train = records["train"]
            records["train"] = [train[i] for i in train_subset(data, len(train),
                                                               labels_of(train), seed)]
        self.records = {split: records[split] for split in SPLITS if split in records}

    def augment_training(self) -> None:
        """The training records under `data.augment`: EDA copies added
        (`data.augment.augment_records`, seeded by `seed`) or back-translated paraphrases
        (`generation.backtranslation`: a translation model runs first, its counts join
        `stats`); nothing without `data.augment` or a training split."""
        data = self.config.data
        if not data.augment or "train" not in self.records:
            return
        if data.augment == "eda":
            self.records["train"] = augment.augment_records(self.records["train"], data,
                                                            int(self.config.seed))
            return
        self.records["train"], stats = backtranslation.augment_records(
            self.records["train"], data, self.workdir)
        self.stats.update(stats)

    # Model -------------------------------------------------------------------------------

    def use_checkpoint(self, tokenizer: str = "") -> None:
        """model_dir, tokenizer and hf_config (dropout override applied) of
        `model.checkpoint`; `tokenizer` (`model.tokenizer`) replaces its tokenizer. Missing
        weights or tokenizer files are one error, before anything is loaded."""
        self.model_dir = resolve(self.config.model.checkpoint, "model.checkpoint")
        try:
            check_model_files(self.model_dir, tokenizer=not tokenizer)
        except UserInputError as err:
            raise UserInputError(f"model.checkpoint: {err}") from None
        if tokenizer:
            self.tokenizer = tokenizer_from(tokenizer, "model.tokenizer")
        else:
            self.tokenizer = tokenizer_from(self.model_dir, "model.checkpoint")
        self.hf_config = self.with_dropout(read_config(self.model_dir),
                                           f"{self.model_dir}/config.json")

    def with_dropout(self, hf_config: Mapping[str, Any], where: str) -> dict[str, Any]:
        """`hf_config` with every dropout rate set to `model.dropout` when that is ≥ 0."""
        if self.config.model.dropout >= 0:
            return registry.with_dropout(hf_config, self.config.model.dropout, where=where)
        return dict(hf_config)

    def build(self, where: str, **head: Any) -> str:
        """module and module_config from hf_config (model.dtype, model.remat,
        model.attention, model.attention_block, train.neftune_alpha, `head`); returns the
        family's kind."""
        model = self.config.model
        self.module, self.module_config = registry.build_model(
            self.hf_config, dtype=model.dtype, remat=model.remat, where=where,
            neftune_alpha=float(self.config.train.get("neftune_alpha", 0.0)),
            attention=model.get("attention", "xla"),
            attention_block=int(model.get("attention_block", DEFAULT_BLOCK)), **head)
        return registry.family_of(self.module_config).kind

    def pretrained_params(self) -> Mapping | None:
        return pretrained_params(self.model_dir, self.module_config, with_head=bool(self.head),
                                 hf_config=self.hf_config, **self.head)

    def export(self, out_dir: Path, params, **extra: Any) -> None:
        hf_export.export_pretrained(out_dir, module_config=self.module_config, params=params,
                                    tokenizer=self.tokenizer, hf_config=self.hf_config,
                                    **self.head, **extra)

    # Chat examples (decoder-only LM tasks) -----------------------------------------------

    def encode_chat(self, split: str, records: Sequence[dict], as_chat: Callable[[dict], dict],
                    *, loss_on: str, empty: str) -> list[int]:
        """`examples[split]`: `as_chat(record)` encoded by `data.chat` (chat_template, cut to
        data.max_length); records with no target token left are dropped (counted in
        stats), `data.<split>: <empty>` if none is left. Returns the kept indices."""
        data = self.config.data
        kept, examples = [], []
        for i, r in enumerate(records):
            ex = chat.encode_example(as_chat(r), self.tokenizer, chat_template=self.template,
                                     loss_on=loss_on, max_length=data.max_length)
            if ex["loss_mask"].any():
                kept.append(i)
                examples.append(ex)
        if not examples:
            raise UserInputError(f"data.{split}: {empty}")
        self.stats[f"{split}/examples"] = len(examples)
        self.stats[f"{split}/dropped"] = len(records) - len(examples)
        self.examples[split] = examples
        return kept

    def chat_rows(self) -> None:
        """Training rows from `examples` (packed into data.max_length with data.packing,
        else one per row) and one-per-row evaluation rows."""
        data = self.config.data
        if "train" in self.examples:
            if data.packing:
                batch = packing.pack_examples(self.examples["train"], length=data.max_length,
                                              pad_id=self.pad_id)
                self._train_rows = packing.as_rows(batch)
                self.stats.update({f"train/packed_{k}": v for k, v in
                                   packing.padding_stats([batch]).items()})
            else:
                self._train_rows = LazyMap(self.examples["train"], packing.single_segment)
        self._eval_rows = {split: LazyMap(ex, packing.single_segment)
                           for split, ex in self.examples.items() if split != "train"}
        log.debug("Data: %s", self.stats)

    def lm_init_batch(self) -> dict[str, np.ndarray]:
        ids = np.zeros((1, 8), np.int32)
        return {"input_ids": ids, "positions": np.arange(8, dtype=np.int32)[None],
                "segment_ids": np.ones_like(ids)}

    def lm_token_losses(self, params, batch: dict, rng, deterministic: bool,
                        loss: Callable[[jax.Array, jax.Array], jax.Array], chunk: int = 0):
        """(loss(logits, targets) * weights, weights), [B, L] each, of a decoder LM on a
        `data.packing` batch: next-token targets inside each segment, weighted by the
        loss mask. `chunk` > 0: the logits about `chunk` tokens at a time
        (`chunked_token_losses`)."""
        out = self.module.apply(
            {"params": params}, batch["input_ids"], positions=batch["positions"],
            segment_ids=batch["segment_ids"], deterministic=deterministic,
            rngs=None if deterministic else {"dropout": rng}, **lm_head_kwargs(chunk))
        targets, weights = packing.next_token_targets(
            batch["input_ids"], batch["segment_ids"], batch["loss_mask"])
        return token_losses_of(out, targets, loss, chunk) * weights, weights

    # Task interface ----------------------------------------------------------------------

    def data_stats(self) -> dict[str, Any]:
        return dict(self.stats)

    def train_features(self) -> Sequence[dict] | None:
        return self._train_rows

    def train_lengths(self) -> Sequence[int] | None:
        if self._train_rows is None or self.config.data.packing:
            return None  # packed rows all have the same length
        return [len(ex["input_ids"]) for ex in self.examples["train"]]

    def eval_features(self) -> dict[str, Sequence[dict]]:
        return dict(self._eval_rows)
