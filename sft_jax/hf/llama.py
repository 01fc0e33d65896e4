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
The table helpers (`Entry`, `linear`, `take`, `put`) are shared with `hf/gpt2.py`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np

from sft_jax.errors import UserInputError
from sft_jax.models.llama import LlamaConfig

log = logging.getLogger(__name__)

Params = dict[str, Any]
Path = tuple[str, ...]

# Architecture names by model_type: (causal LM, sequence classifier, bare backbone).
ARCHITECTURES = {
    "llama": ("LlamaForCausalLM", "LlamaForSequenceClassification", "LlamaModel"),
    "mistral": ("MistralForCausalLM", "MistralForSequenceClassification", "MistralModel"),
    "qwen2": ("Qwen2ForCausalLM", "Qwen2ForSequenceClassification", "Qwen2Model"),
}
PREFIX = "model."
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


# -------------------------------------------------------------------------- the tables


class Entry:
    """One HF tensor and the leaf (or leaves) of ours it holds.

    `to_ours(hf_array) -> tuple of arrays` (one per path); `to_hf(*arrays) -> hf_array`.
    """

    def __init__(
        self,
        paths: Sequence[Path],
        hf_name: str,
        hf_shape: tuple[int, ...],
        to_ours: Callable[[np.ndarray], tuple[np.ndarray, ...]],
        to_hf: Callable[..., np.ndarray],
    ):
        self.paths, self.hf_name, self.hf_shape = tuple(paths), hf_name, hf_shape
        self.to_ours, self.to_hf = to_ours, to_hf


def same(path: Path, hf_name: str, hf_shape: tuple[int, ...]) -> Entry:
    """A tensor stored identically on both sides (norms, embedding tables, Conv1D)."""
    return Entry([path], hf_name, hf_shape, lambda x: (x,), lambda x: x)


def linear(
    path: Path,
    hf: str,
    in_shape: tuple[int, ...],
    out_shape: tuple[int, ...],
    *,
    bias: bool,
) -> list[Entry]:
    """A torch Linear `hf` (weight [out, in]) <-> our kernel [*in_shape, *out_shape]."""
    d_in, d_out = int(np.prod(in_shape)), int(np.prod(out_shape))
    kernel_shape = (*in_shape, *out_shape)
    out = [
        Entry(
            [(*path, "kernel")],
            f"{hf}.weight",
            (d_out, d_in),
            lambda w: (w.T.reshape(kernel_shape),),
            lambda k: k.reshape(d_in, d_out).T,
        )
    ]
    if bias:
        out.append(
            Entry(
                [(*path, "bias")],
                f"{hf}.bias",
                (d_out,),
                lambda b: (b.reshape(out_shape),),
                lambda b: b.reshape(d_out),
            )
        )
    return out


def has_all(state: Mapping[str, np.ndarray], prefix: str, entries: Sequence[Entry]) -> bool:
    return all(prefix + e.hf_name in state for e in entries)


def take(
    state: Mapping[str, np.ndarray],
    entries: Sequence[Entry],
    prefix: str,
    dtype: Any,
    *,
    where: str,
) -> Params:
    """Our (nested dict) params from the HF tensors `prefix + entry.hf_name`."""
    missing = [e.hf_name for e in entries if prefix + e.hf_name not in state]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise UserInputError(f"{where}: missing weight {prefix}{missing[0]}{more}")
    params: Params = {}
    for e in entries:
        value = np.asarray(state[prefix + e.hf_name])
        if value.shape != e.hf_shape:
            raise UserInputError(
                f"{where}: weight {prefix}{e.hf_name} has shape {list(value.shape)}, "
                f"config.json implies {list(e.hf_shape)}"
            )
        for path, leaf in zip(e.paths, e.to_ours(value), strict=True):
            node = params
            for key in path[:-1]:
                node = node.setdefault(key, {})
            node[path[-1]] = np.ascontiguousarray(leaf.astype(dtype))
    return params


def to_numpy(params: Any) -> Any:
    """Unbox flax metadata and fetch to host as float32 numpy arrays."""
    params = nn.meta.unbox(params)
    return jax.tree_util.tree_map(lambda x: np.asarray(jax.device_get(x), np.float32), params)


def put(params: Params, entries: Sequence[Entry], prefix: str, out: dict[str, np.ndarray]):
    """Write HF tensors `prefix + entry.hf_name` from our (numpy) params into `out`."""
    for e in entries:
        leaves = []
        for path in e.paths:
            node = params
            for key in path:
                node = node[key]
            leaves.append(node)
        out[prefix + e.hf_name] = np.ascontiguousarray(e.to_hf(*leaves), dtype=np.float32)


def detect_prefix(
    state: Mapping[str, np.ndarray], probe: str, prefixes: Sequence[str], *, where: str, what: str
) -> str:
    """The first of `prefixes` under which `probe` exists."""
    for prefix in prefixes:
        if prefix + probe in state:
            return prefix
    raise UserInputError(f"{where}: missing weight {prefixes[0]}{probe} (not a {what} checkpoint?)")


def log_unused(state: Mapping[str, np.ndarray], known: set[str], ignored: Sequence[str]) -> None:
    unused = [k for k in state if k not in known and not k.endswith(tuple(ignored))]
    if unused:
        log.warning("ignoring %d checkpoint tensors, e.g. %s", len(unused), unused[0])


def head_entries(hf_name: str, d_in: int, out: int, path: Path) -> list[Entry]:
    """A bias-free head (`lm_head`, `score`) [out, D] <-> kernel [D, out]."""
    return linear(path, hf_name, (d_in,), (out,), bias=False)


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
