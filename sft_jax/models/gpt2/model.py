"""GPT-2 decoder in flax.linen.

Pre-LayerNorm transformer with learned absolute positions, `gelu_new` MLP and an LM head
tied to the token embeddings; numerically equal to Hugging Face's `GPT2LMHeadModel` in
fp32 (tests/test_models_decoder.py). The batch contract (input_ids, positions,
segment_ids), the call signature and the KV cache contract are those of every decoder, as
documented in `models/decoder.py`; `init_cache` here builds the same cache for GPT-2 (K = N).
Positions index the learned table, so they must stay below `n_positions`.

Parameter tree (our names; `convert.py` maps them to Hugging Face, whose Conv1D
weights are stored [in, out]):

    embed/embedding                          V D    ('vocab', 'embed')
    position/embedding                       P D    ('position', 'embed')
    layer_{i}/attention_norm/{scale,bias}    D      ('embed',)
    layer_{i}/attention/{query,key,value}/kernel  D N H  ('embed', 'heads', 'kv'), bias N H
    layer_{i}/attention/out/kernel           N H D  ('heads', 'kv', 'embed'), bias D
    layer_{i}/mlp_norm/{scale,bias}          D
    layer_{i}/mlp/wi/kernel                  D F    ('embed', 'mlp'), bias F
    layer_{i}/mlp/wo/kernel                  F D    ('mlp', 'embed'), bias D
    final_norm/{scale,bias}                  D
    lm_head/kernel                           D V    only if tie_word_embeddings is false
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

Array = jax.Array

_REQUIRED = ("vocab_size", "n_embd", "n_layer", "n_head")


@dataclasses.dataclass(frozen=True)
class Gpt2Config(common.ModelConfig):
    """Architecture of a GPT-2 decoder (HF field names) plus our dtypes and
    `remat_policy` ('none', 'full', 'dots'; `common.remat_layer`; calls without a cache)."""

    vocab_size: int
    n_embd: int
    n_layer: int
    n_head: int
    n_inner: int | None = None
    n_positions: int = 1024
    activation_function: str = "gelu_new"
    resid_pdrop: float = 0.1
    embd_pdrop: float = 0.1
    attn_pdrop: float = 0.1
    layer_norm_epsilon: float = 1e-5
    initializer_range: float = 0.02
    scale_attn_weights: bool = True
    scale_attn_by_inverse_layer_idx: bool = False
    tie_word_embeddings: bool = True
    pad_token_id: int | None = None
    bos_token_id: int | tuple[int, ...] | None = 50256
    eos_token_id: int | tuple[int, ...] | None = 50256
    model_type: str = "gpt2"

    # The generic names other code reads (SequenceClassifier, init_cache, the converter).
    hidden_size = property(lambda self: self.n_embd)
    num_hidden_layers = property(lambda self: self.n_layer)
    num_attention_heads = property(lambda self: self.n_head)
    num_key_value_heads = property(lambda self: self.n_head)
    head_dim = property(lambda self: self.n_embd // self.n_head)
    intermediate_size = property(lambda self: self.n_inner or 4 * self.n_embd)
    max_position_embeddings = property(lambda self: self.n_positions)
    hidden_dropout_prob = property(lambda self: self.resid_pdrop)

    @property
    def classifier_dropout(self) -> float:
        """No dropout before the classifier, as HF's `GPT2ForSequenceClassification`."""
        return 0.0

    hf_checks = common.HfChecks("gpt2", ("gpt2",), "'gpt2'", _REQUIRED)

    @classmethod
    def fields_from_hf(cls, hf: Mapping[str, Any], model_type: str, *, where: str) -> dict:
        """Our fields from a Hugging Face `config.json` dict (see `common.ModelConfig.from_hf`)."""
        act = hf.get("activation_function", "gelu_new")
        common.check_activation(act, key="activation_function", where=where)
        if hf["n_embd"] % hf["n_head"]:
            raise UserInputError(
                f"{where}: n_embd {hf['n_embd']} is not a multiple of n_head {hf['n_head']}"
            )
        if hf.get("add_cross_attention"):
            raise UserInputError(f"{where}: GPT-2 with cross-attention is not supported")
        defaults = {f.name: f.default for f in dataclasses.fields(cls)}
        kwargs = {
            name: hf.get(name, defaults[name])
            for name in defaults
            if name not in (*common.OURS, "model_type")
        }
        kwargs["bos_token_id"] = common.hf_token_ids(kwargs["bos_token_id"])
        kwargs["eos_token_id"] = common.hf_token_ids(kwargs["eos_token_id"])
        return kwargs

    def to_hf(self) -> dict[str, Any]:
        """The Hugging Face config fields this config determines (no dtype fields)."""
        out = {
            f.name: common.token_ids_to_hf(getattr(self, f.name))
            for f in dataclasses.fields(self)
            if f.name not in common.OURS
        }
        # reorder_and_upcast_attn only changes fp16 rounding; ours always upcasts.
        out["reorder_and_upcast_attn"] = False
        return out



