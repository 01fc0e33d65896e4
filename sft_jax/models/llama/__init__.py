"""Llama-family decoders (Llama 2/3, Mistral, Qwen2, SmolLM2): module and config
(`model.py`), Hugging Face converter (`convert.py`), and `FAMILY`, their `Family`
declaration."""

from sft_jax.models.decoder import init_cache
from sft_jax.models.family import Architectures, Family
from sft_jax.models.llama import convert
from sft_jax.models.llama.model import (
    SUPPORTED_MODEL_TYPES,
    LlamaConfig,
    LlamaLayer,
    LlamaModel,
)

_CLASSES = {"llama": "Llama", "mistral": "Mistral", "qwen2": "Qwen2"}  # HF class-name prefix
FAMILY = Family("llama", "decoder", LlamaConfig, LlamaModel, convert, architectures={
    model_type: Architectures(f"{p}Model", causal_lm=f"{p}ForCausalLM",
                              sequence_classification=f"{p}ForSequenceClassification")
    for model_type, p in _CLASSES.items()
}, hf_pooling="last", init_cache=init_cache, dropout_keys=("attention_dropout", "hidden_dropout"))

__all__ = ["FAMILY", "SUPPORTED_MODEL_TYPES", "LlamaConfig", "LlamaLayer", "LlamaModel",
           "convert", "init_cache"]
