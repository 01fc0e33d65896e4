"""Gemma 3 text decoder (`Gemma3ForCausalLM`, model_type `gemma3_text`) in flax.linen.

Numerically equal to transformers' `modeling_gemma3.py` in fp32 (tests/test_gemma3.py).
Against the Llama family (`sft_jax/models/llama/`) it differs in:

- embeddings scaled by sqrt(hidden_size), the factor cast to the embedding dtype first;
- RMSNorm as `x / rms(x) * (1 + w)` in float32 (`Gemma3RMSNorm`; w starts at 0);
- sandwich norms: x += post_attention_norm(attn(attention_norm(x))), and the same around
  the MLP (pre_feedforward / post_feedforward in HF);
- q/k RMSNorm over the head dim before RoPE (`layers.with_qk_norm`);
- interleaved local (sliding window, `layer_types` 'sliding_attention') and global
  ('full_attention') layers, each type with its own RoPE (`rope_parameters` per layer
  type: local theta 1e4, global 1e6, the global one possibly scaled);
- attention scale `query_pre_attn_scalar ** -0.5`;
- a GELU-tanh (`hidden_activation`) gated MLP;
- final logit soft-capping `cap * tanh(logits / cap)` when `final_logit_softcapping` is
  set. transformers 5's Gemma 3 reads `attn_logit_softcapping` but does not apply it (its
  attention never passes `softcap`); so does this module, for parity, and keeps the field
  for export.

The sliding-window mask is Mistral's (`layers.decoder_mask`): query slot t sees key slot
s iff t - W < s <= t. The batch, call and KV-cache contracts are those of every decoder
(`models/decoder.py`).

Parameter tree (our names; `convert.py` maps them to Hugging Face):

    embed/embedding                               V D    ('vocab', 'embed')
    layer_{i}/attention_norm/scale                D      input_layernorm
    layer_{i}/attention/{query,key,value,out}/... as Llama's (bias with attention_bias)
    layer_{i}/attention/{q_norm,k_norm}/scale     H      ('kv',)
    layer_{i}/post_attention_norm/scale           D      post_attention_layernorm
    layer_{i}/mlp_norm/scale                      D      pre_feedforward_layernorm
    layer_{i}/mlp/{wi_0,wi_1,wo}/kernel           as Llama's (no bias)
    layer_{i}/post_mlp_norm/scale                 D      post_feedforward_layernorm
    final_norm/scale                              D
    lm_head/kernel                                D V    untied only
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from sft_jax.errors import UserInputError
from sft_jax.models import axes, common, layers
from sft_jax.models.decoder import DecoderLM
from sft_jax.models.rope import Rope, rotation

Array = jax.Array
log = logging.getLogger(__name__)

MODEL_TYPE = "gemma3_text"
SLIDING, FULL = "sliding_attention", "full_attention"
_REQUIRED = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
             "intermediate_size")
_DEFAULT_THETA = {FULL: 1_000_000.0, SLIDING: 10_000.0}
# transformers' `Gemma3TextConfig` defaults, used when a key is absent.
_HF_DEFAULTS: dict[str, Any] = {
    "num_key_value_heads": 4,
    "head_dim": 256,
    "max_position_embeddings": 131_072,
    "rms_norm_eps": 1e-6,
    "query_pre_attn_scalar": 256,
    "sliding_window": 4096,
    "final_logit_softcapping": None,
    "attn_logit_softcapping": None,
    "attention_bias": False,
    "tie_word_embeddings": True,
    "pad_token_id": 0,
    "bos_token_id": 2,
    "eos_token_id": 1,
}
# Fields taken from the HF config as they are.
_COPIED = (*_REQUIRED, "num_key_value_heads", "head_dim", "max_position_embeddings",
           "query_pre_attn_scalar", "sliding_window", "final_logit_softcapping",
           "attn_logit_softcapping", "pad_token_id")


@dataclasses.dataclass(frozen=True)
class Gemma3Config(common.ModelConfig):
    """Architecture of a Gemma 3 text decoder (HF field names where HF has them) plus our
    dtypes. `rope` holds the RoPE of each layer type; `hidden_dropout` (residual dropout,
    0.0 as in HF) and `remat_policy` are ours, as in `LlamaConfig`."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    layer_types: tuple[str, ...]  # per layer: 'sliding_attention' or 'full_attention'
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rope: tuple[tuple[str, Rope], ...]  # (layer type, its RoPE), sorted
    hidden_activation: str = "gelu_pytorch_tanh"
    max_position_embeddings: int = 131_072
    rms_norm_eps: float = 1e-6
    query_pre_attn_scalar: float = 256
    sliding_window: int | None = 4096
    final_logit_softcapping: float | None = None
    attn_logit_softcapping: float | None = None
    attention_bias: bool = False
    tie_word_embeddings: bool = True
    attention_dropout: float = 0.0
    hidden_dropout: float = 0.0
    initializer_range: float = 0.02
    pad_token_id: int | None = 0
    bos_token_id: int | tuple[int, ...] | None = 2
    eos_token_id: int | tuple[int, ...] | None = 1
    model_type: str = MODEL_TYPE

    # A `SequenceClassifier`'s default dropout, and none before the classifier (as HF).
    hidden_dropout_prob = property(lambda self: self.hidden_dropout)
    classifier_dropout: ClassVar[float] = 0.0

    hf_checks = common.HfChecks(MODEL_TYPE, (MODEL_TYPE,), "Gemma 3 (text)", _REQUIRED)

    def window(self, layer: int) -> int | None:
        """The sliding window of layer `layer` (None: global attention)."""
        return self.sliding_window if self.layer_types[layer] == SLIDING else None

    def rope_of(self, layer_type: str) -> Rope:
        return dict(self.rope)[layer_type]

    @classmethod
    def fields_from_hf(cls, hf: Mapping[str, Any], model_type: str, *, where: str) -> dict:
        """Our fields from a Hugging Face `config.json` dict (see `common.ModelConfig.from_hf`)."""
        hf = {**_HF_DEFAULTS, **hf}
        act = hf.get("hidden_activation") or hf.get("hidden_act") or "gelu_pytorch_tanh"
        act = common.check_activation(act, key="hidden_activation", where=where)
        if hf.get("use_bidirectional_attention"):
            raise UserInputError(f"{where}: use_bidirectional_attention is not supported")
        n, kv, num_layers = (hf[k] for k in ("num_attention_heads", "num_key_value_heads",
                                             "num_hidden_layers"))
        if n % kv:
            raise UserInputError(
                f"{where}: num_attention_heads {n} is not a multiple of num_key_value_heads {kv}"
            )
        if hf["head_dim"] % 2:
            raise UserInputError(f"{where}: head_dim {hf['head_dim']} must be even for RoPE")
        pattern = hf.get("sliding_window_pattern", 6)
        types = hf.get("layer_types") or [
            SLIDING if (i + 1) % pattern else FULL for i in range(num_layers)
        ]
        if len(types) != num_layers or set(types) - {SLIDING, FULL}:
            raise UserInputError(f"{where}: layer_types must list {num_layers} attention types")
        if hf["attn_logit_softcapping"] is not None:
            log.warning("%s: attn_logit_softcapping is not applied (as in transformers' Gemma 3)",
                        where)
        window = hf["sliding_window"]
        if SLIDING in types and not (isinstance(window, int) and window > 0):
            raise UserInputError(f"{where}: sliding_window must be a positive integer")
        return dict(
            **{name: hf[name] for name in _COPIED},
            layer_types=tuple(types),
            rope=_ropes(hf, hf["max_position_embeddings"], where=where),
            hidden_activation=act,
            rms_norm_eps=hf["rms_norm_eps"] or 1e-6,
            attention_bias=bool(hf["attention_bias"]),
            tie_word_embeddings=bool(hf["tie_word_embeddings"]),
            attention_dropout=float(hf.get("attention_dropout") or 0.0),
            hidden_dropout=float(hf.get("hidden_dropout") or 0.0),
            initializer_range=hf.get("initializer_range") or 0.02,
            bos_token_id=common.hf_token_ids(hf["bos_token_id"]),
            eos_token_id=common.hf_token_ids(hf["eos_token_id"]),
        )

    def to_hf(self) -> dict[str, Any]:
        """The Hugging Face config fields this config determines (no dtype fields)."""
        rope = {t: r.to_hf()["rope_parameters"] for t, r in self.rope}
        return {**common.fields_to_hf(self, skip=("rope", "hidden_dropout")),
                "rope_parameters": rope}


