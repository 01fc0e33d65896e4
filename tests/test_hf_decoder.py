"""Decoder converters (Llama/Mistral/Qwen2, GPT-2): round trips, classifier checkpoints,
export to `...ForCausalLM` / `...ForSequenceClassification` / bare model + sidecar head."""

from __future__ import annotations

import json
import logging
import types

import jax
import numpy as np
import pytest
import torch
import transformers
from conftest import (
    GPT2,
    LLAMA,
    V,
    export_mean_pooled,
    is_decoder_norm,
    jit_apply,
    randomize_weights,
    torch_logits,
)
from safetensors.numpy import load_file

from sft_jax import load_pretrained
from sft_jax.errors import UserInputError
from sft_jax.hf.checkpoint_dir import load_state_dict, read_config
from sft_jax.hf.export import export_pretrained
from sft_jax.models import Gpt2Config, LlamaConfig, LlamaModel, SequenceClassifier
from sft_jax.models.gpt2 import convert as hf_gpt2
from sft_jax.models.llama import convert as hf_llama
from sft_jax.pretrained import pretrained_params

T = transformers
FAMILY = {  # model_type: (HF config class, causal LM, sequence classifier, tiny config)
    "llama": (T.LlamaConfig, T.LlamaForCausalLM, T.LlamaForSequenceClassification, LLAMA),
    "qwen2": (T.Qwen2Config, T.Qwen2ForCausalLM, T.Qwen2ForSequenceClassification, LLAMA),
    "gpt2": (T.GPT2Config, T.GPT2LMHeadModel, T.GPT2ForSequenceClassification, GPT2),
}


def make_hf_model(path, model_type, *, classifier=False, seed=0, **overrides):
    """A random tiny HF decoder (or sequence classifier) with O(1)-scale weights, saved."""
    config_cls, lm_cls, cls_cls, tiny = FAMILY[model_type]
    config = config_cls(**{**tiny, **overrides})
    torch.manual_seed(seed)
    model = (cls_cls if classifier else lm_cls)(config).eval()
    randomize_weights(model, seed, is_decoder_norm)
    model.save_pretrained(path, safe_serialization=True)
    return model


def padded_batch(seed, *, left=False):
    """ids [3, 9] (never the pad id 0) and mask; rows 1, 2 right-padded (row 2 left-padded
    when `left`)."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(3, V, (3, 9))
    mask = np.ones_like(ids)
    mask[1, 5:] = 0
    if left:
        mask[2, :4] = 0
    else:
        mask[2, 2:] = 0
    ids[mask == 0] = 0
    return ids, mask


def tree_equal(a, b) -> bool:
    return jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b) and all(
        np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    )


def _config(path):
    hf = read_config(path)
    return (Gpt2Config if hf["model_type"] == "gpt2" else LlamaConfig).from_hf(hf)


def _converter(config):
    return hf_gpt2 if config.model_type == "gpt2" else hf_llama


# ------------------------------------------------------------------------- round trips


@pytest.mark.parametrize(
    ("model_type", "overrides"),
    [
        ("llama", {}),
        ("llama", {"tie_word_embeddings": True, "attention_bias": True, "mlp_bias": True}),
        ("qwen2", {}),
        ("gpt2", {}),
        ("gpt2", {"tie_word_embeddings": False}),
    ],
)
def test_round_trip_both_ways(tmp_path, model_type, overrides):
    make_hf_model(tmp_path, model_type, **overrides)
    state = load_state_dict(tmp_path)
    config = _config(tmp_path)
    converter = _converter(config)
    params = converter.params_from_hf(state, config)
    tied = config.tie_word_embeddings
    assert ("lm_head" in params) != tied and ("lm_head.weight" in state) != tied
    back = converter.params_to_hf(params, config)
    assert back.keys() == state.keys()
    for name, value in state.items():
        np.testing.assert_array_equal(back[name], value, err_msg=name)
        assert back[name].flags.c_contiguous
    assert tree_equal(converter.params_from_hf(back, config), params)
    if tied:  # a tied checkpoint that also stores the (identical) head reads the same
        embed = state[
            "model.embed_tokens.weight" if model_type != "gpt2" else "transformer.wte.weight"
        ]
        with_copy = {**state, "lm_head.weight": embed}
        assert tree_equal(converter.params_from_hf(with_copy, config), params)
    # A bare backbone (no prefix) reads into the same tree, minus the LM head.
    bare = converter.params_to_hf(params, config, base_model=True)
    assert not any(k.startswith(("model.", "transformer.", "lm_head")) for k in bare)
    backbone = converter.params_from_hf(bare, config, with_head=True)["encoder"]
    assert tree_equal(backbone, {k: v for k, v in params.items() if k != "lm_head"})


def test_gpt2_fused_qkv_split(tmp_path):
    make_hf_model(tmp_path, "gpt2")
    state = load_state_dict(tmp_path)
    config = _config(tmp_path)
    params = hf_gpt2.params_from_hf(state, config)
    fused = state["transformer.h.1.attn.c_attn.weight"]  # [D, 3D], Conv1D [in, out]
    attn = params["layer_1"]["attention"]
    np.testing.assert_array_equal(attn["key"]["kernel"].reshape(32, 32), fused[:, 32:64])
    assert attn["out"]["kernel"].shape == (4, 8, 32)


# ------------------------------------------------------------------ classifier checkpoints


@pytest.mark.parametrize("model_type", ["llama", "gpt2"])
def test_classifier_checkpoint_loads_with_its_head(tmp_path, model_type):
    hf_model = make_hf_model(tmp_path, model_type, classifier=True, num_labels=3, pad_token_id=0)
    pre = load_pretrained(tmp_path, num_labels=3)
    assert isinstance(pre.module, SequenceClassifier) and pre.module.pooling == "last"
    ids, mask = padded_batch(1)
    ref = torch_logits(hf_model, ids, mask)
    ours = np.asarray(jit_apply(pre.module, pre.params, ids, mask)["logits"])
    assert np.abs(ref).max() > 0.5
    assert np.abs(ours - ref).max() < 1e-4
    converter = _converter(pre.config)
    state = converter.classifier_to_hf(pre.params, pre.config)
    assert state.keys() == load_state_dict(tmp_path).keys()
    assert tree_equal(
        converter.params_from_hf(state, pre.config, with_head=True),
        jax.tree.map(np.asarray, pre.params),
    )
    # The same directory as a causal LM: the untied head is missing, initialised fresh.
    lm_params = pretrained_params(tmp_path, pre.config, with_head=False)
    assert "score" not in lm_params and "classifier" not in lm_params


# ------------------------------------------------------------------------------ export


def _perturbed(params, seed):
    """Our params moved away from the source checkpoint's (the export must carry them)."""
    rng = np.random.default_rng(seed)
    return jax.tree.map(
        lambda x: np.asarray(x) + rng.normal(0, 0.05, x.shape).astype(x.dtype), params
    )


