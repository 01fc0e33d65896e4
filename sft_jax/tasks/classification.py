"""Text classification (single text or text pair): encoder + classification head.

Batch contract ([B] rows, [B, L] padded tokens):
  input_ids, token_type_ids, attention_mask: int32 [B, L]
  label: int32 [B]; example_mask: float32 [B] (0 for filler rows); index: int32 [B] (eval)
Loss: cross-entropy summed over real rows, label-smoothed in training by
`train.label_smoothing` (optax.smooth_labels); weight = number of real rows.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from sft_jax import metrics as metrics_lib
from sft_jax import storage
from sft_jax.data.packing import LazyMap
from sft_jax.errors import UserInputError
from sft_jax.tasks.base import TaskBase, check_field, training_loss

# A label is a class name or id; its string form is the class (`labels.json`).
LABEL_TYPES = (str, int, bool)


class ClassificationTask(TaskBase):
    unit = "examples"  # what a train step's weight counts

    def __init__(self, config: ml_collections.ConfigDict, workdir: Path):
        super().__init__(config, workdir)
        data = config.data
        self.fields = [data.text_field] + ([data.text_pair_field] if data.text_pair_field else [])
        # bad records stop the run before the model loads; train_size keeps label shares
        self.read_records(self._check_fields, label=self._label_key)
        self.use_checkpoint()  # its errors before an augmentation's minutes of work
        self.augment_training()  # the training split only

        self.label_names = self._label_vocabulary(self.workdir)
        self.label_ids = {name: i for i, name in enumerate(self.label_names)}
        for records in self.records.values():
            for r in records:
                if self._label_key(r) not in self.label_ids:
                    raise UserInputError(
                        f"{r['_where']}: label {self._label_key(r)!r} (data.label_field) was "
                        f"never seen in training (known: {self.label_names})"
                    )

        self._count_truncated()
        model = config.model
        self.head = {"num_labels": len(self.label_names), "pooling": model.pooling or None}
        self.build(f"{self.model_dir}/config.json", **self.head,
                   classifier_dropout=model.classifier_dropout
                   if model.classifier_dropout >= 0 else None)
        self.pad_values = {
            "input_ids": int(self.tokenizer.pad_token_id or 0),
            "token_type_ids": 0,
            "attention_mask": 0,
        }
        self._train_rows = LazyMap(self.records["train"], self._features) \
            if "train" in self.records else None
        self._eval_rows = {split: LazyMap(records, self._features)
                           for split, records in self.records.items() if split != "train"}

    # Set-up ------------------------------------------------------------------------------

    def _check_fields(self, record: dict) -> None:
        for i, field in enumerate(self.fields):
            check_field(record, field, f"data.{'text_field' if i == 0 else 'text_pair_field'}")
        check_field(record, self.config.data.label_field, "data.label_field", LABEL_TYPES)

    def _label_key(self, record: dict) -> str:
        return str(record[self.config.data.label_field])

    def _label_vocabulary(self, workdir: Path) -> list[str]:
        """Sorted training labels; kept in workdir/labels.json so that a resumed or
        evaluation-only run keeps the same label ids."""
        path = workdir / "labels.json"
        if path.exists():
            return _read_labels(path)
        names = self._checkpoint_labels()
        if names is None and "train" not in self.records:
            raise UserInputError(
                f"data.train: needed to build the label vocabulary (no {path} from an earlier run)"
            )
        if names is None:
            names = sorted({self._label_key(r) for r in self.records["train"]})
        if len(names) < 2:
            raise UserInputError(
                f"data.train: found {len(names)} distinct label(s) in field "
                f"{self.config.data.label_field!r}; classification needs at least 2"
            )
        if jax.process_index() == 0:
            workdir.mkdir(parents=True, exist_ok=True)
            storage.write_text(path, json.dumps(names))
        return names

    def _count_truncated(self) -> None:
        """stats `<split>/truncated`: records longer than data.max_length tokens (cut)."""
        data = self.config.data
        for split, records in self.records.items():
            texts = [r[data.text_field] for r in records]
            pairs = [r[data.text_pair_field] for r in records] if data.text_pair_field else None
            lengths = self.tokenizer(texts, pairs, truncation=False, return_length=True,
                                     verbose=False)["length"] if texts else []
            self.stats[f"{split}/truncated"] = sum(int(n > data.max_length) for n in lengths)

    def _checkpoint_labels(self) -> list[str] | None:
        """The labels of a fine-tuned classifier (`id2label` of its config.json, e.g. a
        run's export/), when they are named (not LABEL_<i>) and cover the training
        labels: its head then keeps its meaning. None otherwise."""
        id2label = self.hf_config.get("id2label") or {}
        try:
            names = [str(id2label[k]) for k in sorted(id2label, key=int)]
        except (TypeError, ValueError):
            return None
        if len(names) < 2 or any(n == f"LABEL_{i}" for i, n in enumerate(names)):
            return None
        seen = {self._label_key(r) for r in self.records.get("train", ())}
        return names if seen <= set(names) else None

    def _features(self, record: dict) -> dict:
        data = self.config.data
        encoded = self.tokenizer(
            record[data.text_field],
            record[data.text_pair_field] if data.text_pair_field else None,
            truncation=True,
            max_length=data.max_length,
            return_token_type_ids=True,
            return_attention_mask=True,
        )
        return {
            "input_ids": np.asarray(encoded["input_ids"], np.int32),
            "token_type_ids": np.asarray(encoded["token_type_ids"], np.int32),
            "attention_mask": np.asarray(encoded["attention_mask"], np.int32),
            "label": self.label_ids[self._label_key(record)],
        }

    # Task interface -----------------------------------------------------------------------

    def init_batch(self) -> dict[str, np.ndarray]:
        ids = np.zeros((1, 8), np.int32)
        return {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": ids}

    def train_lengths(self) -> Sequence[int] | None:
        if "train" not in self.records:
            return None
        return [sum(len(str(r[f])) for f in self.fields) for r in self.records["train"]]

    def _logits(self, params, batch: dict, rng, deterministic: bool) -> jax.Array:
        out = self.module.apply(
            {"params": params},
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            token_type_ids=batch["token_type_ids"],
            deterministic=deterministic,
            rngs=None if deterministic else {"dropout": rng},
        )
        return out["logits"].astype(jnp.float32)  # B C

    def loss_fn(self, params, batch: dict, rng, deterministic: bool):
        logits = self._logits(params, batch, rng, deterministic)
        loss = training_loss(self.config.train.label_smoothing)
        losses = loss(logits, batch["label"])  # B
        mask = batch["example_mask"]
        return jnp.sum(losses * mask), {"weight": jnp.sum(mask)}

    def eval_fn(self, params, batch: dict) -> dict[str, jax.Array]:
        logits = self._logits(params, batch, None, True)
        return {
            "loss": optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]),
            "probabilities": jax.nn.softmax(logits),  # B C
            "prediction": jnp.argmax(logits, axis=-1),
            "label": batch["label"],
            "index": batch["index"],
            "example_mask": batch["example_mask"],
        }

    def evaluate(self, split: str, outputs: dict[str, np.ndarray], params=None
                 ) -> dict[str, Any]:
        result = metrics_lib.classification_metrics(
            outputs["label"], outputs["prediction"], label_names=self.label_names
        )
        return {"loss": float(np.mean(outputs["loss"])), **result.scalars,
                "confusion_matrix": result.confusion_matrix}

    def data_stats(self) -> dict[str, Any]:
        return {**{f"{split}/examples": len(records) for split, records in self.records.items()},
                **self.stats}

    def write_predictions(self, split: str, outputs: dict[str, np.ndarray], path: Path,
                          params=None) -> None:
        data = self.config.data
        if jax.process_index() != 0:
            return
        with path.open("w") as f:
            for i, record in enumerate(self.records[split]):
                row = {
                    "where": record["_where"],
                    data.text_field: record[data.text_field],
                    "label": self.label_names[int(outputs["label"][i])],
                    "prediction": self.label_names[int(outputs["prediction"][i])],
                    "probabilities": {
                        name: round(float(p), 6)
                        for name, p in zip(self.label_names, outputs["probabilities"][i],
                                           strict=True)
                    },
                }
                if data.text_pair_field:
                    row[data.text_pair_field] = record[data.text_pair_field]
                f.write(json.dumps(row, ensure_ascii=False) + "\n")

    def export(self, out_dir: Path, params) -> None:
        super().export(out_dir, params, id2label=dict(enumerate(self.label_names)))


def _read_labels(path: Path) -> list[str]:
    """The label names kept in `path` by an earlier run (a JSON list of strings)."""
    try:
        names = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserInputError(f"{path}: corrupt label vocabulary ({err}); delete it to rebuild "
                             "it from data.train") from None
    if not (isinstance(names, list) and len(names) >= 2
            and all(isinstance(n, str) for n in names)):
        raise UserInputError(f"{path}: corrupt label vocabulary (expected a JSON list of at "
                             "least 2 label strings); delete it to rebuild it from data.train")
    return names
