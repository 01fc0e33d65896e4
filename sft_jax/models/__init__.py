"""flax.linen models: shared layers, one file per family, heads and the registry.

`models/` knows nothing of data, tasks or the training loop, and no Hugging Face weight
names (those live in `sft_jax/hf/`).
"""

from sft_jax.models import axes, layers
from sft_jax.models.bert import BertConfig, BertModel
from sft_jax.models.heads import POOLINGS, SequenceClassifier
from sft_jax.models.registry import FAMILIES, build_model, supported_model_types

__all__ = [
    "FAMILIES",
    "POOLINGS",
    "BertConfig",
    "BertModel",
    "SequenceClassifier",
    "axes",
    "build_model",
    "layers",
    "supported_model_types",
]