@pytest.mark.parametrize(
    ("model_type", "overrides", "arch"),
    [
        ("llama", {"tie_word_embeddings": True}, "LlamaForCausalLM"),
        ("llama", {"rope_scaling": {"rope_type": "linear", "factor": 2.0}}, "LlamaForCausalLM"),
        ("qwen2", {}, "Qwen2ForCausalLM"),
        ("gpt2", {}, "GPT2LMHeadModel"),
    ],
)
def test_export_lm_matches_auto_model_for_causal_lm(tmp_path, model_type, overrides, arch):
    make_hf_model(tmp_path / "src", model_type, **overrides)
    pre = load_pretrained(tmp_path / "src")
    params = _perturbed(pre.params, 1)
    out = export_pretrained(
        tmp_path / "out",
        module_config=pre.config,
        params=params,
        tokenizer=None,
        hf_config=pre.hf_config,
    )
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == [arch] and config["model_type"] == model_type
    weights = load_file(str(out / "model.safetensors"))
    assert ("lm_head.weight" in weights) != pre.config.tie_word_embeddings
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    assert type(hf_model).__name__ == arch
    ids, mask = padded_batch(2)
    ref = torch_logits(hf_model, ids, mask)
    ours = np.asarray(jit_apply(pre.module, params, ids, segment_ids=mask)["logits"])
    real = mask.astype(bool)
    assert np.abs(ours - ref)[real].max() < 1e-4
    # The export reads back to the very same params.
    assert tree_equal(load_pretrained(out).params, jax.tree.map(np.asarray, params))


