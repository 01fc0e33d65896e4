"""Sequence to sequence with an encoder-decoder (T5, BART, Marian): the "seq2seq" task
when `model.checkpoint` is an encoder-decoder or `model.from_scratch` is set.

The model is a Hugging Face checkpoint (`model.checkpoint`, a directory or an asset) or
an encoder-decoder trained from scratch (`model.from_scratch`, an HF-style config dict
such as `{"model_type": "t5", "d_model": 256, ...}`, completed with the family's
defaults; vocabulary size and the pad, EOS and decoder start ids come from the
tokenizer). `model.tokenizer` names a tokenizer directory; "" means the checkpoint's own,
or, from scratch, one trained on the training split (`data.vocab_size`,
`data.tokenizer_kind`) into `workdir/tokenizer`, reused on resume and exported with the
model.

Encoder input = `data.source_prefix` (a `str.format` template over the record's fields,
e.g. "translate English to Spanish: ") + source, cut to `data.max_source_length` tokens
keeping EOS; target cut to `data.max_target_length`. Batches follow
`sft_jax.data.seq2seq` (source and target each padded to their own bucket,
`data.source_buckets` / `data.target_buckets`; `data.packing` puts several pairs per row).
Loss, evaluation and predictions: `tasks.seq2seq`.
"""

from __future__ import annotations

import functools
import logging
import shutil
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from sft_jax import storage
from sft_jax.data import packing
from sft_jax.data import seq2seq as s2s
from sft_jax.data.packing import LazyMap
from sft_jax.errors import UserInputError
from sft_jax.generation import Sampling, generate_ids
from sft_jax.hf.checkpoint_dir import load_state_dict
from sft_jax.models import registry
from sft_jax.tasks.base import (
    lm_head_kwargs,
    smoothed_cross_entropy,
    token_losses_of,
    tokenizer_from,
)
from sft_jax.tasks.seq2seq import Seq2SeqBase, record_fields

log = logging.getLogger(__name__)

TOKENIZER_DIR = "tokenizer"
# The batch fields (`data.seq2seq`) the module takes by these names, besides the ids.
LAYOUT = ("encoder_segment_ids", "encoder_positions", "decoder_segment_ids",
          "decoder_positions")


