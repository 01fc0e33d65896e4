"""Llama-family decoders (Llama 2/3, Mistral, Qwen2, SmolLM2): module and config
(`model.py`), Hugging Face converter (`convert.py`), and `FAMILY`, their `Family`
declaration."""

from sft_jax.models.family import Architectures, Family
from sft_jax.models.llama import convert
from sft_jax.models.llama.model import (
    SUPPORTED_MODEL_TYPES,
    LlamaConfig,
    LlamaLayer,
    LlamaModel,
    init_cache,
)


def _architectures(prefix: str) -> Architectures:
    return Architectures(
        f"{prefix}Model",
        causal_lm=f"{prefix}ForCausalLM",
        sequence_classification=f"{prefix}ForSequenceClassification",
    )


FAMILY = Family(
    name="llama",
    kind="decoder",
    config_cls=LlamaConfig,
    module_cls=LlamaModel,
    converter=convert,
    architectures={
        "llama": _architectures("Llama"),
        "mistral": _architectures("Mistral"),
        "qwen2": _architectures("Qwen2"),
    },
    hf_pooling="last",
    init_cache=init_cache,
    dropout_keys=("attention_dropout", "hidden_dropout"),
)

__all__ = [
    "FAMILY",
    "SUPPORTED_MODEL_TYPES",
    "LlamaConfig",
    "LlamaLayer",
    "LlamaModel",
    "convert",
    "init_cache",
]
