"""Gemma 3 text (model_type `gemma3_text`): module and config (`model.py`), Hugging Face
converter (`convert.py`), and `FAMILY`, its `Family` declaration."""

from sft_jax.models.decoder import init_cache
from sft_jax.models.family import Architectures, Family
from sft_jax.models.gemma3 import convert
from sft_jax.models.gemma3.model import MODEL_TYPE, Gemma3Config, Gemma3Model

_GEMMA3 = Architectures("Gemma3TextModel", causal_lm="Gemma3ForCausalLM",
                        sequence_classification="Gemma3TextForSequenceClassification")
FAMILY = Family("gemma3", "decoder", Gemma3Config, Gemma3Model, convert.CONVERTER,
                {MODEL_TYPE: _GEMMA3},
                hf_pooling="last", init_cache=init_cache,
                dropout_keys=("attention_dropout", "hidden_dropout"))

__all__ = ["FAMILY", "Gemma3Config", "Gemma3Model", "convert", "init_cache"]
