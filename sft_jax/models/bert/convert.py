"""BERT / RoBERTa: Hugging Face weight names <-> our parameter tree, both ways.

One table (`_entries`, rows of the shared engine `sft_jax/hf/tables.py`) lists every
tensor: our path, the HF name (without the `bert.` / `roberta.` prefix), the HF shape and
how to reshape. PyTorch `Linear` stores `weight [out, in]`; our kernels are `[in, out]`
with heads split out:

    query/key/value  HF weight [N*H, D]  -> kernel [D, N, H]; bias [N*H] -> [N, H]
    attention out    HF weight [D, N*H]  -> kernel [N, H, D]
    dense / pooler   HF weight [out, in] -> kernel [in, out]

Classification heads: `BertForSequenceClassification` has `classifier.{weight,bias}` over
the pooler; `RobertaForSequenceClassification` has no pooler and holds the same function
as `classifier.dense` (tanh) + `classifier.out_proj`, so its `classifier.dense` is our
encoder pooler (exact in eval mode; in training HF adds one more dropout before `dense`).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from sft_jax.hf import tables
from sft_jax.hf.tables import Entry, layer_norm, linear, same
from sft_jax.models.bert.model import BertConfig
from sft_jax.models.family import AdapterTable

# Buffers that are not weights; heads that are neither encoder nor classifier weights.
_IGNORED_SUFFIXES = ("embeddings.position_ids", "embeddings.token_type_ids")
_IGNORED_PREFIXES = ("cls.", "lm_head.", "classifier.")


class _Heads:
    """Where a model_type's `...ForSequenceClassification` keeps the backbone (`prefix`),
    the pooler (`pooler`, under `pooler_prefix`) and the classifier (`classifier`)."""

    def __init__(self, prefix: str, pooler: str, pooler_prefix: str, classifier: str):
        self.prefix, self.pooler, self.pooler_prefix = prefix, pooler, pooler_prefix
        self.classifier = classifier


_HEADS = {
    "bert": _Heads("bert.", "pooler.dense", "bert.", "classifier"),
    "roberta": _Heads("roberta.", "classifier.dense", "", "classifier.out_proj"),
}


def _entries(cfg: BertConfig) -> list[Entry]:
    """Every encoder tensor except the pooler (see `_pooler_entries`)."""
    d, f, n, h = cfg.hidden_size, cfg.intermediate_size, cfg.num_attention_heads, cfg.head_dim
    out = [
        same(("embeddings", "word", "embedding"), "embeddings.word_embeddings.weight",
             (cfg.vocab_size, d)),
        same(("embeddings", "position", "embedding"), "embeddings.position_embeddings.weight",
             (cfg.max_position_embeddings, d)),
        same(("embeddings", "token_type", "embedding"), "embeddings.token_type_embeddings.weight",
             (cfg.type_vocab_size, d)),
        *layer_norm(("embeddings", "norm"), "embeddings.LayerNorm", d),
    ]
    for i in range(cfg.num_hidden_layers):
        ours, hf = (f"layer_{i}",), f"encoder.layer.{i}"
        for name in ("query", "key", "value"):
            out += linear((*ours, "attention", name), f"{hf}.attention.self.{name}", (d,), (n, h),
                          bias=True)
        out += linear((*ours, "attention", "out"), f"{hf}.attention.output.dense", (n, h), (d,),
                      bias=True)
        out += layer_norm((*ours, "attention_norm"), f"{hf}.attention.output.LayerNorm", d)
        out += linear((*ours, "mlp", "wi"), f"{hf}.intermediate.dense", (d,), (f,), bias=True)
        out += linear((*ours, "mlp", "wo"), f"{hf}.output.dense", (f,), (d,), bias=True)
        out += layer_norm((*ours, "mlp_norm"), f"{hf}.output.LayerNorm", d)
    return out


def _pooler_entries(cfg: BertConfig, hf: str = "pooler.dense") -> list[Entry]:
    return linear(("pooler",), hf, (cfg.hidden_size,), (cfg.hidden_size,), bias=True)


def _classifier_entries(cfg: BertConfig, num_labels: int, hf: str) -> list[Entry]:
    return linear((), hf, (cfg.hidden_size,), (num_labels,), bias=True)


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


def params_from_hf(
    state: Mapping[str, np.ndarray],
    config: BertConfig,
    *,
    prefix: str | None = None,
    with_head: bool = False,
    where: str = "checkpoint",
) -> tables.Params:
    """Numpy params for our module from an HF state dict (cast to `config.param_dtype`).

    `prefix=None` detects 'bert.' / 'roberta.' / ''. Without `with_head` the tree is a
    `BertModel`'s; with it, `{'encoder': ..., 'classifier': ...}` as a `SequenceClassifier`
    has it, where 'classifier' is present only if the checkpoint holds a head. A missing
    pooler is left out (the caller keeps freshly initialised values); any other missing
    or mis-shaped weight raises `UserInputError` naming `where`.
    """
    state = normalize_names(state)
    heads = _HEADS[config.model_type]
    if prefix is None:
        prefixes = (heads.prefix, *(h.prefix for h in _HEADS.values()), "")
        prefix = tables.detect_prefix(
            state, "embeddings.word_embeddings.weight", prefixes, where=where,
            what=config.model_type, shown="",
        )
    dtype = np.dtype(config.param_dtype)
    entries = _entries(config)
    encoder = tables.take(state, entries, prefix, dtype, where=where)
    pooler = _pooler_entries(config)
    head_pooler = _pooler_entries(config, heads.pooler)
    if tables.has_all(state, prefix, pooler):
        encoder.update(tables.take(state, pooler, prefix, dtype, where=where))
    elif with_head and tables.has_all(state, heads.pooler_prefix, head_pooler):
        encoder.update(tables.take(state, head_pooler, heads.pooler_prefix, dtype, where=where))
    known = {prefix + e.hf_name for e in entries + pooler}
    weights = {k: v for k, v in state.items() if not k.startswith(_IGNORED_PREFIXES)}
    tables.log_unused(weights, known, _IGNORED_SUFFIXES)
    if not with_head:
        return encoder
    params: tables.Params = {"encoder": encoder}
    if f"{heads.classifier}.weight" in state:
        num_labels = state[f"{heads.classifier}.weight"].shape[0]
        params["classifier"] = tables.take(
            state, _classifier_entries(config, num_labels, heads.classifier), "", dtype,
            where=where,
        )
    return params


# ----------------------------------------------------------------------------- writing


def params_to_hf(
    params: tables.Params, config: BertConfig, *, prefix: str = "", base_model: bool = False
) -> dict[str, np.ndarray]:
    """HF `BertModel` / `RobertaModel` state dict (float32, contiguous) from encoder params.

    Accepts boxed (nn.Partitioned) or jax arrays; the pooler is written if present.
    With `prefix='bert.'` the names are those inside a `BertFor...` model. The bare
    model is the only one without a head, so `base_model` changes nothing.
    """
    del base_model
    params = tables.to_numpy(params)
    out: dict[str, np.ndarray] = {}
    tables.put(params, _entries(config), prefix, out)
    if "pooler" in params:
        tables.put(params, _pooler_entries(config), prefix, out)
    return out


def classifier_to_hf(params: tables.Params, config: BertConfig) -> dict[str, np.ndarray]:
    """HF `BertForSequenceClassification` / `RobertaForSequenceClassification` state dict
    from `SequenceClassifier` params (pooling 'pooler')."""
    params = tables.to_numpy(params)
    out: dict[str, np.ndarray] = {}
    for table in adapter_tables(config, params["classifier"]["kernel"].shape[-1]):
        node = params
        for key in table.ours:
            node = node[key]
        tables.put(node, table.entries, table.hf_prefix, out)
    return out


def adapter_tables(config: BertConfig, num_labels: int | None) -> list[AdapterTable]:
    """Where each tensor of the exported `...Model` (`num_labels=None`) or
    `...ForSequenceClassification` lives in our tree (see `Family`)."""
    if num_labels is None:
        return [AdapterTable((), "", _entries(config) + _pooler_entries(config))]
    heads = _HEADS[config.model_type]
    return [
        AdapterTable(("encoder",), heads.prefix, _entries(config)),
        AdapterTable(("encoder",), heads.pooler_prefix, _pooler_entries(config, heads.pooler)),
        AdapterTable(
            ("classifier",), "", _classifier_entries(config, num_labels, heads.classifier)
        ),
    ]
