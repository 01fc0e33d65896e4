"""BERT / RoBERTa: Hugging Face weight names <-> our parameter tree, both ways.

One table (`_entries`) lists every tensor: our path, the HF name (without the `bert.` /
`roberta.` prefix), the HF shape and how to reshape. PyTorch `Linear` stores
`weight [out, in]`; our kernels are `[in, out]` with heads split out:

    query/key/value  HF weight [N*H, D]  -> kernel [D, N, H]; bias [N*H] -> [N, H]
    attention out    HF weight [D, N*H]  -> kernel [N, H, D]
    dense / pooler   HF weight [out, in] -> kernel [in, out]

Classification heads: `BertForSequenceClassification` has `classifier.{weight,bias}` over
the pooler; `RobertaForSequenceClassification` has no pooler and holds the same function
as `classifier.dense` (tanh) + `classifier.out_proj`, so its `classifier.dense` is our
encoder pooler (exact in eval mode; in training HF adds one more dropout before `dense`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import numpy as np

from sft_jax.errors import UserInputError
from sft_jax.models.bert import BertConfig

log = logging.getLogger(__name__)

Params = dict[str, Any]

# Buffers and heads that are neither encoder nor classifier weights.
_IGNORED_SUFFIXES = ("embeddings.position_ids", "embeddings.token_type_ids")
_IGNORED_PREFIXES = ("cls.", "lm_head.")


class _Entry:
    """One tensor: our path, HF name, HF shape, and the two reshapes."""

    def __init__(
        self,
        path: tuple[str, ...],
        hf_name: str,
        hf_shape: tuple[int, ...],
        to_ours: Callable[[np.ndarray], np.ndarray],
        to_hf: Callable[[np.ndarray], np.ndarray],
    ):
        self.path, self.hf_name, self.hf_shape = path, hf_name, hf_shape
        self.to_ours, self.to_hf = to_ours, to_hf


def _same(x: np.ndarray) -> np.ndarray:
    return x


def _linear(
    path: tuple[str, ...], hf: str, d_in: int, out_shape: tuple[int, ...], in_shape=None
) -> list[_Entry]:
    """Entries for a torch Linear `hf` [out, in] <-> our kernel [*in_shape, *out_shape]."""
    in_shape = in_shape or (d_in,)
    d_out = int(np.prod(out_shape))
    kernel_shape = (*in_shape, *out_shape)
    return [
        _Entry(
            (*path, "kernel"),
            f"{hf}.weight",
            (d_out, d_in),
            lambda w: w.T.reshape(kernel_shape),
            lambda k: k.reshape(d_in, d_out).T,
        ),
        _Entry(
            (*path, "bias"),
            f"{hf}.bias",
            (d_out,),
            lambda b: b.reshape(out_shape),
            lambda b: b.reshape(d_out),
        ),
    ]


def _norm(path: tuple[str, ...], hf: str, d: int) -> list[_Entry]:
    return [
        _Entry((*path, "scale"), f"{hf}.weight", (d,), _same, _same),
        _Entry((*path, "bias"), f"{hf}.bias", (d,), _same, _same),
    ]


def _embed(path: tuple[str, ...], hf: str, rows: int, d: int) -> _Entry:
    return _Entry((*path, "embedding"), f"{hf}.weight", (rows, d), _same, _same)


def _entries(cfg: BertConfig) -> list[_Entry]:
    """Every encoder tensor except the pooler (see `_pooler_entries`)."""
    d, f, n, h = cfg.hidden_size, cfg.intermediate_size, cfg.num_attention_heads, cfg.head_dim
    out = [
        _embed(("embeddings", "word"), "embeddings.word_embeddings", cfg.vocab_size, d),
        _embed(
            ("embeddings", "position"),
            "embeddings.position_embeddings",
            cfg.max_position_embeddings,
            d,
        ),
        _embed(
            ("embeddings", "token_type"),
            "embeddings.token_type_embeddings",
            cfg.type_vocab_size,
            d,
        ),
        *_norm(("embeddings", "norm"), "embeddings.LayerNorm", d),
    ]
    for i in range(cfg.num_hidden_layers):
        ours, hf = (f"layer_{i}",), f"encoder.layer.{i}"
        for name in ("query", "key", "value"):
            out += _linear((*ours, "attention", name), f"{hf}.attention.self.{name}", d, (n, h))
        out += _linear(
            (*ours, "attention", "out"), f"{hf}.attention.output.dense", n * h, (d,), (n, h)
        )
        out += _norm((*ours, "attention_norm"), f"{hf}.attention.output.LayerNorm", d)
        out += _linear((*ours, "mlp", "wi"), f"{hf}.intermediate.dense", d, (f,))
        out += _linear((*ours, "mlp", "wo"), f"{hf}.output.dense", f, (d,))
        out += _norm((*ours, "mlp_norm"), f"{hf}.output.LayerNorm", d)
    return out


def _pooler_entries(cfg: BertConfig, hf: str = "pooler.dense") -> list[_Entry]:
    return _linear(("pooler",), hf, cfg.hidden_size, (cfg.hidden_size,))


def _classifier_entries(cfg: BertConfig, num_labels: int, hf: str) -> list[_Entry]:
    return _linear((), hf, cfg.hidden_size, (num_labels,))


# ----------------------------------------------------------------------------- reading


def normalize_names(state: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Legacy TF-era names (`LayerNorm.gamma/beta`) -> current ones."""
    out = {}
    for name, value in state.items():
        if name.endswith("LayerNorm.gamma"):
            name = name[: -len("gamma")] + "weight"
        elif name.endswith("LayerNorm.beta"):
            name = name[: -len("beta")] + "bias"
        out[name] = value
    return out


