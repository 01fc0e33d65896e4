"""Hugging Face `model_type` -> (config class, module class, converter module).

The one place where a model family is picked by name. To add a family, write
`models/<family>.py` (a frozen config dataclass with `from_hf`, a flax module) and
`hf/<family>.py` (`params_from_hf`, `params_to_hf`), then add one `Family` line to
`FAMILIES`. Converters are named by module path and imported lazily, so `models/` does
not import `hf/` at import time.

Encoders (BERT) and decoders (Llama, Mistral, Qwen2, GPT-2) differ in their batch
contract (`bert.py`, `llama.py`), in the pooling Hugging Face's `...ForSequence
Classification` uses (`hf_pooling`: 'pooler' vs 'last') and in whether a KV cache exists
(`init_cache`).

Encoder-decoders (T5 v1.0 / v1.1 / Flan-T5 and mT5 in `t5.py`, BART and Marian in
`bart.py`) share one batch contract (`encoder_*` and `decoder_*` ids, segment ids,
positions; documented in `t5.py`), have a decoder KV cache (`init_cache`) and no
classification head.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Mapping
from types import ModuleType
from typing import Any

import flax.linen as nn

from sft_jax.errors import UserInputError
from sft_jax.models import bart, gpt2, llama, t5
from sft_jax.models.bert import BertConfig, BertModel
from sft_jax.models.heads import POOLINGS, SequenceClassifier


@dataclasses.dataclass(frozen=True)
class Family:
    """How to build and convert one model family."""

    config_cls: type
    module_cls: type[nn.Module]
    converter: str  # module path with params_from_hf / params_to_hf
    kind: str  # 'encoder' | 'decoder' | 'encoder-decoder'
    hf_pooling: str = "pooler"  # the pooling of HF's ...ForSequenceClassification
    init_cache: Callable[..., dict[str, Any]] | None = None  # decoders: (config, B, S, dtype)
    dropout_keys: tuple[str, ...] = ("hidden_dropout_prob", "attention_probs_dropout_prob")


_LLAMA = Family(
    llama.LlamaConfig,
    llama.LlamaModel,
    "sft_jax.hf.llama",
    "decoder",
    "last",
    llama.init_cache,
    dropout_keys=("attention_dropout", "hidden_dropout"),
)
_T5 = Family(
    t5.T5Config,
    t5.T5Model,
    "sft_jax.hf.t5",
    "encoder-decoder",
    init_cache=t5.init_cache,
    dropout_keys=("dropout_rate",),
)
_BART = Family(
    bart.BartConfig,
    bart.BartModel,
    "sft_jax.hf.bart",
    "encoder-decoder",
    init_cache=bart.init_cache,
    dropout_keys=("dropout", "attention_dropout", "activation_dropout"),
)
FAMILIES: dict[str, Family] = {
    "bert": Family(BertConfig, BertModel, "sft_jax.hf.bert", "encoder"),
    "roberta": Family(BertConfig, BertModel, "sft_jax.hf.bert", "encoder"),
    "llama": _LLAMA,
    "mistral": _LLAMA,
    "qwen2": _LLAMA,
    "gpt2": Family(
        gpt2.Gpt2Config,
        gpt2.Gpt2Model,
        "sft_jax.hf.gpt2",
        "decoder",
        "last",
        gpt2.init_cache,
        dropout_keys=("resid_pdrop", "embd_pdrop", "attn_pdrop"),
    ),
    "t5": _T5,
    "mt5": _T5,
    "bart": _BART,
    "marian": _BART,
}


def supported_model_types() -> tuple[str, ...]:
    return tuple(FAMILIES)


def model_type_of(hf_config: Mapping[str, Any], *, where: str = "config.json") -> str:
    """The `model_type` field of an HF config, checked against `FAMILIES`."""
    model_type = hf_config.get("model_type")
    if not model_type:
        raise UserInputError(f"{where}: no 'model_type' field")
    if model_type not in FAMILIES:
        raise UserInputError(
            f"{where}: model_type {model_type!r} is not supported "
            f"(supported: {', '.join(FAMILIES)})"
        )
    return model_type


def get_family(hf_config: Mapping[str, Any], *, where: str = "config.json") -> Family:
    return FAMILIES[model_type_of(hf_config, where=where)]


def with_dropout(
    hf_config: Mapping[str, Any], rate: float, *, where: str = "config.json"
) -> dict[str, Any]:
    """A copy of `hf_config` with every dropout rate of its family set to `rate` (the
    `model.dropout` override): BERT hidden + attention, Llama attention + our residual
    `hidden_dropout`, GPT-2 residual + embedding + attention, T5 `dropout_rate`, BART and
    Marian dropout + attention + activation."""
    keys = get_family(hf_config, where=where).dropout_keys
    return {**hf_config, **dict.fromkeys(keys, float(rate))}


def converter_for(hf_config: Mapping[str, Any], *, where: str = "config.json") -> ModuleType:
    """The `sft_jax.hf.<family>` module converting this model's weights."""
    return importlib.import_module(get_family(hf_config, where=where).converter)


