"""Sequence to sequence (translation, summarization): what the two seq2seq tasks share.

Records carry a source and a target text (`data.source_field`, `data.target_field`).
`seq2seq_task(config, workdir)` (the task "seq2seq") picks the task by the model: a
decoder-only `model.checkpoint` gives `tasks.prompted.PromptedTask` (the source in a chat
prompt, the target as the reply); any other checkpoint, or `model.from_scratch`, gives
`tasks.encdec.EncDecTask`. Both subclass `Seq2SeqBase`.

Loss: label-smoothed cross-entropy summed over target tokens (`train.label_smoothing` ε:
(1-ε)·nll + ε·mean over the vocabulary of -log p, as Hugging Face and PyTorch's
`cross_entropy(label_smoothing=ε)`), in training `train.loss_chunk` tokens at a time
(`tasks.base.chunked_token_losses`); weight = number of target tokens.
Evaluation: teacher-forced loss and perplexity per target token (no smoothing), then the
first `eval.generate_limit` examples (0 = all) are decoded (`eval.num_beams`,
`eval.length_penalty`, `eval.early_stopping`, `eval.max_new_tokens`) and scored against
the untruncated references with `eval.metrics`: "bleu" and "chrf" (sacrebleu, with
signatures), "rouge" (ROUGE-1/2/L/Lsum, sentences split for Lsum). Decoding is a
collective step every process takes; process 0 writes predictions/<split>.jsonl
(source, reference, prediction, per-example loss).
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from sft_jax import metrics as metrics_lib
from sft_jax import validate
from sft_jax.errors import UserInputError
from sft_jax.generation import Sampling
from sft_jax.tasks.base import (
    TaskBase,
    check_field,
    checkpoint_kind,
    row_loss,
    token_metrics,
    token_outputs,
)

log = logging.getLogger(__name__)

def seq2seq_task(config: ml_collections.ConfigDict, workdir: Path) -> Seq2SeqBase:
    """The seq2seq task for this config's model (see the module docstring)."""
    validate.check_config(config)
    if checkpoint_kind(config) == "decoder":
        from sft_jax.tasks.prompted import PromptedTask

        return PromptedTask(config, workdir)
    from sft_jax.tasks.encdec import EncDecTask

    return EncDecTask(config, workdir)


def check_record(data: ml_collections.ConfigDict, record: dict) -> None:
    """The record's source and target fields (`data.source_field`, `data.target_field`)
    are there and hold strings."""
    for key in ("source_field", "target_field"):
        check_field(record, data[key], f"data.{key}")


def record_fields(record: dict) -> dict[str, Any]:
    """The record's own fields (not `_where` and other bookkeeping)."""
    return {k: v for k, v in record.items() if not k.startswith("_")}


