"""T5 / mT5: Hugging Face `T5ForConditionalGeneration` weight names <-> our parameter tree.

One table (`_entries`) lists every tensor HF's `save_pretrained` writes, with our path and
the reshape (rows of the shared engine `sft_jax/hf/tables.py`). PyTorch `Linear` stores
`weight [out, in]`; our kernels are `[in, out]` with heads split out:

    shared.weight                         [V, D]  -> embed/embedding
    {encoder,decoder}.block.{i}.layer.0.SelfAttention.{q,k,v}.weight [N*H, D]
                                          -> .../{attention | self_attention}/{query,key,value}
                                             kernel [D, N, H]
    ....SelfAttention.o.weight [D, N*H]   -> .../out kernel [N, H, D]
    {encoder,decoder}.block.0.layer.0.SelfAttention.relative_attention_bias.weight [NB, N]
                                          -> {encoder,decoder}/relative_bias/embedding
    decoder.block.{i}.layer.1.EncDecAttention.*          -> decoder/layer_{i}/cross_attention
    {encoder ....layer.1 | decoder ....layer.2}.DenseReluDense.{wi,wi_0,wi_1,wo}.weight
                                          -> .../mlp/{wi,wi_0,wi_1,wo} kernel [in, out]
    ....layer.{k}.layer_norm.weight        -> the norm before that sub-layer
    {encoder,decoder}.final_layer_norm.weight -> {encoder,decoder}/final_norm/scale
    lm_head.weight [V, D]                 -> lm_head/kernel [D, V]   untied only

`encoder.embed_tokens.weight` / `decoder.embed_tokens.weight` are the shared table in HF
(not written; read only when `shared.weight` is absent). For an untied model whose
checkpoint has no `lm_head.weight`, transformers 5.x ties the head to `shared`; we copy the
table likewise (a warning says so). HF ignores a stray
`decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight`; so do we.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import numpy as np

from sft_jax.hf.tables import Entry, head_entries, linear, log_unused, put, same, take, to_numpy
from sft_jax.models.t5.model import T5Config

log = logging.getLogger(__name__)

Params = dict[str, Any]

_EMBED = "shared.weight"
_LM_HEAD = "lm_head.weight"
_IGNORED = ("EncDecAttention.relative_attention_bias.weight",)
_TABLE_ALIASES = ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight")


def _attention(cfg: T5Config, ours: tuple[str, ...], hf: str) -> list[Entry]:
    d, n, h = cfg.d_model, cfg.num_heads, cfg.d_kv
    out: list[Entry] = []
    for name, proj in (("query", "q"), ("key", "k"), ("value", "v")):
        out += linear((*ours, name), f"{hf}.{proj}", (d,), (n, h), bias=False)
    out += linear((*ours, "out"), f"{hf}.o", (n, h), (d,), bias=False)
    return out


def _mlp(cfg: T5Config, ours: tuple[str, ...], hf: str) -> list[Entry]:
    d, f = cfg.d_model, cfg.d_ff
    names = ("wi_0", "wi_1") if cfg.gated else ("wi",)
    out: list[Entry] = []
    for name in names:
        out += linear((*ours, name), f"{hf}.{name}", (d,), (f,), bias=False)
    out += linear((*ours, "wo"), f"{hf}.wo", (f,), (d,), bias=False)
    return out


def _stack(cfg: T5Config, stack: str) -> list[Entry]:
    decoder = stack == "decoder"
    d = cfg.d_model
    num_layers = cfg.num_decoder_layers if decoder else cfg.num_layers
    attention = "self_attention" if decoder else "attention"
    out = [
        same(
            (stack, "relative_bias", "embedding"),
            f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
            (cfg.relative_attention_num_buckets, cfg.num_heads),
        )
    ]
    for i in range(num_layers):
        ours, hf = (stack, f"layer_{i}"), f"{stack}.block.{i}.layer"
        out.append(same((*ours, f"{attention}_norm", "scale"), f"{hf}.0.layer_norm.weight", (d,)))
        out += _attention(cfg, (*ours, attention), f"{hf}.0.SelfAttention")
        if decoder:
            out.append(
                same((*ours, "cross_attention_norm", "scale"), f"{hf}.1.layer_norm.weight", (d,))
            )
            out += _attention(cfg, (*ours, "cross_attention"), f"{hf}.1.EncDecAttention")
        ff = 2 if decoder else 1
        out.append(same((*ours, "mlp_norm", "scale"), f"{hf}.{ff}.layer_norm.weight", (d,)))
        out += _mlp(cfg, (*ours, "mlp"), f"{hf}.{ff}.DenseReluDense")
    out.append(same((stack, "final_norm", "scale"), f"{stack}.final_layer_norm.weight", (d,)))
    return out


def _entries(cfg: T5Config) -> list[Entry]:
    """Every tensor but the LM head."""
    table = same(("embed", "embedding"), _EMBED, (cfg.vocab_size, cfg.d_model))
    return [table, *_stack(cfg, "encoder"), *_stack(cfg, "decoder")]


def _lm_head(cfg: T5Config) -> list[Entry]:
    return head_entries("lm_head", cfg.d_model, cfg.vocab_size, ("lm_head",))


def params_from_hf(
    state: Mapping[str, np.ndarray], config: T5Config, *, where: str = "checkpoint"
) -> Params:
    """Numpy params of `T5Model` from an HF `T5ForConditionalGeneration` /
    `MT5ForConditionalGeneration` state dict (cast to `config.param_dtype`).

    Missing or mis-shaped weights raise `UserInputError` naming `where`.
    """
    if _EMBED not in state:
        alias = next((k for k in _TABLE_ALIASES if k in state), None)
        if alias is not None:
            state = {**state, _EMBED: state[alias]}
    dtype = np.dtype(config.param_dtype)
    entries = _entries(config)
    params = take(state, entries, "", dtype, where=where)
    known = {e.hf_name for e in entries} | {_LM_HEAD, *_TABLE_ALIASES}
    log_unused(state, known, _IGNORED)
    if not config.tie_word_embeddings:
        if _LM_HEAD in state:
            params.update(take(state, _lm_head(config), "", dtype, where=where))
        else:
            log.warning("%s: no %s for an untied model; using the shared table", where, _LM_HEAD)
            params["lm_head"] = {"kernel": np.ascontiguousarray(params["embed"]["embedding"].T)}
    return params


def params_to_hf(params: Params, config: T5Config) -> dict[str, np.ndarray]:
    """HF `T5ForConditionalGeneration` state dict (float32, contiguous) from `T5Model`
    params, with the names `save_pretrained` writes (the shared table once; `lm_head` only
    when untied). Accepts boxed, jax or numpy arrays."""
    params = to_numpy(params)
    out: dict[str, np.ndarray] = {}
    put(params, _entries(config), "", out)
    if not config.tie_word_embeddings:
        put(params, _lm_head(config), "", out)
    return out
