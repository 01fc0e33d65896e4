"""Text classification (single text or text pair): encoder + classification head.

Batch contract ([B] rows, [B, L] padded tokens):
  input_ids, token_type_ids, attention_mask: int32 [B, L]
  label: int32 [B]; example_mask: float32 [B] (0 for filler rows); index: int32 [B] (eval)
Loss: cross-entropy summed over real rows; weight = number of real rows.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from sft_jax import metrics as metrics_lib
from sft_jax.data import sources
from sft_jax.errors import UserInputError
from sft_jax.hf import export as hf_export
from sft_jax.models import registry
from sft_jax.pretrained import load_tokenizer, pretrained_params, resolve_model_dir


class LazyMap(Sequence):
    """`fn(items[i])` computed on access: each process builds only the features it reads."""

    def __init__(self, items: Sequence, fn):
        self.items, self.fn = items, fn

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i):
        return self.fn(self.items[i])


class ClassificationTask:
    def __init__(self, config: ml_collections.ConfigDict, workdir: Path):
        self.config = config
        data = config.data
        try:
            self.model_dir = resolve_model_dir(config.model.checkpoint)
        except UserInputError as err:
            raise UserInputError(f"model.checkpoint: {err}") from None
        self.tokenizer = load_tokenizer(self.model_dir)
        self.fields = [data.text_field] + ([data.text_pair_field] if data.text_pair_field else [])

        self.records: dict[str, list[dict]] = {}
        for split in ("train", "validation", "test"):
            spec = data[split]
            if not spec:
                continue
            limit = data.limit_train if split == "train" else data.limit_eval
            records = sources.read_records(spec, config_key=f"data.{split}",
                                           data_dir=data.tfds_data_dir or None)
            self.records[split] = records[:limit] if limit > 0 else records
        for split, records in self.records.items():
            self._check_fields(split, records)

        self.label_names = self._label_vocabulary(Path(workdir))
        self.label_ids = {name: i for i, name in enumerate(self.label_names)}
        for records in self.records.values():
            for r in records:
                if self._label_key(r) not in self.label_ids:
                    raise UserInputError(
                        f"{r['_where']}: label {self._label_key(r)!r} (data.label_field) was "
                        f"never seen in training (known: {self.label_names})"
                    )

        model = config.model
        self.module, self.module_config = registry.build_model(
            self._hf_config(),
            num_labels=len(self.label_names),
            pooling=model.pooling or None,
            classifier_dropout=model.classifier_dropout if model.classifier_dropout >= 0
            else None,
            dtype=model.dtype,
            remat=model.remat,
            where=f"{self.model_dir}/config.json",
        )
        self.pad_values = {
            "input_ids": int(self.tokenizer.pad_token_id or 0),
            "token_type_ids": 0,
            "attention_mask": 0,
        }

    # Set-up ------------------------------------------------------------------------------

    def _hf_config(self) -> dict:
        from sft_jax.hf.checkpoint_dir import read_config

        hf_config = dict(read_config(self.model_dir))
        if self.config.model.dropout >= 0:
            hf_config = registry.with_dropout(hf_config, self.config.model.dropout,
                                              where=f"{self.model_dir}/config.json")
        return hf_config

    def _check_fields(self, split: str, records: Sequence[dict]) -> None:
        keys = [(f, f"data.{'text_field' if i == 0 else 'text_pair_field'}")
                for i, f in enumerate(self.fields)]
        keys.append((self.config.data.label_field, "data.label_field"))
        for r in records:
            for field, key in keys:
                if field not in r or r[field] is None:
                    raise UserInputError(f"{r['_where']}: missing field {field!r} ({key})")

    def _label_key(self, record: dict) -> str:
        return str(record[self.config.data.label_field])

    def _label_vocabulary(self, workdir: Path) -> list[str]:
        """Sorted training labels; kept in workdir/labels.json so that a resumed or
        evaluation-only run keeps the same label ids."""
        path = workdir / "labels.json"
        if path.exists():
            return json.loads(path.read_text())
        if "train" not in self.records:
            raise UserInputError(
                f"data.train: needed to build the label vocabulary (no {path} from an earlier run)"
            )
        names = sorted({self._label_key(r) for r in self.records["train"]})
        if len(names) < 2:
            raise UserInputError(
                f"data.train: found {len(names)} distinct label(s) in field "
                f"{self.config.data.label_field!r}; classification needs at least 2"
            )
        if jax.process_index() == 0:
            workdir.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(names))
            tmp.replace(path)
        return names

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

    def pretrained_params(self) -> Mapping | None:
        return pretrained_params(self.model_dir, self.module_config, with_head=True,
                                 num_labels=len(self.label_names),
                                 pooling=self.config.model.pooling or None,
                                 hf_config=self._hf_config())

    def train_features(self) -> Sequence[dict] | None:
        if "train" not in self.records:
            return None
        return LazyMap(self.records["train"], self._features)

    def train_lengths(self) -> Sequence[int] | None:
        if "train" not in self.records:
            return None
        return [sum(len(str(r[f])) for f in self.fields) for r in self.records["train"]]

    def eval_features(self) -> dict[str, Sequence[dict]]:
        return {split: LazyMap(records, self._features)
                for split, records in self.records.items() if split != "train"}

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
        losses = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"])  # B
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
        return {f"{split}/examples": len(records) for split, records in self.records.items()}

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
        hf_export.export_pretrained(
            out_dir,
            module_config=self.module_config,
            params=params,
            tokenizer=self.tokenizer,
            num_labels=len(self.label_names),
            id2label=dict(enumerate(self.label_names)),
            pooling=self.config.model.pooling or None,
            hf_config=self._hf_config(),
        )
