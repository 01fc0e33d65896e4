"""BERT-family encoder: parity with Hugging Face PyTorch, logical axes, masks, dtypes."""

from __future__ import annotations

import functools

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from conftest import TINY_BERT, assert_logically_partitioned, is_bert_norm, randomize_weights

from sft_jax import load_pretrained
from sft_jax.errors import UserInputError
from sft_jax.models import (
    BertConfig,
    BertModel,
    SequenceClassifier,
    build_model,
    layers,
    registry,
)

TINY = TINY_BERT


def make_hf_model(tmp_path, *, model_type="bert", seed=0, **overrides):
    """A random tiny HF model with O(1)-scale weights, saved as safetensors; (dir, model)."""
    kw = {**TINY, **overrides}
    if model_type == "roberta":
        kw = {"type_vocab_size": 1, "pad_token_id": 1, **kw}
        config, cls = transformers.RobertaConfig(**kw), transformers.RobertaModel
    else:
        config, cls = transformers.BertConfig(**kw), transformers.BertModel
    torch.manual_seed(seed)
    model = cls(config).eval()
    randomize_weights(model, seed, is_bert_norm)
    model.save_pretrained(tmp_path, safe_serialization=True)
    return tmp_path, model


def random_batch(seed, *, vocab=99, pad=0, type_vocab=2, batch=3, length=11):
    rng = np.random.default_rng(seed)
    ids = rng.integers(pad + 1, vocab, (batch, length))
    mask = np.ones((batch, length), np.int64)
    mask[1, length - 4 :] = 0
    mask[2, 3:] = 0
    ids[mask == 0] = pad
    types = rng.integers(0, type_vocab, (batch, length))
    return ids, mask, types


def torch_forward(model, ids, mask, types):
    with torch.no_grad():
        out = model(
            input_ids=torch.tensor(ids),
            attention_mask=torch.tensor(mask),
            token_type_ids=torch.tensor(types),
        )
    return out.last_hidden_state.numpy(), out.pooler_output.numpy()


@pytest.mark.parametrize(
    ("model_type", "overrides"),
    [
        ("bert", {"hidden_act": "gelu"}),
        ("bert", {"hidden_act": "gelu_new", "type_vocab_size": 3}),
        ("bert", {"hidden_act": "relu", "num_attention_heads": 2, "num_hidden_layers": 3}),
        ("roberta", {"hidden_act": "gelu"}),
    ],
)
def test_parity_with_hf_pytorch(tmp_path, model_type, overrides):
    model_dir, hf_model = make_hf_model(tmp_path, model_type=model_type, **overrides)
    pre = load_pretrained(model_dir)
    cfg = pre.config
    ids, mask, types = random_batch(1, pad=cfg.pad_token_id, type_vocab=cfg.type_vocab_size)
    ref_hidden, ref_pooled = torch_forward(hf_model, ids, mask, types)
    out = _apply(pre.module, {"params": pre.params}, ids, mask, types)
    hidden_err = np.abs(np.asarray(out["last_hidden_state"]) - ref_hidden).max()
    pooled_err = np.abs(np.asarray(out["pooler_output"]) - ref_pooled).max()
    assert hidden_err < 1e-5, hidden_err
    assert pooled_err < 1e-5, pooled_err
    assert np.abs(ref_hidden).max() > 1.0  # the comparison is not between near-zeros


def test_parity_without_mask_and_token_types(tmp_path):
    model_dir, hf_model = make_hf_model(tmp_path, seed=3)
    pre = load_pretrained(model_dir)
    ids = np.random.default_rng(0).integers(1, 99, (2, 9))
    with torch.no_grad():
        ref = hf_model(input_ids=torch.tensor(ids)).last_hidden_state.numpy()
    out = _apply(pre.module, {"params": pre.params}, ids)
    assert np.abs(np.asarray(out["last_hidden_state"]) - ref).max() < 1e-5


def _tiny_config(**kw) -> BertConfig:
    return BertConfig.from_hf({**TINY, "model_type": "bert", **kw})


def _abstract(module, length=7):
    """Boxed ShapeDtypeStruct tree of `module.init` (no RNG work: fast on CPU)."""
    ids = jnp.ones((2, length), jnp.int32)
    return jax.eval_shape(module.init, jax.random.key(0), ids, ids)


