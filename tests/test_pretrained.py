"""load_pretrained on the real `minilm-l6` asset, export round trip, and the engine helpers."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from sft_jax import assets, load_pretrained
from sft_jax.hf.checkpoint_dir import load_state_dict
from sft_jax.hf.export import export_pretrained
from sft_jax.models.bert import convert as hf_bert
from sft_jax.pretrained import merge_params, pretrained_params

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "JAX compiles NumPy programs for accelerators!",
    "An absorbing documentary about a small town, its people, and 1,234 cows.",
]


@pytest.fixture(scope="module")
def minilm_dir():
    return assets.fetch("minilm-l6")


@pytest.fixture(scope="module")
def minilm(minilm_dir):
    return load_pretrained("minilm-l6", num_labels=3, seed=0)


@pytest.fixture(scope="module")
def encoded(minilm):
    return dict(minilm.tokenizer(SENTENCES, padding=True, return_tensors="np"))


def _apply(pre, enc, params=None):
    return jax.jit(pre.module.apply)(
        {"params": pre.params if params is None else params},
        enc["input_ids"],
        enc["attention_mask"],
        enc["token_type_ids"],
    )


def test_minilm_matches_pytorch(minilm_dir, minilm, encoded):
    assert encoded["attention_mask"].min() == 0  # padding is exercised
    hf_model = transformers.BertModel.from_pretrained(minilm_dir).eval()
    with torch.no_grad():
        ref = hf_model(**{k: torch.tensor(v) for k, v in encoded.items()})
    out = _apply(minilm, encoded)
    hidden_err = np.abs(np.asarray(out["last_hidden_state"]) - ref.last_hidden_state.numpy()).max()
    pooled_err = np.abs(np.asarray(out["pooler_output"]) - ref.pooler_output.numpy()).max()
    assert hidden_err < 1e-4, hidden_err
    assert pooled_err < 1e-4, pooled_err
    assert out["logits"].shape == (3, 3)


def test_minilm_export_round_trip(tmp_path, minilm, encoded):
    out_dir = export_pretrained(
        tmp_path / "export",
        module_config=minilm.config,
        params=minilm.params,
        tokenizer=minilm.tokenizer,
        id2label={0: "neg", 1: "neutral", 2: "pos"},
        hf_config=minilm.hf_config,
    )
    hf_model = transformers.AutoModelForSequenceClassification.from_pretrained(out_dir).eval()
    assert type(hf_model).__name__ == "BertForSequenceClassification"
    assert hf_model.config.id2label == {0: "neg", 1: "neutral", 2: "pos"}
    with torch.no_grad():
        ref = hf_model(**{k: torch.tensor(v) for k, v in encoded.items()}).logits.numpy()
    ours = np.asarray(_apply(minilm, encoded)["logits"])
    assert np.abs(ours - ref).max() < 1e-4, np.abs(ours - ref).max()

    tokenizer = transformers.AutoTokenizer.from_pretrained(out_dir)
    again = tokenizer(SENTENCES, padding=True, return_tensors="np")
    for key in ("input_ids", "attention_mask", "token_type_ids"):
        np.testing.assert_array_equal(again[key], encoded[key])

    reloaded = load_pretrained(out_dir, num_labels=3, seed=123)  # head comes from the export
    np.testing.assert_array_equal(_apply(reloaded, encoded)["logits"], ours)


def test_head_is_seeded_and_encoder_is_the_checkpoint(minilm_dir, minilm):
    state = load_state_dict(minilm_dir)
    encoder = hf_bert.params_from_hf(state, minilm.config)
    flat_ours = jax.tree.leaves(minilm.params["encoder"])
    assert all(
        np.array_equal(a, b) for a, b in zip(flat_ours, jax.tree.leaves(encoder), strict=True)
    )
    kernel = np.asarray(minilm.params["classifier"]["kernel"])
    assert kernel.shape == (384, 3) and 0.01 < kernel.std() < 0.03  # normal(0.02) init
    same = load_pretrained(minilm_dir, num_labels=3, seed=0).params["classifier"]["kernel"]
    other = load_pretrained(minilm_dir, num_labels=3, seed=1).params["classifier"]["kernel"]
    np.testing.assert_array_equal(same, kernel)
    assert not np.allclose(other, kernel)


def test_bf16_compute_is_close(minilm_dir, minilm, encoded):
    pre = load_pretrained(minilm_dir, num_labels=3, dtype="bfloat16")
    assert pre.params["encoder"]["pooler"]["kernel"].dtype == jnp.float32
    out16 = _apply(pre, encoded, params=minilm.params)
    out32 = _apply(minilm, encoded)
    assert out16["last_hidden_state"].dtype == jnp.bfloat16
    diff = jnp.abs(out16["last_hidden_state"].astype(jnp.float32) - out32["last_hidden_state"])
    assert float(diff.mean()) < 0.05 and float(diff.max()) < 0.5
    assert float(jnp.abs(out16["logits"] - out32["logits"]).max()) < 0.02


def test_engine_path_eval_shape_init_then_merge(minilm_dir, minilm):
    """What the engine does: abstract init, fresh sharded init, overwrite with the checkpoint."""
    module, config = minilm.module, minilm.config
    loaded = pretrained_params(minilm_dir, config, with_head=True, num_labels=3)
    assert set(loaded) == {"encoder"}  # the checkpoint has no classifier
    ids = jnp.zeros((1, 4), jnp.int32)
    boxed = jax.eval_shape(module.init, jax.random.key(0), ids, ids)["params"]
    merged, kept = merge_params(boxed, loaded)
    assert kept == ["classifier/bias", "classifier/kernel"]
    word = merged["encoder"]["embeddings"]["word"]["embedding"]
    assert isinstance(word, nn.Partitioned) and word.names == ("vocab", "embed")
    assert isinstance(merged["classifier"]["kernel"].value, jax.ShapeDtypeStruct)

    fresh = {"w": jnp.zeros((2, 3)), "b": jnp.ones(3)}
    merged, kept = merge_params(fresh, {"w": np.full((2, 3), 2.0)})
    assert isinstance(merged["w"], jax.Array) and float(merged["w"].sum()) == 12.0
    assert kept == ["b"]
    with pytest.raises(ValueError, match="w has shape"):
        merge_params(fresh, {"w": np.zeros((3, 2))})
    with pytest.raises(ValueError, match="not in the model: x"):
        merge_params(fresh, {"x": np.zeros(1)})
