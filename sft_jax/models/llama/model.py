"""Llama-family decoder (Llama 2/3, Mistral, Qwen2, SmolLM2) in flax.linen.

Pre-RMSNorm transformer with rotary positions (`rope.py`), grouped-query attention and a
SwiGLU MLP, numerically equal to Hugging Face's `LlamaForCausalLM` / `MistralForCausalLM`
/ `Qwen2ForCausalLM` in fp32 (tests/test_models_decoder.py). The families differ only in
config: Qwen2 has q/k/v biases, Mistral (and Qwen2 when `use_sliding_window`) a sliding
attention window, Llama optional `attention_bias` / `mlp_bias`.

The batch, call and KV-cache contracts are those of every decoder (`models/decoder.py`).

Parameter tree (our names; `convert.py` maps them to Hugging Face):

    embed/embedding                       V D    ('vocab', 'embed')
    layer_{i}/attention_norm/scale        D      ('embed',)
    layer_{i}/attention/query/kernel      D N H  ('embed', 'heads', 'kv'); bias N H *
    layer_{i}/attention/{key,value}/kernel D K H ('embed', 'kv_heads', 'kv'); bias K H *
                                          ('heads' instead of 'kv_heads' when K == N)
    layer_{i}/attention/out/kernel        N H D  ('heads', 'kv', 'embed'); bias D **
    layer_{i}/mlp_norm/scale              D
    layer_{i}/mlp/wi_0/kernel             D F    ('embed', 'mlp')   gate_proj; bias F ***
    layer_{i}/mlp/wi_1/kernel             D F    ('embed', 'mlp')   up_proj; bias F ***
    layer_{i}/mlp/wo/kernel               F D    ('mlp', 'embed')   down_proj; bias D ***
    final_norm/scale                      D
    lm_head/kernel                        D V    ('embed', 'vocab')   untied only

    * Qwen2, or Llama with attention_bias   ** Llama with attention_bias
    *** Llama with mlp_bias
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax

from sft_jax.errors import UserInputError
from sft_jax.models import axes, common, layers
from sft_jax.models.decoder import DecoderLM
from sft_jax.models.rope import Rope, rotation

Array = jax.Array

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2")

_REQUIRED = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
             "intermediate_size")
# Defaults that differ between the families (HF config classes), used when a key is absent.
_FAMILY_DEFAULTS: dict[str, dict[str, Any]] = {
    "llama": {"max_position_embeddings": 2048},
    "mistral": {"max_position_embeddings": 4096 * 32, "num_key_value_heads": 8},
    "qwen2": {"max_position_embeddings": 32768, "num_key_value_heads": 32},
}


@dataclasses.dataclass(frozen=True)
class LlamaConfig(common.ModelConfig):
    """Architecture of a Llama-family decoder (HF field names where HF has them) plus our
    dtypes. Resolved at `from_hf`: `num_key_value_heads`, `head_dim`, the biases implied
    by `model_type`, and `layer_types` ('full_attention' / 'sliding_attention' per layer).
    `hidden_dropout` is ours (HF Llama has no residual dropout; 0.0 reproduces it), and
    so is `remat_policy` ('none', 'full', 'dots'; `common.remat_layer`), which applies to
    calls without a KV cache.
    """

    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    num_key_value_heads: int
    head_dim: int
    hidden_act: str = "silu"
    max_position_embeddings: int = 2048
    rms_norm_eps: float = 1e-6
    rope: Rope = dataclasses.field(default_factory=Rope)
    tie_word_embeddings: bool = False
    qkv_bias: bool = False
    out_bias: bool = False
    mlp_bias: bool = False
    sliding_window: int | None = None
    layer_types: tuple[str, ...] = ()
    attention_dropout: float = 0.0
    hidden_dropout: float = 0.0
    initializer_range: float = 0.02
    pad_token_id: int | None = None
    bos_token_id: int | tuple[int, ...] | None = None
    eos_token_id: int | tuple[int, ...] | None = None
    model_type: str = "llama"

    @property
    def hidden_dropout_prob(self) -> float:
        """The classifier's default dropout (`SequenceClassifier`)."""
        return self.hidden_dropout

    @property
    def classifier_dropout(self) -> float:
        """No dropout before the classifier, as HF's `...ForSequenceClassification`."""
        return 0.0

    def window(self, layer: int) -> int | None:
        """The sliding window of layer `layer` (None: full causal attention)."""
        sliding = self.layer_types and self.layer_types[layer] == "sliding_attention"
        return self.sliding_window if sliding else None

    hf_checks = common.HfChecks("llama", SUPPORTED_MODEL_TYPES, "a Llama-family decoder", _REQUIRED)

    @classmethod
    def fields_from_hf(cls, hf: Mapping[str, Any], model_type: str, *, where: str) -> dict:
        """Our fields from a Hugging Face `config.json` dict (see `common.ModelConfig.from_hf`)."""
        hf = {**_FAMILY_DEFAULTS[model_type], **hf}
        act = common.check_activation(
            hf.get("hidden_act", "silu"), key="hidden_act", where=where
        )
        n = hf["num_attention_heads"]
        kv = hf.get("num_key_value_heads") or n
        if n % kv:
            raise UserInputError(
                f"{where}: num_attention_heads {n} is not a multiple of num_key_value_heads {kv}"
            )
        head_dim = hf.get("head_dim") or hf["hidden_size"] // n
        if not hf.get("head_dim") and hf["hidden_size"] % n:
            raise UserInputError(
                f"{where}: hidden_size {hf['hidden_size']} is not a multiple of "
                f"num_attention_heads {n} (and no head_dim is given)"
            )
        if head_dim % 2:
            raise UserInputError(f"{where}: head_dim {head_dim} must be even for RoPE")
        num_layers = hf["num_hidden_layers"]
        sliding_window, layer_types = _sliding(hf, model_type, num_layers, where=where)
        attention_bias = bool(hf.get("attention_bias", False))
        return dict(
            vocab_size=hf["vocab_size"],
            hidden_size=hf["hidden_size"],
            num_hidden_layers=num_layers,
            num_attention_heads=n,
            intermediate_size=hf["intermediate_size"],
            num_key_value_heads=kv,
            head_dim=head_dim,
            hidden_act=act,
            max_position_embeddings=hf["max_position_embeddings"],
            rms_norm_eps=hf.get("rms_norm_eps") or 1e-6,
            rope=Rope.from_hf(
                hf, max_position_embeddings=hf["max_position_embeddings"], where=where
            ),
            tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
            qkv_bias=model_type == "qwen2" or (model_type == "llama" and attention_bias),
            out_bias=model_type == "llama" and attention_bias,
            mlp_bias=model_type == "llama" and bool(hf.get("mlp_bias", False)),
            sliding_window=sliding_window,
            layer_types=layer_types,
            attention_dropout=float(hf.get("attention_dropout") or 0.0),
            hidden_dropout=float(hf.get("hidden_dropout") or 0.0),
            initializer_range=hf.get("initializer_range") or 0.02,
            pad_token_id=hf.get("pad_token_id"),
            bos_token_id=common.hf_token_ids(hf.get("bos_token_id")),
            eos_token_id=common.hf_token_ids(hf.get("eos_token_id")),
        )

    def to_hf(self) -> dict[str, Any]:
        """The Hugging Face config fields this config determines (no dtype fields)."""
        out: dict[str, Any] = {
            "model_type": self.model_type,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "intermediate_size": self.intermediate_size,
            "hidden_act": self.hidden_act,
            "max_position_embeddings": self.max_position_embeddings,
            "rms_norm_eps": self.rms_norm_eps,
            "tie_word_embeddings": self.tie_word_embeddings,
            "attention_dropout": self.attention_dropout,
            "initializer_range": self.initializer_range,
            "pad_token_id": self.pad_token_id,
            "bos_token_id": common.token_ids_to_hf(self.bos_token_id),
            "eos_token_id": common.token_ids_to_hf(self.eos_token_id),
            **self.rope.to_hf(),
        }
        if self.model_type == "llama":
            out["attention_bias"] = self.qkv_bias
            out["mlp_bias"] = self.mlp_bias
        elif self.model_type == "mistral":
            out["sliding_window"] = self.sliding_window
        elif self.model_type == "qwen2":
            out["use_sliding_window"] = self.sliding_window is not None
            out["sliding_window"] = self.sliding_window
            out["layer_types"] = list(self.layer_types)
        else:
            raise UserInputError(
                f"model_type {self.model_type!r} is not a Llama-family decoder "
                f"(supported: {', '.join(SUPPORTED_MODEL_TYPES)})"
            )
        return out


