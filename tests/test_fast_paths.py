"""The memory-saving paths against today's: blockwise attention (`model.attention`) vs the
einsum + softmax one and vs transformers PyTorch, cuDNN attention vs the einsum one (on a
GPU only), and LM losses over chunks of rows (`train.loss_chunk`) vs the one-shot loss,
forward and gradients."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from conftest import (
    LLAMA,
    V,
    apply_overrides,
    is_decoder_norm,
    load_config,
    randomize_weights,
    torch_logits,
)

from sft_jax import load_pretrained
from sft_jax.errors import UserInputError
from sft_jax.models import layers, registry
from sft_jax.models.lm_head import LmHead
from sft_jax.tasks.base import chunked_token_losses, training_loss


def _attention_case(seed, *, t, s, n, k, window=None, bias=False):
    """q [2, t, n, 8], k/v [2, s, k, 8], a decoder mask (row 0: two packed segments then
    padding, row 1: left padding, so some queries see no key) and an optional bias."""
    rng = np.random.default_rng(seed)
    q, kk, v = (jnp.asarray(rng.normal(size=(2, length, heads, 8)), jnp.float32)
                for length, heads in ((t, n), (s, k), (s, k)))
    keys = np.ones((2, s), np.int32)
    keys[0, s // 2:] = 2
    keys[0, s - 3:] = 0
    keys[1, :4] = 0
    queries = jnp.asarray(keys[:, s - t:])
    mask = layers.decoder_mask(queries, jnp.asarray(keys), jnp.arange(s - t, s),
                               sliding_window=window)  # 2 1 t s
    b = jnp.asarray(rng.normal(size=(1, n, t, s)), jnp.float32) if bias else None
    return (q, kk, v), mask, b


@pytest.mark.parametrize(
    ("shape", "block"),
    [
        (dict(t=37, s=37, n=4, k=2), 8),  # GQA, packed, padded; the last block is short
        # T5's bias, a sliding window, queries after a cache of keys
        (dict(t=5, s=21, n=2, k=2, window=5, bias=True), 4),
        # one block (S <= block): the einsum path runs; the one-step blockwise loop gave
        # NaN gradients with a bias under jit
        (dict(t=5, s=21, n=2, k=2, window=5, bias=True), 512),
    ],
)
def test_blockwise_attention_matches_xla(shape, block):
    inputs, mask, bias = _attention_case(0, **shape)

    def run(implementation):
        def f(q, k, v):
            return layers.dot_product_attention(q, k, v, mask=mask, bias=bias, block=block,
                                                implementation=implementation)
        out = f(*inputs)
        grads = jax.grad(lambda *x: jnp.sum(jnp.sin(f(*x))), argnums=(0, 1, 2))(*inputs)
        return out, grads

    (out, grads), (ref, ref_grads) = jax.jit(lambda: (run("blockwise"), run("xla")))()
    np.testing.assert_allclose(out, ref, atol=2e-6)
    for g, r in zip(grads, ref_grads, strict=True):
        np.testing.assert_allclose(g, r, atol=2e-5)


def tiny_llama(path):
    """A random tiny transformers Llama, saved to `path`, and our model loaded from it."""
    torch.manual_seed(0)
    hf_model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**LLAMA)).eval()
    randomize_weights(hf_model, 0, is_decoder_norm)
    hf_model.save_pretrained(path, safe_serialization=True)
    return hf_model, load_pretrained(path)


def test_llama_with_blockwise_attention_matches_transformers(tmp_path):
    hf_model, pre = tiny_llama(tmp_path)
    cfg = dataclasses.replace(pre.config, attention="blockwise", attention_block=4)
    module = type(pre.module)(cfg)
    ids = np.random.default_rng(1).integers(3, V, (2, 11))
    mask = np.ones_like(ids)
    mask[1, 6:] = 0
    ids[mask == 0] = 0
    ours = np.asarray(jax.jit(module.apply)({"params": pre.params}, ids,
                                            segment_ids=mask)["logits"])
    ref = torch_logits(hf_model, ids, mask)
    assert np.abs(ours - ref)[mask.astype(bool)].max() < 1e-4


def test_attention_choice_errors():
    hf = {"model_type": "llama", **LLAMA}
    with pytest.raises(UserInputError, match=r"model.attention: unknown attention 'flash'"):
        registry.build_model(hf, attention="flash")
    if jax.default_backend() != "gpu":
        with pytest.raises(UserInputError, match=r"model.attention: cudnn needs a GPU"):
            registry.build_model(hf, attention="cudnn")


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="auto's CPU rule")
def test_auto_chooses_blockwise_for_long_rows_without_a_bias():
    from sft_jax.models import attention

    long_rows = jnp.zeros((1, 8, 2, 4))  # B T N H: rows of more than one query
    keys = attention.CPU_BLOCKWISE_FROM
    assert attention.choose("auto", long_rows, keys, False) == "blockwise"
    assert attention.choose("auto", long_rows, keys - 1, False) == "xla"
    assert attention.choose("auto", long_rows[:, :1], keys, False) == "xla"  # one query
    # a bias (T5) would be broadcast to [B, N, T, S] anyway: no memory saved
    assert attention.choose("auto", long_rows, keys, False, jnp.zeros((1, 2, 8, 1))) == "xla"
    assert attention.choose("blockwise", long_rows, 1, False) == "blockwise"


ON_GPU = pytest.mark.skipif(jax.default_backend() != "gpu",
                            reason="cuDNN attention runs on a GPU only")


def assert_close_bf16(x, ref, what):
    """bfloat16 results of two kernels: within 10% of the reference's largest magnitude
    everywhere, 1% on average, and pointing the same way (cosine > 0.999)."""
    x, ref = np.asarray(x, np.float64).ravel(), np.asarray(ref, np.float64).ravel()
    assert np.isfinite(x).all(), f"{what}: not finite"
    scale = max(np.abs(ref).max(), 1e-6)
    diff = np.abs(x - ref)
    assert diff.max() <= 0.1 * scale, f"{what}: max |diff| {diff.max():.3g}, scale {scale:.3g}"
    assert diff.mean() <= 0.01 * scale, f"{what}: mean |diff| {diff.mean():.3g}"
    cosine = x @ ref / max(np.linalg.norm(x) * np.linalg.norm(ref), 1e-30)
    assert cosine > 0.999, f"{what}: cosine {cosine:.6f}"


@ON_GPU
@pytest.mark.parametrize(
    "shape",
    [dict(t=38, s=38, n=4, k=2), dict(t=6, s=22, n=2, k=2, window=5, bias=True)],
)
def test_cudnn_attention_matches_xla(shape):
    """bfloat16 forward and gradients, cuDNN against the einsum attention on the same
    inputs. Compared on the query rows that see a key: a row that sees none is padding,
    whose output no loss reads, but whose gradient must not be NaN."""
    (q, k, v), mask, bias = _attention_case(0, **shape)
    q, k, v = (x.astype(jnp.bfloat16) for x in (q, k, v))
    seen = jnp.any(mask, axis=-1)[:, 0, :, None, None]  # B T 1 1

    def run(implementation):
        def f(q, k, v):
            return layers.dot_product_attention(q, k, v, mask=mask, bias=bias,
                                                dtype=jnp.bfloat16,
                                                implementation=implementation)

        def loss(q, k, v):
            return jnp.sum(jnp.where(seen, jnp.sin(f(q, k, v).astype(jnp.float32)), 0.0))

        return f(q, k, v), jax.grad(loss, argnums=(0, 1, 2))(q, k, v)

    (out, grads), (ref, ref_grads) = jax.jit(lambda: (run("cudnn"), run("xla")))()
    rows = np.broadcast_to(np.asarray(seen), out.shape)
    assert_close_bf16(np.asarray(out, np.float32)[rows], np.asarray(ref, np.float32)[rows],
                      "output")
    for name, g, r in zip("qkv", grads, ref_grads, strict=True):
        assert_close_bf16(np.asarray(g, np.float32), np.asarray(r, np.float32), f"d{name}")


@ON_GPU
def test_auto_chooses_cudnn_only_where_it_trains():
    from sft_jax.models import attention

    rows = jnp.zeros((1, 8, 4, 8), jnp.bfloat16)  # B T N H
    assert attention.choose("auto", rows, 8, False) == "cudnn"
    assert attention.choose("auto", rows[:, :7], 8, False) == "xla"  # odd query length
    assert attention.choose("auto", rows, 7, False) == "xla"  # odd key length
    assert attention.choose("auto", rows, 8, True) == "xla"  # attention dropout
    assert attention.choose("auto", rows.astype(jnp.float32), 8, False) == "xla"


@ON_GPU
def test_llama_with_cudnn_attention_matches_xla(tmp_path):
    """A tiny Llama in bfloat16 (float32 params): with `attention="auto"` (which picks
    cuDNN on a GPU) its logits on the real tokens and the gradients of their log-softmax
    equal those with the einsum attention, to bfloat16 rounding."""
    _, pre = tiny_llama(tmp_path)
    ids = np.random.default_rng(1).integers(3, V, (2, 16))
    mask = np.ones_like(ids)
    mask[1, 10:] = 0
    ids[mask == 0] = 0
    real = jnp.asarray(mask.astype(bool))[..., None]  # B T 1

    def run(implementation):
        cfg = dataclasses.replace(pre.config, attention=implementation, dtype="bfloat16")
        module = type(pre.module)(cfg)

        def logits(params):
            out = module.apply({"params": params}, ids, segment_ids=mask)["logits"]
            return jnp.where(real, out.astype(jnp.float32), 0.0)

        def loss(params):
            return jnp.sum(jnp.where(real, jax.nn.log_softmax(logits(params)), 0.0))

        return logits(pre.params), jax.grad(loss)(pre.params)

    (out, grads), (ref, ref_grads) = jax.jit(lambda: (run("auto"), run("xla")))()
    assert_close_bf16(out, ref, "logits")
    for (path, g), r in zip(jax.tree_util.tree_leaves_with_path(grads),
                            jax.tree.leaves(ref_grads), strict=True):
        assert_close_bf16(g, r, jax.tree_util.keystr(path))


LOSS_MODELS = {  # the heads: untied + soft-capped (decoders), tied + T5's scale,
    # untied + BART's bias (the dialogue test below: a tied decoder head)
    "gemma3": {"model_type": "gemma3_text", "vocab_size": V, "hidden_size": 32,
               "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1,
               "head_dim": 16, "intermediate_size": 48, "max_position_embeddings": 64,
               "layer_types": ["full_attention"], "sliding_window": 3,
               "query_pre_attn_scalar": 16, "final_logit_softcapping": 2.0,
               "tie_word_embeddings": False},
    "t5": {"model_type": "t5", "vocab_size": V, "d_model": 32, "d_kv": 8, "d_ff": 48,
           "num_layers": 1, "num_heads": 2, "decoder_start_token_id": 0},
    "bart": {"model_type": "bart", "vocab_size": V, "d_model": 32, "encoder_layers": 1,
             "decoder_layers": 1, "encoder_attention_heads": 2, "decoder_attention_heads": 2,
             "encoder_ffn_dim": 48, "decoder_ffn_dim": 48, "max_position_embeddings": 40,
             "tie_word_embeddings": False},
}


@pytest.mark.parametrize("name", list(LOSS_MODELS))
def test_lm_head_gives_the_models_logits(name):
    module, _ = registry.build_model(LOSS_MODELS[name])
    ids = jnp.asarray(np.random.default_rng(2).integers(3, V, (2, 5)))
    inputs = (ids,) if name == "gemma3" else (ids, ids)

    @jax.jit
    def both():
        params = module.init(jax.random.PRNGKey(0), *inputs)["params"]
        if name == "bart":  # a non-zero final_logits_bias
            params = {**params, "final_logits_bias": jnp.linspace(-1.0, 1.0, V)}
        out = module.apply({"params": params}, *inputs, lm_head=True)
        return out["lm_head"](out["hidden_states"]), module.apply({"params": params},
                                                                 *inputs)["logits"]

    ours, ref = both()
    np.testing.assert_allclose(ours, ref, atol=1e-6)


def test_chunked_loss_matches_one_shot():
    """Loss and gradients (hidden states, table or kernel) of a tied head with T5's scale,
    BART's bias and Gemma's soft-capping, and of an untied one: 2 rows of 9 tokens in
    chunks of 4 (2 positions of each row; the last chunk padded), label-smoothed."""
    rng = np.random.default_rng(3)
    hidden = jnp.asarray(rng.normal(size=(2, 9, 16)), jnp.float32)
    targets = jnp.asarray(rng.integers(0, V, (2, 9)))
    weights = jnp.asarray(rng.integers(0, 2, (2, 9)), jnp.float32)
    table = jnp.asarray(rng.normal(size=(V, 16)), jnp.float32)
    bias = jnp.asarray(rng.normal(size=(V,)), jnp.float32)
    loss = training_loss(0.1)

    def total(hidden, weight, chunk, transposed):
        head = LmHead(weight, bias, transposed=transposed, scale=0.5 if transposed else None,
                      softcap=3.0 if transposed else None)
        return jnp.sum(chunked_token_losses(head, hidden, targets, loss, chunk) * weights)

    grad = jax.value_and_grad(total, argnums=(0, 1))

    @jax.jit
    def run():
        return [(grad(hidden, w, 4, tr), grad(hidden, w, 0, tr))
                for w, tr in ((table, True), (table.T, False))]

    for (out, grads), (ref, ref_grads) in run():
        np.testing.assert_allclose(out, ref, rtol=1e-6)
        for g, r in zip(grads, ref_grads, strict=True):
            np.testing.assert_allclose(g, r, atol=1e-6, rtol=1e-5)


def test_dialogue_loss_in_chunks_equals_one_shot(tmp_path, tiny_chat_model):
    """The dialogue task's training loss (optax's cross-entropy) and its gradient with
    `train.loss_chunk` = 48 (2 rows of 64 tokens: 3 chunks of 24 positions each) equal
    those computed in one go."""
    from sft_jax.tasks import get_task

    config = apply_overrides(load_config("dialogue", "runlocal"), {
        "model.checkpoint": str(tiny_chat_model)})
    task = get_task(config, tmp_path)
    rows = [task.train_features()[i] for i in range(2)]
    batch = {k: np.stack([r[k] for r in rows]) for k in ("input_ids", "positions",
                                                         "segment_ids", "loss_mask")}
    params = jax.tree.map(jnp.asarray, task.pretrained_params())

    def run(chunk):
        config.train.loss_chunk = chunk  # read when the loss is traced
        return jax.value_and_grad(lambda p: task.loss_fn(p, batch, None, True)[0])(params)

    (ref, ref_grads), (out, grads) = jax.jit(lambda: (run(0), run(48)))()
    np.testing.assert_allclose(out, ref, rtol=1e-6)
    jax.tree.map(lambda g, r: np.testing.assert_allclose(g, r, atol=1e-6, rtol=1e-5),
                 grads, ref_grads)
