"""BART and Marian encoder-decoders in flax.linen (one module, config switches).

Post-LayerNorm transformer encoder-decoder, numerically equal to Hugging Face's
`BartForConditionalGeneration` and `MarianMTModel` in fp32 (tests/test_bart.py). The two
families differ only in config:

|                       | BART (`model_type='bart'`)       | Marian (`'marian'`)               |
|-----------------------|----------------------------------|-----------------------------------|
| positions             | learned table, row = pos + 2     | fixed sinusoids (sin half, then   |
|                       |                                  | cos half), row = pos              |
| embedding LayerNorm   | yes (`layernorm_embedding`)      | no                                |
| token tables          | one shared table (tied), else    | shared if `tie_word_embeddings`   |
|                       | encoder / decoder / lm_head each | and `share_encoder_decoder_       |
|                       |                                  | embeddings`; the decoder's table  |
|                       |                                  | may have `decoder_vocab_size`     |

Both: token embeddings times sqrt(d_model) when `scale_embedding`; q/k/v/out projections
with biases, queries scaled by head_dim**-0.5; each block `x = LN(x + drop(f(x)))`; MLP
`fc2(drop(act(fc1(x))))` with `activation_function` from the config; no final norm; logits
= lm_head(x) + `final_logits_bias`, where the LM head is the decoder's token table unless
`tie_word_embeddings` is false. As in transformers 5.x, `tie_word_embeddings=False` unties
every table (encoder, decoder, LM head). `final_logits_bias` is a buffer in Hugging Face:
it takes no gradient here either (`stop_gradient`), so fine-tuning leaves it as loaded.

The batch contract and the methods (`__call__`, `encode`, `decode`) are those of every
encoder-decoder family (`models/t5/model.py`); `init_cache` builds the decoder-only
cache of `models/decoder.py` (no key positions: BART has no relative bias). Dropout draws
from the 'dropout' rng when `deterministic=False`.

Parameter tree (our names; `convert.py` maps them to Hugging Face):

    shared/embedding                       V D   ('vocab','embed')  shared tables only
    encoder_embed/embedding                V D   ('vocab','embed')  otherwise
    decoder_embed/embedding                V' D  ('vocab','embed')  otherwise
    lm_head/kernel                         D V'  ('embed','vocab')  untied only
    final_logits_bias                      V'    ('vocab',)
    {encoder,decoder}/position/embedding   P+2 D ('position','embed')  BART only
    {encoder,decoder}/embed_norm/{scale,bias}  D                        BART only
    encoder/layer_{i}/attention/{query,key,value}/kernel  D N H ('embed','heads','kv'), bias
    encoder/layer_{i}/attention/out/kernel                N H D ('heads','kv','embed'), bias
    encoder/layer_{i}/{attention_norm,mlp_norm}/{scale,bias}
    encoder/layer_{i}/mlp/wi/kernel  D F ('embed','mlp'), bias;  mlp/wo/kernel  F D, bias
    decoder/layer_{i}/{self_attention,cross_attention}/...   as encoder attention
    decoder/layer_{i}/{self_attention_norm,cross_attention_norm,mlp_norm}/{scale,bias}
    decoder/layer_{i}/mlp/{wi,wo}

    V' = decoder_vocab_size (= vocab_size for BART and for shared Marian tables).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from sft_jax.errors import UserInputError
from sft_jax.models import axes, common, decoder, layers
from sft_jax.models import lm_head as head_lib
from sft_jax.models.decoder import decoder_inputs, next_cache

Array = jax.Array

SUPPORTED_MODEL_TYPES = ("bart", "marian")

# torch.nn.LayerNorm's default, which every LayerNorm of HF's BART and Marian uses.
LAYER_NORM_EPS = 1e-5
# BART's learned position table has 2 extra leading rows (a fairseq legacy).
BART_POSITION_OFFSET = 2

_REQUIRED = (
    "vocab_size", "d_model", "encoder_layers", "decoder_layers", "encoder_attention_heads",
    "decoder_attention_heads", "encoder_ffn_dim", "decoder_ffn_dim",
)
# Defaults of HF's BartConfig / MarianConfig for the fields that differ per family.
_FAMILY_DEFAULTS: dict[str, dict[str, Any]] = {
    "bart": {"pad_token_id": 1, "bos_token_id": 0, "eos_token_id": 2,
             "decoder_start_token_id": 2, "forced_eos_token_id": 2},
    "marian": {"pad_token_id": 58100, "bos_token_id": None, "eos_token_id": 0,
               "decoder_start_token_id": 58100, "forced_eos_token_id": 0},
}


@dataclasses.dataclass(frozen=True)
class BartConfig(common.ModelConfig):
    """Architecture of a BART / Marian model (HF field names) plus our dtypes.

    `decoder_vocab_size` is resolved at `from_hf` (BART and shared Marian tables:
    `vocab_size`). `share_encoder_decoder_embeddings` is Marian's flag (always True for
    BART). `dtype` is the compute dtype, `param_dtype` the storage dtype. `remat_policy`
    is ours ('none', 'full', 'dots'; `common.remat_layer`), for calls without a KV cache.
    """

    vocab_size: int
    d_model: int
    encoder_layers: int
    decoder_layers: int
    encoder_attention_heads: int
    decoder_attention_heads: int
    encoder_ffn_dim: int
    decoder_ffn_dim: int
    decoder_vocab_size: int
    activation_function: str = "gelu"
    max_position_embeddings: int = 1024
    scale_embedding: bool = False
    dropout: float = 0.1
    attention_dropout: float = 0.0
    activation_dropout: float = 0.0
    init_std: float = 0.02
    tie_word_embeddings: bool = True
    share_encoder_decoder_embeddings: bool = True
    pad_token_id: int | None = None
    bos_token_id: int | None = None
    eos_token_id: int | tuple[int, ...] | None = None
    decoder_start_token_id: int | None = None
    forced_bos_token_id: int | None = None
    forced_eos_token_id: int | tuple[int, ...] | None = None
    model_type: str = "bart"

    @property
    def encoder_head_dim(self) -> int:
        return self.d_model // self.encoder_attention_heads

    @property
    def decoder_head_dim(self) -> int:
        return self.d_model // self.decoder_attention_heads

    @property
    def learned_positions(self) -> bool:
        """BART: a learned table read at position + 2; Marian: fixed sinusoids."""
        return self.model_type == "bart"

    @property
    def layernorm_embedding(self) -> bool:
        """BART normalises the embeddings (tokens + positions) before the first layer."""
        return self.model_type == "bart"

    @property
    def shared_embeddings(self) -> bool:
        """One token table for encoder, decoder and LM head."""
        return self.tie_word_embeddings and self.share_encoder_decoder_embeddings

    @property
    def embed_scale(self) -> float:
        return math.sqrt(self.d_model) if self.scale_embedding else 1.0

    hf_checks = common.HfChecks(
        "bart", SUPPORTED_MODEL_TYPES, "a BART-family encoder-decoder", _REQUIRED
    )

    @classmethod
    def fields_from_hf(cls, hf: Mapping[str, Any], model_type: str, *, where: str) -> dict:
        """Our fields from a Hugging Face `config.json` dict (see `common.ModelConfig.from_hf`)."""
        hf = {**_FAMILY_DEFAULTS[model_type], **hf}
        act = common.check_activation(
            hf.get("activation_function") or "gelu", key="activation_function", where=where
        )
        d = hf["d_model"]
        for key in ("encoder_attention_heads", "decoder_attention_heads"):
            if d % hf[key]:
                raise UserInputError(f"{where}: d_model {d} is not a multiple of {key} {hf[key]}")
        share = model_type == "bart" or bool(hf.get("share_encoder_decoder_embeddings", True))
        vocab = hf["vocab_size"]
        decoder_vocab = vocab if model_type == "bart" else hf.get("decoder_vocab_size") or vocab
        if share and decoder_vocab != vocab:
            raise UserInputError(
                f"{where}: decoder_vocab_size {decoder_vocab} differs from vocab_size {vocab} "
                "but share_encoder_decoder_embeddings is true"
            )
        return dict(
            vocab_size=vocab,
            d_model=d,
            encoder_layers=hf["encoder_layers"],
            decoder_layers=hf["decoder_layers"],
            encoder_attention_heads=hf["encoder_attention_heads"],
            decoder_attention_heads=hf["decoder_attention_heads"],
            encoder_ffn_dim=hf["encoder_ffn_dim"],
            decoder_ffn_dim=hf["decoder_ffn_dim"],
            decoder_vocab_size=decoder_vocab,
            activation_function=act,
            max_position_embeddings=hf.get("max_position_embeddings") or 1024,
            scale_embedding=bool(hf.get("scale_embedding", False)),
            dropout=float(hf.get("dropout", 0.1) or 0.0),
            attention_dropout=float(hf.get("attention_dropout") or 0.0),
            activation_dropout=float(hf.get("activation_dropout") or 0.0),
            init_std=float(hf.get("init_std") or 0.02),
            tie_word_embeddings=bool(hf.get("tie_word_embeddings", True)),
            share_encoder_decoder_embeddings=share,
            pad_token_id=hf.get("pad_token_id"),
            bos_token_id=hf.get("bos_token_id"),
            eos_token_id=common.hf_token_ids(hf.get("eos_token_id")),
            decoder_start_token_id=hf.get("decoder_start_token_id"),
            forced_bos_token_id=hf.get("forced_bos_token_id"),
            forced_eos_token_id=common.hf_token_ids(hf.get("forced_eos_token_id")),
        )

    def to_hf(self) -> dict[str, Any]:
        """The Hugging Face config fields this config determines (no dtype fields)."""
        out: dict[str, Any] = {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.name not in common.OURS
        }
        out["eos_token_id"] = common.token_ids_to_hf(self.eos_token_id)
        out["forced_eos_token_id"] = common.token_ids_to_hf(self.forced_eos_token_id)
        out["is_encoder_decoder"] = True
        if self.forced_bos_token_id is None:  # absent from most configs
            del out["forced_bos_token_id"]
        if self.model_type == "bart":
            del out["decoder_vocab_size"], out["share_encoder_decoder_embeddings"]
        return out


def init_cache(
    config: BartConfig, batch_size: int, max_length: int, dtype: Any = None
) -> dict[str, Any]:
    """An empty decoder self-attention cache (see the module docstring)."""
    return decoder.init_cache(
        config, batch_size, max_length, dtype, num_layers=config.decoder_layers,
        num_kv_heads=config.decoder_attention_heads, head_dim=config.decoder_head_dim,
    )


@functools.lru_cache(maxsize=8)
def marian_sinusoids(num_positions: int, dim: int) -> np.ndarray:
    """float32 [P, D]: HF's `MarianSinusoidalPositionalEmbedding` table. Angle
    pos / 10000^(2*(j//2)/D), sin of the even columns in the first half (ceil(D/2)
    columns), cos of the odd columns in the second; computed in float64."""
    j = np.arange(dim)
    angles = np.arange(num_positions, dtype=np.float64)[:, None] / np.power(
        10000.0, 2 * (j // 2) / dim
    )  # P D
    out = np.concatenate([np.sin(angles[:, 0::2]), np.cos(angles[:, 1::2])], axis=1)
    out = out.astype(np.float32)
    out.flags.writeable = False
    return out


class Ffn(nn.Module):
    """`wo(drop(act(wi(x))))` with activation dropout (HF's fc1 / fc2)."""

    config: BartConfig
    hidden_dim: int

    @nn.compact
    def __call__(self, x: Array, *, deterministic: bool) -> Array:  # B T D -> B T D
        cfg = self.config
        kw = {**cfg.dtypes, "kernel_init": nn.initializers.normal(cfg.init_std)}
        h = layers.DenseGeneral(self.hidden_dim, (axes.EMBED, axes.MLP), name="wi", **kw)(x)
        h = layers.ACTIVATIONS[cfg.activation_function](h)  # B T F
        h = nn.with_logical_constraint(h, (axes.BATCH, axes.LENGTH, axes.MLP))
        h = nn.Dropout(cfg.activation_dropout)(h, deterministic=deterministic)
        return layers.DenseGeneral(x.shape[-1], (axes.MLP, axes.EMBED), name="wo", **kw)(h)


def _attention(cfg: BartConfig, heads: int, name: str) -> layers.Attention:
    return layers.Attention(
        num_heads=heads,
        head_dim=cfg.d_model // heads,
        dropout_rate=cfg.attention_dropout,
        kernel_init=nn.initializers.normal(cfg.init_std),
        name=name,
        **cfg.dtypes,
        **cfg.attention_options,
    )


class EncoderLayer(nn.Module):
    """Post-LN block: x = LN(x + drop(attn(x))); x = LN(x + drop(mlp(x))). Called
    positionally (remat)."""

    config: BartConfig
    static_args = ("deterministic",)  # non-array call arguments (remat)

    @nn.compact
    def __call__(self, x: Array, mask: Array, deterministic: bool) -> Array:  # B S D
        cfg = self.config
        drop = nn.Dropout(cfg.dropout)
        norm = functools.partial(layers.layer_norm, epsilon=LAYER_NORM_EPS, **cfg.dtypes)
        h = _attention(cfg, cfg.encoder_attention_heads, "attention")(
            x, mask=mask, deterministic=deterministic
        )
        x = norm(name="attention_norm")(x + drop(h, deterministic=deterministic))
        h = Ffn(cfg, cfg.encoder_ffn_dim, name="mlp")(x, deterministic=deterministic)
        x = norm(name="mlp_norm")(x + drop(h, deterministic=deterministic))
        return nn.with_logical_constraint(x, (axes.BATCH, axes.LENGTH, axes.EMBED))


class DecoderLayer(nn.Module):
    """Post-LN block: causal self-attention (KV cache), cross-attention, MLP. Called
    positionally (remat)."""

    config: BartConfig
    static_args = ("deterministic",)  # non-array call arguments (remat)

    @nn.compact
    def __call__(
        self,
        x: Array,  # B T D
        encoded: Array,  # B S D
        self_mask: Array,  # B 1 T T|cache
        cross_mask: Array,  # B 1 T S
        deterministic: bool,
        kv_cache: dict[str, Array] | None = None,
        cache_index: Array | None = None,
    ) -> tuple[Array, dict[str, Array] | None]:
        cfg = self.config
        drop = nn.Dropout(cfg.dropout)
        norm = functools.partial(layers.layer_norm, epsilon=LAYER_NORM_EPS, **cfg.dtypes)
        heads = cfg.decoder_attention_heads
        h, kv_cache = layers.attend(
            _attention(cfg, heads, "self_attention"), x, self_mask, kv_cache, cache_index,
            deterministic,
        )
        x = norm(name="self_attention_norm")(x + drop(h, deterministic=deterministic))
        h = _attention(cfg, heads, "cross_attention")(
            x, encoded, mask=cross_mask, deterministic=deterministic
        )
        x = norm(name="cross_attention_norm")(x + drop(h, deterministic=deterministic))
        h = Ffn(cfg, cfg.decoder_ffn_dim, name="mlp")(x, deterministic=deterministic)
        x = norm(name="mlp_norm")(x + drop(h, deterministic=deterministic))
        return nn.with_logical_constraint(x, (axes.BATCH, axes.LENGTH, axes.EMBED)), kv_cache


def _embed_positions(cfg: BartConfig, x: Array, positions: Array, *, deterministic: bool):
    """Adds positions (learned or sinusoidal) to token embeddings x [B,T,D], then BART's
    LayerNorm and dropout. Call inside the compact method of the owning module."""
    kw = cfg.dtypes
    if cfg.learned_positions:
        table = layers.embed(
            cfg.max_position_embeddings + BART_POSITION_OFFSET,
            cfg.d_model,
            row_axis=axes.POSITION,
            init=nn.initializers.normal(cfg.init_std),
            name="position",
            **kw,
        )
        x = x + table(positions + BART_POSITION_OFFSET)
    else:
        table = jnp.asarray(marian_sinusoids(cfg.max_position_embeddings, cfg.d_model))
        x = x + table[positions].astype(kw["dtype"])  # B T D
    if cfg.layernorm_embedding:
        x = layers.layer_norm(epsilon=LAYER_NORM_EPS, name="embed_norm", **kw)(x)
    return nn.Dropout(cfg.dropout)(x, deterministic=deterministic)


class Encoder(nn.Module):
    """Positions + (BART) LayerNorm + encoder layers over embedded tokens."""

    config: BartConfig

    @nn.compact
    def __call__(
        self, x: Array, positions: Array, segment_ids: Array, *, deterministic: bool
    ) -> Array:  # B S D
        cfg = self.config
        x = _embed_positions(cfg, x, positions, deterministic=deterministic)
        mask = layers.segment_mask(segment_ids)  # B 1 S S
        layer_cls = common.remat_layer(EncoderLayer, cfg.remat_policy)
        for i in range(cfg.encoder_layers):
            x = layer_cls(cfg, name=f"layer_{i}")(x, mask, deterministic)
        return x


class Decoder(nn.Module):
    """Positions + (BART) LayerNorm + decoder layers over embedded tokens."""

    config: BartConfig

    @nn.compact
    def __call__(
        self,
        x: Array,  # B T D
        positions: Array,  # B T
        encoded: Array,  # B S D
        self_mask: Array,  # B 1 T T|cache
        cross_mask: Array,  # B 1 T S
        *,
        cache: Mapping[str, Any] | None,
        cache_index: Array | None,
        deterministic: bool,
    ) -> tuple[Array, list[dict[str, Array]]]:
        cfg = self.config
        x = _embed_positions(cfg, x, positions, deterministic=deterministic)
        # Rematerialisation only in calls without a cache (training, scoring).
        policy = cfg.remat_policy if cache is None else "none"
        layer_cls = common.remat_layer(DecoderLayer, policy)
        new_layers = []
        for i in range(cfg.decoder_layers):
            layer = layer_cls(cfg, name=f"layer_{i}")
            if cache is None:
                x, _ = layer(x, encoded, self_mask, cross_mask, deterministic)
            else:
                x, layer_cache = layer(x, encoded, self_mask, cross_mask, deterministic,
                                       cache["layers"][i], cache_index)
                new_layers.append(layer_cache)
        return x, new_layers


class BartModel(nn.Module):
    """BART / Marian encoder-decoder with its LM head (contract: the module docstring)."""

    config: BartConfig

    def setup(self) -> None:
        cfg = self.config
        kw = cfg.dtypes
        init = nn.initializers.normal(cfg.init_std)
        d = cfg.d_model
        if cfg.shared_embeddings:
            self.shared = layers.embed(cfg.vocab_size, d, row_axis=axes.VOCAB, init=init, **kw)
        else:
            self.encoder_embed = layers.embed(
                cfg.vocab_size, d, row_axis=axes.VOCAB, init=init, **kw
            )
            self.decoder_embed = layers.embed(
                cfg.decoder_vocab_size, d, row_axis=axes.VOCAB, init=init, **kw
            )
        if not cfg.tie_word_embeddings:
            self.lm_head = layers.DenseGeneral(
                cfg.decoder_vocab_size,
                (axes.EMBED, axes.VOCAB),
                use_bias=False,
                kernel_init=init,
                **kw,
            )
        self.final_logits_bias = self.param(
            "final_logits_bias",
            nn.with_logical_partitioning(nn.initializers.zeros_init(), (axes.VOCAB,)),
            (cfg.decoder_vocab_size,),
            kw["param_dtype"],
        )
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)

    def _tables(self) -> tuple[nn.Embed, nn.Embed]:
        if self.config.shared_embeddings:
            return self.shared, self.shared
        return self.encoder_embed, self.decoder_embed

    def _lookup(self, table: nn.Embed, ids: Array) -> Array:  # B L -> B L D
        """Scaled token embeddings. As HF's `nn.Embedding(padding_idx=pad_token_id)`, the
        lookup sends no gradient to the pad row (Marian's decoder starts every target with
        pad); a tied LM head still trains that row."""
        x = table(ids)
        if self.config.pad_token_id is not None:
            is_pad = (ids == self.config.pad_token_id)[..., None]  # B L 1
            x = jnp.where(is_pad, jax.lax.stop_gradient(x), x)
        return x * self.config.embed_scale

    def __call__(
        self,
        encoder_input_ids: Array,  # B S
        decoder_input_ids: Array,  # B T
        *,
        encoder_segment_ids: Array | None = None,
        encoder_positions: Array | None = None,
        decoder_segment_ids: Array | None = None,
        decoder_positions: Array | None = None,
        deterministic: bool = True,
        lm_head: bool = False,
    ) -> dict[str, Array]:
        encoded = self.encode(
            encoder_input_ids,
            encoder_segment_ids=encoder_segment_ids,
            encoder_positions=encoder_positions,
            deterministic=deterministic,
        )
        out = self.decode(
            decoder_input_ids,
            encoded,
            encoder_segment_ids=encoder_segment_ids,
            decoder_positions=decoder_positions,
            decoder_segment_ids=decoder_segment_ids,
            deterministic=deterministic,
            lm_head=lm_head,
        )
        if lm_head:
            return {"lm_head": out["lm_head"], "hidden_states": out["hidden_states"]}
        return {"logits": out["logits"]}

    def encode(
        self,
        encoder_input_ids: Array,  # B S
        *,
        encoder_segment_ids: Array | None = None,
        encoder_positions: Array | None = None,
        deterministic: bool = True,
    ) -> Array:  # B S D
        b, s = encoder_input_ids.shape
        encoder_segment_ids = layers.segments_or_ones(encoder_segment_ids, b, s)
        if encoder_positions is None:
            encoder_positions = jnp.broadcast_to(jnp.arange(s, dtype=jnp.int32), (b, s))
        x = layers.neftune(self, self._lookup(self._tables()[0], encoder_input_ids),
                           encoder_segment_ids, deterministic=deterministic)  # B S D
        return self.encoder(
            x,
            jnp.asarray(encoder_positions, jnp.int32),
            encoder_segment_ids,
            deterministic=deterministic,
        )

    def decode(
        self,
        decoder_input_ids: Array,  # B T
        encoded: Array,  # B S D
        *,
        encoder_segment_ids: Array | None = None,
        decoder_positions: Array | None = None,
        decoder_segment_ids: Array | None = None,
        cache: Mapping[str, Any] | None = None,
        deterministic: bool = True,
        lm_head: bool = False,
    ) -> dict[str, Any]:
        cfg = self.config
        b, s = encoded.shape[:2]
        positions, segment_ids, masks, index, key_segments = decoder_inputs(
            decoder_input_ids, decoder_positions, decoder_segment_ids, cache, {None}
        )
        cross_mask = layers.segment_mask(
            segment_ids, layers.segments_or_ones(encoder_segment_ids, b, s))  # B 1 T S
        table = self._tables()[1]
        x = layers.neftune(self, self._lookup(table, decoder_input_ids), segment_ids,
                           deterministic=deterministic)  # B T D
        x, new_layers = self.decoder(
            x,
            positions,
            encoded,
            masks[None],
            cross_mask,
            cache=cache,
            cache_index=index,
            deterministic=deterministic,
        )
        t = decoder_input_ids.shape[1]
        new_cache = next_cache(cache, index, t, key_segments, new_layers)
        if lm_head:  # the head as data (`models.lm_head`), x [B, T, D] its input
            bias = self.final_logits_bias
            head = (head_lib.tied(table, bias=bias) if cfg.tie_word_embeddings
                    else head_lib.untied(self.lm_head, x, bias=bias))
            return {"lm_head": head, "hidden_states": x, "cache": new_cache}
        logits = self.lm_head(x) if not cfg.tie_word_embeddings else table.attend(x)  # B T V
        bias = jax.lax.stop_gradient(jnp.asarray(self.final_logits_bias, jnp.float32))
        logits = logits.astype(jnp.float32) + bias
        logits = nn.with_logical_constraint(logits, (axes.BATCH, axes.LENGTH, axes.VOCAB))
        return {"logits": logits, "cache": new_cache}
