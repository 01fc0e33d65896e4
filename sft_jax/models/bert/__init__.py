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

FAMILY = Family(
    name="bert",
    kind="encoder",
    config_cls=BertConfig,
    module_cls=BertModel,
    converter=convert,
    architectures={
        "bert": Architectures("BertModel", sequence_classification="BertForSequenceClassification"),
        "roberta": Architectures(
            "RobertaModel", sequence_classification="RobertaForSequenceClassification"
        ),
    },
    hf_pooling="pooler",
    dropout_keys=("hidden_dropout_prob", "attention_probs_dropout_prob"),
)

__all__ = [
    "FAMILY",
    "SUPPORTED_MODEL_TYPES",
    "BertConfig",
    "BertEmbeddings",
    "BertLayer",
    "BertModel",
    "convert",
    "default_position_ids",
]
