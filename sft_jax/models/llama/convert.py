"""Llama / Mistral / Qwen2: Hugging Face weight names <-> our parameter tree, both ways.

One table (`backbone`) lists every tensor of the decoder stack: our path(s), the HF name
(without the `model.` prefix of `...ForCausalLM` / `...ForSequenceClassification`), the HF
shape and the two reshapes. PyTorch `Linear` stores `weight [out, in]`; our kernels are
`[in, out]` with heads split out:

    q_proj            HF weight [N*H, D] -> query kernel [D, N, H]; bias [N*H] -> [N, H]
    k_proj / v_proj   HF weight [K*H, D] -> kernel [D, K, H]
    o_proj            HF weight [D, N*H] -> out kernel [N, H, D]
    gate/up/down_proj HF weight [out, in] -> wi_0 / wi_1 / wo kernel [in, out]

The LM head, the classifier (`score`), tied embeddings and the reading/writing around the
table are those of every decoder family (`sft_jax/hf/decoder_tables.py`).
"""

from __future__ import annotations

from sft_jax.hf.decoder_tables import DecoderConverter
from sft_jax.hf.tables import Entry, linear, same
from sft_jax.models.llama.model import LlamaConfig


def backbone(cfg: LlamaConfig) -> list[Entry]:
    """Every tensor of the decoder stack (no LM head), HF names without 'model.'."""
    d, f, h = cfg.hidden_size, cfg.intermediate_size, cfg.head_dim
    n, k = cfg.num_attention_heads, cfg.num_key_value_heads
    out = [same(("embed", "embedding"), "embed_tokens.weight", (cfg.vocab_size, d))]
    for i in range(cfg.num_hidden_layers):
        ours, hf = f"layer_{i}", f"layers.{i}"
        attn = (ours, "attention")
        out.append(same((ours, "attention_norm", "scale"), f"{hf}.input_layernorm.weight", (d,)))
        out += linear((*attn, "query"), f"{hf}.self_attn.q_proj", (d,), (n, h), bias=cfg.qkv_bias)
        out += linear((*attn, "key"), f"{hf}.self_attn.k_proj", (d,), (k, h), bias=cfg.qkv_bias)
        out += linear((*attn, "value"), f"{hf}.self_attn.v_proj", (d,), (k, h), bias=cfg.qkv_bias)
        out += linear((*attn, "out"), f"{hf}.self_attn.o_proj", (n, h), (d,), bias=cfg.out_bias)
        out.append(same((ours, "mlp_norm", "scale"), f"{hf}.post_attention_layernorm.weight", (d,)))
        for name, proj, shapes in (
            ("wi_0", "gate_proj", ((d,), (f,))),
            ("wi_1", "up_proj", ((d,), (f,))),
            ("wo", "down_proj", ((f,), (d,))),
        ):
            out += linear((ours, "mlp", name), f"{hf}.mlp.{proj}", *shapes, bias=cfg.mlp_bias)
    out.append(same(("final_norm", "scale"), "norm.weight", (d,)))
    return out


CONVERTER = DecoderConverter(
    backbone, prefix="model.", probe="embed_tokens.weight", ignored=("rotary_emb.inv_freq",)
)
params_from_hf = CONVERTER.params_from_hf
params_to_hf = CONVERTER.params_to_hf
classifier_to_hf = CONVERTER.classifier_to_hf
adapter_tables = CONVERTER.adapter_tables
