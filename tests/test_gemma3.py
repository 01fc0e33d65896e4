"""Gemma 3 (text) against transformers PyTorch on one random tiny model: local and global
layers (window 3 < the sequence) with their own RoPE (the global one linearly scaled),
GQA, an attention scale from `query_pre_attn_scalar`, final logit soft-capping and tied
embeddings. The family-independent tests are tests/test_qwen3.py's, imported."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import transformers
from conftest import V
from test_qwen3 import (  # noqa: F401  (the shared tests run here on this module's `case`)
    Case,
    forward,
    make_case,
    test_cached_decoding_equals_full_forward,
    test_export_pretrained,
    test_export_to_hf_causal_lm_and_classifier,
    test_gradients_match_torch,
    test_logits_match_hf,
    test_lora_adapter_loads_in_peft,
    test_packed_rows_equal_separate_sequences,
    test_params_have_logical_axes_and_remat_traces,
    torch_logits,
)

from sft_jax.errors import UserInputError
from sft_jax.models.gemma3 import FAMILY, Gemma3Config
from sft_jax.models.rope import Rope

GEMMA3 = {
    "vocab_size": V,
    "hidden_size": 32,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "intermediate_size": 48,
    "max_position_embeddings": 64,
    "layer_types": ["sliding_attention", "full_attention", "sliding_attention"],
    "sliding_window": 3,
    "query_pre_attn_scalar": 24,
    "final_logit_softcapping": 4.0,
    "rope_parameters": {
        "full_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 100.0},
        "sliding_attention": {"rope_type": "default", "rope_theta": 10.0},
    },
    "pad_token_id": 0,
}


@pytest.fixture(scope="module")
def case(tmp_path_factory) -> Case:
    config = transformers.Gemma3TextConfig(**GEMMA3)
    return make_case(FAMILY, config, tmp_path_factory.mktemp("gemma3"))


def test_config_reads_and_writes_gemma3(case, caplog):
    cfg = case.config
    assert isinstance(cfg, Gemma3Config) and cfg.tie_word_embeddings
    assert [cfg.window(i) for i in range(3)] == [3, None, 3]
    assert cfg.rope_of("full_attention") == Rope(100.0, "linear", (("factor", 2.0),))
    assert cfg.rope_of("sliding_attention") == Rope(10.0)
    hf = transformers.Gemma3TextConfig(**cfg.to_hf())
    assert Gemma3Config.from_hf(hf.to_dict()) == cfg
    # transformers' defaults: a global layer every 6th, thetas 1e6 / 1e4; older files
    # name the local theta rope_local_base_freq and scale the global RoPE by rope_scaling.
    default = Gemma3Config.from_hf({**GEMMA3, "num_hidden_layers": 6, "layer_types": None,
                                    "rope_parameters": None})
    assert default.layer_types == ("sliding_attention",) * 5 + ("full_attention",)
    assert default.rope == Gemma3Config.from_hf(
        transformers.Gemma3TextConfig(**{**GEMMA3, "layer_types": None,
                                         "rope_parameters": None}).to_dict()).rope
    assert [r.theta for _, r in default.rope] == [1e6, 1e4]
    old = Gemma3Config.from_hf({**GEMMA3, "rope_parameters": None, "rope_theta": 5e5,
                                "rope_local_base_freq": 50.0,
                                "rope_scaling": {"rope_type": "linear", "factor": 8.0}})
    assert old.rope == (("full_attention", Rope(5e5, "linear", (("factor", 8.0),))),
                        ("sliding_attention", Rope(50.0)))
    # Read, kept for export, and (as transformers 5 does) not applied: a warning says so.
    capped = Gemma3Config.from_hf({**GEMMA3, "attn_logit_softcapping": 50.0}, where="x.json")
    assert capped.to_hf()["attn_logit_softcapping"] == 50.0
    assert "x.json: attn_logit_softcapping is not applied" in caplog.text
    for bad, message in (
        ({"model_type": "gemma3"}, "model_type 'gemma3' is not Gemma 3"),
        ({"layer_types": ["full_attention"]}, "layer_types must list 3"),
        ({"rope_parameters": {"rope_type": "default"}}, "rope_parameters must map"),
        ({"use_bidirectional_attention": True}, "use_bidirectional_attention"),
    ):
        with pytest.raises(UserInputError, match=f"^x.json: {message}"):
            Gemma3Config.from_hf({**GEMMA3, **bad}, where="x.json")


def test_rope_per_layer_type_and_soft_capping_matter(case):
    """Parity (test_logits_match_hf, imported) can fail for each feature: swapping the two
    layer types' RoPE changes the logits, and HF's logits reach where tanh is far from
    linear. (The sliding window: test_logits_match_hf itself.)"""
    swapped = tuple(zip(("full_attention", "sliding_attention"),
                        (rope for _, rope in reversed(case.config.rope)), strict=True))
    ids, ones = np.random.default_rng(2).integers(0, V, (3, 10)), np.ones((3, 10), np.int32)
    module = type(case.module)(dataclasses.replace(case.config, rope=swapped))
    assert np.abs(forward(case, ids, ones, module=module) - forward(case, ids, ones)).max() > 1e-2
    cap = case.config.final_logit_softcapping
    assert np.abs(torch_logits(case.hf_model, ids)).max() > 0.6 * cap
