"""GPT-2: Hugging Face weight names <-> our parameter tree, both ways.

GPT-2's projections are `Conv1D`, whose weight is stored `[in, out]` (the transpose of a
torch `Linear`), and q/k/v are one fused tensor:

    attn.c_attn   weight [D, 3*N*H] -> query/key/value kernels [D, N, H] (split in 3);
                  bias [3*N*H] -> 3 x [N, H]
    attn.c_proj   weight [N*H, D]   -> out kernel [N, H, D]; bias [D]
    mlp.c_fc      weight [D, F]     -> mlp/wi kernel [D, F]; bias [F]
    mlp.c_proj    weight [F, D]     -> mlp/wo kernel [F, D]; bias [D]
    ln_*          weight, bias      -> norm scale, bias
    score         weight [C, D]     -> classifier kernel [D, C] (a Linear, no bias)

HF names carry the `transformer.` prefix inside `GPT2LMHeadModel` /
`GPT2ForSequenceClassification`, none in a bare `GPT2Model`. The LM head is tied to `wte`
unless `tie_word_embeddings` is false (then `lm_head.weight` [V, D]). The LM head, the
classifier and the reading/writing around the table are those of every decoder family
(`sft_jax/hf/decoder_tables.py`).
"""

from __future__ import annotations

import numpy as np

from sft_jax.hf.decoder_tables import DecoderConverter
from sft_jax.hf.tables import Entry, layer_norm, same
from sft_jax.models.gpt2.model import Gpt2Config


def _conv1d(path, hf: str, d_in: int, d_out: int) -> list[Entry]:
    return [
        same((*path, "kernel"), f"{hf}.weight", (d_in, d_out)),
        same((*path, "bias"), f"{hf}.bias", (d_out,)),
    ]


def _qkv(path, hf: str, d: int, n: int, h: int) -> list[Entry]:
    """Fused `c_attn` [D, 3NH] (+ bias) <-> query/key/value [D, N, H] (+ [N, H])."""
    names = ("query", "key", "value")
    return [
        Entry(
            [(*path, name, "kernel") for name in names],
            f"{hf}.weight",
            (d, 3 * n * h),
            lambda w: tuple(part.reshape(d, n, h) for part in np.split(w, 3, axis=1)),
            lambda *ks: np.concatenate([k.reshape(d, n * h) for k in ks], axis=1),
        ),
        Entry(
            [(*path, name, "bias") for name in names],
            f"{hf}.bias",
            (3 * n * h,),
            lambda b: tuple(part.reshape(n, h) for part in np.split(b, 3)),
            lambda *bs: np.concatenate([b.reshape(n * h) for b in bs]),
        ),
    ]


def backbone(cfg: Gpt2Config) -> list[Entry]:
    """Every tensor of the decoder stack (no LM head), HF names without 'transformer.'."""
    d, f, n, h = cfg.n_embd, cfg.intermediate_size, cfg.n_head, cfg.head_dim
    out = [
        same(("embed", "embedding"), "wte.weight", (cfg.vocab_size, d)),
        same(("position", "embedding"), "wpe.weight", (cfg.n_positions, d)),
    ]
    for i in range(cfg.n_layer):
        ours, hf = f"layer_{i}", f"h.{i}"
        out += layer_norm((ours, "attention_norm"), f"{hf}.ln_1", d)
        out += _qkv((ours, "attention"), f"{hf}.attn.c_attn", d, n, h)
        out += [
            Entry(
                [(ours, "attention", "out", "kernel")],
                f"{hf}.attn.c_proj.weight",
                (n * h, d),
                lambda w: (w.reshape(n, h, d),),
                lambda k: k.reshape(n * h, d),
            ),
            same((ours, "attention", "out", "bias"), f"{hf}.attn.c_proj.bias", (d,)),
            *layer_norm((ours, "mlp_norm"), f"{hf}.ln_2", d),
        ]
        out += _conv1d((ours, "mlp", "wi"), f"{hf}.mlp.c_fc", d, f)
        out += _conv1d((ours, "mlp", "wo"), f"{hf}.mlp.c_proj", f, d)
    return out + layer_norm(("final_norm",), "ln_f", d)


# Buffers of older checkpoints (the causal mask), not weights.
CONVERTER = DecoderConverter(
    backbone, prefix="transformer.", probe="wte.weight", ignored=("attn.bias", "attn.masked_bias")
)
params_from_hf = CONVERTER.params_from_hf
params_to_hf = CONVERTER.params_to_hf
classifier_to_hf = CONVERTER.classifier_to_hf
adapter_tables = CONVERTER.adapter_tables
