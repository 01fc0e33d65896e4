"""Qwen3 decoder in flax.linen: the Llama-family decoder (`sft_jax/models/llama/`) with a
per-head RMSNorm on queries and keys, over the head dim and before RoPE.

Everything but those two norms is Llama's, reused as is: `Qwen3Config` is a `LlamaConfig`
(Qwen3's `attention_bias` sets the q/k/v and out biases; no MLP bias; Qwen2's defaults and
sliding-window settings `use_sliding_window`, `max_window_layers`, `layer_types`), and
`Qwen3Model` is a `LlamaModel` whose layers receive a `qk_transform` that normalises q and
k before the rotation (`layers.with_qk_norm`). The norms are built inside the attention
module, so the parameter tree is Llama's plus, in every layer,

    layer_{i}/attention/q_norm/scale      H      ('kv',)   self_attn.q_norm
    layer_{i}/attention/k_norm/scale      H      ('kv',)   self_attn.k_norm

The batch, call and KV-cache contracts are those of every decoder (`models/decoder.py`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax

from sft_jax.models import axes, common, layers
from sft_jax.models.llama.model import LlamaConfig, LlamaModel

Array = jax.Array

MODEL_TYPE = "qwen3"
REQUIRED = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
            "intermediate_size")


@dataclasses.dataclass(frozen=True)
class Qwen3Config(LlamaConfig):
    """A `LlamaConfig` read from and written as transformers' `Qwen3Config` (whose
    head_dim defaults to 128, not hidden_size / heads)."""

    model_type: str = MODEL_TYPE

    hf_checks = common.HfChecks(MODEL_TYPE, (MODEL_TYPE,), "Qwen3", REQUIRED)

    @classmethod
    def fields_from_hf(cls, hf: Mapping[str, Any], model_type: str, *, where: str) -> dict:
        """Our fields from a Hugging Face `config.json` dict (see `common.ModelConfig.from_hf`):
        Qwen2's defaults and sliding-window resolution, Qwen3's head_dim and biases."""
        fields = LlamaConfig.fields_from_hf({"head_dim": 128, **hf}, "qwen2", where=where)
        bias = bool(hf.get("attention_bias", False))
        return {**fields, "qkv_bias": bias, "out_bias": bias}

    def to_hf(self) -> dict[str, Any]:
        """The Hugging Face config fields this config determines (no dtype fields)."""
        out = common.fields_to_hf(
            self, skip=("rope", "qkv_bias", "out_bias", "mlp_bias", "hidden_dropout")
        )
        return {**out, **self.rope.to_hf(), "attention_bias": self.qkv_bias,
                "use_sliding_window": self.sliding_window is not None}


class Qwen3Model(LlamaModel):
    """Qwen3 causal LM: `LlamaModel` with q/k norms (see the module docstring)."""

    config: Qwen3Config

    def embed_inputs(self, x, positions, *, dtype, param_dtype, **kwargs):
        x, (rotate,) = super().embed_inputs(x, positions, dtype=dtype, param_dtype=param_dtype,
                                            **kwargs)

        def head_norm(name: str) -> Any:  # over H of [.., N, H] queries or keys
            return layers.rms_norm(epsilon=self.config.rms_norm_eps, dtype=dtype,
                                   param_dtype=param_dtype, name=name, axis=axes.KV)

        return x, (layers.with_qk_norm(rotate, head_norm),)
