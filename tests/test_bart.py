"""BART / Marian (`sft_jax/models/bart.py`, `sft_jax/hf/bart.py`) against Hugging Face's
PyTorch `BartForConditionalGeneration` / `MarianMTModel` on tiny random configs (fp32):
logits with padding, cached decoding, packing, the converter both ways, configs."""

from __future__ import annotations

import dataclasses
import functools
import json

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy
import torch
import transformers

from sft_jax.errors import UserInputError
from sft_jax.hf import export
from sft_jax.models import bart, layers
from sft_jax.models.bart import convert as hf_bart

_COMMON = {
    "d_model": 32,
    "encoder_layers": 2,
    "decoder_layers": 2,
    "encoder_attention_heads": 4,
    "decoder_attention_heads": 2,
    "encoder_ffn_dim": 48,
    "decoder_ffn_dim": 40,
    "max_position_embeddings": 40,
    "init_std": 0.1,
}
# name -> (HF config class, model class, fields). Dropout stays on (HF default 0.1) so
# that deterministic calls are what is compared.
CASES = {
    "bart": (
        transformers.BartConfig,
        transformers.BartForConditionalGeneration,
        {**_COMMON, "vocab_size": 64},
    ),
    "bart-untied": (
        transformers.BartConfig,
        transformers.BartForConditionalGeneration,
        {
            **_COMMON,
            "vocab_size": 64,
            "tie_word_embeddings": False,
            "scale_embedding": True,
            "activation_function": "relu",
        },
    ),
    "marian": (
        transformers.MarianConfig,
        transformers.MarianMTModel,
        {
            **_COMMON,
            "vocab_size": 64,
            "activation_function": "swish",
            "scale_embedding": True,
            "pad_token_id": 63,
            "decoder_start_token_id": 63,
            "eos_token_id": 0,
        },
    ),
    "marian-separate": (
        transformers.MarianConfig,
        transformers.MarianMTModel,
        {
            **_COMMON,
            "vocab_size": 64,
            "decoder_vocab_size": 48,
            "share_encoder_decoder_embeddings": False,
            "scale_embedding": True,
            "pad_token_id": 47,
            "decoder_start_token_id": 47,
            "eos_token_id": 0,
        },
    ),
}
TOL = 1e-4


class Case:
    """An HF model with random weights (every tensor, final_logits_bias too), our config and
    our params converted from its state dict."""

    def __init__(self, name: str):
        config_cls, model_cls, fields = CASES[name]
        torch.manual_seed(0)
        self.hf_config = config_cls(**fields)
        self.hf_model = model_cls(self.hf_config).eval()
        with torch.no_grad():  # norms and biases too, so that a swapped tensor shows
            for p in self.hf_model.parameters():
                if p.requires_grad:  # not Marian's fixed sinusoids
                    p.add_(0.1 * torch.randn_like(p))
            self.hf_model.final_logits_bias.normal_()
        self.state = {k: v.detach().numpy().copy() for k, v in self.hf_model.state_dict().items()}
        self.config = bart.BartConfig.from_hf(self.hf_config.to_dict())
        self.params = hf_bart.params_from_hf(self.state, self.config)
        self.module = bart.BartModel(self.config)
        self._apply = jax.jit(
            lambda p, *args, **kwargs: self.module.apply({"params": p}, *args, **kwargs),
            static_argnames=("method",),
        )

    def hf_logits(self, src, src_mask, tgt, tgt_mask) -> np.ndarray:
        return _hf_logits(self.hf_model, src, src_mask, tgt, tgt_mask)

    def apply(self, *args, params=None, **kwargs):
        """Our module (jit-compiled) with the converted params or `params`."""
        return self._apply(self.params if params is None else params, *args, **kwargs)


def _hf_logits(model, src, src_mask, tgt, tgt_mask) -> np.ndarray:
    with torch.no_grad():
        return model(
            input_ids=torch.tensor(src),
            attention_mask=torch.tensor(src_mask),
            decoder_input_ids=torch.tensor(tgt),
            decoder_attention_mask=torch.tensor(tgt_mask),
        ).logits.numpy()


@functools.cache
def _case(name: str) -> Case:
    return Case(name)


@pytest.fixture(scope="module", params=list(CASES))
def case(request) -> Case:
    return _case(request.param)


