"""Decoder-only models (Llama, Mistral, Qwen2, GPT-2): parity with Hugging Face PyTorch,
KV cache vs full forward, packed rows, RoPE scaling, logical axes, config errors."""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from conftest import (
    GPT2,
    LLAMA,
    V,
    assert_logically_partitioned,
    is_decoder_norm,
    randomize_weights,
    torch_logits,
)
from conftest import jit_apply as apply

from sft_jax import load_pretrained
from sft_jax.errors import UserInputError
from sft_jax.models import (
    Gpt2Config,
    Gpt2Model,
    LlamaConfig,
    LlamaModel,
    SequenceClassifier,
    build_model,
    init_cache,
    layers,
    rope,
)

HF_CLASSES = {
    "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM, LLAMA),
    "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM, LLAMA),
    "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM, LLAMA),
    "gpt2": (transformers.GPT2Config, transformers.GPT2LMHeadModel, GPT2),
}
LLAMA3 = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 16,  # head_dim 8: one medium, three low frequencies
}


def make_hf_model(path, model_type, *, model_cls=None, seed=0, **overrides):
    """A random tiny HF model with O(1)-scale weights saved as safetensors in `path`."""
    config_cls, lm_cls, tiny = HF_CLASSES[model_type]
    config = config_cls(**{**tiny, **overrides})
    torch.manual_seed(seed)
    model = (model_cls or lm_cls)(config).eval()
    randomize_weights(model, seed, is_decoder_norm)
    model.save_pretrained(path, safe_serialization=True)
    return model


