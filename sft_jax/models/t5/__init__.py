"""T5 encoder-decoders (T5 v1.0 / v1.1 / Flan-T5, mT5): module and config (`model.py`),
Hugging Face converter (`convert.py`), and `FAMILY`, their `Family` declaration."""

from sft_jax.models.family import Architectures, Family
from sft_jax.models.t5 import convert
from sft_jax.models.t5.model import (
    SUPPORTED_MODEL_TYPES,
    T5Config,
    T5Model,
    init_cache,
    parse_feed_forward_proj,
    relative_position_bucket,
)

FAMILY = Family("t5", "encoder-decoder", T5Config, T5Model, convert, architectures={
    "t5": Architectures("T5Model", seq2seq="T5ForConditionalGeneration"),
    "mt5": Architectures("MT5Model", seq2seq="MT5ForConditionalGeneration"),
}, init_cache=init_cache, dropout_keys=("dropout_rate",))

__all__ = ["FAMILY", "SUPPORTED_MODEL_TYPES", "T5Config", "T5Model", "convert", "init_cache",
           "parse_feed_forward_proj", "relative_position_bucket"]
