"""`sft_jax/models/registry.py`: the `model.dropout` override reaches every family."""

import dataclasses

import pytest

from experiments import bench_models as bm
from sft_jax.errors import UserInputError
from sft_jax.models import registry

TINY_BART = {"model_type": "bart", "vocab_size": 64, "d_model": 16, "encoder_layers": 1,
             "decoder_layers": 1, "encoder_attention_heads": 2, "decoder_attention_heads": 2,
             "encoder_ffn_dim": 32, "decoder_ffn_dim": 32, "max_position_embeddings": 32}


@pytest.mark.parametrize("hf", [*bm.TINY.values(), TINY_BART], ids=[*bm.TINY, "bart"])
def test_with_dropout_sets_every_dropout_rate_the_model_reads(hf):
    _, plain = registry.build_model(hf)
    _, dropped = registry.build_model(registry.with_dropout(hf, 0.25))
    rates = {f.name: getattr(dropped, f.name) for f in dataclasses.fields(dropped)
             if ("dropout" in f.name or f.name.endswith("pdrop"))
             and f.name != "classifier_dropout"}  # model.classifier_dropout sets that one
    assert rates and all(v == 0.25 for v in rates.values()), rates
    changed = {f.name for f in dataclasses.fields(plain)
               if getattr(plain, f.name) != getattr(dropped, f.name)}
    assert changed <= set(rates)


def test_with_dropout_names_an_unknown_model_type():
    with pytest.raises(UserInputError, match=r"^cfg\.json: model_type 'opt' is not supported"):
        registry.with_dropout({"model_type": "opt"}, 0.1, where="cfg.json")
