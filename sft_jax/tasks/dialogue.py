"""Dialogue / instruction SFT of a decoder-only LM on conversations.

Records are `{"messages": [{"role", "content"}, ...]}` or `{"prompt", "completion"}`;
`data.chat` renders them with the tokenizer's chat template (or `data.chat_template`) and
marks the tokens the loss covers (`data.loss_on`: assistant turns by default).
Batch contract: `sft_jax.data.packing` (input_ids, positions, segment_ids, loss_mask, all
[B, L]); training rows are packed (`data.packing=True`) or padded, evaluation rows padded.
Loss: next-token cross-entropy summed over target tokens; weight = number of targets.
Evaluation: loss and perplexity per target token; sample responses to the last user turn
of the first `eval.num_samples` conversations go to predictions/<split>.jsonl.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from sft_jax.data import chat, packing, sources
from sft_jax.errors import UserInputError
from sft_jax.hf import export as hf_export
from sft_jax.hf.checkpoint_dir import read_config
from sft_jax.models import registry
from sft_jax.predict import ChatModel, Sampling
from sft_jax.pretrained import load_tokenizer, pretrained_params, resolve_model_dir
from sft_jax.tasks.classification import LazyMap

log = logging.getLogger(__name__)


class DialogueTask:
    def __init__(self, config: ml_collections.ConfigDict, workdir: Path):
        self.config = config
        data = config.data
        try:
            self.model_dir = resolve_model_dir(config.model.checkpoint)
        except UserInputError as err:
            raise UserInputError(f"model.checkpoint: {err}") from None
        self.tokenizer = load_tokenizer(self.model_dir)
        if self.tokenizer is None:
            raise UserInputError(f"model.checkpoint: {self.model_dir} has no tokenizer files")
        self.hf_config = read_config(self.model_dir)
        if config.model.dropout >= 0:
            self.hf_config = registry.with_dropout(
                self.hf_config, config.model.dropout, where=f"{self.model_dir}/config.json")
        self.module, self.module_config = registry.build_model(
            self.hf_config, dtype=config.model.dtype, remat=config.model.remat,
            where=f"{self.model_dir}/config.json",
        )
        if registry.family_of(self.module_config).kind != "decoder":
            raise UserInputError(
                f"model.checkpoint: {self.model_dir} is not a decoder-only model "
                f"(model_type {self.hf_config.get('model_type')!r})"
            )
        pad = self.tokenizer.pad_token_id
        self.pad_values = packing.pad_values(int(pad if pad is not None
                                                 else self.tokenizer.eos_token_id))
        self.template = data.chat_template or None
        self.chat_model = ChatModel(self.module, self.module_config, None, self.tokenizer,
                                    self.template)

        self.records: dict[str, list[dict]] = {}
        self.examples: dict[str, list[dict]] = {}
        self.stats: dict[str, Any] = {}
        for split in ("train", "validation", "test"):
            if not data[split]:
                continue
            limit = data.limit_train if split == "train" else data.limit_eval
            records = sources.read_records(data[split], config_key=f"data.{split}",
                                           data_dir=data.tfds_data_dir or None)
            records = records[:limit] if limit > 0 else records
            kept, examples = [], []
            for r in records:
                ex = chat.encode_example(r, self.tokenizer, chat_template=self.template,
                                         loss_on=data.loss_on, max_length=data.max_length)
                if ex["loss_mask"].any():
                    kept.append(r)
                    examples.append(ex)
            if not examples:
                raise UserInputError(f"data.{split}: no example has a target token left "
                                     f"(data.loss_on={data.loss_on!r}, data.max_length="
                                     f"{data.max_length})")
            self.stats[f"{split}/examples"] = len(examples)
            self.stats[f"{split}/dropped"] = len(records) - len(examples)
            self.records[split], self.examples[split] = kept, examples

        self._train_rows = None
        if "train" in self.examples:
            if data.packing:
                batch = packing.pack_examples(self.examples["train"], length=data.max_length)
                self._train_rows = packing.as_rows(batch)
                self.stats.update({f"train/packed_{k}": v for k, v in
                                   packing.padding_stats([batch]).items()})
            else:
                self._train_rows = LazyMap(self.examples["train"], packing.single_segment)
            log.info("Training data: %s", self.stats)

    # Task interface -----------------------------------------------------------------------

    def data_stats(self) -> dict[str, Any]:
        return dict(self.stats)

    def init_batch(self) -> dict[str, np.ndarray]:
        ids = np.zeros((1, 8), np.int32)
        return {"input_ids": ids, "positions": np.arange(8, dtype=np.int32)[None],
                "segment_ids": np.ones_like(ids)}

    def pretrained_params(self) -> Mapping | None:
        return pretrained_params(self.model_dir, self.module_config, with_head=False,
                                 hf_config=self.hf_config)

    def train_features(self) -> Sequence[dict] | None:
        return self._train_rows

    def train_lengths(self) -> Sequence[int] | None:
        if self._train_rows is None or self.config.data.packing:
            return None  # packed rows all have the same length
        return [len(ex["input_ids"]) for ex in self.examples["train"]]

    def eval_features(self) -> dict[str, Sequence[dict]]:
        return {split: LazyMap(examples, packing.single_segment)
                for split, examples in self.examples.items() if split != "train"}

    def _token_nll(self, params, batch: dict, rng, deterministic: bool):
        out = self.module.apply(
            {"params": params},
            batch["input_ids"],
            positions=batch["positions"],
            segment_ids=batch["segment_ids"],
            deterministic=deterministic,
            rngs=None if deterministic else {"dropout": rng},
        )
        targets, weights = packing.next_token_targets(
            batch["input_ids"], batch["segment_ids"], batch["loss_mask"]
        )
        logits = out["logits"].astype(jnp.float32)  # B L V
        nll = optax.softmax_cross_entropy_with_integer_labels(logits, targets)  # B L
        return nll * weights, weights

    def loss_fn(self, params, batch: dict, rng, deterministic: bool):
        nll, weights = self._token_nll(params, batch, rng, deterministic)
        return jnp.sum(nll), {"weight": jnp.sum(weights)}

    def eval_fn(self, params, batch: dict) -> dict[str, jax.Array]:
        nll, weights = self._token_nll(params, batch, None, True)
        return {"nll": nll.sum(-1), "tokens": weights.sum(-1), "index": batch["index"],
                "example_mask": batch["example_mask"]}

    def evaluate(self, split: str, outputs: dict[str, np.ndarray], params=None
                 ) -> dict[str, Any]:
        tokens = float(outputs["tokens"].sum())
        loss = float(outputs["nll"].sum()) / max(tokens, 1.0)
        return {"loss": loss, "perplexity": float(np.exp(loss)), "tokens": tokens}

    # Generation ---------------------------------------------------------------------------

    def respond(self, params, conversations: Sequence[list[dict]]) -> list[str]:
        """Replies to each conversation with the `eval` sampling settings."""
        ev = self.config.eval
        sampling = Sampling(int(ev.max_new_tokens), float(ev.temperature), int(ev.top_k),
                            float(ev.top_p), int(self.config.seed),
                            int(ev.generation_batch_size), tuple(ev.stop_tokens))
        return self.chat_model.respond(conversations, sampling, params=params)

    def write_predictions(self, split: str, outputs: dict[str, np.ndarray], path: Path,
                          params=None) -> None:
        records = self.records[split]
        samples: dict[int, tuple[list, str, str]] = {}
        if params is not None and self.config.eval.num_samples > 0:
            for i, r in enumerate(records):
                messages, _ = chat.conversation(r)
                last = max((j for j, m in enumerate(messages) if m["role"] == "assistant"),
                           default=None)
                if last:
                    samples[i] = (messages[:last], messages[last]["content"], "")
                if len(samples) == self.config.eval.num_samples:
                    break
            order = sorted(samples)
            replies = self.respond(params, [samples[i][0] for i in order])
            for i, reply in zip(order, replies, strict=True):
                samples[i] = (samples[i][0], samples[i][1], reply)
        if jax.process_index() != 0:
            return
        with path.open("w") as f:
            for i, r in enumerate(records):
                tokens = float(outputs["tokens"][i])
                row = {"where": r["_where"], "tokens": tokens,
                       "loss": float(outputs["nll"][i]) / max(tokens, 1.0)}
                if i in samples:
                    context, reference, reply = samples[i]
                    row.update(context=context, reference=reference, generated=reply)
                f.write(json.dumps(row, ensure_ascii=False) + "\n")

    def export(self, out_dir: Path, params) -> None:
        hf_export.export_pretrained(out_dir, module_config=self.module_config, params=params,
                                    tokenizer=self.tokenizer, hf_config=self.hf_config)
