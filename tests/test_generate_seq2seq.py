"""Encoder-decoder generation (`sft_jax.generation.generate_ids`, i.e.
`generation.generate_seq2seq` over a family module) equals Hugging Face's `generate` of
`T5ForConditionalGeneration`, `BartForConditionalGeneration` and `MarianMTModel` token for
token: tiny random models with the same weights, right-padded sources of different
lengths, greedy and beam search (length penalties, early_stopping True / False /
"never", several returned hypotheses, BART's forced EOS), and batching with filler rows."""

from __future__ import annotations

import functools

import jax
import numpy as np
import pytest
import torch
import transformers

from sft_jax import generation
from sft_jax.errors import UserInputError
from sft_jax.models import bart, t5
from sft_jax.models.bart import convert as hf_bart
from sft_jax.models.t5 import convert as hf_t5

V, N_NEW = 64, 10
_BART = dict(vocab_size=V, d_model=32, encoder_layers=2, decoder_layers=2,
             encoder_attention_heads=4, decoder_attention_heads=2, encoder_ffn_dim=48,
             decoder_ffn_dim=40, max_position_embeddings=64, dropout=0.0)
# family: (HF config class, model class, fields, weight scale, a token the model often
# picks, used as the stop token so that hypotheses end at different lengths)
FAMILIES = {
    "t5": (transformers.T5Config, transformers.T5ForConditionalGeneration,
           dict(vocab_size=V, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_decoder_layers=2,
                num_heads=4, relative_attention_num_buckets=8,
                relative_attention_max_distance=12, dropout_rate=0.0,
                decoder_start_token_id=0, feed_forward_proj="gated-gelu",
                tie_word_embeddings=False), 0.5, 58),
    # BART keeps its default forced_eos_token_id=2: the last step is forced to EOS.
    "bart": (transformers.BartConfig, transformers.BartForConditionalGeneration, _BART, 0.3,
             43),
    "marian": (transformers.MarianConfig, transformers.MarianMTModel,
               dict(_BART, pad_token_id=63, decoder_start_token_id=63, eos_token_id=0,
                    forced_eos_token_id=None, scale_embedding=True), 0.5, 32),
}


@functools.cache
def family(name):
    """(HF model, our module, config, params) from the same random weights."""
    config_cls, model_cls, fields, scale, _ = FAMILIES[name]
    torch.manual_seed(0)
    hf_config = config_cls(**fields)
    model = model_cls(hf_config).eval()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # O(1) weights: peaked next-token distributions, no near-ties
        for pname, p in model.named_parameters():
            if name == "t5":
                noise = torch.randn(p.shape, generator=gen)
                p.copy_(1.0 + 0.2 * noise if "norm" in pname else scale * noise)
            elif p.ndim == 2 and "embed_positions" not in pname:
                p.normal_(0.0, scale, generator=gen)
            elif p.ndim == 1 and "bias" in pname:
                p.normal_(0.0, 0.1, generator=gen)
        if name != "t5":
            model.final_logits_bias.normal_(generator=gen)
    state = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
    if name == "t5":
        config = t5.T5Config.from_hf(hf_config.to_dict())
        return model, t5.T5Model(config), config, hf_t5.params_from_hf(state, config)
    config = bart.BartConfig.from_hf(hf_config.to_dict())
    return model, bart.BartModel(config), config, hf_bart.params_from_hf(state, config)


SOURCES = [[int(t) for t in np.random.default_rng(0).integers(3, V - 1, n)]
           for n in (5, 9, 3, 12, 7)]


def hf_generate(name, sources, stops, **settings):
    """HF generate on right-padded sources; each result cut after its first stop token."""
    model, _, config, _ = family(name)
    width = max(map(len, sources))
    ids = np.full((len(sources), width), config.pad_token_id, np.int64)
    mask = np.zeros_like(ids)
    for i, s in enumerate(sources):
        ids[i, : len(s)], mask[i, : len(s)] = s, 1
    with torch.no_grad():
        out = model.generate(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                             do_sample=False, max_new_tokens=N_NEW, eos_token_id=list(stops),
                             **settings)
    results = []
    for row in out[:, 1:].tolist():  # without the decoder start token
        ends = [i for i, t in enumerate(row) if t in stops]
        results.append(row[: ends[0] + 1] if ends else row)
    return results


def ours(name, sources, **settings):
    _, module, config, params = family(name)
    return generation.generate_ids(module, config, params, sources,
                                   max_new_tokens=N_NEW, **settings)


SETTINGS = [  # num_beams, length_penalty, early_stopping, num_return_sequences
    (1, 1.0, False, 1),
    (4, 2.0, True, 2),
    (4, 0.0, "never", 3),
    (4, -1.0, False, 1),
    (4, 1.5, "never", 1),
]


@pytest.mark.parametrize("name", list(FAMILIES))
def test_greedy_and_beam_search_equal_hugging_face(name):
    stop = FAMILIES[name][-1]
    ended, results = [], []
    for num_beams, length_penalty, early_stopping, num_return in SETTINGS:
        beam = dict(num_beams=num_beams, length_penalty=length_penalty,
                    early_stopping=early_stopping, num_return_sequences=num_return)
        ref = hf_generate(name, SOURCES, [stop], **beam)
        assert ours(name, SOURCES, stop_token_ids=[stop], **beam) == ref, beam
        ended += [r[-1] == stop for r in ref]
        results.append(ref[::num_return])
    assert any(ended) and not all(ended)  # hypotheses of several lengths competed
    assert len({str(r) for r in results}) >= 3  # the settings matter
    if name == "marian":  # two sources per call, the last call with a filler row
        assert ours(name, SOURCES, stop_token_ids=[stop], num_beams=4, length_penalty=-1.0,
                    batch_size=2) == results[3]


def test_config_defaults_and_forced_eos():
    """No stop ids given: BART's config eos (2) stops, and its forced EOS ends the
    hypotheses that reach max_new_tokens, as in Hugging Face."""
    _, _, config, _ = family("bart")
    assert config.eos_token_id == 2 and config.forced_eos_token_id == 2
    for num_beams in (1, 4):
        ref = hf_generate("bart", SOURCES, [2], num_beams=num_beams)
        assert ours("bart", SOURCES, num_beams=num_beams) == ref
        assert all(r[-1] == 2 for r in ref) and any(len(r) == N_NEW for r in ref)


def test_sampling():
    greedy = ours("t5", SOURCES)
    rng = jax.random.key(3)
    sampled = ours("t5", SOURCES, temperature=2.0, top_k=5, rng=rng)
    assert sampled != greedy
    assert ours("t5", SOURCES[::-1], temperature=2.0, top_k=5, rng=rng, batch_size=2) \
        != sampled[::-1]  # an input's draws follow its index
    assert ours("t5", SOURCES, temperature=2.0, top_k=5, rng=rng, batch_size=2) == sampled
    # Every sampled token is among the 5 most likely under HF's full forward.
    model = family("t5")[0]
    for source, target in zip(SOURCES, sampled, strict=True):
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([source]),
                           decoder_input_ids=torch.tensor([[0, *target]])).logits[0].numpy()
        for step, token in enumerate(target):
            assert token in np.argsort(-logits[step])[:5]


def test_bad_inputs_are_user_errors():
    with pytest.raises(UserInputError, match="source 1 is empty"):
        ours("t5", [[3], []])
    with pytest.raises(UserInputError, match="max_new_tokens"):
        generation.generate_ids(*family("t5")[1:], [[3]], max_new_tokens=0)