def _init(module, seed=0):
    """Random O(1)-scale params (numpy; `module.init`'s RNG is slow to compile on CPU)."""
    rng = np.random.default_rng(seed)

    def fill(path, x):
        value = rng.normal(0.0, 0.2, x.shape)
        return (value + (path[-1].key == "scale")).astype(np.float32)

    params = nn.meta.unbox(_abstract(module))["params"]
    return {"params": jax.tree_util.tree_map_with_path(fill, params)}


@functools.cache
def _jitted_apply(module):
    return jax.jit(module.apply, static_argnames=("deterministic",))


def _apply(module, variables, *args, **kwargs):
    """Jitted `module.apply`: one compile per shape beats eager op-by-op dispatch."""
    return _jitted_apply(module)(variables, *args, **kwargs)


def test_every_param_has_logical_axis_names():
    module = SequenceClassifier(_tiny_config(), num_labels=3)
    params = _abstract(module)["params"]
    assert_logically_partitioned(params)
    specs = nn.get_partition_spec(params)
    spec = jax.sharding.PartitionSpec
    encoder = specs["encoder"]
    assert encoder["layer_0"]["attention"]["query"]["kernel"] == spec("embed", "heads", "kv")
    assert encoder["layer_1"]["attention"]["out"]["kernel"] == spec("heads", "kv", "embed")
    assert encoder["layer_1"]["mlp"]["wo"]["kernel"] == spec("mlp", "embed")
    assert encoder["embeddings"]["word"]["embedding"] == spec("vocab", "embed")
    assert encoder["embeddings"]["norm"]["scale"] == spec("embed")
    assert specs["classifier"]["kernel"] == spec("embed", "classes")
    assert set(params) == {"encoder", "classifier"}


def test_bf16_compute_with_f32_params_is_close_to_f32():
    f32 = _tiny_config()
    bf16 = BertConfig.from_hf({**TINY, "model_type": "bert"}, dtype="bfloat16")
    params = _init(SequenceClassifier(f32, num_labels=2))["params"]
    ids, mask, types = random_batch(2)
    out32 = _apply(SequenceClassifier(f32, 2), {"params": params}, ids, mask, types)
    out16 = _apply(SequenceClassifier(bf16, 2), {"params": params}, ids, mask, types)
    assert out16["last_hidden_state"].dtype == jnp.bfloat16
    assert out16["logits"].dtype == jnp.float32
    assert all(x.dtype == jnp.float32 for x in jax.tree_util.tree_leaves(params))
    diff = jnp.abs(out16["last_hidden_state"].astype(jnp.float32) - out32["last_hidden_state"])
    assert float(diff.max()) < 0.1
    assert float(jnp.abs(out16["logits"] - out32["logits"]).max()) < 0.02


def test_dropout_uses_the_dropout_rng():
    module = BertModel(_tiny_config())
    variables = _init(module)
    ids, mask, _ = random_batch(4)

    def run(seed):
        rngs = {"dropout": jax.random.key(seed)}
        out = _apply(module, variables, ids, mask, deterministic=False, rngs=rngs)
        return out["last_hidden_state"]

    assert not np.allclose(run(0), run(1))
    np.testing.assert_array_equal(run(0), run(0))
    det = _apply(module, variables, ids, mask)["last_hidden_state"]
    assert not np.allclose(run(0), det)
    with pytest.raises(flax.errors.InvalidRngError, match="dropout"):
        module.apply(variables, ids, mask, deterministic=False)


def test_packed_rows_with_segment_mask_equal_separate_rows():
    """The extra `mask` argument (built by layers.segment_mask) isolates packed examples."""
    module = BertModel(_tiny_config())
    variables = _init(module)
    rng = np.random.default_rng(5)
    a, b = rng.integers(1, 99, 5), rng.integers(1, 99, 4)
    packed = np.concatenate([a, b, [0, 0]])[None]  # 1 x 11
    segments = np.array([[1] * 5 + [2] * 4 + [0, 0]])
    positions = np.array([[*range(5), *range(4), 0, 0]])
    out = _apply(
        module,
        variables,
        packed,
        position_ids=positions,
        mask=layers.segment_mask(jnp.asarray(segments)),
    )["last_hidden_state"][0]
    separate = np.zeros((2, 11), np.int64)
    separate[0, :5], separate[1, :4] = a, b
    alone = _apply(module, variables, separate, (separate != 0).astype(np.int32))
    alone_a, alone_b = alone["last_hidden_state"][0, :5], alone["last_hidden_state"][1, :4]
    np.testing.assert_allclose(out[:5], alone_a, atol=1e-5)
    np.testing.assert_allclose(out[5:9], alone_b, atol=1e-5)


