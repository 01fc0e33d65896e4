"""Gemma 3 (text): Hugging Face weight names <-> our parameter tree, both ways.

`Gemma3ForCausalLM` / `Gemma3TextForSequenceClassification` hold `model.` + the backbone
below, `lm_head` (untied only; tied models share `embed_tokens`) and `score`, as every
decoder (`sft_jax/hf/decoder_tables.py`). Projections are torch `Linear`s reshaped as
Llama's (`sft_jax/models/llama/convert.py` describes them); every norm is a
`Gemma3RMSNorm` weight stored as is (w of `1 + w`).
"""

from __future__ import annotations

from sft_jax.hf.decoder_tables import DecoderConverter, qk_norm_entries
from sft_jax.hf.tables import Entry, linear, same
from sft_jax.models.gemma3.model import Gemma3Config

_NORMS = (  # ours, HF
    ("attention_norm", "input_layernorm"),
    ("post_attention_norm", "post_attention_layernorm"),
    ("mlp_norm", "pre_feedforward_layernorm"),
    ("post_mlp_norm", "post_feedforward_layernorm"),
)
_MLP = (("wi_0", "gate_proj", "in"), ("wi_1", "up_proj", "in"), ("wo", "down_proj", "out"))


def backbone(cfg: Gemma3Config) -> list[Entry]:
    """Every tensor of the decoder stack (no LM head), HF names without 'model.'."""
    d, f, h = cfg.hidden_size, cfg.intermediate_size, cfg.head_dim
    heads = {"query": ("q", cfg.num_attention_heads), "key": ("k", cfg.num_key_value_heads),
             "value": ("v", cfg.num_key_value_heads)}
    out = [same(("embed", "embedding"), "embed_tokens.weight", (cfg.vocab_size, d))]
    for i in range(cfg.num_hidden_layers):
        ours, hf = f"layer_{i}", f"layers.{i}"
        out += [same((ours, o, "scale"), f"{hf}.{name}.weight", (d,)) for o, name in _NORMS]
        attn, bias = (ours, "attention"), cfg.attention_bias
        for ours_name, (x, count) in heads.items():
            out += linear((*attn, ours_name), f"{hf}.self_attn.{x}_proj", (d,), (count, h),
                          bias=bias)
        out += linear((*attn, "out"), f"{hf}.self_attn.o_proj", (cfg.num_attention_heads, h),
                      (d,), bias=bias)
        out += qk_norm_entries(i, h)
        for name, proj, side in _MLP:
            shapes = ((d,), (f,)) if side == "in" else ((f,), (d,))
            out += linear((ours, "mlp", name), f"{hf}.mlp.{proj}", *shapes, bias=False)
    out.append(same(("final_norm", "scale"), "norm.weight", (d,)))
    return out


# The family's converter (`FAMILY.converter`).
CONVERTER = DecoderConverter(
    backbone, prefix="model.", probe="embed_tokens.weight", ignored=("rotary_emb.inv_freq",)
)