@pytest.mark.parametrize(
    ("model_type", "overrides", "arch"),
    [
        ("llama", {}, "LlamaForSequenceClassification"),
        ("qwen2", {"pad_token_id": 0}, "Qwen2ForSequenceClassification"),
        (
            "gpt2",
            {"pad_token_id": 0, "scale_attn_by_inverse_layer_idx": True, "n_inner": 40},
            "GPT2ForSequenceClassification",
        ),
    ],
)
def test_export_classifier_matches_hf_auto_model(tmp_path, model_type, overrides, arch):
    make_hf_model(tmp_path / "src", model_type, seed=2, **overrides)
    pre = load_pretrained(tmp_path / "src", num_labels=4, seed=7)  # random head
    assert set(pre.params["classifier"]) == {"kernel"}  # HF's score has no bias
    rng = np.random.default_rng(0)
    params = {**pre.params, "classifier": {"kernel": rng.normal(0, 0.5, (32, 4)).astype("f4")}}
    # llama's config has no pad_token_id: export takes the tokenizer's.
    tokenizer = types.SimpleNamespace(pad_token_id=0, save_pretrained=lambda path: None)
    out = export_pretrained(
        tmp_path / "out",
        module_config=pre.config,
        params=params,
        tokenizer=tokenizer,
        id2label={0: "a", 1: "b", 2: "c", 3: "d"},
        hf_config=pre.hf_config,
    )
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == [arch] and config["pad_token_id"] == 0
    assert config["id2label"] == {"0": "a", "1": "b", "2": "c", "3": "d"}
    hf_model = transformers.AutoModelForSequenceClassification.from_pretrained(out).eval()
    # Left padding too for RoPE models (HF counts positions from the pads; RoPE is
    # relative, so the logits agree); GPT-2's learned positions need right padding.
    ids, mask = padded_batch(3, left=model_type != "gpt2")
    ref = torch_logits(hf_model, ids, mask)
    ours = np.asarray(jit_apply(pre.module, params, ids, mask)["logits"])
    assert np.abs(ref).max() > 0.5
    assert np.abs(ours - ref).max() < 1e-4
    again = load_pretrained(out, num_labels=4)  # the head is read back
    assert tree_equal(again.params["classifier"], params["classifier"])


def test_export_mean_pooling_writes_base_model_and_sidecar(tmp_path, caplog):
    make_hf_model(tmp_path / "src", "llama", seed=4)
    pre = load_pretrained(tmp_path / "src", num_labels=2, pooling="mean", seed=1)
    out = export_mean_pooled(tmp_path / "out", pre, caplog, architecture="LlamaModel",
                             head_keys={"kernel"})
    hf_model = transformers.AutoModel.from_pretrained(out).eval()
    ids, mask = padded_batch(5)
    with torch.no_grad():
        ref = hf_model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask))
    ours = jit_apply(pre.module, pre.params, ids, mask)
    real = mask.astype(bool)
    assert (
        np.abs(np.asarray(ours["last_hidden_state"]) - ref.last_hidden_state.numpy())[real].max()
        < 1e-4
    )
    again = load_pretrained(out, num_labels=2, pooling="mean", seed=99)  # head read back
    np.testing.assert_array_equal(
        jit_apply(again.module, again.params, ids, mask)["logits"], ours["logits"]
    )


# ------------------------------------------------------------------------------ errors


def test_missing_and_misshaped_weights(tmp_path, caplog):
    make_hf_model(tmp_path, "llama")
    state = load_state_dict(tmp_path)
    config = _config(tmp_path)
    name = "model.layers.1.mlp.down_proj.weight"
    with pytest.raises(UserInputError) as err:
        hf_llama.params_from_hf({k: v for k, v in state.items() if k != name}, config, where="/c")
    assert str(err.value) == f"/c: missing weight {name}"
    wide = LlamaConfig.from_hf({**read_config(tmp_path), "num_key_value_heads": 4})
    with pytest.raises(UserInputError) as err:
        hf_llama.params_from_hf(state, wide, where="/c")
    assert str(err.value) == (
        "/c: weight model.layers.0.self_attn.k_proj.weight has shape [16, 32], "
        "config.json implies [32, 32]"
    )
    with pytest.raises(UserInputError, match=r"^/c: missing weight model\.embed_tokens\.weight"):
        hf_llama.params_from_hf({"wte.weight": np.zeros(1)}, config, where="/c")
    with caplog.at_level(logging.WARNING, logger="sft_jax.hf.decoder_tables"):
        params = hf_llama.params_from_hf(
            {k: v for k, v in state.items() if k != "lm_head.weight"}, config, where="/c"
        )
    assert "lm_head" not in params and "/c: no lm_head.weight for an untied model" in caplog.text


def test_pretrained_params_on_decoder_dir(tmp_path):
    make_hf_model(tmp_path, "qwen2")
    config = _config(tmp_path)
    lm = pretrained_params(tmp_path, config, with_head=False)
    assert set(lm) == {"embed", "layer_0", "layer_1", "final_norm", "lm_head"}
    assert lm["layer_0"]["attention"]["query"]["bias"].shape == (4, 8)
    cls = pretrained_params(tmp_path, config, with_head=True, num_labels=2)
    assert set(cls) == {"encoder"} and "lm_head" not in cls["encoder"]
    assert isinstance(load_pretrained(tmp_path).module, LlamaModel)