def test_grouped_query_attention_equals_repeated_kv_heads():
    rng = np.random.default_rng(0)
    q = jnp.asarray(rng.normal(size=(2, 5, 6, 4)), jnp.float32)  # B T N H
    k = jnp.asarray(rng.normal(size=(2, 7, 2, 4)), jnp.float32)  # B S K H
    v = jnp.asarray(rng.normal(size=(2, 7, 2, 4)), jnp.float32)
    mask = layers.combine_masks(
        layers.causal_mask(5, 7), layers.padding_mask(jnp.array([[1] * 7, [1] * 5 + [0] * 2]))
    )
    grouped = layers.dot_product_attention(q, k, v, mask=mask)
    full = layers.dot_product_attention(
        q, jnp.repeat(k, 3, axis=2), jnp.repeat(v, 3, axis=2), mask=mask
    )
    np.testing.assert_allclose(grouped, full, atol=1e-6)
    # Reference: plain softmax attention for one head.
    logits = np.einsum("TH,SH->TS", q[1, :, 4], k[1, :, 1]) / 2.0
    logits = np.where(np.asarray(mask[1, 0]), logits, -np.inf)
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    np.testing.assert_allclose(grouped[1, :, 4], probs @ np.asarray(v[1, :, 1]), atol=1e-5)


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_cls_and_mean_pooling(pooling):
    module = SequenceClassifier(_tiny_config(), num_labels=2, pooling=pooling)
    params = _init(module)["params"]
    ids, mask, _ = random_batch(6)
    out = _apply(module, {"params": params}, ids, mask)
    hidden = np.asarray(out["last_hidden_state"])
    if pooling == "cls":
        expected = hidden[:, 0]
    else:
        expected = (hidden * mask[:, :, None]).sum(1) / mask.sum(1, keepdims=True)
    np.testing.assert_allclose(out["pooler_output"], expected, atol=1e-6)
    head = params["classifier"]
    np.testing.assert_allclose(out["logits"], expected @ head["kernel"] + head["bias"], atol=1e-5)


def test_build_model_and_config_errors():
    module, cfg = build_model({**TINY, "model_type": "bert"}, num_labels=4, pooling="mean")
    assert isinstance(module, SequenceClassifier) and module.num_labels == 4
    assert cfg.hidden_size == 32 and cfg.dtype == "float32"
    encoder, _ = build_model({**TINY, "model_type": "roberta", "pad_token_id": 1})
    assert isinstance(encoder, BertModel) and encoder.config.position_offset == 2
    where = "/models/x/config.json"
    with pytest.raises(UserInputError) as err:
        build_model({**TINY, "model_type": "foo"}, where=where)
    assert str(err.value) == (
        "/models/x/config.json: model_type 'foo' is not supported "
        f"(supported: {', '.join(registry.FAMILIES)})"
    )
    with pytest.raises(UserInputError, match=r"config.json: hidden_act 'swiglu' is not"):
        build_model({**TINY, "model_type": "bert", "hidden_act": "swiglu"})
    with pytest.raises(UserInputError, match="position_embedding_type 'relative_key'"):
        build_model({**TINY, "model_type": "bert", "position_embedding_type": "relative_key"})
    with pytest.raises(UserInputError, match=r"missing field.*vocab_size"):
        build_model({"model_type": "bert", "hidden_size": 8})
    with pytest.raises(UserInputError, match="pooling 'max' is not one of pooler, cls, mean"):
        build_model({**TINY, "model_type": "bert"}, num_labels=2, pooling="max")
    with pytest.raises(UserInputError, match="dtype 'int8' is not a floating-point"):
        build_model({**TINY, "model_type": "bert"}, dtype="int8")
    with pytest.raises(UserInputError, match="no 'model_type' field"):
        build_model(TINY)


def test_build_model_remat_option():
    """`model.remat` reaches the built config (and so the layers); unknown names are refused."""
    _, cfg = build_model({**TINY, "model_type": "bert"}, num_labels=2, remat="full")
    assert cfg.remat_policy == "full"
    _, cfg = build_model({**TINY, "model_type": "bert"})
    assert cfg.remat_policy == "none"
    with pytest.raises(UserInputError, match=r"model\.remat: unknown policy 'most'"):
        build_model({**TINY, "model_type": "bert"}, remat="most")