def detect_prefix(state: Mapping[str, np.ndarray], cfg: BertConfig, *, where: str) -> str:
    """'bert.' / 'roberta.' (a ...For* checkpoint) or '' (a bare BertModel)."""
    probe = "embeddings.word_embeddings.weight"
    for prefix in (f"{cfg.model_type}.", "bert.", "roberta.", ""):
        if prefix + probe in state:
            return prefix
    raise UserInputError(f"{where}: missing weight {probe} (not a {cfg.model_type} checkpoint?)")


def _take(
    state: Mapping[str, np.ndarray],
    entries: list[_Entry],
    prefix: str,
    dtype: Any,
    *,
    where: str,
) -> Params:
    params: Params = {}
    missing = [e.hf_name for e in entries if prefix + e.hf_name not in state]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise UserInputError(f"{where}: missing weight {prefix}{missing[0]}{more}")
    for e in entries:
        value = np.asarray(state[prefix + e.hf_name])
        if value.shape != e.hf_shape:
            raise UserInputError(
                f"{where}: weight {prefix}{e.hf_name} has shape {list(value.shape)}, "
                f"config.json implies {list(e.hf_shape)}"
            )
        node = params
        for key in e.path[:-1]:
            node = node.setdefault(key, {})
        node[e.path[-1]] = np.ascontiguousarray(e.to_ours(value).astype(dtype))
    return params


def _has(state: Mapping[str, np.ndarray], prefix: str, entries: list[_Entry]) -> bool:
    return all(prefix + e.hf_name in state for e in entries)


