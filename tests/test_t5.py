"""T5 v1.0 / v1.1 / mT5 against Hugging Face PyTorch (fp32, tiny random configs): logits
with padding, cached decoding, packing, the converter both ways, export, config mapping."""

from __future__ import annotations

import dataclasses
import functools
import json
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax.traverse_util import flatten_dict
from transformers.models.t5.modeling_t5 import T5Attention as HfT5Attention

from sft_jax import load_pretrained
from sft_jax.errors import UserInputError
from sft_jax.hf.checkpoint_dir import load_state_dict, read_config
from sft_jax.hf.export import GENERATION_CONFIG_FILE, export_pretrained
from sft_jax.models import registry, t5
from sft_jax.models.t5 import convert as hf_t5
from sft_jax.pretrained import pretrained_params

V = 64
# Few buckets and a short max distance, so that the logarithmic buckets (and the clamp
# beyond max_distance) occur within these short sequences.
TINY = dict(
    vocab_size=V, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_decoder_layers=3,
    num_heads=4, relative_attention_num_buckets=8, relative_attention_max_distance=12,
    dropout_rate=0.1, decoder_start_token_id=0,
)
KINDS = {  # name: (HF config class, HF model class, config overrides, seed)
    "v1.0": (transformers.T5Config, transformers.T5ForConditionalGeneration,
             {"feed_forward_proj": "relu"}, 0),
    "v1.1": (transformers.T5Config, transformers.T5ForConditionalGeneration,
             {"feed_forward_proj": "gated-gelu", "tie_word_embeddings": False}, 1),
    "mt5": (transformers.MT5Config, transformers.MT5ForConditionalGeneration, {}, 2),
}


def make_hf(path, kind):
    """A random tiny HF model with O(1) norms and position biases and (v1.1, mT5) an LM
    head of its own, saved with `save_pretrained`; returns (model, saved dir)."""
    config_cls, model_cls, overrides, seed = KINDS[kind]
    torch.manual_seed(seed)
    model = model_cls(config_cls(**{**TINY, **overrides})).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if "layer_norm" in name:
                p.copy_(1.0 + 0.2 * noise)
            elif "relative_attention_bias" in name:
                p.copy_(noise)
        if kind != "v1.0":  # transformers builds T5 with the head tied; untie it
            head = 0.3 * torch.randn(V, TINY["d_model"], generator=gen)  # logits ~ O(5)
            model.lm_head.weight = torch.nn.Parameter(head)
    model.save_pretrained(path, safe_serialization=True)
    return model, path


@functools.cache
def hf_model(kind, tmp_root):
    """The saved model of each kind, made once per test session directory."""
    return make_hf(Path(tmp_root) / kind.replace(".", "_"), kind)


@pytest.fixture(scope="module")
def tmp_root(tmp_path_factory):
    return str(tmp_path_factory.mktemp("t5"))


def ours(kind, tmp_root):
    """(module, config, params) read from the saved HF directory."""
    _, path = hf_model(kind, tmp_root)
    config = t5.T5Config.from_hf(read_config(path), where=str(path))
    params = hf_t5.params_from_hf(load_state_dict(path), config, where=str(path))
    return t5.T5Model(config), config, params


def padded_pairs(seed):
    """Sources [3, 11] and targets [3, 9] (ids >= 2), rows 1 and 2 right-padded."""
    rng = np.random.default_rng(seed)
    src, tgt = rng.integers(2, V, (3, 11)), rng.integers(2, V, (3, 9))
    src_mask, tgt_mask = np.ones_like(src), np.ones_like(tgt)
    src_mask[1, 7:] = src_mask[2, 4:] = 0
    tgt_mask[1, 5:] = tgt_mask[2, 2:] = 0
    tgt[:, 0] = 0  # decoder start
    return src * src_mask, src_mask, tgt * tgt_mask, tgt_mask


def hf_logits(model, src, src_mask, tgt, tgt_mask):
    with torch.no_grad():
        return model(
            input_ids=torch.tensor(src), attention_mask=torch.tensor(src_mask),
            decoder_input_ids=torch.tensor(tgt), decoder_attention_mask=torch.tensor(tgt_mask),
        ).logits.numpy()


@functools.cache
def _jit(module, method):
    return jax.jit(functools.partial(module.apply, method=method))


def apply(module, params, *args, method="__call__", **kwargs):
    return _jit(module, method)({"params": params}, *args, **kwargs)