def _ropes(
    hf: Mapping[str, Any], max_positions: int, *, where: str
) -> tuple[tuple[str, Rope], ...]:
    """The RoPE of each layer type as transformers resolves it: `rope_parameters` per type,
    or the older `rope_theta` + `rope_scaling` (global) and `rope_local_base_freq`."""
    given = hf.get("rope_parameters") or {}
    if not isinstance(given, Mapping) or set(given) - {SLIDING, FULL}:
        raise UserInputError(
            f"{where}: rope_parameters must map {FULL!r} and {SLIDING!r} to RoPE settings"
        )
    old_theta = {FULL: hf.get("rope_theta"), SLIDING: hf.get("rope_local_base_freq")}
    out = []
    for layer_type in (FULL, SLIDING):
        params = dict(given.get(layer_type) or {"rope_type": "default"})
        if layer_type == FULL:
            params.update(hf.get("rope_scaling") or {})
        params.setdefault("rope_theta", old_theta[layer_type] or _DEFAULT_THETA[layer_type])
        rope = Rope.from_hf(
            {"rope_parameters": params}, max_position_embeddings=max_positions,
            where=f"{where} (rope_parameters.{layer_type})",
        )
        out.append((layer_type, rope))
    return tuple(sorted(out))


class Gemma3RMSNorm(nn.Module):
    """`x / sqrt(mean(x²) + eps) * (1 + scale)` over the last axis, in float32, returned in
    x's dtype (as HF's); `scale` [last] starts at 0 and is named (`axis_name`,)."""

    epsilon: float
    axis_name: str = axes.EMBED
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        init = nn.with_logical_partitioning(nn.initializers.zeros_init(), (self.axis_name,))
        scale = self.param("scale", init, (x.shape[-1],), self.param_dtype)
        x32 = x.astype(jnp.float32)
        y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.epsilon)
        return (y * (1.0 + scale.astype(jnp.float32))).astype(x.dtype)


