"""Sequence to sequence with a decoder-only chat model: the "seq2seq" task when
`model.checkpoint` is a decoder.

The user turn is `data.prompt_template` formatted with `{source}` (the source cut to
`data.max_source_length` tokens) and the record's other fields, rendered with the
tokenizer's chat template (`data.chat_template` overrides it; plain text when there is
none); the target (cut to `data.max_target_length` tokens) is the assistant turn and the
only loss target (`data.chat`, loss_on='completion'). Records whose target does not fit
in `data.max_length` are dropped. Batches follow `sft_jax.data.packing` (rows of
`data.max_length`, packed with `data.packing`). Predictions are the chat model's replies
to the prompts (`generation.ChatModel`, stop tokens `eval.stop_tokens`). Loss,
evaluation and predictions: `tasks.seq2seq`.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from sft_jax.data import packing
from sft_jax.data import seq2seq as s2s
from sft_jax.data.pipeline import bucket_lengths
from sft_jax.errors import UserInputError
from sft_jax.generation import ChatModel, Sampling
from sft_jax.tasks.base import smoothed_cross_entropy
from sft_jax.tasks.seq2seq import Seq2SeqBase, record_fields


class PromptedTask(Seq2SeqBase):
    # Set-up ------------------------------------------------------------------------------

    def setup_model(self) -> None:
        if not self.config.model.checkpoint:
            raise UserInputError("model.checkpoint: the prompted seq2seq task needs a "
                                 "decoder-only checkpoint")
        self.use_seq2seq_checkpoint()
        where = f"{self.model_dir}/config.json"
        kind = self.build(where)
        if kind != "decoder":
            raise self.kind_error(where, kind)
        self.set_special_ids(where)
        self.pad_values = packing.pad_values(self.pad_id)
        self.template = self.config.data.chat_template or None
        self.chat_model = ChatModel(self.module, self.module_config, None, self.tokenizer,
                                    self.template)

    def _prompt(self, record: dict) -> str:
        data = self.config.data
        source, _ = s2s.truncate_text(self.tokenizer, record[data.source_field],
                                      data.max_source_length)
        fields = {**record_fields(record), "source": source}
        return s2s.format_template(data.prompt_template, fields, "data.prompt_template",
                                   record["_where"])

    def _as_chat(self, prompts: list[str], record: dict) -> dict:
        """The chat record of a source record (its prompt appended to `prompts`)."""
        data = self.config.data
        prompts.append(self._prompt(record))
        target, _ = s2s.truncate_text(self.tokenizer, record[data.target_field],
                                      data.max_target_length)
        return {"prompt": prompts[-1], "completion": target, "_where": record["_where"]}

    def build_features(self) -> None:
        data = self.config.data
        self.prompts: dict[str, list[str]] = {}
        for split, records in self.records.items():
            prompts: list[str] = []
            kept = self.encode_chat(
                split, records, functools.partial(self._as_chat, prompts),
                loss_on="completion",
                empty=f"no example keeps a target token within data.max_length="
                      f"{data.max_length}")
            self.records[split] = [records[i] for i in kept]
            self.prompts[split] = [prompts[i] for i in kept]
        self.buckets = bucket_lengths(int(data.max_length),
                                      explicit=[int(b) for b in data.buckets] or None)
        self.chat_rows()

    # Task interface ---------------------------------------------------------------------

    def init_batch(self) -> dict[str, np.ndarray]:
        return self.lm_init_batch()

    def token_losses(self, params, batch: dict, rng, deterministic: bool, smoothing: float,
                     chunk: int = 0):
        return self.lm_token_losses(
            params, batch, rng, deterministic,
            functools.partial(smoothed_cross_entropy, smoothing=smoothing), chunk)

    def generate(self, split: str, n: int, params, sampling: Sampling, **search: Any
                 ) -> list[str]:
        prompts = [self.chat_model.prompt_ids([{"role": "user", "content": p}])
                   for p in self.prompts[split][:n]]
        return self.chat_model.generate_text(prompts, sampling, params, **search)