class Gpt2Layer(nn.Module):
    """Pre-LN block: x += drop(attn(LN(x))); x += drop(mlp(LN(x)))."""

    config: Gpt2Config
    static_args = ("deterministic",)  # non-array call arguments (remat)
    layer_index: int

    @nn.compact
    def __call__(
        self,
        x: Array,  # B T D
        mask: Array,  # B 1 T S
        kv_cache: dict[str, Array] | None = None,
        cache_index: Array | None = None,
        deterministic: bool = True,
    ) -> tuple[Array, dict[str, Array] | None]:
        cfg = self.config
        kw = cfg.dtypes
        init = nn.initializers.normal(cfg.initializer_range)
        scale = cfg.head_dim**-0.5 if cfg.scale_attn_weights else 1.0
        if cfg.scale_attn_by_inverse_layer_idx:
            scale /= float(self.layer_index + 1)
        norm = lambda name: layers.layer_norm(epsilon=cfg.layer_norm_epsilon, name=name, **kw)
        attention = layers.Attention(
            num_heads=cfg.n_head,
            head_dim=cfg.head_dim,
            dropout_rate=cfg.attn_pdrop,
            scale=scale,
            kernel_init=init,
            name="attention",
            **kw,
            **cfg.attention_options,
        )
        h, kv_cache = layers.attend(
            attention, norm("attention_norm")(x), mask, kv_cache, cache_index, deterministic
        )
        x = x + nn.Dropout(cfg.resid_pdrop)(h, deterministic=deterministic)
        h = layers.Mlp(
            hidden_dim=cfg.intermediate_size,
            activation=cfg.activation_function,
            kernel_init=init,
            name="mlp",
            **kw,
        )(norm("mlp_norm")(x))
        x = x + nn.Dropout(cfg.resid_pdrop)(h, deterministic=deterministic)
        return nn.with_logical_constraint(x, (axes.BATCH, axes.LENGTH, axes.EMBED)), kv_cache


class Gpt2Model(DecoderLM):
    """GPT-2 causal LM (call contract: `models/decoder.py`): token + learned position
    embeddings, dropout, the layers, a final LayerNorm."""

    config: Gpt2Config
    layer_cls = Gpt2Layer
    materialize_cotangent = True

    def embed_inputs(self, x, positions, *, init, deterministic, dtype, param_dtype):
        cfg = self.config
        position = layers.embed(
            cfg.n_positions, cfg.n_embd, row_axis=axes.POSITION, init=init, name="position",
            dtype=dtype, param_dtype=param_dtype,
        )
        x = x + position(positions)  # B T D
        return nn.Dropout(cfg.embd_pdrop)(x, deterministic=deterministic), ()

    def final_norm(self, *, dtype, param_dtype):
        return layers.layer_norm(
            epsilon=self.config.layer_norm_epsilon, name="final_norm", dtype=dtype,
            param_dtype=param_dtype,
        )

    def layer_kwargs(self, layer: int) -> dict[str, Any]:
        return {"layer_index": layer}