class Gemma3Layer(nn.Module):
    """Sandwich-norm block: x += norm(attn(norm(x))); x += norm(mlp(norm(x))). A
    'sliding_attention' layer rotates q and k with `local_rope`, a 'full_attention' one
    with `global_rope`."""

    config: Gemma3Config
    layer_type: str
    static_args = ("local_rope", "global_rope", "deterministic")  # non-array arguments (remat)

    @nn.compact
    def __call__(self, x: Array, mask: Array, local_rope: layers.QKTransform,
                 global_rope: layers.QKTransform, kv_cache: dict[str, Array] | None = None,
                 cache_index: Array | None = None,
                 deterministic: bool = True) -> tuple[Array, dict[str, Array] | None]:
        """x [B, T, D], mask [B, 1, T, S] -> (x [B, T, D], the updated layer cache or None)."""
        cfg = self.config
        kw = cfg.dtypes
        init = nn.initializers.normal(cfg.initializer_range)

        def norm(name: str, axis_name: str = axes.EMBED) -> Gemma3RMSNorm:
            return Gemma3RMSNorm(cfg.rms_norm_eps, axis_name, kw["param_dtype"], name=name)

        def residual(h: Array, name: str) -> Array:  # B T D
            return nn.Dropout(cfg.hidden_dropout)(norm(name)(h), deterministic=deterministic)

        attention = layers.Attention(
            num_heads=cfg.num_attention_heads, head_dim=cfg.head_dim,
            num_kv_heads=cfg.num_key_value_heads, use_bias=cfg.attention_bias,
            dropout_rate=cfg.attention_dropout, scale=cfg.query_pre_attn_scalar**-0.5,
            kernel_init=init, name="attention", **kw, **cfg.attention_options,
        )
        rope = local_rope if self.layer_type == SLIDING else global_rope
        qk_norm = layers.with_qk_norm(rope, lambda name: norm(name, axes.KV))
        h, kv_cache = layers.attend(attention, norm("attention_norm")(x), mask, kv_cache,
                                    cache_index, deterministic, qk_transform=qk_norm)
        x = x + residual(h, "post_attention_norm")
        h = layers.Mlp(
            hidden_dim=cfg.intermediate_size, activation=cfg.hidden_activation, gated=True,
            use_bias=False, kernel_init=init, name="mlp", **kw,
        )(norm("mlp_norm")(x))
        x = x + residual(h, "post_mlp_norm")
        return nn.with_logical_constraint(x, (axes.BATCH, axes.LENGTH, axes.EMBED)), kv_cache


class Gemma3Model(DecoderLM):
    """Gemma 3 text causal LM (call contract: `models/decoder.py`): scaled token
    embeddings, local and global layers, a final (1 + w) RMSNorm, soft-capped logits.
    `with_lm_head=False` gives the backbone inside a `SequenceClassifier`."""

    config: Gemma3Config
    layer_cls = Gemma3Layer

    def embed_inputs(self, x, positions, *, init, deterministic, dtype, param_dtype):
        cfg = self.config
        x = x * jnp.asarray(cfg.hidden_size**0.5, x.dtype)  # B T D, sqrt(D) in x's dtype
        ropes = (rotation(cfg.rope_of(t), cfg.head_dim, positions) for t in (SLIDING, FULL))
        return x, tuple(ropes)

    def final_norm(self, *, dtype, param_dtype):
        return Gemma3RMSNorm(self.config.rms_norm_eps, param_dtype=param_dtype,
                             name="final_norm")

    def layer_window(self, layer: int) -> int | None:
        return self.config.window(layer)

    def layer_kwargs(self, layer: int) -> dict[str, Any]:
        return {"layer_type": self.config.layer_types[layer]}

    def __call__(self, input_ids: Array, **kwargs: Any) -> dict[str, Any]:  # B T
        out = super().__call__(input_ids, **kwargs)
        cap = self.config.final_logit_softcapping
        if "logits" in out and cap is not None:  # B T V float32
            out["logits"] = cap * jnp.tanh(out["logits"] / cap)
        if "lm_head" in out:
            out["lm_head"] = out["lm_head"].replace(softcap=cap)
        return out
