"""BERT-family encoder (BERT, MiniLM, RoBERTa) in flax.linen.

Post-LayerNorm transformer encoder, numerically equal to Hugging Face's `BertModel` /
`RobertaModel` in fp32 (tests/test_models_bert.py). RoBERTa differs only in its position
ids, which start at `pad_token_id + 1` and skip padding tokens.

Parameter tree (our names; `convert.py` maps them to Hugging Face):

    embeddings/word/embedding            V D      ('vocab', 'embed')
    embeddings/position/embedding        P D      ('position', 'embed')
    embeddings/token_type/embedding      Y D      ('token_type', 'embed')
    embeddings/norm/{scale,bias}         D        ('embed',)
    layer_{i}/attention/{query,key,value}/kernel  D N H  ('embed', 'heads', 'kv'), bias N H
    layer_{i}/attention/out/kernel       N H D    ('heads', 'kv', 'embed'), bias D
    layer_{i}/attention_norm/{scale,bias}
    layer_{i}/mlp/wi/kernel              D F      ('embed', 'mlp'), bias F
    layer_{i}/mlp/wo/kernel              F D      ('mlp', 'embed'), bias D
    layer_{i}/mlp_norm/{scale,bias}
    pooler/kernel                        D D      ('embed', 'mlp'), bias D   (optional)

Rematerialisation: `remat_policy` (`sft_jax/models/common.py`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from sft_jax.errors import UserInputError
from sft_jax.models import axes, common, layers

Array = jax.Array

SUPPORTED_MODEL_TYPES = ("bert", "roberta")

# HF config key -> our field; all required in config.json unless a default is given below.
_REQUIRED = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
             "intermediate_size")
# Our fields that no HF config.json sets (model_type is read separately).
_NOT_HF = (*common.OURS, "model_type")


@dataclasses.dataclass(frozen=True)
class BertConfig(common.ModelConfig):
    """Architecture of a BERT-family encoder (HF field names) plus our dtype choices.

    `dtype` is the compute dtype (activations, matmuls), `param_dtype` the storage dtype
    of the parameters; both are dtype names ('float32', 'bfloat16') so that the config
    stays hashable. `remat_policy` is ours (not an HF field): 'none', 'full' or 'dots'.
    """

    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    hidden_act: str = "gelu"
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    pad_token_id: int = 0
    initializer_range: float = 0.02
    classifier_dropout: float | None = None
    model_type: str = "bert"

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def position_offset(self) -> int:
        """First position id of a real token (RoBERTa: pad_token_id + 1)."""
        return self.pad_token_id + 1 if self.model_type == "roberta" else 0

    hf_checks = common.HfChecks("bert", SUPPORTED_MODEL_TYPES, "a BERT-family encoder", _REQUIRED)

    @classmethod
    def fields_from_hf(cls, hf: Mapping[str, Any], model_type: str, *, where: str) -> dict:
        """Our fields from a Hugging Face `config.json` dict (see `common.ModelConfig.from_hf`)."""
        common.check_activation(hf.get("hidden_act", "gelu"), key="hidden_act", where=where)
        pos_type = hf.get("position_embedding_type", "absolute")
        if pos_type != "absolute":
            raise UserInputError(
                f"{where}: position_embedding_type {pos_type!r} is not supported (absolute only)"
            )
        if hf.get("is_decoder") or hf.get("add_cross_attention"):
            raise UserInputError(f"{where}: decoder BERT (is_decoder) is not supported")
        if hf["hidden_size"] % hf["num_attention_heads"]:
            raise UserInputError(
                f"{where}: hidden_size {hf['hidden_size']} is not a multiple of "
                f"num_attention_heads {hf['num_attention_heads']}"
            )
        defaults = {f.name: f.default for f in dataclasses.fields(cls)}
        kwargs = {
            name: hf.get(name, defaults[name])
            for name in defaults
            if name not in _NOT_HF
        }
        if kwargs["pad_token_id"] is None:
            kwargs["pad_token_id"] = 0
        return kwargs

    def to_hf(self) -> dict[str, Any]:
        """The Hugging Face config fields this config determines (no dtype fields)."""
        out = {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.name not in _NOT_HF or f.name == "model_type"
        }
        out["position_embedding_type"] = "absolute"
        return out


class BertEmbeddings(nn.Module):
    """word + position + token-type embeddings, LayerNorm, dropout."""

    config: BertConfig

    @nn.compact
    def __call__(
        self,
        input_ids: Array,  # B T
        token_type_ids: Array | None,  # B T
        position_ids: Array | None,  # B T
        *,
        deterministic: bool,
        attention_mask: Array | None = None,  # B T: the real tokens (NEFTune's lengths)
    ) -> Array:  # B T D
        cfg = self.config
        kw = cfg.dtypes
        init = nn.initializers.normal(cfg.initializer_range)
        d = cfg.hidden_size
        if position_ids is None:
            position_ids = default_position_ids(input_ids, cfg)
        if token_type_ids is None:
            token_type_ids = jnp.zeros_like(input_ids)
        word = layers.embed(cfg.vocab_size, d, row_axis=axes.VOCAB, init=init, name="word", **kw)
        pos = layers.embed(
            cfg.max_position_embeddings, d, row_axis=axes.POSITION, init=init, name="position", **kw
        )
        tok = layers.embed(
            cfg.type_vocab_size, d, row_axis=axes.TOKEN_TYPE, init=init, name="token_type", **kw
        )
        words = layers.neftune(self, word(input_ids), attention_mask,
                               deterministic=deterministic)  # B T D
        x = words + tok(token_type_ids) + pos(position_ids)  # B T D
        x = layers.layer_norm(epsilon=cfg.layer_norm_eps, name="norm", **kw)(x)
        return nn.Dropout(cfg.hidden_dropout_prob)(x, deterministic=deterministic)


def default_position_ids(input_ids: Array, config: BertConfig) -> Array:
    """BERT: 0..T-1. RoBERTa: pad+1, pad+2, ... over non-pad tokens; pad tokens get pad."""
    if config.model_type == "roberta":
        real = (input_ids != config.pad_token_id).astype(jnp.int32)
        return jnp.cumsum(real, axis=1) * real + config.pad_token_id
    return jnp.broadcast_to(jnp.arange(input_ids.shape[1], dtype=jnp.int32), input_ids.shape)


class BertLayer(nn.Module):
    """Post-LN block: x = LN(x + drop(attn(x))); x = LN(x + drop(mlp(x)))."""

    config: BertConfig
    static_args = ("deterministic",)  # non-array call arguments (remat)

    @nn.compact
    def __call__(self, x: Array, mask: Array | None, deterministic: bool = True) -> Array:
        cfg = self.config
        kw = cfg.dtypes
        init = nn.initializers.normal(cfg.initializer_range)
        h = layers.Attention(
            num_heads=cfg.num_attention_heads,
            head_dim=cfg.head_dim,
            dropout_rate=cfg.attention_probs_dropout_prob,
            kernel_init=init,
            name="attention",
            **kw,
            **cfg.attention_options,
        )(x, mask=mask, deterministic=deterministic)  # B T D
        h = nn.Dropout(cfg.hidden_dropout_prob)(h, deterministic=deterministic)
        x = layers.layer_norm(epsilon=cfg.layer_norm_eps, name="attention_norm", **kw)(x + h)
        h = layers.Mlp(
            hidden_dim=cfg.intermediate_size,
            activation=cfg.hidden_act,
            kernel_init=init,
            name="mlp",
            **kw,
        )(x)  # B T D
        h = nn.Dropout(cfg.hidden_dropout_prob)(h, deterministic=deterministic)
        x = layers.layer_norm(epsilon=cfg.layer_norm_eps, name="mlp_norm", **kw)(x + h)
        return nn.with_logical_constraint(x, (axes.BATCH, axes.LENGTH, axes.EMBED))


class BertModel(nn.Module):
    """BERT / RoBERTa encoder.

    Call: `(input_ids [B,T], attention_mask [B,T] | None, token_type_ids [B,T] | None,
    *, position_ids=None, mask=None, deterministic=True)` ->
    `{'last_hidden_state': [B,T,D], 'pooler_output': [B,D]}` (no 'pooler_output' key
    when `add_pooling_layer=False`). `attention_mask` is 1 for tokens, 0 for padding;
    `mask` is an optional extra boolean attention mask ([B,1,T,S], e.g. a segment mask
    for packed batches) ANDed with it. Dropout draws from the 'dropout' rng when
    `deterministic=False`.
    """

    config: BertConfig
    add_pooling_layer: bool = True

    @nn.compact
    def __call__(
        self,
        input_ids: Array,
        attention_mask: Array | None = None,
        token_type_ids: Array | None = None,
        *,
        position_ids: Array | None = None,
        mask: Array | None = None,
        deterministic: bool = True,
    ) -> dict[str, Array]:
        cfg = self.config
        x = BertEmbeddings(cfg, name="embeddings")(
            input_ids, token_type_ids, position_ids, deterministic=deterministic,
            attention_mask=attention_mask,
        )  # B T D
        pad = None if attention_mask is None else layers.padding_mask(attention_mask)
        mask = layers.combine_masks(pad, mask)  # B 1 1|T S
        layer_cls = common.remat_layer(BertLayer, cfg.remat_policy)
        for i in range(cfg.num_hidden_layers):
            x = layer_cls(cfg, name=f"layer_{i}")(x, mask, deterministic)
        out = {"last_hidden_state": x}
        if self.add_pooling_layer:
            pooled = layers.DenseGeneral(
                features=cfg.hidden_size,
                kernel_axes=(axes.EMBED, axes.MLP),
                dtype=jnp.dtype(cfg.dtype),
                param_dtype=jnp.dtype(cfg.param_dtype),
                kernel_init=nn.initializers.normal(cfg.initializer_range),
                name="pooler",
            )(x[:, 0])  # B D
            out["pooler_output"] = jnp.tanh(pooled)
        return out