def max_diff_to_hf(module, params, model, seed):
    """Max |ours - HF| over the real target tokens of `padded_pairs(seed)`, and |HF|'s max."""
    src, src_mask, tgt, tgt_mask = padded_pairs(seed)
    logits = apply(module, params, src, tgt, encoder_segment_ids=src_mask,
                   decoder_segment_ids=tgt_mask)["logits"]
    assert logits.dtype == jnp.float32
    reference = hf_logits(model, src, src_mask, tgt, tgt_mask)
    return np.abs(np.asarray(logits) - reference)[tgt_mask == 1].max(), np.abs(reference).max()


# ------------------------------------------------------------------------------ parity


def test_relative_position_buckets_match_hf():
    relative = np.arange(-400, 401)
    for buckets, distance in ((32, 128), (8, 12), (64, 256)):
        for bidirectional in (True, False):
            theirs = HfT5Attention._relative_position_bucket(
                torch.tensor(relative), bidirectional=bidirectional, num_buckets=buckets,
                max_distance=distance,
            ).numpy()
            mine = t5.relative_position_bucket(
                jnp.asarray(relative), bidirectional=bidirectional, num_buckets=buckets,
                max_distance=distance,
            )
            np.testing.assert_array_equal(np.asarray(mine), theirs)


@pytest.mark.parametrize("kind", list(KINDS))
def test_logits_match_hf_with_padding(kind, tmp_root):
    model, _ = hf_model(kind, tmp_root)
    module, config, params = ours(kind, tmp_root)
    assert config.tie_word_embeddings == (kind == "v1.0")
    assert ("lm_head" in params) == (kind != "v1.0")
    diff, scale = max_diff_to_hf(module, params, model, 0)
    print(f"{kind}: max |ours - HF| = {diff:.2e} (|logits| up to {scale:.1f})")
    assert diff < 1e-4


@pytest.mark.parametrize("kind", ["v1.1"])
def test_cached_decoding_matches_full_forward_and_survives_reordering(kind, tmp_root):
    module, config, params = ours(kind, tmp_root)
    src, src_mask, tgt, tgt_mask = padded_pairs(1)
    full = np.asarray(apply(module, params, src, tgt, encoder_segment_ids=src_mask,
                            decoder_segment_ids=tgt_mask)["logits"])
    encoded = apply(module, params, src, encoder_segment_ids=src_mask, method="encode")
    cache = t5.init_cache(config, 3, 12)
    assert cache["positions"].shape == cache["segment_ids"].shape == (3, 12)
    steps, t = [], 0
    for size in (3, 1, 1, 1):  # a prefix of 3 tokens, then one at a time
        out = apply(module, params, tgt[:, t:t + size], encoded, encoder_segment_ids=src_mask,
                    decoder_segment_ids=tgt_mask[:, t:t + size], cache=cache, method="decode")
        steps.append(np.asarray(out["logits"]))
        cache, t = out["cache"], t + size
    stepped = np.concatenate(steps, axis=1)
    diff = np.abs(stepped - full[:, :t])[tgt_mask[:, :t] == 1].max()
    print(f"{kind}: cached vs full max diff {diff:.2e}")
    assert int(cache["index"]) == t
    assert diff < 1e-5

    # Beam search reorders rows: gather every batch-first leaf, keep going.
    perm = np.array([2, 0, 0])

    def take(x):
        return x if x.ndim == 0 else x[perm]

    cache = jax.tree.map(take, cache)
    encoded, src_mask, tgt, tgt_mask = (take(x) for x in (encoded, src_mask, tgt, tgt_mask))
    rest = []
    for i in range(t, tgt.shape[1]):
        out = apply(module, params, tgt[:, i:i + 1], encoded, encoder_segment_ids=src_mask,
                    decoder_segment_ids=tgt_mask[:, i:i + 1], cache=cache, method="decode")
        rest.append(np.asarray(out["logits"]))
        cache = out["cache"]
    reordered = full[perm][:, t:]
    keep = tgt_mask[:, t:] == 1
    diff = np.abs(np.concatenate(rest, axis=1) - reordered)[keep].max()
    print(f"{kind}: reordered cached vs full max diff {diff:.2e}")
    assert keep.any() and diff < 1e-5


