"""Hugging Face interop: local model directories, weight-name converters, export.

Hugging Face weight names appear only here (one converter module per family, e.g.
`sft_jax.hf.bert`) and in `sft_jax.models.registry`.
"""

from sft_jax.hf.checkpoint_dir import load_state_dict, read_config
from sft_jax.hf.export import export_pretrained

__all__ = ["export_pretrained", "load_state_dict", "read_config"]
