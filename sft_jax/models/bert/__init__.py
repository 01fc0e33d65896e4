"""BERT-family encoders (BERT, MiniLM, RoBERTa): module and config (`model.py`), Hugging
Face converter (`convert.py`), and `FAMILY`, their `Family` declaration."""

from sft_jax.models.bert import convert
from sft_jax.models.bert.model import (
    SUPPORTED_MODEL_TYPES,
    BertConfig,
    BertEmbeddings,
    BertLayer,
    BertModel,
    default_position_ids,
)
from sft_jax.models.family import Architectures, Family

_CLASSES = {"bert": "Bert", "roberta": "Roberta"}  # model_type -> HF class-name prefix
FAMILY = Family("bert", "encoder", BertConfig, BertModel, convert, architectures={
    model_type: Architectures(f"{p}Model", sequence_classification=f"{p}ForSequenceClassification")
    for model_type, p in _CLASSES.items()
}, hf_pooling="pooler", dropout_keys=("hidden_dropout_prob", "attention_probs_dropout_prob"))

__all__ = ["FAMILY", "SUPPORTED_MODEL_TYPES", "BertConfig", "BertEmbeddings", "BertLayer",
           "BertModel", "convert", "default_position_ids"]
