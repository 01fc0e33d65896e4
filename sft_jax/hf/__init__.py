"""Hugging Face interop: local model directories, the tensor-table engine the family
converters are declared with (`tables.py`, `decoder_tables.py`), export, GGUF import.

Hugging Face weight and class names appear only in the family packages
(`sft_jax/models/<family>/`); nothing here names a model_type.
"""

from sft_jax.hf.checkpoint_dir import load_state_dict, read_config
from sft_jax.hf.export import export_pretrained

__all__ = ["export_pretrained", "load_state_dict", "read_config"]
