"""flax.linen models: shared layers, one package per family, heads and the registry.

`models/` knows nothing of data, tasks or the training loop. A family package
(`models/<family>/`) holds its module and config (`model.py`), its Hugging Face converter
table (`convert.py`) and its `Family` declaration (`family.py`); `registry.py` lists the
packages and is the only place mapping a Hugging Face `model_type` to one.
"""

from sft_jax.models import axes, layers, rope
from sft_jax.models.bert import BertConfig, BertModel
from sft_jax.models.gpt2 import Gpt2Config, Gpt2Model
from sft_jax.models.heads import POOLINGS, SequenceClassifier
from sft_jax.models.llama import LlamaConfig, LlamaModel
from sft_jax.models.registry import FAMILIES, build_model, init_cache, supported_model_types

__all__ = [
    "FAMILIES",
    "POOLINGS",
    "BertConfig",
    "BertModel",
    "Gpt2Config",
    "Gpt2Model",
    "LlamaConfig",
    "LlamaModel",
    "SequenceClassifier",
    "axes",
    "build_model",
    "init_cache",
    "layers",
    "rope",
    "supported_model_types",
]
