"""Dialogue / instruction SFT of a decoder-only LM on conversations.

Records are `{"messages": [{"role", "content"}, ...]}` or `{"prompt", "completion"}`;
`data.chat` renders them with the tokenizer's chat template (or `data.chat_template`) and
marks the tokens the loss covers (`data.loss_on`: assistant turns by default).
Batch contract: `sft_jax.data.packing` (input_ids, positions, segment_ids, loss_mask, all
[B, L]); training rows are packed (`data.packing=True`) or padded, evaluation rows padded.
Loss: next-token cross-entropy summed over target tokens, label-smoothed in training by
`train.label_smoothing` (as seq2seq's, `tasks.base.smoothed_cross_entropy`), computed
`train.loss_chunk` tokens at a time (`tasks.base.chunked_token_losses`); weight = number
of targets.
Evaluation: loss and perplexity per target token; sample responses to the last user turn
of the first `eval.num_samples` conversations go to predictions/<split>.jsonl.
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

from sft_jax.data import chat, packing
from sft_jax.errors import UserInputError
from sft_jax.generation import ChatModel, Sampling
from sft_jax.tasks.base import TaskBase, row_loss, token_metrics, token_outputs, training_loss


class DialogueTask(TaskBase):
    def __init__(self, config: ml_collections.ConfigDict, workdir: Path):
        super().__init__(config, workdir)
        data = config.data
        self.read_records(chat.conversation)  # bad records stop the run before the model loads
        self.use_checkpoint()
        where = f"{self.model_dir}/config.json"
        if self.build(where) != "decoder":
            raise UserInputError(
                f"model.checkpoint: {self.model_dir} is not a decoder-only model "
                f"(model_type {self.hf_config.get('model_type')!r})"
            )
        pad = self.tokenizer.pad_token_id
        self.pad_id = int(pad if pad is not None else self.tokenizer.eos_token_id)
        self.pad_values = packing.pad_values(self.pad_id)
        self.template = data.chat_template or None
        self.chat_model = ChatModel(self.module, self.module_config, None, self.tokenizer,
                                    self.template)
        for split, records in self.records.items():
            kept = self.encode_chat(
                split, records, lambda r: r, loss_on=data.loss_on,
                empty=f"no example has a target token left (data.loss_on={data.loss_on!r}, "
                      f"data.max_length={data.max_length})")
            self.records[split] = [records[i] for i in kept]
        self.chat_rows()

    # Task interface -----------------------------------------------------------------------

    def init_batch(self) -> dict[str, np.ndarray]:
        return self.lm_init_batch()

    def loss_fn(self, params, batch: dict, rng, deterministic: bool):
        train = self.config.train
        losses, weights = self.lm_token_losses(
            params, batch, rng, deterministic, training_loss(train.label_smoothing),
            chunk=int(train.loss_chunk))
        return jnp.sum(losses), {"weight": jnp.sum(weights)}

    def eval_fn(self, params, batch: dict) -> dict[str, jax.Array]:
        return token_outputs(*self.lm_token_losses(params, batch, None, True,
                                                   training_loss(0.0)), batch)

    def evaluate(self, split: str, outputs: dict[str, np.ndarray], params=None
                 ) -> dict[str, Any]:
        return token_metrics(outputs)

    # Generation ---------------------------------------------------------------------------

    def respond(self, params, conversations: Sequence[list[dict]]) -> list[str]:
        """Replies to each conversation with the `eval` sampling settings."""
        ev = self.config.eval
        sampling = Sampling(temperature=float(ev.temperature), top_k=int(ev.top_k),
                            top_p=float(ev.top_p), max_new_tokens=int(ev.max_new_tokens),
                            seed=int(self.config.seed),
                            batch_size=int(ev.generation_batch_size),
                            stop_tokens=tuple(ev.stop_tokens))
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
                loss = row_loss(outputs, i)
                row = {"where": r["_where"], "tokens": loss["tokens"], "loss": loss["loss"]}
                if i in samples:
                    context, reference, reply = samples[i]
                    row.update(context=context, reference=reference, generated=reply)
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