def _ids(rng: np.random.RandomState, shape, vocab: int) -> np.ndarray:
    return rng.randint(3, vocab - 1, shape).astype(np.int32)


def _padded_batch(case: Case):
    """Two rows; source row 1 and target row 0 end in padding (mask 0)."""
    rng = np.random.RandomState(1)
    src = _ids(rng, (2, 9), case.config.vocab_size)
    tgt = _ids(rng, (2, 7), case.config.decoder_vocab_size)
    src_mask = np.ones_like(src)
    src_mask[1, 6:] = 0
    tgt_mask = np.ones_like(tgt)
    tgt_mask[0, 5:] = 0
    src[src_mask == 0] = case.config.pad_token_id
    tgt[tgt_mask == 0] = case.config.pad_token_id
    return src, src_mask, tgt, tgt_mask


def test_logits_match_hugging_face(case):
    src, src_mask, tgt, tgt_mask = _padded_batch(case)
    ref = case.hf_logits(src, src_mask, tgt, tgt_mask)
    ours = case.apply(src, tgt, encoder_segment_ids=src_mask, decoder_segment_ids=tgt_mask)
    ours = np.asarray(ours["logits"])
    assert ours.dtype == np.float32 and ours.shape == ref.shape
    real = tgt_mask.astype(bool)
    diff = np.abs(ours - ref)[real].max()
    print(f"logits max abs diff vs HF ({case.config.model_type}): {diff:.3g}")
    assert diff < TOL
    # The comparison can fail: another row's source changes the logits.
    other = case.apply(
        src[::-1], tgt, encoder_segment_ids=src_mask[::-1], decoder_segment_ids=tgt_mask
    )["logits"]
    assert np.abs(np.asarray(other) - ref)[real].max() > 1e-2


@pytest.mark.parametrize("name", ["bart", "marian", "marian-separate"])
def test_cached_decoding_matches_full_forward_and_survives_row_reordering(name):
    case = _case(name)
    src, src_mask, tgt, _ = _padded_batch(case)
    full = case.apply(src, tgt, encoder_segment_ids=src_mask, decoder_segment_ids=np.ones_like(tgt))
    full = np.asarray(full["logits"])
    encoded = case.apply(src, encoder_segment_ids=src_mask, method="encode")
    cache = bart.init_cache(case.config, 2, tgt.shape[1] + 1)
    step = jax.jit(
        lambda p, ids, enc, seg, c: case.module.apply(
            {"params": p}, ids, enc, encoder_segment_ids=seg, cache=c, method="decode"
        )
    )
    # One token per step; halfway the rows are swapped with a plain tree.map gather (as
    # beam search reorders its beams).
    got = []
    perm = np.array([1, 0])
    for t in range(tgt.shape[1]):
        if t == 4:
            cache = jax.tree.map(lambda x: x[perm] if x.ndim else x, cache)
            encoded, src_mask, tgt = encoded[perm], src_mask[perm], tgt[perm]
            got = [g[perm] for g in got]
            full = full[perm]
        out = step(case.params, tgt[:, t : t + 1], encoded, src_mask, cache)
        got.append(np.asarray(out["logits"]))
        cache = out["cache"]
    got = np.concatenate(got, axis=1)
    assert int(cache["index"]) == tgt.shape[1]
    diff = np.abs(got - full).max()
    print(f"cached vs full max abs diff ({case.config.model_type}): {diff:.3g}")
    assert diff < 1e-5


