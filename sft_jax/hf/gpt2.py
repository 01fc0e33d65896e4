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
unless `tie_word_embeddings` is false (then `lm_head.weight` [V, D]).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from sft_jax.hf.llama import decoder_params_from_hf, decoder_params_to_hf
from sft_jax.hf.tables import Entry, Params, detect_prefix, head_entries, put, same, to_numpy
from sft_jax.models.gpt2 import Gpt2Config

ARCHITECTURES = {
    "gpt2": ("GPT2LMHeadModel", "GPT2ForSequenceClassification", "GPT2Model"),
}
PREFIX = "transformer."
# Buffers of older checkpoints (the causal mask), not weights.
_IGNORED_SUFFIXES = ("attn.bias", "attn.masked_bias")


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


def _backbone(cfg: Gpt2Config) -> list[Entry]:
    d, f, n, h = cfg.n_embd, cfg.intermediate_size, cfg.n_head, cfg.head_dim
    out = [
        same(("embed", "embedding"), "wte.weight", (cfg.vocab_size, d)),
        same(("position", "embedding"), "wpe.weight", (cfg.n_positions, d)),
    ]
    for i in range(cfg.n_layer):
        ours, hf = f"layer_{i}", f"h.{i}"
        out += [
            same((ours, "attention_norm", "scale"), f"{hf}.ln_1.weight", (d,)),
            same((ours, "attention_norm", "bias"), f"{hf}.ln_1.bias", (d,)),
        ]
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
            same((ours, "mlp_norm", "scale"), f"{hf}.ln_2.weight", (d,)),
            same((ours, "mlp_norm", "bias"), f"{hf}.ln_2.bias", (d,)),
        ]
        out += _conv1d((ours, "mlp", "wi"), f"{hf}.mlp.c_fc", d, f)
        out += _conv1d((ours, "mlp", "wo"), f"{hf}.mlp.c_proj", f, d)
    out += [
        same(("final_norm", "scale"), "ln_f.weight", (d,)),
        same(("final_norm", "bias"), "ln_f.bias", (d,)),
    ]
    return out


def _lm_head(cfg: Gpt2Config) -> list[Entry]:
    return head_entries("lm_head", cfg.n_embd, cfg.vocab_size, ("lm_head",))


def params_from_hf(
    state: Mapping[str, np.ndarray],
    config: Gpt2Config,
    *,
    with_head: bool = False,
    where: str = "checkpoint",
) -> Params:
    """Numpy params from an HF state dict; same contract as `hf.llama.params_from_hf`
    (prefix 'transformer.' or none; `with_head` -> `{'encoder', 'classifier'?}`)."""
    prefix = detect_prefix(state, "wte.weight", (PREFIX, ""), where=where, what="gpt2")
    return decoder_params_from_hf(
        state, config, prefix=prefix, backbone=_backbone(config), lm_head=_lm_head(config),
        score=lambda n: head_entries("score", config.n_embd, n, ()),
        ignored=_IGNORED_SUFFIXES, with_head=with_head, where=where,
    )


def params_to_hf(
    params: Params, config: Gpt2Config, *, base_model: bool = False
) -> dict[str, np.ndarray]:
    """HF `GPT2LMHeadModel` state dict (float32) from `Gpt2Model` params; `base_model=True`:
    bare `GPT2Model` names (no prefix, no LM head)."""
    return decoder_params_to_hf(params, config, prefix=PREFIX, backbone=_backbone(config),
                                lm_head=_lm_head(config), base_model=base_model)


def classifier_to_hf(params: Params, config: Gpt2Config) -> dict[str, np.ndarray]:
    """HF `GPT2ForSequenceClassification` state dict from `SequenceClassifier` params."""
    params = to_numpy(params)
    head = params["classifier"]
    if "bias" in head:
        raise ValueError("Hugging Face's score layer has no bias; this classifier has one")
    out: dict[str, np.ndarray] = {}
    put(params["encoder"], _backbone(config), PREFIX, out)
    put(head, head_entries("score", config.n_embd, head["kernel"].shape[-1], ()), "", out)
    return out