def test_packed_pairs_equal_each_pair_alone(tmp_root):
    module, _, params = ours("v1.1", tmp_root)
    rng = np.random.default_rng(3)
    pairs = [(rng.integers(2, V, s), np.concatenate([[0], rng.integers(2, V, t - 1)]))
             for s, t in ((5, 4), (4, 3))]
    alone = [np.asarray(apply(module, params, s[None], t[None])["logits"][0]) for s, t in pairs]

    def pack(arrays, length):
        ids = np.zeros(length, np.int64)
        seg, pos = np.zeros(length, np.int64), np.zeros(length, np.int64)
        start = 0
        for i, a in enumerate(arrays, 1):
            ids[start:start + len(a)], seg[start:start + len(a)] = a, i
            pos[start:start + len(a)] = np.arange(len(a))
            start += len(a)
        return ids[None], seg[None], pos[None]

    src, src_seg, src_pos = pack([s for s, _ in pairs], 11)
    tgt, tgt_seg, tgt_pos = pack([t for _, t in pairs], 9)
    packed = np.asarray(apply(module, params, src, tgt, encoder_segment_ids=src_seg,
                              encoder_positions=src_pos, decoder_segment_ids=tgt_seg,
                              decoder_positions=tgt_pos)["logits"][0])
    diff = max(np.abs(packed[:4] - alone[0]).max(), np.abs(packed[4:7] - alone[1]).max())
    print(f"packed vs alone max diff {diff:.2e}")
    assert diff < 1e-5


def test_init_and_dropout():
    """Fresh init: the converter's tree and T5's query init; dropout from the 'dropout' rng.
    (One layer each and 'rbg' keys keep the compile short.)"""
    config = t5.T5Config.from_hf({**TINY, "num_layers": 1, "num_decoder_layers": 1,
                                  "feed_forward_proj": "gated-gelu",
                                  "tie_word_embeddings": False})
    module = t5.T5Model(config)
    src, src_mask, tgt, tgt_mask = padded_pairs(0)
    fresh = jax.jit(module.init)(jax.random.key(0, impl="rbg"), src, tgt)
    params = nn.meta.unbox(fresh["params"])
    round_trip = hf_t5.params_from_hf(hf_t5.params_to_hf(params, config), config)
    assert flatten_dict(round_trip).keys() == flatten_dict(params).keys()
    # T5's init: the query is scaled down by d_kv**-0.5 relative to the key.
    attention = params["encoder"]["layer_0"]["attention"]
    ratio = np.std(attention["query"]["kernel"]) / np.std(attention["key"]["kernel"])
    assert 0.2 < ratio < 0.5  # 8**-0.5 = 0.35

    @functools.partial(jax.jit, static_argnums=1)
    def run(rng, deterministic):
        return module.apply({"params": params}, src, tgt, encoder_segment_ids=src_mask,
                            decoder_segment_ids=tgt_mask, deterministic=deterministic,
                            rngs={"dropout": rng})["logits"]

    clean = run(jax.random.key(0, impl="rbg"), True)
    first = run(jax.random.key(0, impl="rbg"), False)
    assert not np.allclose(first, clean)
    np.testing.assert_array_equal(run(jax.random.key(0, impl="rbg"), False), first)
    assert not np.allclose(run(jax.random.key(1, impl="rbg"), False), first)
    remat = t5.T5Model(dataclasses.replace(config, remat_policy="full"))
    rematted = apply(remat, params, src, tgt, encoder_segment_ids=src_mask,
                     decoder_segment_ids=tgt_mask)["logits"]
    np.testing.assert_allclose(rematted, clean, atol=2e-5)  # fusion order only


# --------------------------------------------------------------------- convert, export


@pytest.mark.parametrize("kind", list(KINDS))
def test_params_to_hf_round_trip(kind, tmp_root):
    _, path = hf_model(kind, tmp_root)
    state = load_state_dict(path)
    config = t5.T5Config.from_hf(read_config(path))
    back = hf_t5.params_to_hf(hf_t5.params_from_hf(state, config), config)
    assert back.keys() == state.keys()
    for name, value in state.items():
        np.testing.assert_array_equal(back[name], value, err_msg=name)