class EncDecTask(Seq2SeqBase):
    # Set-up ------------------------------------------------------------------------------

    def setup_model(self) -> None:
        model = self.config.model
        scratch = model.from_scratch.to_dict() if model.from_scratch else {}
        if not model.checkpoint and not scratch:
            raise UserInputError("model.checkpoint, model.from_scratch: set one (an HF "
                                 "directory or asset, or a config dict to train from scratch)")
        if model.checkpoint:
            self.use_seq2seq_checkpoint()
            where = f"{self.model_dir}/config.json"
        else:
            self.tokenizer = self._scratch_tokenizer()
            where = "model.from_scratch"
            self.hf_config = self.with_dropout(self._scratch_hf_config(scratch), where)
        kind = self.build(where)
        if kind == "decoder":  # a decoder checkpoint goes to tasks.prompted
            raise UserInputError("model.from_scratch: only encoder-decoder models train from "
                                 "scratch here")
        if kind != "encoder-decoder":
            raise self.kind_error(where, kind)
        self.set_special_ids(where)
        self.pad_values = s2s.pad_values(self.pad_id)

    def _scratch_tokenizer(self):
        """`model.tokenizer`, or one trained on the training split (kept in the workdir)."""
        if self.config.model.tokenizer:
            return tokenizer_from(self.config.model.tokenizer, "model.tokenizer")
        out = self.workdir / TOKENIZER_DIR
        if not out.is_dir() and jax.process_index() == 0:
            if "train" not in self.records:
                raise UserInputError(f"data.train: needed to train a tokenizer (no {out} from "
                                     "an earlier run; or set model.tokenizer)")
            from sft_jax.data.tokenizer_training import train_tokenizer

            data = self.config.data
            texts = []
            for r in self.records["train"]:
                texts += [self._encoder_text(r), r[data.target_field]]
            with storage.staged_dir(out) as staged:  # a remote `out`: uploaded at the end
                tmp = staged.with_name(staged.name + ".tmp")
                shutil.rmtree(tmp, ignore_errors=True)
                train_tokenizer(texts, tmp, vocab_size=int(data.vocab_size),
                                kind=data.tokenizer_kind)
                tmp.replace(staged)
            log.info("Trained a %s tokenizer (%d pieces) on %d training texts into %s",
                     data.tokenizer_kind, data.vocab_size, len(texts), out)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices("seq2seq tokenizer")
        return tokenizer_from(out, "model.tokenizer")

    def _scratch_hf_config(self, scratch: dict) -> dict:
        """The family's default HF config, updated with `scratch` and the tokenizer's ids.
        Ids the defaults give by role (the decoder start, forced BOS/EOS: pad, EOS or BOS
        there) take the tokenizer's id of the same role."""
        from transformers import AutoConfig

        model_type = scratch.get("model_type")
        if not model_type:
            raise UserInputError("model.from_scratch: no 'model_type' (e.g. 't5', 'bart')")
        registry.model_type_of(scratch, where="model.from_scratch")
        defaults = AutoConfig.for_model(model_type).to_dict()
        tok = self.tokenizer
        ours = {"pad_token_id": tok.pad_token_id, "eos_token_id": tok.eos_token_id,
                "bos_token_id": tok.bos_token_id}
        settings = {k: v for k, v in scratch.items() if k != "model_type"}
        for key in ("decoder_start_token_id", "forced_bos_token_id", "forced_eos_token_id"):
            value = defaults.get(key)
            if key in settings or value is None:
                continue
            role = next((r for r in ours if defaults.get(r) == value), None)
            settings[key] = ours[role] if role is not None else None
        settings.update(vocab_size=len(tok), **ours)
        try:
            hf = AutoConfig.for_model(model_type, **settings).to_dict()
        except (TypeError, ValueError) as err:
            raise UserInputError(f"model.from_scratch: {err}") from None
        hf["model_type"] = model_type
        return hf

    # Features ---------------------------------------------------------------------------

    def _encoder_text(self, record: dict) -> str:
        data = self.config.data
        prefix = s2s.format_template(data.source_prefix, record_fields(record),
                                     "data.source_prefix", record["_where"])
        return prefix + record[data.source_field]

    def build_features(self) -> None:
        data = self.config.data
        self.pairs: dict[str, list[dict]] = {}
        for split, records in self.records.items():
            pairs, cut_source, cut_target = [], 0, 0
            for r in records:
                src, cut_s = s2s.encode_source(self.tokenizer, self._encoder_text(r),
                                               eos_id=self.eos_id,
                                               max_length=data.max_source_length)
                tgt, cut_t = s2s.encode_target(self.tokenizer, r[data.target_field],
                                               eos_id=self.eos_id,
                                               max_length=data.max_target_length)
                pairs.append({"source_ids": src, "target_ids": tgt})
                cut_source, cut_target = cut_source + cut_s, cut_target + cut_t
            self.pairs[split] = pairs
            self.stats.update({f"{split}/examples": len(pairs),
                               f"{split}/truncated_sources": cut_source,
                               f"{split}/truncated_targets": cut_target})
        self.buckets = s2s.field_buckets(
            s2s.side_buckets(data.max_source_length, data.source_buckets, "data.source_buckets"),
            s2s.side_buckets(data.max_target_length, data.target_buckets, "data.target_buckets"))
        single = functools.partial(s2s.single_pair, decoder_start_id=self.decoder_start_id)
        if "train" in self.pairs:
            if data.packing:
                rows = s2s.pack_pairs(self.pairs["train"], source_length=data.max_source_length,
                                      target_length=data.max_target_length,
                                      decoder_start_id=self.decoder_start_id,
                                      pad_id=self.pad_id)
                self._train_rows = packing.as_rows(rows)
                self.stats["train/packed_rows"] = len(self._train_rows)
                self.stats.update({f"train/packed_{k}": v
                                   for k, v in s2s.padding_stats(rows).items()})
            else:
                self._train_rows = LazyMap(self.pairs["train"], single)
        self._eval_rows = {split: LazyMap(pairs, single) for split, pairs in self.pairs.items()
                           if split != "train"}
        log.debug("Data: %s", self.stats)

    # Task interface ---------------------------------------------------------------------

    def init_batch(self) -> dict[str, np.ndarray]:
        ids = np.zeros((1, 8), np.int32)
        return {"encoder_input_ids": ids, "decoder_input_ids": ids}

    def pretrained_params(self) -> Mapping | None:
        if self.model_dir is None:
            return None
        converter = registry.converter_for(self.hf_config, where=str(self.model_dir))
        return converter.params_from_hf(load_state_dict(self.model_dir), self.module_config,
                                        where=str(self.model_dir))

    def train_lengths(self) -> Sequence[int] | None:
        if self._train_rows is None or self.config.data.packing:
            return None  # packed rows all have the same length
        return [len(p["source_ids"]) + len(p["target_ids"]) for p in self.pairs["train"]]

    def token_losses(self, params, batch: dict, rng, deterministic: bool, smoothing: float,
                     chunk: int = 0):
        out = self.module.apply(
            {"params": params}, batch["encoder_input_ids"], batch["decoder_input_ids"],
            **{name: batch[name] for name in LAYOUT}, deterministic=deterministic,
            rngs=None if deterministic else {"dropout": rng}, **lm_head_kwargs(chunk))
        weights = (batch["decoder_segment_ids"] != 0).astype(jnp.float32)  # B T
        loss = functools.partial(smoothed_cross_entropy, smoothing=smoothing)
        losses = token_losses_of(out, batch["decoder_target_ids"], loss, chunk)
        return losses * weights, weights

    def generate(self, split: str, n: int, params, sampling: Sampling, **search: Any
                 ) -> list[str]:
        generated = generate_ids(
            self.module, self.module_config, params,
            [self.pairs[split][i]["source_ids"] for i in range(n)],
            decoder_start_token_id=self.decoder_start_id, stop_token_ids=[self.eos_id],
            max_new_tokens=sampling.max_new_tokens, pad_id=self.pad_id,
            batch_size=sampling.batch_size, **search)
        return [self.tokenizer.decode(ids, skip_special_tokens=True).strip()
                for ids in generated]
