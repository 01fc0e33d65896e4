"""T5 encoder-decoders (T5 v1.0, T5 v1.1 / Flan-T5, mT5) in flax.linen.

Pre-norm transformer with relative position buckets, numerically equal to Hugging Face's
`T5ForConditionalGeneration` / `MT5ForConditionalGeneration` in fp32 (tests/test_t5.py).
The variants differ only in config:

|                   | T5 v1.0                   | T5 v1.1, Flan-T5           | mT5          |
|-------------------|---------------------------|----------------------------|--------------|
| feed_forward_proj | 'relu': wo(relu(wi x))    | 'gated-gelu': wo(gelu_tanh | 'gated-gelu' |
|                   |                           | (wi_0 x) * wi_1 x)         |              |
| LM head           | the shared table, applied | its own `lm_head`, no      | as v1.1      |
|                   | to x * d_model**-0.5      | scaling                    |              |

`tie_word_embeddings` says which LM head: True is v1.0's (tied and scaled), False v1.1's.
transformers 5.x always ties the config flag and stores the choice as
`scale_decoder_outputs` (read first when present); its mT5 never scales, so
`model_type='mt5'` is always untied here.

Every block: `x += drop(f(norm(x)))` with T5's RMS-style LayerNorm (no mean, no bias,
`layers.rms_norm`); no biases anywhere; attention logits are NOT scaled by head_dim**-0.5
(T5 folds that into the query init) and get an additive relative position bias. The bias
table [num_buckets, N] lives once per stack (HF: block 0's `relative_attention_bias`,
shared by all layers): buckets of key position - query position, bidirectional in the
encoder, causal in the decoder (`relative_position_bucket`). Positions come from the
batch, so packed pairs (positions restarting at 0) see the biases each pair has alone.
Cross-attention has no position bias. Dropout (`dropout_rate`, from the 'dropout' rng
when `deterministic=False`) sits where HF has it: after the embedding, on attention
probabilities, after the MLP activation, before each residual add, after the final norm.

Encoder-decoder batch contract (all int32; every encoder-decoder family)
------------------------------------------------------------------------
    encoder_input_ids    [B, S]
    encoder_segment_ids  [B, S]  0 = padding; packed pairs numbered 1, 2, ...; default ones
    encoder_positions    [B, S]  restart at 0 per segment; default arange(S)
    decoder_input_ids    [B, T]  target shifted right (decoder start token first)
    decoder_segment_ids  [B, T]  the id of the pair's source segment; 0 = padding
    decoder_positions    [B, T]  restart at 0 per segment; default arange(T)
                                 (with a cache: cache index + arange(T))

Encoder self-attention is bidirectional within a segment, decoder self-attention causal
within a segment, and decoder token q attends source token s iff encoder_segment_ids[s]
!= 0 and equals q's decoder segment id.

Methods (`module.apply({'params': p}, ..., method='encode' / 'decode')`):
    __call__(encoder_input_ids, decoder_input_ids, *, encoder_segment_ids=None,
             encoder_positions=None, decoder_segment_ids=None, decoder_positions=None,
             deterministic=True) -> {'logits': float32 [B, T, V]}
    encode(encoder_input_ids, *, encoder_segment_ids=None, encoder_positions=None,
           deterministic=True) -> [B, S, D]   (after the encoder's final norm)
    decode(decoder_input_ids, encoded, *, encoder_segment_ids=None, decoder_positions=None,
           decoder_segment_ids=None, cache=None, deterministic=True)
        -> {'logits': float32 [B, T, V], 'cache': the updated cache or None}
`__call__` and `decode` with `lm_head=True` return, instead of 'logits', 'lm_head' (an
`lm_head.LmHead` giving the same logits from hidden states) and 'hidden_states' [B, T, D]
(the decoder's output, the head's input).

`init_cache(config, batch_size, max_length, dtype=None)` returns the decoder-only cache of
`models/decoder.py` plus the key positions the relative bias needs:
    {'index': int32 [], 'segment_ids': int32 [B, S], 'positions': int32 [B, S],
     'layers': [{'k': [B, S, N, H], 'v': [B, S, N, H]}, ...]}
Every leaf but 'index' is batch-first (beam search reorders rows with `jax.tree.map`;
reorder `encoded` and `encoder_segment_ids` alike). Cross-attention keys/values are
computed from `encoded` at every `decode` call.

Parameter tree (our names; `convert.py` maps them to Hugging Face):

    embed/embedding                               V D    ('vocab', 'embed')  HF `shared`
    lm_head/kernel                                D V    ('embed', 'vocab')  untied only
    {encoder,decoder}/relative_bias/embedding     NB N   ('position', 'heads')
    {encoder,decoder}/final_norm/scale            D      ('embed',)
    encoder/layer_{i}/attention_norm/scale        D
    encoder/layer_{i}/attention/{query,key,value}/kernel  D N H ('embed', 'heads', 'kv')
    encoder/layer_{i}/attention/out/kernel        N H D  ('heads', 'kv', 'embed')
    encoder/layer_{i}/mlp_norm/scale              D
    encoder/layer_{i}/mlp/wi/kernel               D F    ('embed', 'mlp')   'relu' etc.
    encoder/layer_{i}/mlp/{wi_0,wi_1}/kernel      D F    ('embed', 'mlp')   gated
    encoder/layer_{i}/mlp/wo/kernel               F D    ('mlp', 'embed')
    decoder/layer_{i}/{self_attention,cross_attention}/...     as encoder attention
    decoder/layer_{i}/{self_attention_norm,cross_attention_norm,mlp_norm}/scale
    decoder/layer_{i}/mlp/...                                  as encoder mlp

Initialisation follows HF's `T5PreTrainedModel._init_weights` (normal, std times
`initializer_factor`): tables 1.0, query (D·H)**-0.5, key/value D**-0.5, out (N·H)**-0.5,
wi D**-0.5, wo F**-0.5, relative bias D**-0.5, norms 1.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Mapping
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from sft_jax.errors import UserInputError
from sft_jax.models import axes, common, decoder, layers
from sft_jax.models import lm_head as head_lib
from sft_jax.models.decoder import decoder_inputs, next_cache

Array = jax.Array

SUPPORTED_MODEL_TYPES = ("t5", "mt5")
_REQUIRED = ("vocab_size", "d_model", "d_kv", "d_ff", "num_layers", "num_heads")


def parse_feed_forward_proj(proj: Any, *, where: str) -> tuple[str, bool]:
    """HF `feed_forward_proj` ('relu', 'gated-gelu', ...) -> (activation name, gated).

    As transformers: 'gated-gelu' means the tanh approximation ('gelu_new'), any other
    name is the activation of the same name.
    """
    parts = str(proj).split("-")
    if len(parts) > 2 or (len(parts) == 2 and parts[0] != "gated"):
        raise UserInputError(
            f"{where}: feed_forward_proj {proj!r} is not of the form 'ACT' or 'gated-ACT'"
        )
    act = "gelu_new" if proj == "gated-gelu" else parts[-1]
    if act not in layers.ACTIVATIONS:
        raise UserInputError(
            f"{where}: feed_forward_proj {proj!r}: activation {act!r} is not supported "
            f"(supported: {', '.join(sorted(layers.ACTIVATIONS))})"
        )
    return act, len(parts) == 2


@dataclasses.dataclass(frozen=True)
class T5Config(common.ModelConfig):
    """Architecture of a T5 / mT5 model (HF field names) plus our dtypes.

    `tie_word_embeddings`: True = v1.0's LM head (the shared table, decoder output scaled
    by d_model**-0.5), False = a separate `lm_head` without scaling (v1.1, Flan-T5, mT5).
    `decoder_start_token_id` defaults to `pad_token_id`, as T5 uses it.
    `remat_policy` is ours ('none', 'full', 'dots'; `common.remat_layer`; calls without a
    cache).
    """

    vocab_size: int
    d_model: int
    d_kv: int
    d_ff: int
    num_layers: int
    num_decoder_layers: int
    num_heads: int
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    feed_forward_proj: str = "relu"
    tie_word_embeddings: bool = True
    layer_norm_epsilon: float = 1e-6
    dropout_rate: float = 0.1
    initializer_factor: float = 1.0
    pad_token_id: int | None = 0
    eos_token_id: int | tuple[int, ...] | None = 1
    decoder_start_token_id: int | None = 0
    model_type: str = "t5"

    @property
    def activation(self) -> str:
        return parse_feed_forward_proj(self.feed_forward_proj, where="feed_forward_proj")[0]

    @property
    def gated(self) -> bool:
        return parse_feed_forward_proj(self.feed_forward_proj, where="feed_forward_proj")[1]

    hf_checks = common.HfChecks("t5", SUPPORTED_MODEL_TYPES, "a T5 model", _REQUIRED)

    @classmethod
    def fields_from_hf(cls, hf: Mapping[str, Any], model_type: str, *, where: str) -> dict:
        """Our fields from a Hugging Face `config.json` dict (see `common.ModelConfig.from_hf`)."""
        proj = hf.get("feed_forward_proj") or ("gated-gelu" if model_type == "mt5" else "relu")
        parse_feed_forward_proj(proj, where=where)
        buckets = hf.get("relative_attention_num_buckets") or 32
        distance = hf.get("relative_attention_max_distance") or 128
        if buckets < 4 or distance <= buckets // 2:
            raise UserInputError(
                f"{where}: need relative_attention_num_buckets >= 4 and "
                f"relative_attention_max_distance > num_buckets / 2 (got {buckets}, {distance})"
            )
        if model_type == "mt5":
            tied = False
        else:
            tied = bool(hf.get("scale_decoder_outputs", hf.get("tie_word_embeddings", True)))
        pad = hf.get("pad_token_id", 0)
        start = hf.get("decoder_start_token_id")
        return dict(
            vocab_size=hf["vocab_size"],
            d_model=hf["d_model"],
            d_kv=hf["d_kv"],
            d_ff=hf["d_ff"],
            num_layers=hf["num_layers"],
            num_decoder_layers=hf.get("num_decoder_layers") or hf["num_layers"],
            num_heads=hf["num_heads"],
            relative_attention_num_buckets=buckets,
            relative_attention_max_distance=distance,
            feed_forward_proj=proj,
            tie_word_embeddings=tied,
            layer_norm_epsilon=hf.get("layer_norm_epsilon") or 1e-6,
            dropout_rate=float(hf.get("dropout_rate", 0.1) or 0.0),
            initializer_factor=float(hf.get("initializer_factor") or 1.0),
            pad_token_id=pad,
            eos_token_id=common.hf_token_ids(hf.get("eos_token_id", 1)),
            decoder_start_token_id=pad if start is None else start,
        )

    def to_hf(self) -> dict[str, Any]:
        """The Hugging Face config fields this config determines (no dtype fields)."""
        out = {
            "model_type": self.model_type,
            "is_encoder_decoder": True,
            "vocab_size": self.vocab_size,
            "d_model": self.d_model,
            "d_kv": self.d_kv,
            "d_ff": self.d_ff,
            "num_layers": self.num_layers,
            "num_decoder_layers": self.num_decoder_layers,
            "num_heads": self.num_heads,
            "relative_attention_num_buckets": self.relative_attention_num_buckets,
            "relative_attention_max_distance": self.relative_attention_max_distance,
            "feed_forward_proj": self.feed_forward_proj,
            "tie_word_embeddings": self.tie_word_embeddings,
            "layer_norm_epsilon": self.layer_norm_epsilon,
            "dropout_rate": self.dropout_rate,
            "initializer_factor": self.initializer_factor,
            "pad_token_id": self.pad_token_id,
            "eos_token_id": common.token_ids_to_hf(self.eos_token_id),
            "decoder_start_token_id": self.decoder_start_token_id,
        }
        if self.model_type == "t5":
            out["scale_decoder_outputs"] = self.tie_word_embeddings
        return out


def init_cache(
    config: T5Config, batch_size: int, max_length: int, dtype: Any = None
) -> dict[str, Any]:
    """An empty decoder cache for `config` (see the module docstring); dtype: config.dtype."""
    cache = decoder.init_cache(
        config, batch_size, max_length, dtype, num_layers=config.num_decoder_layers,
        num_kv_heads=config.num_heads, head_dim=config.d_kv,
    )
    cache["positions"] = jnp.zeros((batch_size, max_length), jnp.int32)
    return cache


# ------------------------------------------------------------------ relative positions


@functools.cache
def _bucket_of_distance(num_buckets: int, max_distance: int) -> np.ndarray:
    """int32 [max_distance + 1]: the bucket of each distance 0..max_distance (farther
    distances share the last one). Half the buckets are exact, the rest logarithmic up to
    max_distance, computed in float32 as Mesh TensorFlow / transformers do."""
    distance = np.arange(max_distance + 1)
    max_exact = num_buckets // 2
    far = np.maximum(distance, max_exact).astype(np.float32)
    log_ratio = np.log(far / np.float32(max_exact)) / np.float32(math.log(max_distance / max_exact))
    large = max_exact + (log_ratio * np.float32(num_buckets - max_exact)).astype(np.int64)
    buckets = np.where(distance < max_exact, distance, np.minimum(large, num_buckets - 1))
    return buckets.astype(np.int32)


def relative_position_bucket(
    relative_position: Array, *, bidirectional: bool, num_buckets: int, max_distance: int
) -> Array:
    """T5's bucket in [0, num_buckets) of each `key position - query position`.

    Bidirectional: half the buckets for keys after the query, half for the rest. Causal:
    all buckets for keys at or before the query (later keys share bucket 0).
    """
    if bidirectional:
        num_buckets //= 2
        offset = jnp.where(relative_position > 0, num_buckets, 0)
        distance = jnp.abs(relative_position)
    else:
        offset = 0
        distance = jnp.maximum(-relative_position, 0)
    table = jnp.asarray(_bucket_of_distance(num_buckets, max_distance))
    return offset + table[jnp.minimum(distance, max_distance)]


class RelativeBias(nn.Module):
    """Additive attention bias [B, N, T, S] (float32) from query and key positions."""

    config: T5Config
    bidirectional: bool

    @nn.compact
    def __call__(self, query_positions: Array, key_positions: Array) -> Array:  # B T, B S
        cfg = self.config
        table = self.param(
            "embedding",
            nn.with_logical_partitioning(
                nn.initializers.normal(cfg.initializer_factor * cfg.d_model**-0.5),
                (axes.POSITION, axes.HEADS),
            ),
            (cfg.relative_attention_num_buckets, cfg.num_heads),
            jnp.dtype(cfg.param_dtype),
        )
        relative = key_positions[:, None, :] - query_positions[:, :, None]  # B T S
        bucket = relative_position_bucket(
            relative,
            bidirectional=self.bidirectional,
            num_buckets=cfg.relative_attention_num_buckets,
            max_distance=cfg.relative_attention_max_distance,
        )
        bias = jnp.asarray(table, jnp.float32)[bucket]  # B T S N
        return bias.transpose(0, 3, 1, 2)  # B N T S


# ----------------------------------------------------------------------------- blocks


def _dense(
    cfg: T5Config, features: Any, kernel_axes: tuple[str, ...], std: float, name: str, **kw
) -> layers.DenseGeneral:
    return layers.DenseGeneral(
        features=features,
        kernel_axes=kernel_axes,
        use_bias=False,
        kernel_init=nn.initializers.normal(cfg.initializer_factor * std),
        name=name,
        **kw,
        **cfg.dtypes,
    )


class T5Attention(nn.Module):
    """q/k/v/out projections without biases and T5's per-projection init, around
    `layers.dot_product_attention` with scale 1 and an additive bias. With `kv_cache` and
    `cache_index` it writes the new keys/values as `layers.Attention` does and returns
    `(out, cache)`."""

    config: T5Config

    @nn.compact
    def __call__(
        self,
        x: Array,  # B T D
        inputs_kv: Array | None = None,  # B S D (None: self-attention)
        *,
        mask: Array,  # bool B 1 T S
        bias: Array | None = None,  # B N T S
        kv_cache: dict[str, Array] | None = None,
        cache_index: Array | None = None,
        deterministic: bool = True,
    ) -> Array | tuple[Array, dict[str, Array]]:
        cfg = self.config
        n, h, d = cfg.num_heads, cfg.d_kv, x.shape[-1]
        inputs_kv = x if inputs_kv is None else inputs_kv
        qkv_axes = (axes.EMBED, axes.HEADS, axes.KV)
        q = _dense(cfg, (n, h), qkv_axes, (d * h) ** -0.5, "query")(x)  # B T N H
        k = _dense(cfg, (n, h), qkv_axes, d**-0.5, "key")(inputs_kv)  # B S N H
        v = _dense(cfg, (n, h), qkv_axes, d**-0.5, "value")(inputs_kv)  # B S N H
        q = nn.with_logical_constraint(q, (axes.BATCH, axes.LENGTH, axes.HEADS, axes.KV))
        if kv_cache is not None:
            kv_cache = layers.write_kv_cache(kv_cache, k, v, cache_index)
            k, v = kv_cache["k"], kv_cache["v"]  # B S N H
        dropout_rng = None
        if not deterministic and cfg.dropout_rate > 0.0:
            dropout_rng = self.make_rng("dropout")
        out = layers.dot_product_attention(
            q, k, v, mask=mask, bias=bias, scale=1.0, dropout_rate=cfg.dropout_rate,
            dropout_rng=dropout_rng, dtype=jnp.dtype(cfg.dtype), **cfg.attention_options,
        )  # B T N H
        out = nn.with_logical_constraint(out, (axes.BATCH, axes.LENGTH, axes.HEADS, axes.KV))
        out = _dense(cfg, d, (axes.HEADS, axes.KV, axes.EMBED), (n * h) ** -0.5, "out", in_dims=2)(
            out
        )  # B T D
        return out if kv_cache is None else (out, kv_cache)


class T5Mlp(nn.Module):
    """`wo(drop(act(wi x)))`, or gated `wo(drop(act(wi_0 x) * wi_1 x))`."""

    config: T5Config

    @nn.compact
    def __call__(self, x: Array, *, deterministic: bool) -> Array:  # B T D -> B T D
        cfg = self.config
        d, f = x.shape[-1], cfg.d_ff
        act = layers.ACTIVATIONS[cfg.activation]
        if cfg.gated:
            h = act(_dense(cfg, f, (axes.EMBED, axes.MLP), d**-0.5, "wi_0")(x))
            h = h * _dense(cfg, f, (axes.EMBED, axes.MLP), d**-0.5, "wi_1")(x)  # B T F
        else:
            h = act(_dense(cfg, f, (axes.EMBED, axes.MLP), d**-0.5, "wi")(x))  # B T F
        h = nn.with_logical_constraint(h, (axes.BATCH, axes.LENGTH, axes.MLP))
        h = nn.Dropout(cfg.dropout_rate)(h, deterministic=deterministic)
        return _dense(cfg, d, (axes.MLP, axes.EMBED), f**-0.5, "wo")(h)  # B T D


class T5Layer(nn.Module):
    """Encoder block (self-attention, MLP) or decoder block (self-attention,
    cross-attention, MLP), each `x += drop(f(norm(x)))`. Called positionally (remat)."""

    config: T5Config
    static_args = ("deterministic",)  # non-array call arguments (remat)
    is_decoder: bool

    @nn.compact
    def __call__(
        self,
        x: Array,  # B T D
        mask: Array,  # B 1 T S
        bias: Array,  # B N T S
        encoded: Array | None,  # B S' D (decoder)
        cross_mask: Array | None,  # B 1 T S' (decoder)
        deterministic: bool,
        kv_cache: dict[str, Array] | None = None,
        cache_index: Array | None = None,
    ) -> tuple[Array, dict[str, Array] | None]:
        cfg = self.config

        def norm(name: str) -> nn.RMSNorm:
            return layers.rms_norm(epsilon=cfg.layer_norm_epsilon, name=name, **cfg.dtypes)

        def residual(x: Array, h: Array) -> Array:
            return x + nn.Dropout(cfg.dropout_rate)(h, deterministic=deterministic)

        prefix = "self_" if self.is_decoder else ""
        h = T5Attention(cfg, name=f"{prefix}attention")(
            norm(f"{prefix}attention_norm")(x), mask=mask, bias=bias, kv_cache=kv_cache,
            cache_index=cache_index, deterministic=deterministic,
        )
        if kv_cache is not None:
            h, kv_cache = h
        x = residual(x, h)
        if self.is_decoder:
            h = T5Attention(cfg, name="cross_attention")(
                norm("cross_attention_norm")(x), encoded, mask=cross_mask,
                deterministic=deterministic,
            )
            x = residual(x, h)
        h = T5Mlp(cfg, name="mlp")(norm("mlp_norm")(x), deterministic=deterministic)
        x = residual(x, h)
        return nn.with_logical_constraint(x, (axes.BATCH, axes.LENGTH, axes.EMBED)), kv_cache


class T5Stack(nn.Module):
    """Encoder or decoder stack over embedded tokens: dropout, the layers (sharing one
    relative bias), final norm, dropout."""

    config: T5Config
    is_decoder: bool

    @nn.compact
    def __call__(
        self,
        x: Array,  # B T D (embedded)
        *,
        mask: Array,  # B 1 T S
        query_positions: Array,  # B T (or 1 T)
        key_positions: Array,  # B S (or 1 S)
        encoded: Array | None = None,
        cross_mask: Array | None = None,
        cache_layers: list[dict[str, Array]] | None = None,
        cache_index: Array | None = None,
        deterministic: bool = True,
    ) -> tuple[Array, list[dict[str, Array]] | None]:
        cfg = self.config
        bias = RelativeBias(cfg, bidirectional=not self.is_decoder, name="relative_bias")(
            query_positions, key_positions
        )  # B N T S
        x = nn.Dropout(cfg.dropout_rate)(x, deterministic=deterministic)
        num_layers = cfg.num_decoder_layers if self.is_decoder else cfg.num_layers
        policy = cfg.remat_policy if cache_layers is None else "none"
        layer_cls = common.remat_layer(T5Layer, policy)
        caches = [None] * num_layers if cache_layers is None else cache_layers
        new_layers = []
        for i in range(num_layers):
            x = layers.materialize_cotangent(x)
            x, layer_cache = layer_cls(cfg, self.is_decoder, name=f"layer_{i}")(
                x, mask, bias, encoded, cross_mask, deterministic, caches[i], cache_index
            )
            new_layers.append(layer_cache)
        x = layers.rms_norm(epsilon=cfg.layer_norm_epsilon, name="final_norm", **cfg.dtypes)(x)
        x = nn.Dropout(cfg.dropout_rate)(x, deterministic=deterministic)
        return x, (None if cache_layers is None else new_layers)


# ------------------------------------------------------------------------------ model


class T5Model(nn.Module):
    """T5 / mT5 encoder-decoder with its LM head (see the module docstring)."""

    config: T5Config
    is_encoder_decoder: ClassVar[bool] = True

    def setup(self) -> None:
        cfg = self.config
        init = nn.initializers.normal(cfg.initializer_factor)
        self.embed = layers.embed(
            cfg.vocab_size, cfg.d_model, row_axis=axes.VOCAB, init=init, **cfg.dtypes
        )
        self.encoder = T5Stack(cfg, is_decoder=False)
        self.decoder = T5Stack(cfg, is_decoder=True)
        if not cfg.tie_word_embeddings:
            self.lm_head = _dense(cfg, cfg.vocab_size, (axes.EMBED, axes.VOCAB), 1.0, None)

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
            encoder_input_ids, encoder_segment_ids=encoder_segment_ids,
            encoder_positions=encoder_positions, deterministic=deterministic,
        )
        out = self.decode(
            decoder_input_ids, encoded, encoder_segment_ids=encoder_segment_ids,
            decoder_positions=decoder_positions, decoder_segment_ids=decoder_segment_ids,
            deterministic=deterministic, lm_head=lm_head,
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
        segments = layers.segments_or_ones(encoder_segment_ids, b, s)
        if encoder_positions is None:
            positions = jnp.arange(s, dtype=jnp.int32)[None]  # 1 S: the bias has no batch
        else:
            positions = jnp.asarray(encoder_positions, jnp.int32)
        x = layers.neftune(self, self.embed(encoder_input_ids), segments,
                           deterministic=deterministic)  # B S D
        x, _ = self.encoder(
            x, mask=layers.segment_mask(segments), query_positions=positions,
            key_positions=positions, deterministic=deterministic,
        )
        return x

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
        b, t = decoder_input_ids.shape
        encoder_segments = layers.segments_or_ones(encoder_segment_ids, b, encoded.shape[1])
        if decoder_positions is None and cache is None:
            decoder_positions = jnp.arange(t, dtype=jnp.int32)[None]  # 1 T
        positions, segments, masks, index, key_segments = decoder_inputs(
            decoder_input_ids, decoder_positions, decoder_segment_ids, cache, {None}
        )
        if cache is None:
            key_positions = positions
        else:
            key_positions = jax.lax.dynamic_update_slice(
                cache["positions"], jnp.broadcast_to(positions, (b, t)), (0, index)
            )  # B S
        y = layers.neftune(self, self.embed(decoder_input_ids), segments,
                           deterministic=deterministic)  # B T D
        y, new_layers = self.decoder(
            y, mask=masks[None], query_positions=positions, key_positions=key_positions,
            encoded=encoded, cross_mask=layers.segment_mask(segments, encoder_segments),
            cache_layers=None if cache is None else cache["layers"], cache_index=index,
            deterministic=deterministic,
        )
        new_cache = next_cache(cache, index, t, key_segments, new_layers, positions=key_positions)
        if lm_head:  # the head as data (`models.lm_head`), y [B, T, D] its input
            head = (head_lib.tied(self.embed, scale=cfg.d_model**-0.5) if cfg.tie_word_embeddings
                    else head_lib.untied(self.lm_head, y))
            return {"lm_head": head, "hidden_states": y, "cache": new_cache}
        if cfg.tie_word_embeddings:
            logits = self.embed.attend(y * cfg.d_model**-0.5)
        else:
            logits = self.lm_head(y)
        logits = nn.with_logical_constraint(logits, (axes.BATCH, axes.LENGTH, axes.VOCAB))
        return {"logits": logits.astype(jnp.float32), "cache": new_cache}