@pytest.mark.parametrize("name", ["bart", "marian"])
def test_packed_pairs_equal_each_pair_alone(name):
    case = _case(name)
    rng = np.random.RandomState(2)
    cfg = case.config
    pairs = [
        (_ids(rng, (5,), cfg.vocab_size), _ids(rng, (4,), cfg.decoder_vocab_size)),
        (_ids(rng, (3,), cfg.vocab_size), _ids(rng, (5,), cfg.decoder_vocab_size)),
    ]
    src_len, tgt_len = 10, 10  # one padding slot on each side
    src = np.full((1, src_len), cfg.pad_token_id, np.int32)
    tgt = np.full((1, tgt_len), cfg.pad_token_id, np.int32)
    src_seg, tgt_seg = np.zeros_like(src), np.zeros_like(tgt)
    s = t = 0
    for i, (a, b) in enumerate(pairs, start=1):
        src[0, s : s + len(a)], src_seg[0, s : s + len(a)] = a, i
        tgt[0, t : t + len(b)], tgt_seg[0, t : t + len(b)] = b, i
        s, t = s + len(a), t + len(b)
    packed = case.apply(
        src,
        tgt,
        encoder_segment_ids=src_seg,
        encoder_positions=layers.positions_from_segments(jnp.asarray(src_seg)),
        decoder_segment_ids=tgt_seg,
        decoder_positions=layers.positions_from_segments(jnp.asarray(tgt_seg)),
    )["logits"]
    packed = np.asarray(packed)[0]
    # Each pair alone in its own row (right-padded to the longer one).
    src_alone = np.full((2, 5), cfg.pad_token_id, np.int32)
    tgt_alone = np.full((2, 5), cfg.pad_token_id, np.int32)
    for i, (a, b) in enumerate(pairs):
        src_alone[i, : len(a)], tgt_alone[i, : len(b)] = a, b
    alone = case.apply(
        src_alone,
        tgt_alone,
        encoder_segment_ids=(src_alone != cfg.pad_token_id).astype(np.int32),
        decoder_segment_ids=(tgt_alone != cfg.pad_token_id).astype(np.int32),
    )["logits"]
    n0, n1 = len(pairs[0][1]), len(pairs[1][1])
    diff = max(
        np.abs(packed[:n0] - np.asarray(alone)[0, :n0]).max(),
        np.abs(packed[n0 : n0 + n1] - np.asarray(alone)[1, :n1]).max(),
    )
    print(f"packed vs alone max abs diff ({cfg.model_type}): {diff:.3g}")
    assert diff < 1e-5


def _saved_state(model, tmp_path) -> dict[str, np.ndarray]:
    model.save_pretrained(tmp_path)
    return safetensors.numpy.load_file(str(tmp_path / "model.safetensors"))


def test_export_round_trip_and_pytorch_load(case, tmp_path):
    cfg = case.config
    saved = _saved_state(case.hf_model, tmp_path / "hf")
    exported = hf_bart.params_to_hf(hf_bart.params_from_hf(saved, cfg), cfg)
    assert set(exported) == set(saved)
    untied_shared = not cfg.shared_embeddings and cfg.share_encoder_decoder_embeddings
    for name, value in saved.items():
        if untied_shared and name == "model.shared.weight":
            # Unused by HF's forward pass; written as the encoder's table.
            value = saved["model.encoder.embed_tokens.weight"]
        np.testing.assert_array_equal(exported[name], value, err_msg=name)

    # Our params (trained a little: perturbed) exported, then loaded by PyTorch.
    params = jax.tree.map(lambda x: x + 0.01 * np.sign(x), case.params)
    out = export.export_pretrained(
        tmp_path / "export", module_config=cfg, params=params, tokenizer=None
    )
    loaded, info = transformers.AutoModelForSeq2SeqLM.from_pretrained(out, output_loading_info=True)
    assert type(loaded) is type(case.hf_model)
    generation = json.loads((out / "generation_config.json").read_text())
    assert generation["decoder_start_token_id"] == cfg.decoder_start_token_id
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    src, src_mask, tgt, tgt_mask = _padded_batch(case)
    ref = _hf_logits(loaded.eval(), src, src_mask, tgt, tgt_mask)
    ours = case.apply(
        src, tgt, params=params, encoder_segment_ids=src_mask, decoder_segment_ids=tgt_mask
    )["logits"]
    diff = np.abs(np.asarray(ours) - ref)[tgt_mask.astype(bool)].max()
    print(f"exported model (PyTorch) vs ours max abs diff ({cfg.model_type}): {diff:.3g}")
    assert diff < TOL


def test_param_tree_matches_init(case):
    src, _, tgt, _ = _padded_batch(case)
    shapes = jax.eval_shape(lambda: case.module.init(jax.random.key(0), src, tgt)["params"])
    flat = flax.traverse_util.flatten_dict
    ours = {k: v.shape for k, v in flat(flax.linen.meta.unbox(shapes)).items()}
    assert ours == {k: v.shape for k, v in flat(case.params).items()}