class Seq2SeqBase(TaskBase):
    """Records, special ids, loss, decoding-based metrics and predictions of both tasks.

    A subclass sets up the model (`setup_model`), its features (`build_features`), and
    provides `token_losses(params, batch, rng, deterministic, smoothing, chunk=0)` ->
    (losses, weights) [B, T] (the logits about `chunk` tokens at a time when > 0:
    `tasks.base.chunked_token_losses`) and `generate(split, n, params, sampling,
    **search)` -> the first n examples' predicted texts."""

    def __init__(self, config: ml_collections.ConfigDict, workdir: Path):
        super().__init__(config, workdir)
        validate.check_config(config)
        self.read_records(functools.partial(check_record, config.data))
        self._decoded: dict[str, tuple[Any, list[str]]] = {}  # split -> (params, texts)
        self.setup_model()
        self.build_features()

    # Set-up ------------------------------------------------------------------------------

    def setup_model(self) -> None:
        raise NotImplementedError

    def build_features(self) -> None:
        raise NotImplementedError

    def use_seq2seq_checkpoint(self) -> None:
        """`use_checkpoint` with `model.tokenizer`, noting an unused `model.from_scratch`."""
        if self.config.model.from_scratch:
            log.info("model.checkpoint is set: model.from_scratch is not used")
        self.use_checkpoint(tokenizer=self.config.model.tokenizer)

    def set_special_ids(self, where: str) -> None:
        """eos_id (required), pad_id (the pad token, or EOS), decoder_start_id."""
        tok = self.tokenizer
        self.eos_id = tok.eos_token_id
        if self.eos_id is None:
            raise UserInputError(f"{where}: the tokenizer has no EOS token")
        self.pad_id = int(tok.pad_token_id if tok.pad_token_id is not None else self.eos_id)
        start = getattr(self.module_config, "decoder_start_token_id", None)
        self.decoder_start_id = int(self.pad_id if start is None else start)

    def kind_error(self, where: str, kind: str) -> UserInputError:
        return UserInputError(f"{where}: model_type {self.hf_config['model_type']!r} is an "
                              f"{kind}; seq2seq needs an encoder-decoder or a decoder")

    # Task interface ---------------------------------------------------------------------

    def loss_fn(self, params, batch: dict, rng, deterministic: bool):
        train = self.config.train
        losses, weights = self.token_losses(params, batch, rng, deterministic,
                                            float(train.label_smoothing),
                                            chunk=int(train.loss_chunk))
        return jnp.sum(losses), {"weight": jnp.sum(weights)}

    def eval_fn(self, params, batch: dict) -> dict[str, jax.Array]:
        return token_outputs(*self.token_losses(params, batch, None, True, 0.0), batch)

    def evaluate(self, split: str, outputs: dict[str, np.ndarray], params=None
                 ) -> dict[str, Any]:
        result: dict[str, Any] = token_metrics(outputs)
        if params is not None and self.config.eval.metrics:
            cached = self._decoded.get(split)
            if cached is None or cached[0] is not params:
                self._decoded[split] = (params, self.decode(split, params))
            result.update(self.text_metrics(split, self._decoded[split][1]))
        return result

    # Generation -------------------------------------------------------------------------

    def _num_generated(self, split: str) -> int:
        n, limit = len(self.records[split]), int(self.config.eval.generate_limit)
        return n if limit == 0 else min(n, limit)

    def references(self, split: str) -> list[str]:
        field = self.config.data.target_field
        return [r[field] for r in self.records[split][: self._num_generated(split)]]

    def decode(self, split: str, params) -> list[str]:
        """Predictions for the first `eval.generate_limit` examples of `split` (a
        collective step: every process calls it with the same params)."""
        ev = self.config.eval
        sampling = Sampling(max_new_tokens=int(ev.max_new_tokens),
                            batch_size=int(ev.generation_batch_size),
                            stop_tokens=tuple(ev.stop_tokens))
        return self.generate(split, self._num_generated(split), params, sampling,
                             num_beams=int(ev.num_beams),
                             length_penalty=float(ev.length_penalty),
                             early_stopping=ev.early_stopping)

    def text_metrics(self, split: str, predictions: Sequence[str]) -> dict[str, Any]:
        return metrics_lib.text_metrics(predictions, self.references(split),
                                        metrics=self.config.eval.metrics,
                                        bleu_tokenize=self.config.eval.bleu_tokenize)

    def write_predictions(self, split: str, outputs: dict[str, np.ndarray], path: Path,
                          params=None) -> None:
        predictions: list[str] = []
        if self.config.eval.metrics:
            if split in self._decoded:  # decoded by `evaluate` just before
                predictions = self._decoded[split][1]
            elif params is not None:
                predictions = self.decode(split, params)
        if jax.process_index() != 0:
            return
        data = self.config.data
        with path.open("w") as f:
            for i, r in enumerate(self.records[split]):
                row = {"where": r["_where"], "source": r[data.source_field],
                       "reference": r[data.target_field]}
                if i < len(predictions):
                    row["prediction"] = predictions[i]
                row.update(row_loss(outputs, i))
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
