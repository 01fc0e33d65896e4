"""Export our params to a Hugging Face model directory (safetensors + config + tokenizer).

Everything model-specific comes from the family (`sft_jax/models/family.py`): its kind,
Hugging Face pooling, class names (`architectures[model_type]`) and converter. What is
written, by case:

- encoder only: the `base` class (e.g. `BertModel`).
- decoder LM: the `causal_lm` class; `AutoModelForCausalLM.from_pretrained(dir)`
  reproduces our logits. Tied embeddings are written once (transformers ties the head on
  load).
- classifier with the family's Hugging Face pooling (`hf_pooling`): the
  `sequence_classification` class, with `id2label` / `label2id`;
  `AutoModelForSequenceClassification.from_pretrained(dir)` reproduces our logits.
  Decoder classifiers pool the last token that is not `pad_token_id` in HF (ours: the
  last with attention_mask 1), so `pad_token_id` is set (from the tokenizer if the config
  has none) and a warning is logged if there is none.
- classifier with another pooling ('cls' / 'mean', or 'last' on an encoder): no Hugging
  Face class computes that head, so the backbone is exported as the `base` class
  (loadable by any HF code) and the head goes beside it, in `sft_jax_head.safetensors`
  (`kernel` [D, C], `bias` [C] if any) and `sft_jax_head.json` (pooling, num_labels,
  id2label). A warning is logged. We choose not to raise: a fine-tuned model is worth
  exporting, and `sft_jax.load_pretrained` reads the head back.
- encoder-decoder: the family converter's `params_to_hf` state dict as the `seq2seq`
  class, and a `generation_config.json` with the config's special token ids (decoder
  start, eos, pad, ...) and any legacy generation settings it carries;
  `AutoModelForSeq2SeqLM.from_pretrained(dir)` reproduces our logits.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import numpy as np

from sft_jax.hf.checkpoint_dir import CONFIG_FILE, INDEX_FILE, WEIGHTS_FILE, save_state_dict
from sft_jax.models import registry
from sft_jax.models.family import Family
from sft_jax.models.heads import POOLINGS

log = logging.getLogger(__name__)

HEAD_WEIGHTS_FILE = "sft_jax_head.safetensors"
HEAD_CONFIG_FILE = "sft_jax_head.json"

GENERATION_CONFIG_FILE = "generation_config.json"
# Config fields copied into generation_config.json (when present and not None): the
# special token ids, and the legacy generation settings some source configs carry.
_GENERATION_FIELDS = (
    "bos_token_id",
    "decoder_start_token_id",
    "eos_token_id",
    "forced_bos_token_id",
    "forced_eos_token_id",
    "pad_token_id",
    "max_length",
    "min_length",
    "num_beams",
    "no_repeat_ngram_size",
    "length_penalty",
    "early_stopping",
    "bad_words_ids",
)
# Fields of the source config.json that describe the old file, not the exported one, or
# that point at Python code the export does not hold (and that is never run).
_DROPPED = ("_name_or_path", "architectures", "torch_dtype", "dtype", "transformers_version",
            "auto_map", "custom_pipelines", "trust_remote_code")


def _labels(num_labels: int, id2label: Mapping[int, str] | None) -> dict[str, str]:
    if id2label is None:
        return {str(i): f"LABEL_{i}" for i in range(num_labels)}
    labels = {str(int(k)): str(v) for k, v in id2label.items()}
    if sorted(labels, key=int) != [str(i) for i in range(num_labels)]:
        raise ValueError(f"id2label keys must be 0..{num_labels - 1}, got {sorted(labels)}")
    return labels


def export_pretrained(
    out_dir: str | Path,
    *,
    module_config: Any,
    params: Mapping[str, Any],
    tokenizer: Any | None,
    num_labels: int | None = None,
    id2label: Mapping[int, str] | None = None,
    pooling: str | None = None,
    hf_config: Mapping[str, Any] | None = None,
) -> Path:
    """Write a Hugging Face model directory; returns its path.

    Args:
      out_dir: created if missing; existing files of the same names are replaced.
      module_config: the model's config (`BertConfig`, `LlamaConfig`, `Gpt2Config`).
      params: the bare module's params (`BertModel`, `LlamaModel`, `Gpt2Model`), or
        `SequenceClassifier` params (`{'encoder', 'classifier'}`); boxed, jax or numpy,
        any float dtype (written as float32).
      tokenizer: a transformers tokenizer (saved with `save_pretrained`), or None.
      num_labels: checked against the classifier's width when given.
      id2label: class names {0: 'neg', ...}; default LABEL_i.
      pooling: the classifier's pooling (see the module docstring); None: the family's
        Hugging Face pooling.
      hf_config: the source `config.json` dict; its extra fields are kept.
    """
    family = registry.family_of(module_config)
    pooling = family.hf_pooling if pooling is None else pooling
    if pooling not in POOLINGS:
        raise ValueError(f"pooling {pooling!r} is not one of {POOLINGS}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for stale in (HEAD_WEIGHTS_FILE, HEAD_CONFIG_FILE, INDEX_FILE):  # from an older export
        (out / stale).unlink(missing_ok=True)
    config = {k: v for k, v in (hf_config or {}).items() if k not in _DROPPED}
    config.update(module_config.to_hf())
    params = nn.meta.unbox(dict(params))
    architectures = family.architectures[module_config.model_type]
    if family.kind == "encoder-decoder":
        return _export_seq2seq(out, config, params, module_config, family, tokenizer)
    has_head = "classifier" in params
    labels: dict[str, str] = {}
    if has_head:
        width = int(np.shape(params["classifier"]["kernel"])[-1])
        if num_labels is not None and num_labels != width:
            raise ValueError(f"num_labels={num_labels} but the classifier has {width} outputs")
        labels = _labels(width, id2label)
        config["id2label"] = labels
        config["label2id"] = {v: int(k) for k, v in labels.items()}
    native_head = has_head and pooling == family.hf_pooling
    converter = family.converter
    if native_head:
        state = converter.classifier_to_hf(params, module_config)
        arch = architectures.sequence_classification
    elif has_head:
        state = converter.params_to_hf(params["encoder"], module_config, base_model=True)
        arch = architectures.base
    else:
        state = converter.params_to_hf(params, module_config)
        arch = architectures.causal_lm or architectures.base
    config["architectures"] = [arch]
    if native_head and family.kind == "decoder":
        _set_pad_token(config, tokenizer, out)
    if has_head and not native_head:
        head = {
            k: np.asarray(jax.device_get(v), np.float32) for k, v in params["classifier"].items()
        }
        save_state_dict(head, out / HEAD_WEIGHTS_FILE)
        head_config = {"pooling": pooling, "num_labels": width, "id2label": labels}
        (out / HEAD_CONFIG_FILE).write_text(json.dumps(head_config, indent=2) + "\n")
        log.warning(
            "%s: pooling %r has no Hugging Face class; exported the %s as %s and the "
            "head to %s (read back by sft_jax.load_pretrained)",
            out,
            pooling,
            family.kind,
            arch,
            HEAD_WEIGHTS_FILE,
        )
    config["dtype"] = "float32"
    save_state_dict(state, out / WEIGHTS_FILE)
    (out / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    if tokenizer is not None:
        tokenizer.save_pretrained(str(out))
    return out


def _export_seq2seq(
    out: Path,
    config: dict[str, Any],
    params: Mapping[str, Any],
    module_config: Any,
    family: Family,
    tokenizer: Any | None,
) -> Path:
    """Write an encoder-decoder `...ForConditionalGeneration` directory."""
    model_type = module_config.model_type
    if "classifier" in params:
        raise ValueError(f"{model_type!r} encoder-decoders have no classifier to export")
    state = family.converter.params_to_hf(params, module_config)
    config["architectures"] = [family.architectures[model_type].seq2seq]
    config["is_encoder_decoder"] = True
    config["dtype"] = "float32"
    save_state_dict(state, out / WEIGHTS_FILE)
    (out / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    generation = {k: config[k] for k in _GENERATION_FIELDS if config.get(k) is not None}
    (out / GENERATION_CONFIG_FILE).write_text(json.dumps(generation, indent=2) + "\n")
    if tokenizer is not None:
        tokenizer.save_pretrained(str(out))
    return out


def _set_pad_token(config: dict[str, Any], tokenizer: Any | None, out: Path) -> None:
    """HF decoder classifiers find each row's last token by `pad_token_id`."""
    if config.get("pad_token_id") is None and tokenizer is not None:
        config["pad_token_id"] = getattr(tokenizer, "pad_token_id", None)
    if config.get("pad_token_id") is None:
        log.warning(
            "%s: no pad_token_id (config or tokenizer); Hugging Face's sequence classifier "
            "will only accept unpadded batches of one",
            out,
        )
