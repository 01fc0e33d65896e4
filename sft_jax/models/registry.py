"""Hugging Face `model_type` -> (config class, module class, converter module).

The one place where a model family is picked by name. To add a family (planned:
'llama', 'qwen2', 'gpt2' decoder-only; 't5', 'bart', 'marian' encoder-decoder), write
`models/<family>.py` (a frozen config dataclass with `from_hf`, a flax module) and
`hf/<family>.py` (`params_from_hf`, `params_to_hf`), then add one `Family` line to
`FAMILIES`. Converters are named by module path and imported lazily, so `models/` does not
import `hf/` at import time.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Mapping
from types import ModuleType
from typing import Any

import flax.linen as nn

from sft_jax.errors import UserInputError
from sft_jax.models.bert import BertConfig, BertModel
from sft_jax.models.heads import POOLINGS, SequenceClassifier


@dataclasses.dataclass(frozen=True)
class Family:
    """How to build and convert one model family."""

    config_cls: type
    module_cls: type[nn.Module]
    converter: str  # module path with params_from_hf / params_to_hf
    kind: str  # 'encoder' | 'decoder' | 'encoder-decoder'


FAMILIES: dict[str, Family] = {
    "bert": Family(BertConfig, BertModel, "sft_jax.hf.bert", "encoder"),
    "roberta": Family(BertConfig, BertModel, "sft_jax.hf.bert", "encoder"),
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


def converter_for(hf_config: Mapping[str, Any], *, where: str = "config.json") -> ModuleType:
    """The `sft_jax.hf.<family>` module converting this model's weights."""
    return importlib.import_module(get_family(hf_config, where=where).converter)


def build_model(
    hf_config: Mapping[str, Any],
    *,
    num_labels: int | None = None,
    pooling: str = "pooler",
    classifier_dropout: float | None = None,
    dtype: Any = "float32",
    param_dtype: Any = "float32",
    where: str = "config.json",
) -> tuple[nn.Module, Any]:
    """(module, config) for an HF config dict.

    Without `num_labels` the module is the bare encoder (e.g. `BertModel`); with it, a
    `SequenceClassifier` whose params are `{'encoder': ..., 'classifier': ...}`.
    `where` (usually the config.json path) names the source in error messages.
    """
    family = get_family(hf_config, where=where)
    config = family.config_cls.from_hf(hf_config, dtype=dtype, param_dtype=param_dtype, where=where)
    if num_labels is None:
        return family.module_cls(config), config
    if family.kind != "encoder":
        raise UserInputError(
            f"{where}: a classification head needs an encoder model, "
            f"not {family.kind} {hf_config['model_type']!r}"
        )
    if isinstance(num_labels, bool) or not isinstance(num_labels, int) or num_labels < 1:
        raise UserInputError(f"num_labels must be a positive integer, got {num_labels!r}")
    if pooling not in POOLINGS:
        raise UserInputError(f"pooling {pooling!r} is not one of {', '.join(POOLINGS)}")
    module = SequenceClassifier(
        config=config,
        num_labels=num_labels,
        pooling=pooling,
        classifier_dropout=classifier_dropout,
        encoder_cls=family.module_cls,
    )
    return module, config
