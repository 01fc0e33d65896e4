"""BART / Marian: Hugging Face weight names <-> our parameter tree, both ways.

HF names are those of `BartForConditionalGeneration` / `MarianMTModel` (backbone under
`model.`; a bare `BartModel` / `MarianModel` checkpoint without it is read too). PyTorch
`Linear` stores `weight [out, in]`; our kernels are `[in, out]` with heads split out:

    {self_attn,encoder_attn}.{q,k,v}_proj  weight [N*H, D] -> kernel [D, N, H]; bias [N, H]
    {self_attn,encoder_attn}.out_proj      weight [D, N*H] -> kernel [N, H, D]; bias [D]
    fc1 / fc2                              weight [out, in] -> mlp wi / wo kernel [in, out]
    self_attn_layer_norm / encoder_attn_layer_norm / final_layer_norm
                                           -> attention_norm (encoder) or
                                              self_attention_norm / cross_attention_norm
                                              (decoder) / mlp_norm
    embed_positions [P+2, D], layernorm_embedding    (BART only) -> position, embed_norm
    final_logits_bias [1, V']              -> final_logits_bias [V']
    lm_head.weight [V', D]                 -> lm_head kernel [D, V'] (untied only)

Token tables, as transformers 5.x ties and saves them:

- shared (`tie_word_embeddings`, and for Marian `share_encoder_decoder_embeddings`):
  one table, saved as `model.shared.weight` only. Reading takes the first present of
  `model.shared`, `model.encoder.embed_tokens`, `model.decoder.embed_tokens`, `lm_head`
  (transformers ties whichever the file holds).
- otherwise `model.encoder.embed_tokens` and `model.decoder.embed_tokens` are separate
  (and `lm_head.weight` too unless tied to the decoder's table). BART and Marian with
  `share_encoder_decoder_embeddings` still own a `model.shared` table that the forward
  pass never reads; it is not read here and is written as a copy of the encoder's table.

Marian's sinusoidal `embed_positions` are not weights (transformers neither saves nor
needs them); old checkpoints that hold them have them ignored. A missing
`final_logits_bias` reads as zeros (as transformers does).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import numpy as np

from sft_jax.hf.tables import (
    Entry,
    Params,
    Path,
    detect_prefix,
    first_present,
    head_entries,
    layer_norm,
    linear,
    log_unused,
    put,
    same,
    take,
    to_numpy,
)
from sft_jax.models.bart.model import BART_POSITION_OFFSET, BartConfig

log = logging.getLogger(__name__)

PREFIX = "model."
_IGNORED_SUFFIXES = ("embed_positions.weight", "encoder.version", "decoder.version")

SHARED = "shared.weight"
ENCODER_TOKENS = "encoder.embed_tokens.weight"
DECODER_TOKENS = "decoder.embed_tokens.weight"
LM_HEAD = "lm_head.weight"
FINAL_LOGITS_BIAS = "final_logits_bias"


def _attention(path: Path, hf: str, d: int, n: int) -> list[Entry]:
    h = d // n
    out: list[Entry] = []
    for ours, theirs in (("query", "q_proj"), ("key", "k_proj"), ("value", "v_proj")):
        out += linear((*path, ours), f"{hf}.{theirs}", (d,), (n, h), bias=True)
    out += linear((*path, "out"), f"{hf}.out_proj", (n, h), (d,), bias=True)
    return out


def _mlp(path: Path, hf: str, d: int, f: int) -> list[Entry]:
    return [
        *linear((*path, "wi"), f"{hf}.fc1", (d,), (f,), bias=True),
        *linear((*path, "wo"), f"{hf}.fc2", (f,), (d,), bias=True),
    ]


def _embeddings(cfg: BartConfig, stack: str) -> list[Entry]:
    """BART's learned positions and embedding LayerNorm of `stack` (none for Marian)."""
    if not cfg.learned_positions:
        return []
    d = cfg.d_model
    rows = cfg.max_position_embeddings + BART_POSITION_OFFSET
    return [
        same((stack, "position", "embedding"), f"{stack}.embed_positions.weight", (rows, d)),
        *layer_norm((stack, "embed_norm"), f"{stack}.layernorm_embedding", d),
    ]


def _backbone(cfg: BartConfig) -> list[Entry]:
    """Every tensor of the encoder and decoder stacks (no token tables, no head)."""
    d = cfg.d_model
    out = _embeddings(cfg, "encoder")
    for i in range(cfg.encoder_layers):
        ours, hf = ("encoder", f"layer_{i}"), f"encoder.layers.{i}"
        out += _attention((*ours, "attention"), f"{hf}.self_attn", d, cfg.encoder_attention_heads)
        out += layer_norm((*ours, "attention_norm"), f"{hf}.self_attn_layer_norm", d)
        out += _mlp((*ours, "mlp"), hf, d, cfg.encoder_ffn_dim)
        out += layer_norm((*ours, "mlp_norm"), f"{hf}.final_layer_norm", d)
    out += _embeddings(cfg, "decoder")
    for i in range(cfg.decoder_layers):
        ours, hf = ("decoder", f"layer_{i}"), f"decoder.layers.{i}"
        n = cfg.decoder_attention_heads
        out += _attention((*ours, "self_attention"), f"{hf}.self_attn", d, n)
        out += layer_norm((*ours, "self_attention_norm"), f"{hf}.self_attn_layer_norm", d)
        out += _attention((*ours, "cross_attention"), f"{hf}.encoder_attn", d, n)
        out += layer_norm((*ours, "cross_attention_norm"), f"{hf}.encoder_attn_layer_norm", d)
        out += _mlp((*ours, "mlp"), hf, d, cfg.decoder_ffn_dim)
        out += layer_norm((*ours, "mlp_norm"), f"{hf}.final_layer_norm", d)
    return out