def test_final_logits_bias_takes_no_gradient_and_remat_keeps_gradients():
    case = _case("bart-untied")
    src, src_mask, tgt, tgt_mask = _padded_batch(case)

    def grads(config):
        def loss(p):
            logits = bart.BartModel(config).apply(
                {"params": p}, src, tgt, encoder_segment_ids=src_mask, decoder_segment_ids=tgt_mask
            )["logits"]
            return jnp.sum(jax.nn.log_softmax(logits)[..., 3] * tgt_mask)

        return jax.jit(jax.grad(loss))(case.params)

    plain = grads(case.config)
    assert not np.any(np.asarray(plain["final_logits_bias"]))
    assert np.any(np.asarray(plain["lm_head"]["kernel"]))
    remat = grads(dataclasses.replace(case.config, remat_policy="full"))
    diff = max(jax.tree.leaves(jax.tree.map(lambda a, b: float(np.abs(a - b).max()), plain, remat)))
    assert diff < 1e-6


def test_gradients_match_hugging_face(case):
    """Every parameter's gradient equals PyTorch's, with the decoder start token (pad for
    Marian) as a real input: HF's `padding_idx` keeps the pad row out of the lookup's
    gradient."""
    src, src_mask, tgt, tgt_mask = _padded_batch(case)
    tgt[:, 0] = case.config.decoder_start_token_id

    def loss(p):
        logits = case.module.apply(
            {"params": p}, src, tgt, encoder_segment_ids=src_mask, decoder_segment_ids=tgt_mask
        )["logits"]
        return jnp.sum(jax.nn.log_softmax(logits)[..., 3] * tgt_mask)

    ours = jax.jit(jax.grad(loss))(case.params)
    model = case.hf_model
    model.zero_grad()
    logits = model(
        input_ids=torch.tensor(src),
        attention_mask=torch.tensor(src_mask),
        decoder_input_ids=torch.tensor(tgt),
        decoder_attention_mask=torch.tensor(tgt_mask),
    ).logits
    (torch.log_softmax(logits, -1)[..., 3] * torch.tensor(tgt_mask)).sum().backward()
    grads = {
        k: np.zeros(v.shape, np.float32) if v.grad is None else v.grad.numpy().copy()
        for k, v in model.state_dict(keep_vars=True).items()
    }
    model.zero_grad()
    ref = hf_bart.params_from_hf(grads, case.config)
    flat = flax.traverse_util.flatten_dict
    ours, ref = flat(ours), flat(ref)
    assert ours.keys() == ref.keys()
    for key in ours:
        np.testing.assert_allclose(ours[key], ref[key], atol=1e-4, rtol=1e-4, err_msg=str(key))


@pytest.mark.parametrize("name", list(CASES))
def test_config_round_trip(name):
    config_cls, _, fields = CASES[name]
    hf = config_cls(**fields).to_dict()
    cfg = bart.BartConfig.from_hf(hf)
    assert bart.BartConfig.from_hf(cfg.to_hf()) == cfg
    again = config_cls(**cfg.to_hf()).to_dict()
    for key, value in cfg.to_hf().items():
        assert again[key] == value, key
    assert cfg.model_type == hf["model_type"]


def test_config_errors_are_one_line():
    fields = {**CASES["bart"][2], "model_type": "bart"}
    del fields["d_model"]
    with pytest.raises(UserInputError, match=r"^cfg\.json: missing field\(s\) d_model$"):
        bart.BartConfig.from_hf(fields, where="cfg.json")
    with pytest.raises(UserInputError, match="activation_function 'nope'"):
        bart.BartConfig.from_hf({**CASES["bart"][2], "activation_function": "nope"})
    with pytest.raises(UserInputError, match="not a BART-family"):
        bart.BartConfig.from_hf({**CASES["bart"][2], "model_type": "t5"})
    with pytest.raises(UserInputError, match="encoder_attention_heads 5"):
        bart.BartConfig.from_hf({**CASES["bart"][2], "encoder_attention_heads": 5})


def test_converter_names_missing_weight():
    case = _case("marian")
    state = dict(case.state)
    del state["model.decoder.layers.1.fc2.weight"]
    with pytest.raises(UserInputError, match=r"missing weight model\.decoder\.layers\.1\.fc2"):
        hf_bart.params_from_hf(state, case.config, where="ckpt")