def padded_batch(seed, *, batch=3, length=10):
    """Random ids (no 0 = pad), right padding on rows 1 and 2 (mask 0, id 0)."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(3, V, (batch, length))
    mask = np.ones_like(ids)
    mask[1, length - 4 :] = 0
    mask[2, 3:] = 0
    ids[mask == 0] = 0
    return ids, mask


# ----------------------------------------------------------------------------- parity


PARITY_CASES = {
    "llama-gqa-tied-llama3": (
        "llama",
        {"tie_word_embeddings": True, "rope_scaling": LLAMA3, "rope_theta": 500_000.0},
    ),
    "llama-gqa-untied-linear-biases-head_dim": (
        "llama",
        {
            "rope_scaling": {"rope_type": "linear", "factor": 4.0},
            "attention_bias": True,
            "mlp_bias": True,
            "head_dim": 16,
        },
    ),
    "mistral-sliding-window": ("mistral", {"sliding_window": 3}),
    "qwen2-biases-yarn": (
        "qwen2",
        {
            "rope_scaling": {
                "rope_type": "yarn",
                "factor": 4.0,
                "original_max_position_embeddings": 16,
            }
        },
    ),
    "qwen2-sliding-layer-1": (
        "qwen2",
        {"use_sliding_window": True, "sliding_window": 3, "max_window_layers": 1},
    ),
    "gpt2": ("gpt2", {}),  # scale_attn_by_inverse_layer_idx: test_hf_decoder.py
}


@pytest.mark.parametrize("case", list(PARITY_CASES))
def test_logits_match_hf_pytorch(tmp_path, case):
    model_type, overrides = PARITY_CASES[case]
    hf_model = make_hf_model(tmp_path, model_type, **overrides)
    pre = load_pretrained(tmp_path)
    ids, mask = padded_batch(1)
    ref = torch_logits(hf_model, ids, mask)
    ours = np.asarray(apply(pre.module, pre.params, ids, segment_ids=mask)["logits"])
    real = mask.astype(bool)
    err = np.abs(ours - ref)[real].max()
    assert err < 1e-4, err
    assert np.abs(ref).max() > 1.0  # not a comparison of near-zeros
    # Without padding (defaults: positions arange, segment ids ones); same shape, one compile.
    full = np.random.default_rng(2).integers(0, V, ids.shape)
    out = apply(pre.module, pre.params, full)
    assert np.abs(np.asarray(out["logits"]) - torch_logits(hf_model, full)).max() < 1e-4
    assert out["cache"] is None and out["hidden_states"].shape == (3, 10, 32)
    if any(feature in case for feature in ("sliding", "llama3", "linear", "yarn")):
        # The feature under test changes the logits: the comparison above can fail.
        cfg = pre.config
        plain = dataclasses.replace(cfg, sliding_window=None, rope=rope.Rope(theta=cfg.rope.theta))
        other = apply(LlamaModel(plain), pre.params, full)["logits"]
        assert np.abs(np.asarray(other) - np.asarray(out["logits"])).max() > 1e-2


def test_config_resolution():
    qwen = LlamaConfig.from_hf(
        {
            **LLAMA,
            "model_type": "qwen2",
            "use_sliding_window": True,
            "sliding_window": 8,
            "max_window_layers": 1,
        }
    )
    assert qwen.qkv_bias and not qwen.out_bias and not qwen.mlp_bias
    assert qwen.layer_types == ("full_attention", "sliding_attention")
    assert [qwen.window(i) for i in range(2)] == [None, 8]
    mistral = LlamaConfig.from_hf({**LLAMA, "model_type": "mistral", "sliding_window": None})
    assert mistral.window(0) is None and not mistral.qkv_bias
    llama = LlamaConfig.from_hf({**LLAMA, "model_type": "llama", "eos_token_id": [2, 3]})
    assert llama.head_dim == 8 and llama.eos_token_id == (2, 3)
    hash(llama)  # usable as a static jit argument / in flax module attributes
    assert llama.to_hf()["eos_token_id"] == [2, 3]
    # transformers 5 writes rope_parameters; older files rope_theta + rope_scaling.
    v5 = {
        **LLAMA,
        "model_type": "llama",
        "rope_parameters": {"rope_type": "linear", "factor": 2.0, "rope_theta": 7.0},
    }
    v4 = {
        **LLAMA,
        "model_type": "llama",
        "rope_theta": 7.0,
        "rope_scaling": {"type": "linear", "factor": 2.0},
    }
    assert LlamaConfig.from_hf(v5).rope == LlamaConfig.from_hf(v4).rope
    assert LlamaConfig.from_hf(v4).rope.to_hf()["rope_scaling"] == {
        "type": "linear",
        "rope_type": "linear",
        "factor": 2.0,
    }


def test_rope_frequencies_match_transformers():
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    for scaling in (
        {"rope_type": "linear", "factor": 3.0},
        LLAMA3,
        {
            "rope_type": "yarn",
            "factor": 4.0,
            "original_max_position_embeddings": 16,
            "beta_fast": 16.0,
        },
    ):
        hf = transformers.LlamaConfig(**{**LLAMA, "head_dim": 16}, rope_scaling=dict(scaling))
        ref, ref_scale = ROPE_INIT_FUNCTIONS[scaling["rope_type"]](hf, None)
        ours = rope.Rope.from_hf({"rope_scaling": scaling}, max_position_embeddings=64)
        inv, scale = rope.inverse_frequencies(ours, 16)
        np.testing.assert_allclose(inv, ref.numpy(), rtol=1e-6)
        assert scale == pytest.approx(ref_scale)


def test_config_errors():
    where = "/m/config.json"
    cases = [
        (
            {"rope_scaling": {"rope_type": "dynamic", "factor": 2.0}},
            "/m/config.json: rope_scaling type 'dynamic' is not supported "
            "(supported: default, linear, llama3, yarn)",
        ),
        (
            {"rope_scaling": {"rope_type": "llama3", "factor": 8.0}},
            "/m/config.json: rope_scaling (llama3) lacks low_freq_factor, high_freq_factor",
        ),
        (
            {"num_key_value_heads": 3},
            "/m/config.json: num_attention_heads 4 is not a multiple of num_key_value_heads 3",
        ),
        ({"hidden_act": "swiglu"}, "/m/config.json: hidden_act 'swiglu' is not supported"),
        (
            {"partial_rotary_factor": 0.5},
            "/m/config.json: partial_rotary_factor 0.5 is not supported",
        ),
    ]
    for overrides, message in cases:
        with pytest.raises(UserInputError) as err:
            build_model({**LLAMA, "model_type": "llama", **overrides}, where=where)
        assert str(err.value).startswith(message), str(err.value)
    with pytest.raises(UserInputError, match=r"missing field\(s\) intermediate_size"):
        LlamaConfig.from_hf({k: v for k, v in LLAMA.items() if k != "intermediate_size"})
    with pytest.raises(UserInputError, match="n_embd 30 is not a multiple of n_head 4"):
        build_model({**GPT2, "model_type": "gpt2", "n_embd": 30})
    with pytest.raises(UserInputError, match="decoder model_type 'gpt2' has no pooler"):
        build_model({**GPT2, "model_type": "gpt2"}, num_labels=2, pooling="pooler")


# ---------------------------------------------------------------------------- helpers


def _llama(model_type="llama", **kw) -> LlamaConfig:
    return LlamaConfig.from_hf({**LLAMA, "model_type": model_type, **kw})


def _gpt2(**kw) -> Gpt2Config:
    return Gpt2Config.from_hf({**GPT2, "model_type": "gpt2", "resid_pdrop": 0.0, **kw})


def _random_params(module, *args, seed=0):
    """Random O(1)-scale params via eval_shape (no init RNG compile)."""
    rng = np.random.default_rng(seed)
    abstract = jax.eval_shape(module.init, jax.random.key(0), *args)
    params = nn.meta.unbox(abstract)["params"]

    def fill(path, x):
        value = rng.normal(0.0, 0.2, x.shape)
        return (value + (path[-1].key == "scale")).astype(np.float32)

    return jax.tree_util.tree_map_with_path(fill, params)


def alone(module, params, sequences, length):
    """Logits of each sequence on its own, unpadded, in one [len(sequences), length] call:
    each row is the sequence followed by filler tokens, which (causal attention) cannot
    change the logits of the positions before them."""
    rows = np.full((len(sequences), length), 7, np.int32)
    for row, seq in enumerate(sequences):
        rows[row, : len(seq)] = seq
    logits = np.asarray(apply(module, params, rows)["logits"])
    return [logits[row, : len(seq)] for row, seq in enumerate(sequences)]


MODELS = {
    "llama-gqa": lambda: LlamaModel(_llama()),
    "qwen2": lambda: LlamaModel(_llama("qwen2")),
    "mistral-window-3": lambda: LlamaModel(_llama("mistral", sliding_window=3)),
    "gpt2": lambda: Gpt2Model(_gpt2()),
}


# ------------------------------------------------------------------------------ cache


@pytest.mark.parametrize("name", ["llama-gqa", "mistral-window-3", "gpt2"])
def test_cached_decoding_equals_full_forward(name):
    """Left-padded prompts of lengths 5 and 3, prefill + 4 single-token steps."""
    module = MODELS[name]()
    params = _random_params(module, jnp.ones((1, 4), jnp.int32))
    rng = np.random.default_rng(3)
    prompts = [rng.integers(1, V, 5), rng.integers(1, V, 3)]
    steps = rng.integers(1, V, (2, 4))
    width = 5
    ids = np.zeros((2, width), np.int32)
    segs = np.zeros((2, width), np.int32)
    pos = np.zeros((2, width), np.int32)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt) :] = prompt
        segs[row, width - len(prompt) :] = 1
        pos[row, width - len(prompt) :] = np.arange(len(prompt))

    cache = init_cache(module.config, 2, width + steps.shape[1])
    assert cache["layers"][0]["k"].shape == (2, 9, module.config.num_key_value_heads, 8)
    out = apply(module, params, ids, positions=pos, segment_ids=segs, cache=cache)
    cached = [np.asarray(out["logits"])]
    cache = out["cache"]
    assert int(cache["index"]) == width
    lengths = np.array([len(p) for p in prompts])
    for j in range(steps.shape[1]):
        out = apply(
            module,
            params,
            steps[:, j : j + 1],
            positions=(lengths + j)[:, None],
            segment_ids=np.ones((2, 1), np.int32),
            cache=cache,
        )
        cache = out["cache"]
        cached.append(np.asarray(out["logits"]))
    cached = np.concatenate(cached, axis=1)  # 2 x 9 x V
    assert int(cache["index"]) == 9
    np.testing.assert_array_equal(cache["segment_ids"][1], [0, 0, 1, 1, 1, 1, 1, 1, 1])

    # The same padded batch in one uncached call.
    full_ids = np.concatenate([ids, steps], axis=1)
    full_segs = np.concatenate([segs, np.ones_like(steps)], axis=1)
    full_pos = np.concatenate([pos, lengths[:, None] + np.arange(4)], axis=1)
    full = apply(module, params, full_ids, positions=full_pos, segment_ids=full_segs)["logits"]
    real = full_segs.astype(bool)
    assert np.abs(np.asarray(full) - cached)[real].max() < 1e-5
    # Each sequence alone, unpadded.
    sequences = [np.concatenate([p, s]) for p, s in zip(prompts, steps, strict=True)]
    for row, ref in enumerate(alone(module, params, sequences, full_ids.shape[1])):
        assert np.abs(cached[row, width - len(prompts[row]) :] - ref).max() < 1e-5


def test_prefill_in_one_call_equals_token_by_token():
    module = MODELS["llama-gqa"]()
    params = _random_params(module, jnp.ones((1, 4), jnp.int32), seed=1)
    ids = np.random.default_rng(4).integers(1, V, (2, 6))
    full = np.asarray(apply(module, params, ids)["logits"])
    cache = init_cache(module.config, 2, 8)
    for t in range(6):
        out = apply(module, params, ids[:, t : t + 1], cache=cache)  # positions: index + 0
        cache = out["cache"]
        assert np.abs(np.asarray(out["logits"][:, 0]) - full[:, t]).max() < 1e-5
    # The cache is a plain pytree: rows can be reordered (beam search) with tree.map.
    swapped = jax.tree.map(lambda x: x[::-1] if x.ndim else x, cache)
    nxt = np.array([[5], [7]])
    a = apply(module, params, nxt, cache=cache)["logits"]
    b = apply(module, params, nxt[::-1], cache=swapped)["logits"]
    np.testing.assert_allclose(np.asarray(a), np.asarray(b)[::-1], atol=1e-6)


# ----------------------------------------------------------------------------- packing


@pytest.mark.parametrize("name", ["llama-gqa", "mistral-window-3", "gpt2"])
def test_packed_rows_equal_separate_sequences(name):
    module = MODELS[name]()
    params = _random_params(module, jnp.ones((1, 4), jnp.int32), seed=2)
    rng = np.random.default_rng(5)
    a, b = rng.integers(1, V, 4), rng.integers(1, V, 3)
    packed = np.concatenate([a, b, [0]])[None]
    segments = np.array([[1, 1, 1, 1, 2, 2, 2, 0]])
    positions = layers.positions_from_segments(jnp.asarray(segments))
    np.testing.assert_array_equal(positions, [[0, 1, 2, 3, 0, 1, 2, 0]])
    out = apply(module, params, packed, positions=positions, segment_ids=segments)["logits"][0]
    alone_a, alone_b = alone(module, params, [a, b], packed.shape[1])
    np.testing.assert_allclose(out[:4], alone_a, atol=1e-5)
    np.testing.assert_allclose(out[4:7], alone_b, atol=1e-5)


def test_decoder_mask_by_slot():
    segs = jnp.array([[0, 1, 1, 2]])
    mask = layers.decoder_mask(segs, segs, jnp.arange(4), sliding_window=2)[0, 0]
    expected = np.array([[0, 0, 0, 0], [0, 1, 0, 0], [0, 1, 1, 0], [0, 0, 0, 1]], bool)
    np.testing.assert_array_equal(mask, expected)


# ------------------------------------------------------------------- heads and axes


def test_last_token_pooling_classifier():
    cfg = _llama()
    module = SequenceClassifier(
        cfg, num_labels=3, pooling="last", encoder_cls=LlamaModel, classifier_bias=False
    )
    ids = np.random.default_rng(6).integers(1, V, (3, 7))
    mask = np.ones_like(ids)
    mask[1, 4:] = 0  # right padding
    mask[2, :3] = 0  # left padding
    params = _random_params(module, ids, mask, seed=3)
    assert set(params) == {"encoder", "classifier"} and set(params["classifier"]) == {"kernel"}
    assert "lm_head" not in params["encoder"]
    out = apply(module, params, ids, mask)
    # Each row alone, unpadded, with filler after it (causal: cannot change its states).
    spans = [(0, 7), (0, 4), (3, 7)]
    rows = np.full_like(ids, 7)
    for row, (start, stop) in enumerate(spans):
        rows[row, : stop - start] = ids[row, start:stop]
    lm = LlamaModel(cfg, with_lm_head=False)
    hidden = np.asarray(apply(lm, params["encoder"], rows)["hidden_states"])
    last = np.stack([hidden[row, stop - start - 1] for row, (start, stop) in enumerate(spans)])
    np.testing.assert_allclose(out["pooler_output"], last, atol=1e-5)
    np.testing.assert_allclose(out["logits"], last @ params["classifier"]["kernel"], atol=1e-5)


@pytest.mark.parametrize("name", ["llama-gqa", "qwen2", "gpt2", "classifier"])
def test_every_param_has_logical_axis_names(name):
    if name == "classifier":
        module = build_model({**LLAMA, "model_type": "llama"}, num_labels=2)[0]
        args = (jnp.ones((1, 4), jnp.int32), jnp.ones((1, 4), jnp.int32))
    else:
        module, args = MODELS[name](), (jnp.ones((1, 4), jnp.int32),)
    params = jax.eval_shape(module.init, jax.random.key(0), *args)["params"]
    assert len(assert_logically_partitioned(params)) > 10
    specs = nn.get_partition_spec(params)
    spec = jax.sharding.PartitionSpec
    if name == "llama-gqa":
        attn = specs["layer_0"]["attention"]
        assert attn["query"]["kernel"] == spec("embed", "heads", "kv")
        assert attn["key"]["kernel"] == spec("embed", "kv_heads", "kv")
        assert specs["lm_head"]["kernel"] == spec("embed", "vocab")
        assert specs["layer_1"]["mlp"]["wi_0"]["kernel"] == spec("embed", "mlp")
    if name == "qwen2":
        assert specs["layer_0"]["attention"]["key"]["bias"] == spec("kv_heads", "kv")
        assert "bias" not in specs["layer_0"]["attention"]["out"]
    if name == "gpt2":
        assert specs["position"]["embedding"] == spec("position", "embed")
        assert "lm_head" not in specs  # tied
    if name == "classifier":
        assert specs["classifier"]["kernel"] == spec("embed", "classes")


def test_bf16_compute_keeps_float32_logits():
    f32 = _llama()
    bf16 = LlamaConfig.from_hf({**LLAMA, "model_type": "llama"}, dtype="bf16")
    params = _random_params(LlamaModel(f32), jnp.ones((1, 4), jnp.int32))
    ids = np.random.default_rng(7).integers(1, V, (2, 6))
    out32 = apply(LlamaModel(f32), params, ids)
    out16 = apply(LlamaModel(bf16), params, ids)
    assert out16["hidden_states"].dtype == jnp.bfloat16 and out16["logits"].dtype == jnp.float32
    assert float(jnp.abs(out16["logits"] - out32["logits"]).max()) < 0.25
    cache = init_cache(bf16, 2, 8)
    assert cache["layers"][0]["k"].dtype == jnp.bfloat16