@pytest.mark.parametrize("kind", list(KINDS))
def test_export_loads_in_transformers(kind, tmp_root, tmp_path):
    module, config, params = ours(kind, tmp_root)
    _, path = hf_model(kind, tmp_root)
    rng = np.random.default_rng(5)  # "fine-tuned": every tensor moved
    tuned = jax.tree.map(lambda x: x + 0.05 * rng.standard_normal(x.shape, np.float32), params)
    out = export_pretrained(tmp_path / "export", module_config=config, params=tuned,
                            tokenizer=None, hf_config=read_config(path))
    written = json.loads((out / "config.json").read_text())
    _, model_cls, _, _ = KINDS[kind]
    assert written["architectures"] == [model_cls.__name__]
    generation = json.loads((out / GENERATION_CONFIG_FILE).read_text())
    assert generation == {"decoder_start_token_id": 0, "eos_token_id": 1, "pad_token_id": 0}
    model = transformers.AutoModelForSeq2SeqLM.from_pretrained(out).eval()
    assert type(model) is model_cls
    diff, _ = max_diff_to_hf(module, tuned, model, 2)
    print(f"{kind}: exported HF vs ours max diff {diff:.2e}")
    assert diff < 1e-4


def test_registry_and_load_pretrained(tmp_root):
    _, path = hf_model("v1.1", tmp_root)
    hf_config = read_config(path)
    module, config = registry.build_model(hf_config)
    assert isinstance(module, t5.T5Model)
    cache = registry.init_cache(config, 2, 5)
    assert cache["layers"][0]["k"].shape == (2, 5, 4, 8)
    loaded = pretrained_params(path, config, with_head=False)
    assert loaded["lm_head"]["kernel"].shape == (32, V)
    with pytest.raises(UserInputError, match="classification head"):
        pretrained_params(path, config, with_head=True, num_labels=2)
    with pytest.raises(UserInputError, match="encoder-decoder"):
        registry.build_model(hf_config, num_labels=2)
    pre = load_pretrained(path)
    _, _, params = ours("v1.1", tmp_root)
    np.testing.assert_array_equal(pre.params["embed"]["embedding"],
                                  params["embed"]["embedding"])


# ---------------------------------------------------------------------------- config


@pytest.mark.parametrize("kind", list(KINDS))
def test_config_round_trip(kind):
    config_cls, _, overrides, _ = KINDS[kind]
    hf = config_cls(**{**TINY, **overrides}).to_dict()
    config = t5.T5Config.from_hf(hf)
    assert t5.T5Config.from_hf(config.to_hf()) == config
    assert (config.num_decoder_layers, config.relative_attention_num_buckets) == (3, 8)
    assert config.gated == (kind != "v1.0")
    assert config.activation == ("relu" if kind == "v1.0" else "gelu_new")


def test_config_reads_hub_style_fields():
    # A Flan-T5 config.json as on the hub (transformers 4): tie_word_embeddings false.
    flan = {**TINY, "model_type": "t5", "feed_forward_proj": "gated-gelu",
            "tie_word_embeddings": False}
    assert not t5.T5Config.from_hf(flan).tie_word_embeddings
    # T5 v1.0: no tie field (default tied); decoder start defaults to the pad id.
    plain = {k: v for k, v in TINY.items() if k not in ("decoder_start_token_id",
                                                       "num_decoder_layers")}
    config = t5.T5Config.from_hf({**plain, "pad_token_id": 5})
    assert config.tie_word_embeddings and config.decoder_start_token_id == 5
    assert config.num_decoder_layers == TINY["num_layers"]
    # mT5 is never tied (transformers' MT5 never scales), whatever the flag says.
    assert not t5.T5Config.from_hf({**TINY, "model_type": "mt5",
                                    "tie_word_embeddings": True}).tie_word_embeddings


def test_config_errors():
    missing = {k: v for k, v in TINY.items() if k != "d_model"}
    with pytest.raises(UserInputError, match=r"conf\.json: missing field\(s\) d_model"):
        t5.T5Config.from_hf(missing, where="conf.json")
    with pytest.raises(UserInputError, match="feed_forward_proj 'gelu-gated'"):
        t5.T5Config.from_hf({**TINY, "feed_forward_proj": "gelu-gated"})
    with pytest.raises(UserInputError, match="activation 'mish'"):
        t5.T5Config.from_hf({**TINY, "feed_forward_proj": "gated-mish"})
    with pytest.raises(UserInputError, match="not a T5 model"):
        t5.T5Config.from_hf({**TINY, "model_type": "bart"})


def test_missing_weight_is_a_user_error(tmp_root):
    _, path = hf_model("v1.0", tmp_root)
    state = load_state_dict(path)
    config = t5.T5Config.from_hf(read_config(path))
    del state["decoder.block.2.layer.1.EncDecAttention.k.weight"]
    with pytest.raises(UserInputError, match=r"ckpt: missing weight decoder\.block\.2"):
        hf_t5.params_from_hf(state, config, where="ckpt")
