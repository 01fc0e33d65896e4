"""BART and Marian encoder-decoders: module and config (`model.py`), Hugging Face
converter (`convert.py`), and `FAMILY`, their `Family` declaration."""

from sft_jax.models.bart import convert
from sft_jax.models.bart.model import (
    BART_POSITION_OFFSET,
    SUPPORTED_MODEL_TYPES,
    BartConfig,
    BartModel,
    init_cache,
    marian_sinusoids,
)
from sft_jax.models.family import Architectures, Family

_DROPOUT_KEYS = ("dropout", "attention_dropout", "activation_dropout")
FAMILY = Family("bart", "encoder-decoder", BartConfig, BartModel, convert, {
    "bart": Architectures("BartModel", seq2seq="BartForConditionalGeneration"),
    "marian": Architectures("MarianModel", seq2seq="MarianMTModel"),
}, init_cache=init_cache, dropout_keys=_DROPOUT_KEYS)

__all__ = ["BART_POSITION_OFFSET", "FAMILY", "SUPPORTED_MODEL_TYPES", "BartConfig", "BartModel",
           "convert", "init_cache", "marian_sinusoids"]