def _has_shared_module(cfg: BartConfig) -> bool:
    """Whether HF's model owns a `model.shared` table (BART always; Marian if shared)."""
    return cfg.share_encoder_decoder_embeddings


def _table(path: Path, hf_name: str, rows: int, d: int) -> Entry:
    return same((*path, "embedding"), hf_name, (rows, d))


def _lm_head(cfg: BartConfig) -> list[Entry]:
    return head_entries("lm_head", cfg.d_model, cfg.decoder_vocab_size, ("lm_head",))


def _bias_entry(cfg: BartConfig) -> Entry:
    v = cfg.decoder_vocab_size
    return Entry(
        [("final_logits_bias",)],
        FINAL_LOGITS_BIAS,
        (1, v),
        lambda b: (b.reshape(v),),
        lambda b: b.reshape(1, v),
    )


# ----------------------------------------------------------------------------- reading


def params_from_hf(
    state: Mapping[str, np.ndarray],
    config: BartConfig,
    *,
    where: str = "checkpoint",
) -> Params:
    """Numpy params for `BartModel` from an HF state dict (cast to `config.param_dtype`).

    Missing or mis-shaped weights raise `UserInputError` naming `where`; a missing
    `lm_head.weight` of an untied model is left out (the caller keeps fresh values).
    """
    prefix = detect_prefix(
        state, "encoder.layers.0.fc1.weight", (PREFIX, ""), where=where, what=config.model_type
    )
    dtype = np.dtype(config.param_dtype)
    backbone = _backbone(config)
    params = take(state, backbone, prefix, dtype, where=where)
    d, v, v_dec = config.d_model, config.vocab_size, config.decoder_vocab_size
    if config.shared_embeddings:
        name = first_present(
            state,
            [prefix + SHARED, prefix + ENCODER_TOKENS, prefix + DECODER_TOKENS, LM_HEAD],
            where=where,
        )
        params.update(take(state, [_table(("shared",), name, v, d)], "", dtype, where=where))
    else:
        decoder_names = [prefix + DECODER_TOKENS]
        if config.tie_word_embeddings:
            decoder_names.append(LM_HEAD)
        name = first_present(state, decoder_names, where=where)
        tables = [
            _table(("encoder_embed",), prefix + ENCODER_TOKENS, v, d),
            _table(("decoder_embed",), name, v_dec, d),
        ]
        params.update(take(state, tables, "", dtype, where=where))
    if not config.tie_word_embeddings:
        if LM_HEAD in state:
            params.update(take(state, _lm_head(config), "", dtype, where=where))
        else:
            log.warning("%s: no %s for an untied model; it is initialised", where, LM_HEAD)
    if FINAL_LOGITS_BIAS in state:
        params.update(take(state, [_bias_entry(config)], "", dtype, where=where))
    else:
        params["final_logits_bias"] = np.zeros((v_dec,), dtype)
    known = {prefix + e.hf_name for e in backbone}
    known |= {prefix + SHARED, prefix + ENCODER_TOKENS, prefix + DECODER_TOKENS, LM_HEAD}
    log_unused(state, known | {FINAL_LOGITS_BIAS}, _IGNORED_SUFFIXES)
    return params


# ----------------------------------------------------------------------------- writing


def params_to_hf(params: Params, config: BartConfig) -> dict[str, np.ndarray]:
    """HF `BartForConditionalGeneration` / `MarianMTModel` state dict (float32, contiguous)
    from `BartModel` params, with the keys transformers' `save_pretrained` writes (tied
    tables once). Accepts boxed, jax or numpy arrays."""
    params = to_numpy(params)
    d, v, v_dec = config.d_model, config.vocab_size, config.decoder_vocab_size
    out: dict[str, np.ndarray] = {}
    put(params, _backbone(config), PREFIX, out)
    if config.shared_embeddings:
        put(params, [_table(("shared",), SHARED, v, d)], PREFIX, out)
    else:
        tables = [
            _table(("encoder_embed",), ENCODER_TOKENS, v, d),
            _table(("decoder_embed",), DECODER_TOKENS, v_dec, d),
        ]
        if _has_shared_module(config):
            tables.append(_table(("encoder_embed",), SHARED, v, d))
        put(params, tables, PREFIX, out)
    if not config.tie_word_embeddings:
        put(params, _lm_head(config), "", out)
    put(params, [_bias_entry(config)], "", out)
    return out