def _sliding(
    hf: Mapping[str, Any], model_type: str, num_layers: int, *, where: str
) -> tuple[int | None, tuple[str, ...]]:
    """(sliding_window, layer_types) as transformers resolves them for each family."""
    if model_type == "llama":
        return None, ("full_attention",) * num_layers
    if model_type == "mistral":
        window = hf.get("sliding_window", 4096)
        kind = "full_attention" if window is None else "sliding_attention"
        return window, (kind,) * num_layers
    window = hf.get("sliding_window", 4096) if hf.get("use_sliding_window", False) else None
    types = hf.get("layer_types")
    if types is None:
        first_sliding = hf.get("max_window_layers", 28)
        types = [
            "sliding_attention" if window is not None and i >= first_sliding else "full_attention"
            for i in range(num_layers)
        ]
    if len(types) != num_layers or set(types) - {"full_attention", "sliding_attention"}:
        raise UserInputError(f"{where}: layer_types must list {num_layers} attention types")
    if window is None:
        types = ["full_attention"] * num_layers
    return window, tuple(types)



class LlamaLayer(nn.Module):
    """Pre-norm block: x += attn(norm(x)); x += mlp(norm(x)) (SwiGLU)."""

    config: LlamaConfig
    static_args = ("qk_transform", "deterministic")  # non-array call arguments (remat)

    @nn.compact
    def __call__(
        self,
        x: Array,  # B T D
        mask: Array,  # B 1 T S
        qk_transform: layers.QKTransform,
        kv_cache: dict[str, Array] | None = None,
        cache_index: Array | None = None,
        deterministic: bool = True,
    ) -> tuple[Array, dict[str, Array] | None]:
        cfg = self.config
        kw = cfg.dtypes
        init = nn.initializers.normal(cfg.initializer_range)
        h = layers.rms_norm(epsilon=cfg.rms_norm_eps, name="attention_norm", **kw)(x)
        attention = layers.Attention(
            num_heads=cfg.num_attention_heads,
            head_dim=cfg.head_dim,
            num_kv_heads=cfg.num_key_value_heads,
            use_bias=cfg.qkv_bias,
            out_bias=cfg.out_bias,
            dropout_rate=cfg.attention_dropout,
            kernel_init=init,
            name="attention",
            **kw,
            **cfg.attention_options,
        )
        h, kv_cache = layers.attend(
            attention, h, mask, kv_cache, cache_index, deterministic, qk_transform=qk_transform
        )
        x = x + nn.Dropout(cfg.hidden_dropout)(h, deterministic=deterministic)
        h = layers.rms_norm(epsilon=cfg.rms_norm_eps, name="mlp_norm", **kw)(x)
        h = layers.Mlp(
            hidden_dim=cfg.intermediate_size,
            activation=cfg.hidden_act,
            gated=True,
            use_bias=cfg.mlp_bias,
            kernel_init=init,
            name="mlp",
            **kw,
        )(h)
        x = x + nn.Dropout(cfg.hidden_dropout)(h, deterministic=deterministic)
        return nn.with_logical_constraint(x, (axes.BATCH, axes.LENGTH, axes.EMBED)), kv_cache


class LlamaModel(DecoderLM):
    """Llama / Mistral / Qwen2 causal LM (call contract: `models/decoder.py`): token
    embeddings, the layers (RoPE on queries and keys), a final RMSNorm.

    Attributes:
      config: the architecture.
      with_lm_head: False drops the LM head (no 'logits'; no `lm_head` params): the
        backbone inside a `SequenceClassifier`.
    """

    config: LlamaConfig
    layer_cls = LlamaLayer

    def embed_inputs(self, x, positions, *, init, deterministic, dtype, param_dtype):
        return x, (rotation(self.config.rope, self.config.head_dim, positions),)

    def final_norm(self, *, dtype, param_dtype):
        return layers.rms_norm(
            epsilon=self.config.rms_norm_eps, name="final_norm", dtype=dtype,
            param_dtype=param_dtype,
        )

    def layer_window(self, layer: int) -> int | None:
        return self.config.window(layer)
