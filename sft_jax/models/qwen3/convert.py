"""Qwen3: Hugging Face weight names <-> our parameter tree, both ways.

The backbone is Llama's (`sft_jax/models/llama/convert.py`: q/k/v/o, MLP, norms,
embedding; the reshapes are described there) plus, in every layer, the per-head q/k norms
(`self_attn.{q,k}_norm.weight` [H] <-> `attention/{q,k}_norm/scale`). The LM head, the
classifier (`score`) and tied embeddings are every decoder's
(`sft_jax/hf/decoder_tables.py`).
"""

from __future__ import annotations

import dataclasses

from sft_jax.hf.decoder_tables import qk_norm_entries
from sft_jax.hf.tables import Entry
from sft_jax.models.llama import convert as llama_convert
from sft_jax.models.qwen3.model import Qwen3Config


def backbone(cfg: Qwen3Config) -> list[Entry]:
    """Every tensor of the decoder stack (no LM head), HF names without 'model.'."""
    out = llama_convert.backbone(cfg)
    for i in range(cfg.num_hidden_layers):
        out += qk_norm_entries(i, cfg.head_dim)
    return out


# Llama's prefix, probe and ignored buffers; the family's converter (`FAMILY.converter`).
CONVERTER = dataclasses.replace(llama_convert.CONVERTER, backbone=backbone)