def params_from_hf(
    state: Mapping[str, np.ndarray],
    config: BertConfig,
    *,
    prefix: str | None = None,
    with_head: bool = False,
    where: str = "checkpoint",
) -> Params:
    """Numpy params for our module from an HF state dict (cast to `config.param_dtype`).

    `prefix=None` detects 'bert.' / 'roberta.' / ''. Without `with_head` the tree is a
    `BertModel`'s; with it, `{'encoder': ..., 'classifier': ...}` as a `SequenceClassifier`
    has it, where 'classifier' is present only if the checkpoint holds a head. A missing
    pooler is left out (the caller keeps freshly initialised values); any other missing
    or mis-shaped weight raises `UserInputError` naming `where`.
    """
    state = normalize_names(state)
    prefix = detect_prefix(state, config, where=where) if prefix is None else prefix
    dtype = np.dtype(config.param_dtype)
    encoder = _take(state, _entries(config), prefix, dtype, where=where)
    pooler = _pooler_entries(config)
    roberta_head = _pooler_entries(config, "classifier.dense")
    if _has(state, prefix, pooler):
        encoder.update(_take(state, pooler, prefix, dtype, where=where))
    elif with_head and config.model_type == "roberta" and _has(state, "", roberta_head):
        encoder.update(_take(state, roberta_head, "", dtype, where=where))
    _log_unused(state, prefix, config)
    if not with_head:
        return encoder
    params: Params = {"encoder": encoder}
    head = _head_name(config)
    if f"{head}.weight" in state:
        num_labels = state[f"{head}.weight"].shape[0]
        params["classifier"] = _take(
            state, _classifier_entries(config, num_labels, head), "", dtype, where=where
        )
    return params


def _head_name(cfg: BertConfig) -> str:
    return "classifier.out_proj" if cfg.model_type == "roberta" else "classifier"


def _log_unused(state: Mapping[str, np.ndarray], prefix: str, cfg: BertConfig) -> None:
    known = {prefix + e.hf_name for e in _entries(cfg) + _pooler_entries(cfg)}
    unused = [
        k
        for k in state
        if k not in known
        and not k.startswith(_IGNORED_PREFIXES)
        and not k.startswith("classifier.")
        and not k.endswith(_IGNORED_SUFFIXES)
    ]
    if unused:
        log.warning("ignoring %d checkpoint tensors, e.g. %s", len(unused), unused[0])


# ----------------------------------------------------------------------------- writing


def _to_numpy(params: Any) -> Any:
    """Unbox flax metadata and fetch to host as float32 numpy arrays."""
    params = nn.meta.unbox(params)
    return jax.tree_util.tree_map(lambda x: np.asarray(jax.device_get(x), np.float32), params)


def _put(params: Params, entries: list[_Entry], prefix: str, out: dict[str, np.ndarray]):
    for e in entries:
        node = params
        for key in e.path:
            node = node[key]
        out[prefix + e.hf_name] = np.ascontiguousarray(e.to_hf(node), dtype=np.float32)


def params_to_hf(params: Params, config: BertConfig, *, prefix: str = "") -> dict[str, np.ndarray]:
    """HF `BertModel` / `RobertaModel` state dict (float32, contiguous) from encoder params.

    Accepts boxed (nn.Partitioned) or jax arrays; the pooler is written if present.
    With `prefix='bert.'` the names are those inside a `BertFor...` model.
    """
    params = _to_numpy(params)
    out: dict[str, np.ndarray] = {}
    _put(params, _entries(config), prefix, out)
    if "pooler" in params:
        _put(params, _pooler_entries(config), prefix, out)
    return out


def classifier_to_hf(params: Params, config: BertConfig) -> dict[str, np.ndarray]:
    """HF `BertForSequenceClassification` / `RobertaForSequenceClassification` state dict
    from `SequenceClassifier` params (pooling 'pooler')."""
    params = _to_numpy(params)
    encoder, head = params["encoder"], params["classifier"]
    num_labels = head["kernel"].shape[-1]
    out: dict[str, np.ndarray] = {}
    if config.model_type == "roberta":
        _put(encoder, _entries(config), "roberta.", out)
        _put(encoder, _pooler_entries(config, "classifier.dense"), "", out)
        _put(head, _classifier_entries(config, num_labels, "classifier.out_proj"), "", out)
    else:
        out.update(params_to_hf(encoder, config, prefix="bert."))
        _put(head, _classifier_entries(config, num_labels, "classifier"), "", out)
    return out
