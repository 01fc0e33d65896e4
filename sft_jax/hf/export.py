"""Export our params to a Hugging Face model directory (safetensors + config + tokenizer).

What is written, by case:

- encoder only: `BertModel` / `RobertaModel` (architectures accordingly).
- classifier with pooling 'pooler': `BertForSequenceClassification` /
  `RobertaForSequenceClassification`, with `id2label` / `label2id`; `AutoModelForSequence
  Classification.from_pretrained(dir)` reproduces our logits.
- classifier with pooling 'cls' or 'mean': no Hugging Face class computes that head, so
  the encoder is exported as `BertModel` / `RobertaModel` (loadable by any HF code) and
  the head goes beside it, in `sft_jax_head.safetensors` (`kernel` [D, C], `bias` [C]) and
  `sft_jax_head.json` (pooling, num_labels, id2label). A warning is logged. We choose not
  to raise: a fine-tuned encoder is worth exporting, and `sft_jax.load_pretrained` reads
  the head back.
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

from sft_jax.hf import bert as hf_bert
from sft_jax.hf.checkpoint_dir import CONFIG_FILE, INDEX_FILE, WEIGHTS_FILE, save_state_dict
from sft_jax.models.heads import POOLINGS

log = logging.getLogger(__name__)

HEAD_WEIGHTS_FILE = "sft_jax_head.safetensors"
HEAD_CONFIG_FILE = "sft_jax_head.json"

_ARCH = {
    "bert": ("BertModel", "BertForSequenceClassification"),
    "roberta": ("RobertaModel", "RobertaForSequenceClassification"),
}
# Fields of the source config.json that describe the old file, not the exported one.
_DROPPED = ("_name_or_path", "architectures", "torch_dtype", "dtype", "transformers_version")


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
    pooling: str = "pooler",
    hf_config: Mapping[str, Any] | None = None,
) -> Path:
    """Write a Hugging Face model directory; returns its path.

    Args:
      out_dir: created if missing; existing files of the same names are replaced.
      module_config: the model's config (`BertConfig`).
      params: `BertModel` params, or `SequenceClassifier` params (`{'encoder',
        'classifier'}`); boxed, jax or numpy, any float dtype (written as float32).
      tokenizer: a transformers tokenizer (saved with `save_pretrained`), or None.
      num_labels: checked against the classifier's width when given.
      id2label: class names {0: 'neg', ...}; default LABEL_i.
      pooling: the classifier's pooling (see the module docstring for 'cls' / 'mean').
      hf_config: the source `config.json` dict; its extra fields are kept.
    """
    if pooling not in POOLINGS:
        raise ValueError(f"pooling {pooling!r} is not one of {POOLINGS}")
    model_type = module_config.model_type
    if model_type not in _ARCH:
        raise ValueError(f"no exporter for model_type {model_type!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for stale in (HEAD_WEIGHTS_FILE, HEAD_CONFIG_FILE, INDEX_FILE):  # from an older export
        (out / stale).unlink(missing_ok=True)
    config = {k: v for k, v in (hf_config or {}).items() if k not in _DROPPED}
    config.update(module_config.to_hf())
    params = nn.meta.unbox(dict(params))
    has_head = "classifier" in params
    encoder_arch, classifier_arch = _ARCH[model_type]

    if has_head:
        width = int(np.shape(params["classifier"]["kernel"])[-1])
        if num_labels is not None and num_labels != width:
            raise ValueError(f"num_labels={num_labels} but the classifier has {width} outputs")
        labels = _labels(width, id2label)
        config["id2label"] = labels
        config["label2id"] = {v: int(k) for k, v in labels.items()}
    if has_head and pooling == "pooler":
        state = hf_bert.classifier_to_hf(params, module_config)
        config["architectures"] = [classifier_arch]
    else:
        encoder = params["encoder"] if has_head else params
        state = hf_bert.params_to_hf(encoder, module_config)
        config["architectures"] = [encoder_arch]
    if has_head and pooling != "pooler":
        head = {
            k: np.asarray(jax.device_get(v), np.float32) for k, v in params["classifier"].items()
        }
        save_state_dict(head, out / HEAD_WEIGHTS_FILE)
        head_config = {"pooling": pooling, "num_labels": width, "id2label": labels}
        (out / HEAD_CONFIG_FILE).write_text(json.dumps(head_config, indent=2) + "\n")
        log.warning(
            "%s: pooling %r has no Hugging Face class; exported the encoder as %s and the "
            "head to %s (read back by sft_jax.load_pretrained)",
            out,
            pooling,
            encoder_arch,
            HEAD_WEIGHTS_FILE,
        )
    config["dtype"] = "float32"
    save_state_dict(state, out / WEIGHTS_FILE)
    (out / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    if tokenizer is not None:
        tokenizer.save_pretrained(str(out))
    return out
