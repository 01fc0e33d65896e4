"""Hugging Face `model_type` -> model family: the one place a family is picked by name.

`FAMILY_PACKAGES` lists the family packages (`sft_jax/models/<family>/`), one line each;
each exports `FAMILY`, a `Family` (`family.py`: the contract), and `FAMILIES` maps every
model_type of every family to it. Adding a family = its package + one line here.

The batch contracts: encoder (`models/bert`), decoder and its KV cache
(`models/decoder.py`), encoder-decoder (`models/t5`).
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Mapping
from types import ModuleType
from typing import Any

import flax.linen as nn

from sft_jax.errors import UserInputError
from sft_jax.models.attention import DEFAULT_BLOCK, check_implementation
from sft_jax.models.family import Family
from sft_jax.models.heads import POOLINGS, SequenceClassifier

FAMILY_PACKAGES = (
    "sft_jax.models.bert",
    "sft_jax.models.llama",
    "sft_jax.models.qwen3",
    "sft_jax.models.gemma3",
    "sft_jax.models.gpt2",
    "sft_jax.models.t5",
    "sft_jax.models.bart",
)


def _families(packages: tuple[str, ...]) -> dict[str, Family]:
    out: dict[str, Family] = {}
    for package in packages:
        family = importlib.import_module(package).FAMILY
        for model_type in family.model_types:
            if model_type in out:
                raise ValueError(
                    f"model_type {model_type!r}: in {out[model_type].name} and {family.name}"
                )
            out[model_type] = family
    return out


FAMILIES: dict[str, Family] = _families(FAMILY_PACKAGES)


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
    """A copy of `hf_config` with every dropout rate of its family (`Family.dropout_keys`)
    set to `rate` (the `model.dropout` override)."""
    keys = get_family(hf_config, where=where).dropout_keys
    return {**hf_config, **dict.fromkeys(keys, float(rate))}


def converter_for(hf_config: Mapping[str, Any], *, where: str = "config.json") -> ModuleType:
    """The module converting this model's weights (`sft_jax/models/<family>/convert.py`)."""
    return get_family(hf_config, where=where).converter


def family_of(module_config: Any) -> Family:
    """The family of a built config (`BertConfig`, `LlamaConfig`, ...), by its model_type;
    an unknown model_type is a `UserInputError`."""
    model_type = getattr(module_config, "model_type", None)
    return get_family({"model_type": model_type}, where=type(module_config).__name__)


def init_cache(
    module_config: Any, batch_size: int, max_length: int, dtype: Any = None
) -> dict[str, Any]:
    """An empty KV cache for a decoder config (contract: `sft_jax/models/decoder.py`)."""
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
    neftune_alpha: float = 0.0,
    attention: str = "xla",
    attention_block: int = DEFAULT_BLOCK,
    where: str = "config.json",
) -> tuple[nn.Module, Any]:
    """(module, config) for an HF config dict.

    Without `num_labels` the module is the bare encoder (e.g. `BertModel`) or, for a
    decoder, the causal LM (`LlamaModel`, `Gpt2Model`); with it, a `SequenceClassifier`
    whose params are `{'encoder': ..., 'classifier': ...}`. `pooling=None` picks the
    family's Hugging Face pooling ('pooler' for encoders, 'last' for decoders).
    `remat` ('none', 'full', 'dots') sets the config's `remat_policy`, `neftune_alpha`
    its NEFTune noise (training calls only; `layers.neftune`), `attention` and
    `attention_block` the shared attention's implementation (`sft_jax.models.attention`;
    a `UserInputError` for an unknown one, or cudnn without a GPU).
    `where` (usually the config.json path) names the source in error messages.
    """
    family = get_family(hf_config, where=where)
    config = family.config_cls.from_hf(hf_config, dtype=dtype, param_dtype=param_dtype, where=where)
    if remat != "none":  # ours, not an HF field: recompute layer activations in backward
        config = dataclasses.replace(config, remat_policy=remat)
    if neftune_alpha:  # ours too: noise on the input embeddings in training
        config = dataclasses.replace(config, neftune_alpha=float(neftune_alpha))
    check_implementation(attention, attention_block)
    if (attention, attention_block) != ("xla", DEFAULT_BLOCK):  # ours: how scores are computed
        config = dataclasses.replace(config, attention=attention,
                                     attention_block=attention_block)
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
