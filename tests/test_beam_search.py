"""Beam search (`sft_jax.generation.generate(num_beams=...)`) on a tiny random Llama equals
`LlamaForCausalLM.generate` token for token: left-padded prompts of different lengths,
length penalties of both signs, early_stopping True / False / "never", one or two stop
tokens, several returned hypotheses, and any batching."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
import transformers
from conftest import LLAMA

from sft_jax import generation
from sft_jax.errors import UserInputError
from sft_jax.models import llama
from sft_jax.models.llama import convert as hf_llama

N_NEW = 12
# Tokens the model often picks (so hypotheses end at different lengths) serve as EOS.
EOS, EOS2, PAD = 4, 35, 0


@pytest.fixture(scope="module")
def models():
    """(HF model, our step_fn, init_cache_fn, params) from the same random weights."""
    config = transformers.LlamaConfig(**LLAMA)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).eval()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # O(1) weights: peaked next-token distributions, no near-ties
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen) * 0.5
            p.copy_(noise + 1.0 if "norm" in name else noise)
    ours = llama.LlamaConfig.from_hf(model.config.to_dict())
    params = hf_llama.params_from_hf({k: v.numpy() for k, v in model.state_dict().items()},
                                     ours)
    module = llama.LlamaModel(ours)

    def step(params, input_ids, positions, segment_ids, cache):
        out = module.apply({"params": params}, input_ids, positions=positions,
                           segment_ids=segment_ids, cache=cache)
        return out["logits"], out["cache"]

    return model, step, functools.partial(llama.init_cache, ours), params


@pytest.fixture(scope="module")
def prompts():
    rng = np.random.default_rng(0)
    return [[int(t) for t in rng.integers(3, LLAMA["vocab_size"], n)] for n in (3, 7, 1, 11, 5)]


def hf_generate(model, prompts, eos, **settings):
    """HF beam search on the left-padded prompts; each result cut after its first EOS."""
    width = max(map(len, prompts))
    ids = np.full((len(prompts), width), PAD, np.int64)
    mask = np.zeros_like(ids)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):], mask[i, width - len(p):] = p, 1
    with torch.no_grad():
        out = model.generate(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                             do_sample=False, max_new_tokens=N_NEW, pad_token_id=PAD,
                             eos_token_id=list(eos), **settings)
    results = []
    for row in out[:, width:].tolist():
        ends = [i for i, t in enumerate(row) if t in eos]
        results.append(row[: ends[0] + 1] if ends else row)
    return results


def ours(models, prompts, eos, **settings):
    _, step, init_cache, params = models
    return generation.generate(step, params, init_cache, prompts, max_new_tokens=N_NEW,
                               pad_id=PAD, stop_token_ids=eos, **settings)


@pytest.mark.parametrize(
    ("eos", "num_beams", "length_penalty", "early_stopping", "num_return_sequences"),
    [
        ((EOS,), 4, 1.0, False, 1),
        ((EOS,), 4, 2.0, True, 1),
        ((EOS,), 3, 0.0, "never", 3),
        ((EOS,), 4, -1.0, False, 1),
        ((EOS, EOS2), 4, 1.5, "never", 2),
        ((EOS, EOS2), 5, 0.7, True, 4),
    ],
)
def test_beam_search_equals_hugging_face(models, prompts, eos, num_beams, length_penalty,
                                         early_stopping, num_return_sequences):
    settings = dict(num_beams=num_beams, length_penalty=length_penalty,
                    early_stopping=early_stopping, num_return_sequences=num_return_sequences)
    ref = hf_generate(models[0], prompts, eos, **settings)
    assert ours(models, prompts, eos, **settings) == ref
    assert any(r[-1] in eos for r in ref)  # hypotheses of several lengths compete
    assert any(len(r) == N_NEW and r[-1] not in eos for r in ref) or length_penalty < 0


def test_settings_change_the_result_and_batching_does_not(models, prompts):
    eos = (EOS,)
    base = ours(models, prompts, eos, num_beams=4)
    # The length penalty and early stopping decide between hypotheses of different lengths.
    assert ours(models, prompts, eos, num_beams=4, length_penalty=-1.0) != base
    assert ours(models, prompts, eos, num_beams=4, length_penalty=2.0, early_stopping=True) \
        != base
    assert ours(models, prompts, eos, num_beams=4) != ours(models, prompts, eos)  # vs greedy
    # Two inputs per call (the last call completed with a dummy row), in another order.
    assert ours(models, prompts, eos, num_beams=4, batch_size=2) == base
    assert ours(models, prompts[::-1], eos, num_beams=4, batch_size=2) == base[::-1]


def test_num_beams_1_is_greedy_as_hugging_face(models, prompts):
    eos = (EOS,)
    assert ours(models, prompts, eos) == hf_generate(models[0], prompts, eos, num_beams=1)


def test_bad_beam_settings_are_user_errors(models, prompts):
    with pytest.raises(UserInputError, match="num_return_sequences"):
        ours(models, prompts, (EOS,), num_beams=2, num_return_sequences=3)
    with pytest.raises(UserInputError, match="early_stopping"):
        ours(models, prompts, (EOS,), num_beams=2, early_stopping="sometimes")
    with pytest.raises(UserInputError, match="deterministic"):
        ours(models, prompts, (EOS,), num_beams=2, temperature=0.7,
             rng=np.random.default_rng(0))
