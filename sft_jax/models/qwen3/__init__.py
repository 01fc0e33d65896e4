"""Qwen3 (model_type `qwen3`): module and config (`model.py`), Hugging Face converter
(`convert.py`), and `FAMILY`, its `Family` declaration: the Llama family's, with Qwen3's
config, module, converter and class names."""

import dataclasses

from sft_jax.models import llama
from sft_jax.models.decoder import init_cache
from sft_jax.models.family import Architectures
from sft_jax.models.qwen3 import convert
from sft_jax.models.qwen3.model import MODEL_TYPE, Qwen3Config, Qwen3Model

FAMILY = dataclasses.replace(
    llama.FAMILY, name="qwen3", config_cls=Qwen3Config, module_cls=Qwen3Model,
    converter=convert.CONVERTER, architectures={MODEL_TYPE: Architectures(
        "Qwen3Model", causal_lm="Qwen3ForCausalLM",
        sequence_classification="Qwen3ForSequenceClassification",
    )},
)

__all__ = ["FAMILY", "Qwen3Config", "Qwen3Model", "convert", "init_cache"]
