"""Sequence to sequence (translation, summarization) with an encoder-decoder or a decoder.

Records carry a source and a target text (`data.source_field`, `data.target_field`).
The model is a Hugging Face checkpoint (`model.checkpoint`, a directory or an asset; its
family's kind in `models.registry` picks the path) or an encoder-decoder trained from
scratch (`model.from_scratch`, an HF-style config dict such as `{"model_type": "t5",
"d_model": 256, ...}`, completed with the family's defaults; vocabulary size and the pad,
EOS and decoder start ids come from the tokenizer). `model.tokenizer` names a tokenizer
directory; "" means the checkpoint's own, or, from scratch, one trained on the training
split (`data.vocab_size`, `data.tokenizer_kind`) into `workdir/tokenizer`, reused on
resume and exported with the model.

Encoder-decoder path: encoder input = `data.source_prefix` (a `str.format` template over
the record's fields, e.g. "translate English to Spanish: ") + source, cut to
`data.max_source_length` tokens keeping EOS; target cut to `data.max_target_length`.
Batches follow `sft_jax.data.seq2seq` (source and target each padded to their own bucket,
`data.source_buckets` / `data.target_buckets`; `data.packing` puts several pairs per row).

Decoder-only path: the user turn is `data.prompt_template` formatted with `{source}` (the
source cut to `data.max_source_length` tokens) and the record's other fields, rendered
with the tokenizer's chat template (`data.chat_template` overrides it; plain text when
there is none), the target (cut to `data.max_target_length` tokens) is the assistant
turn and the only loss target (`data.chat`, loss_on='completion'). Batches follow
`sft_jax.data.packing` (rows of `data.max_length`, packed with `data.packing`).

Loss: label-smoothed cross-entropy summed over target tokens (`train.label_smoothing` ε:
(1-ε)·nll + ε·mean over the vocabulary of -log p, as Hugging Face and PyTorch's
`cross_entropy(label_smoothing=ε)`); weight = number of target tokens.
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
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from sft_jax import decoding
from sft_jax import metrics as metrics_lib
from sft_jax.data import chat, packing, sources
from sft_jax.data import seq2seq as s2s
from sft_jax.data.pipeline import bucket_lengths
from sft_jax.errors import UserInputError
from sft_jax.hf import export as hf_export
from sft_jax.hf.checkpoint_dir import load_state_dict, read_config
from sft_jax.models import registry
from sft_jax.predict import ChatModel
from sft_jax.pretrained import load_tokenizer, pretrained_params, resolve_model_dir
from sft_jax.tasks.classification import LazyMap

log = logging.getLogger(__name__)

METRICS = ("bleu", "chrf", "rouge")
SPLITS = ("train", "validation", "test")
TOKENIZER_DIR = "tokenizer"


def smoothed_cross_entropy(logits: jax.Array, targets: jax.Array, smoothing: float
                           ) -> jax.Array:
    """Per-token loss [...] from logits [..., V] and integer targets [...]:
    (1-ε)·(-log p[target]) + ε·mean_v(-log p[v]), ε = `smoothing` (0: plain NLL)."""
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    nll = -jnp.take_along_axis(logp, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
    if smoothing == 0:
        return nll
    return (1.0 - smoothing) * nll - smoothing * jnp.mean(logp, axis=-1)


class Seq2SeqTask:
    def __init__(self, config: ml_collections.ConfigDict, workdir: Path):
        self.config = config
        self.workdir = Path(workdir)
        self._check_config()
        data = config.data
        self.records: dict[str, list[dict]] = {}
        for split in SPLITS:
            if not data[split]:
                continue
            limit = data.limit_train if split == "train" else data.limit_eval
            records = sources.read_records(data[split], config_key=f"data.{split}",
                                           data_dir=data.tfds_data_dir or None)
            records = records[:limit] if limit > 0 else records
            for r in records:
                self._check_record(r)
            self.records[split] = records
        self._setup_model()
        self.stats: dict[str, Any] = {}
        self._decoded: dict[str, tuple[Any, list[str]]] = {}  # split -> (params, texts)
        if self.encdec:
            self._build_pairs()
        else:
            self._build_prompts()

    # Set-up ------------------------------------------------------------------------------

    def _check_config(self) -> None:
        c = self.config
        for key in ("data.source_field", "data.target_field"):
            section, name = key.split(".")
            if not c[section][name]:
                raise UserInputError(f"{key}: must name a field of the records")
        for key in ("data.max_source_length", "data.max_target_length"):
            section, name = key.split(".")
            if c[section][name] < 2:
                raise UserInputError(f"{key}: must be at least 2, got {c[section][name]}")
        if not 0.0 <= c.train.label_smoothing < 1.0:
            raise UserInputError(f"train.label_smoothing: {c.train.label_smoothing} is not "
                                 "in [0, 1)")
        unknown = [m for m in c.eval.metrics if m not in METRICS]
        if unknown:
            raise UserInputError(f"eval.metrics: unknown {unknown} (known: {', '.join(METRICS)})")
        ev = c.eval
        if ev.num_beams < 1 or ev.generation_batch_size < 1 or ev.generate_limit < 0:
            raise UserInputError("eval.num_beams and eval.generation_batch_size must be >= 1, "
                                 "eval.generate_limit >= 0")
        if c.eval.metrics and ev.max_new_tokens < 1:
            raise UserInputError("eval.max_new_tokens: must be >= 1 when eval.metrics is set")
        s2s.check_template(c.data.source_prefix, "data.source_prefix")
        s2s.check_template(c.data.prompt_template, "data.prompt_template")

    def _check_record(self, record: dict) -> None:
        data = self.config.data
        for key in ("source_field", "target_field"):
            field = data[key]
            if field not in record or record[field] is None:
                fields = ", ".join(sorted(k for k in record if not k.startswith("_")))
                raise UserInputError(f"{record['_where']}: missing field {field!r} "
                                     f"(data.{key}; the record has: {fields})")
            if not isinstance(record[field], str):
                raise UserInputError(f"{record['_where']}: field {field!r} (data.{key}) must "
                                     f"be a string, got {type(record[field]).__name__}")

    def _setup_model(self) -> None:
        model = self.config.model
        scratch = model.from_scratch.to_dict() if model.from_scratch else {}
        if not model.checkpoint and not scratch:
            raise UserInputError("model.checkpoint, model.from_scratch: set one (an HF "
                                 "directory or asset, or a config dict to train from scratch)")
        if model.checkpoint:
            if scratch:
                log.info("model.checkpoint is set: model.from_scratch is not used")
            try:
                self.model_dir = resolve_model_dir(model.checkpoint)
            except UserInputError as err:
                raise UserInputError(f"model.checkpoint: {err}") from None
            self.tokenizer = self._load_tokenizer(model.tokenizer or self.model_dir,
                                                  "model.tokenizer" if model.tokenizer
                                                  else "model.checkpoint")
            self.hf_config = dict(read_config(self.model_dir))
            where = f"{self.model_dir}/config.json"
        else:
            self.model_dir = None
            self.tokenizer = self._scratch_tokenizer()
            self.hf_config = self._scratch_hf_config(scratch)
            where = "model.from_scratch"
        if model.dropout >= 0:
            self.hf_config = registry.with_dropout(self.hf_config, model.dropout, where=where)
        self.module, self.module_config = registry.build_model(
            self.hf_config, dtype=model.dtype, remat=model.remat, where=where)
        kind = registry.family_of(self.module_config).kind
        if kind not in ("encoder-decoder", "decoder"):
            raise UserInputError(f"{where}: model_type {self.hf_config['model_type']!r} is an "
                                 f"{kind}; seq2seq needs an encoder-decoder or a decoder")
        if kind == "decoder" and not model.checkpoint:
            raise UserInputError("model.from_scratch: only encoder-decoder models train from "
                                 "scratch here")
        self.encdec = kind == "encoder-decoder"
        tok = self.tokenizer
        self.eos_id = tok.eos_token_id
        if self.eos_id is None:
            raise UserInputError(f"{where}: the tokenizer has no EOS token")
        self.pad_id = int(tok.pad_token_id if tok.pad_token_id is not None else self.eos_id)
        start = getattr(self.module_config, "decoder_start_token_id", None)
        self.decoder_start_id = int(self.pad_id if start is None else start)
        if self.encdec:
            self.pad_values = s2s.pad_values(self.pad_id)
        else:
            self.pad_values = packing.pad_values(self.pad_id)

    def _load_tokenizer(self, path, key: str):
        try:
            tokenizer = load_tokenizer(resolve_model_dir(path))
        except UserInputError as err:
            raise UserInputError(f"{key}: {err}") from None
        if tokenizer is None:
            raise UserInputError(f"{key}: {path} has no tokenizer files")
        return tokenizer

    def _scratch_tokenizer(self):
        """`model.tokenizer`, or one trained on the training split (kept in the workdir)."""
        if self.config.model.tokenizer:
            return self._load_tokenizer(self.config.model.tokenizer, "model.tokenizer")
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
            tmp = out.with_name(out.name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            train_tokenizer(texts, tmp, vocab_size=int(data.vocab_size),
                            kind=data.tokenizer_kind)
            tmp.rename(out)
            log.info("Trained a %s tokenizer (%d pieces) on %d training texts into %s",
                     data.tokenizer_kind, data.vocab_size, len(texts), out)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices("seq2seq tokenizer")
        return self._load_tokenizer(out, "model.tokenizer")

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

    def _fields(self, record: dict) -> dict[str, Any]:
        return {k: v for k, v in record.items() if not k.startswith("_")}

    def _encoder_text(self, record: dict) -> str:
        data = self.config.data
        prefix = s2s.format_template(data.source_prefix, self._fields(record),
                                     "data.source_prefix", record["_where"])
        return prefix + record[data.source_field]

    def _build_pairs(self) -> None:
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
        self._train_rows = None
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
        log.info("Data: %s", self.stats)

    def _prompt(self, record: dict) -> str:
        data = self.config.data
        source, _ = s2s.truncate_text(self.tokenizer, record[data.source_field],
                                      data.max_source_length)
        fields = {**self._fields(record), "source": source}
        return s2s.format_template(data.prompt_template, fields, "data.prompt_template",
                                   record["_where"])

    def _build_prompts(self) -> None:
        data = self.config.data
        self.template = data.chat_template or None
        self.prompts: dict[str, list[str]] = {}
        self.examples: dict[str, list[dict]] = {}
        for split, records in self.records.items():
            kept_records, prompts, examples = [], [], []
            for r in records:
                prompt = self._prompt(r)
                target, _ = s2s.truncate_text(self.tokenizer, r[data.target_field],
                                              data.max_target_length)
                ex = chat.encode_example({"prompt": prompt, "completion": target,
                                          "_where": r["_where"]}, self.tokenizer,
                                         chat_template=self.template, loss_on="completion",
                                         max_length=data.max_length)
                if ex["loss_mask"].any():
                    kept_records.append(r)
                    prompts.append(prompt)
                    examples.append(ex)
            if not examples:
                raise UserInputError(f"data.{split}: no example keeps a target token within "
                                     f"data.max_length={data.max_length}")
            self.stats[f"{split}/examples"] = len(examples)
            self.stats[f"{split}/dropped"] = len(records) - len(examples)
            self.records[split], self.prompts[split] = kept_records, prompts
            self.examples[split] = examples
        self.buckets = bucket_lengths(int(data.max_length),
                                      explicit=[int(b) for b in data.buckets] or None)
        self._train_rows = None
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
        log.info("Data: %s", self.stats)

    # Task interface ---------------------------------------------------------------------

    def data_stats(self) -> dict[str, Any]:
        return dict(self.stats)

    def init_batch(self) -> dict[str, np.ndarray]:
        ids = np.zeros((1, 8), np.int32)
        if self.encdec:
            return {"encoder_input_ids": ids, "decoder_input_ids": ids}
        return {"input_ids": ids, "positions": np.arange(8, dtype=np.int32)[None],
                "segment_ids": np.ones_like(ids)}

    def pretrained_params(self) -> Mapping | None:
        if self.model_dir is None:
            return None
        if self.encdec:
            converter = registry.converter_for(self.hf_config, where=str(self.model_dir))
            return converter.params_from_hf(load_state_dict(self.model_dir), self.module_config,
                                            where=str(self.model_dir))
        return pretrained_params(self.model_dir, self.module_config, with_head=False,
                                 hf_config=self.hf_config)

    def train_features(self) -> Sequence[dict] | None:
        return self._train_rows

    def train_lengths(self) -> Sequence[int] | None:
        if self._train_rows is None or self.config.data.packing:
            return None  # packed rows all have the same length
        if self.encdec:
            return [len(p["source_ids"]) + len(p["target_ids"]) for p in self.pairs["train"]]
        return [len(ex["input_ids"]) for ex in self.examples["train"]]

    def eval_features(self) -> dict[str, Sequence[dict]]:
        return dict(self._eval_rows)

    def _token_losses(self, params, batch: dict, rng, deterministic: bool, smoothing: float):
        rngs = None if deterministic else {"dropout": rng}
        if self.encdec:
            out = self.module.apply(
                {"params": params}, batch["encoder_input_ids"], batch["decoder_input_ids"],
                encoder_segment_ids=batch["encoder_segment_ids"],
                encoder_positions=batch["encoder_positions"],
                decoder_segment_ids=batch["decoder_segment_ids"],
                decoder_positions=batch["decoder_positions"],
                deterministic=deterministic, rngs=rngs)
            targets = batch["decoder_target_ids"]
            weights = (batch["decoder_segment_ids"] != 0).astype(jnp.float32)  # B T
        else:
            out = self.module.apply(
                {"params": params}, batch["input_ids"], positions=batch["positions"],
                segment_ids=batch["segment_ids"], deterministic=deterministic, rngs=rngs)
            targets, weights = packing.next_token_targets(
                batch["input_ids"], batch["segment_ids"], batch["loss_mask"])
        losses = smoothed_cross_entropy(out["logits"], targets, smoothing)  # B T
        return losses * weights, weights

    def loss_fn(self, params, batch: dict, rng, deterministic: bool):
        losses, weights = self._token_losses(params, batch, rng, deterministic,
                                             float(self.config.train.label_smoothing))
        return jnp.sum(losses), {"weight": jnp.sum(weights)}

    def eval_fn(self, params, batch: dict) -> dict[str, jax.Array]:
        nll, weights = self._token_losses(params, batch, None, True, 0.0)
        return {"nll": nll.sum(-1), "tokens": weights.sum(-1), "index": batch["index"],
                "example_mask": batch["example_mask"]}

    def evaluate(self, split: str, outputs: dict[str, np.ndarray], params=None
                 ) -> dict[str, Any]:
        tokens = float(outputs["tokens"].sum())
        loss = float(outputs["nll"].sum()) / max(tokens, 1.0)
        result: dict[str, Any] = {"loss": loss, "perplexity": float(np.exp(loss)),
                                  "tokens": tokens}
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
        n = self._num_generated(split)
        ev = self.config.eval
        settings = dict(max_new_tokens=int(ev.max_new_tokens), pad_id=self.pad_id,
                        batch_size=int(ev.generation_batch_size), num_beams=int(ev.num_beams),
                        length_penalty=float(ev.length_penalty),
                        early_stopping=ev.early_stopping)
        if self.encdec:
            from sft_jax import seq2seq_decoding

            generated = seq2seq_decoding.generate_ids(
                self.module, self.module_config, params,
                [self.pairs[split][i]["source_ids"] for i in range(n)],
                decoder_start_token_id=self.decoder_start_id, stop_token_ids=[self.eos_id],
                **settings)
        else:
            stops = {self.eos_id, *self.tokenizer.convert_tokens_to_ids(list(ev.stop_tokens))}
            stops -= {None, self.tokenizer.unk_token_id}
            model = self._chat_model
            generated = decoding.generate(
                model.step, params, model.init_cache,
                [model.prompt_ids([{"role": "user", "content": p}])
                 for p in self.prompts[split][:n]],
                stop_token_ids=sorted(stops), **settings)
        return [self.tokenizer.decode(ids, skip_special_tokens=True).strip()
                for ids in generated]

    @functools.cached_property
    def _chat_model(self) -> ChatModel:
        return ChatModel(self.module, self.module_config, None, self.tokenizer, self.template)

    def text_metrics(self, split: str, predictions: Sequence[str]) -> dict[str, Any]:
        refs = self.references(split)
        out: dict[str, Any] = {"generated": len(predictions)}
        wanted = self.config.eval.metrics
        if "bleu" in wanted:
            out.update(metrics_lib.corpus_bleu(predictions, refs,
                                               tokenize=self.config.eval.bleu_tokenize))
        if "chrf" in wanted:
            out.update(metrics_lib.corpus_chrf(predictions, refs))
        if "rouge" in wanted:
            split_lines = metrics_lib.split_sentences_newlines
            out.update(metrics_lib.rouge([split_lines(p) for p in predictions],
                                         [split_lines(r) for r in refs]))
        return out

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
                tokens = float(outputs["tokens"][i])
                row = {"where": r["_where"], "source": r[data.source_field],
                       "reference": r[data.target_field]}
                if i < len(predictions):
                    row["prediction"] = predictions[i]
                row.update(loss=float(outputs["nll"][i]) / max(tokens, 1.0), tokens=tokens)
                f.write(json.dumps(row, ensure_ascii=False) + "\n")

    def export(self, out_dir: Path, params) -> None:
        hf_export.export_pretrained(out_dir, module_config=self.module_config, params=params,
                                    tokenizer=self.tokenizer, hf_config=self.hf_config)