def family_of(module_config: Any) -> Family:
    """The family of a built config (`BertConfig`, `LlamaConfig`, ...), by its model_type."""
    return FAMILIES[module_config.model_type]


def init_cache(
    module_config: Any, batch_size: int, max_length: int, dtype: Any = None
) -> dict[str, Any]:
    """An empty KV cache for a decoder config (contract: `sft_jax/models/llama.py`)."""
    family = family_of(module_config)
    if family.init_cache is None:
        raise ValueError(f"model_type {module_config.model_type!r} has no KV cache")
    return family.init_cache(module_config, batch_size, max_length, dtype)


def build_model(
    hf_config: Mapping[str, Any],
    *,
    num_labels: int | None = None,
    pooling: str | None = None,
    classifier_dropout: float | None = None,
    dtype: Any = "float32",
    param_dtype: Any = "float32",
    remat: str = "none",
    where: str = "config.json",
) -> tuple[nn.Module, Any]:
    """(module, config) for an HF config dict.

    Without `num_labels` the module is the bare encoder (e.g. `BertModel`) or, for a
    decoder, the causal LM (`LlamaModel`, `Gpt2Model`); with it, a `SequenceClassifier`
    whose params are `{'encoder': ..., 'classifier': ...}`. `pooling=None` picks the
    family's Hugging Face pooling ('pooler' for encoders, 'last' for decoders).
    `remat` ('none', 'full', 'dots') sets the config's `remat_policy`.
    `where` (usually the config.json path) names the source in error messages.
    """
    family = get_family(hf_config, where=where)
    config = family.config_cls.from_hf(hf_config, dtype=dtype, param_dtype=param_dtype, where=where)
    if remat != "none":  # ours, not an HF field: recompute layer activations in backward
        config = dataclasses.replace(config, remat_policy=remat)
    if num_labels is None:
        return family.module_cls(config), config
    if family.kind not in ("encoder", "decoder"):
        raise UserInputError(
            f"{where}: a classification head needs an encoder or decoder model, "
            f"not {family.kind} {hf_config['model_type']!r}"
        )
    if isinstance(num_labels, bool) or not isinstance(num_labels, int) or num_labels < 1:
        raise UserInputError(f"num_labels must be a positive integer, got {num_labels!r}")
    pooling = family.hf_pooling if pooling is None else pooling
    if pooling not in POOLINGS:
        raise UserInputError(f"pooling {pooling!r} is not one of {', '.join(POOLINGS)}")
    if pooling == "pooler" and family.kind == "decoder":
        raise UserInputError(
            f"pooling 'pooler': decoder model_type {hf_config['model_type']!r} has no pooler "
            "(use 'last', as Hugging Face does, or 'mean')"
        )
    module = SequenceClassifier(
        config=config,
        num_labels=num_labels,
        pooling=pooling,
        classifier_dropout=classifier_dropout,
        encoder_cls=family.module_cls,
        classifier_bias=family.kind == "encoder",
    )
    return module, config
