"""Llama / Mistral / Qwen2: Hugging Face weight names <-> our parameter tree, both ways.

One table (`_backbone`) lists every tensor of the decoder stack: our path(s), the HF name
(without the `model.` prefix of `...ForCausalLM` / `...ForSequenceClassification`), the HF
shape and the two reshapes. PyTorch `Linear` stores `weight [out, in]`; our kernels are
`[in, out]` with heads split out:

    q_proj            HF weight [N*H, D] -> query kernel [D, N, H]; bias [N*H] -> [N, H]
    k_proj / v_proj   HF weight [K*H, D] -> kernel [D, K, H]
    o_proj            HF weight [D, N*H] -> out kernel [N, H, D]
    gate/up/down_proj HF weight [out, in] -> wi_0 / wi_1 / wo kernel [in, out]
    lm_head           HF weight [V, D]   -> lm_head kernel [D, V] (untied models only)
    score             HF weight [C, D]   -> classifier kernel [D, C] (no bias)

Tied embeddings: the LM head is the embedding table; `lm_head.weight` is neither read
(a checkpoint may or may not hold a copy) nor written (transformers ties it on load).
The rows are built with the shared engine (`sft_jax/hf/tables.py`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from sft_jax.hf.tables import (
    Entry,
    Params,
    detect_prefix,
    has_all,
    head_entries,
    linear,
    log_unused,
    put,
    same,
    take,
    to_numpy,
)
from sft_jax.models.llama import LlamaConfig

log = logging.getLogger(__name__)

# Architecture names by model_type: (causal LM, sequence classifier, bare backbone).
ARCHITECTURES = {
    "llama": ("LlamaForCausalLM", "LlamaForSequenceClassification", "LlamaModel"),
    "mistral": ("MistralForCausalLM", "MistralForSequenceClassification", "MistralModel"),
    "qwen2": ("Qwen2ForCausalLM", "Qwen2ForSequenceClassification", "Qwen2Model"),
}
PREFIX = "model."
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


# ---------------------------------------------------------------------- llama tensors


def _backbone(cfg: LlamaConfig) -> list[Entry]:
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


def _lm_head(cfg: LlamaConfig) -> list[Entry]:
    return head_entries("lm_head", cfg.hidden_size, cfg.vocab_size, ("lm_head",))


def _score(cfg: LlamaConfig, num_labels: int) -> list[Entry]:
    return head_entries("score", cfg.hidden_size, num_labels, ())


# ----------------------------------------------------------------------------- reading


def params_from_hf(
    state: Mapping[str, np.ndarray],
    config: LlamaConfig,
    *,
    with_head: bool = False,
    where: str = "checkpoint",
) -> Params:
    """Numpy params for our module from an HF state dict (cast to `config.param_dtype`).

    Reads `...ForCausalLM`, `...ForSequenceClassification` and bare `...Model` checkpoints
    (prefix 'model.' or none). Without `with_head`: the `LlamaModel` tree, with `lm_head`
    for untied models when the checkpoint has `lm_head.weight` (else left out, to be
    initialised fresh; a warning says so). With `with_head`: `{'encoder': <backbone>}` as
    a `SequenceClassifier` has it, plus 'classifier' when the checkpoint holds `score`.
    Missing or mis-shaped backbone weights raise `UserInputError` naming `where`.
    """
    prefix = detect_prefix(
        state, "embed_tokens.weight", (PREFIX, ""), where=where, what=config.model_type
    )
    return decoder_params_from_hf(
        state, config, prefix=prefix, backbone=_backbone(config), lm_head=_lm_head(config),
        score=lambda n: _score(config, n), ignored=_IGNORED_SUFFIXES, with_head=with_head,
        where=where,
    )


def decoder_params_from_hf(
    state: Mapping[str, np.ndarray],
    config: Any,
    *,
    prefix: str,
    backbone: list[Entry],
    lm_head: list[Entry],
    score: Callable[[int], list[Entry]],
    ignored: Sequence[str],
    with_head: bool,
    where: str,
) -> Params:
    """The reading shared by the decoder families: backbone, then either the classifier
    (`{'encoder', 'classifier'?}`) or, for untied models, the LM head when present."""
    dtype = np.dtype(config.param_dtype)
    params = take(state, backbone, prefix, dtype, where=where)
    known = {prefix + e.hf_name for e in backbone} | {"lm_head.weight", "score.weight"}
    log_unused(state, known, ignored)
    if with_head:
        out: Params = {"encoder": params}
        if "score.weight" in state:
            out["classifier"] = take(state, score(state["score.weight"].shape[0]), "", dtype,
                                     where=where)
        return out
    if not config.tie_word_embeddings:
        if has_all(state, "", lm_head):
            params.update(take(state, lm_head, "", dtype, where=where))
        else:
            log.warning("%s: no lm_head.weight for an untied model; it is initialised", where)
    return params


# ----------------------------------------------------------------------------- writing


def params_to_hf(
    params: Params, config: LlamaConfig, *, base_model: bool = False
) -> dict[str, np.ndarray]:
    """HF `...ForCausalLM` state dict (float32, contiguous) from `LlamaModel` params.

    `base_model=True`: the bare `...Model` names (no 'model.' prefix, no LM head), from
    LM params or a classifier's backbone. Accepts boxed, jax or numpy arrays.
    """
    return decoder_params_to_hf(params, config, prefix=PREFIX, backbone=_backbone(config),
                                lm_head=_lm_head(config), base_model=base_model)


def decoder_params_to_hf(
    params: Params,
    config: Any,
    *,
    prefix: str,
    backbone: list[Entry],
    lm_head: list[Entry],
    base_model: bool,
) -> dict[str, np.ndarray]:
    """The writing shared by the decoder families: backbone under `prefix` (none for a
    bare base model), then the LM head of an untied model."""
    params = to_numpy(params)
    out: dict[str, np.ndarray] = {}
    put(params, backbone, "" if base_model else prefix, out)
    if not base_model and not config.tie_word_embeddings:
        put(params, lm_head, "", out)
    return out


def classifier_to_hf(params: Params, config: LlamaConfig) -> dict[str, np.ndarray]:
    """HF `...ForSequenceClassification` state dict from `SequenceClassifier` params
    (pooling 'last', no classifier bias)."""
    params = to_numpy(params)
    head = params["classifier"]
    if "bias" in head:
        raise ValueError("Hugging Face's score layer has no bias; this classifier has one")
    out: dict[str, np.ndarray] = {}
    put(params["encoder"], _backbone(config), PREFIX, out)
    put(head, _score(config, head["kernel"].shape[-1]), "", out)
    return out
