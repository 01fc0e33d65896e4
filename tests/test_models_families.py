"""The family plug-ins: each package's `FAMILY`, the registry built from them, and one
`UserInputError` line for a model_type no family declares (tiny configs, no compilation)."""

from __future__ import annotations

import dataclasses
import importlib

import numpy as np
import pytest

from sft_jax.errors import UserInputError
from sft_jax.hf.export import export_pretrained
from sft_jax.models import registry
from sft_jax.models.family import KINDS
from sft_jax.models.llama import LlamaConfig
from sft_jax.peft.export import hf_tensors

_TINY = {
    "bert": {"vocab_size": 11, "hidden_size": 8, "num_hidden_layers": 1,
             "num_attention_heads": 2, "intermediate_size": 16, "max_position_embeddings": 16},
    "llama": {"vocab_size": 11, "hidden_size": 8, "num_hidden_layers": 1,
              "num_attention_heads": 2, "intermediate_size": 16, "num_key_value_heads": 1},
}


def test_registry_maps_every_declared_model_type_to_its_package_family():
    for package in registry.FAMILY_PACKAGES:
        family = importlib.import_module(package).FAMILY
        assert family.kind in KINDS
        for model_type, arch in family.architectures.items():
            assert registry.FAMILIES[model_type] is family
            needed = {"encoder": ("sequence_classification",),
                      "decoder": ("causal_lm", "sequence_classification"),
                      "encoder-decoder": ("seq2seq",)}[family.kind]
            assert all(getattr(arch, field) for field in needed), (model_type, arch)
    assert registry.supported_model_types() == tuple(registry.FAMILIES)


@pytest.mark.parametrize("model_type", ["bert", "roberta", "llama", "qwen2"])
def test_adapter_tables_name_what_the_classifier_export_writes(model_type):
    """A checkpoint holding exactly the adapter tables' tensors reads back and is written
    again with the same names and values."""
    base = "bert" if model_type in ("bert", "roberta") else "llama"
    module, config = registry.build_model({**_TINY[base], "model_type": model_type},
                                          num_labels=3)
    converter = registry.family_of(config).converter
    rng = np.random.default_rng(0)
    state = {
        table.hf_prefix + e.hf_name: rng.normal(size=e.hf_shape).astype(np.float32)
        for table in converter.adapter_tables(config, 3) for e in table.entries
    }
    params = converter.params_from_hf(state, config, with_head=True, where="t")
    written = converter.classifier_to_hf(params, config)
    assert sorted(written) == sorted(state)
    for name, value in written.items():
        np.testing.assert_array_equal(value, state[name], err_msg=name)
    assert module.num_labels == 3


def test_unknown_model_type_is_one_user_input_error_everywhere(tmp_path):
    config = dataclasses.replace(LlamaConfig.from_hf(_TINY["llama"]), model_type="opt")
    with pytest.raises(UserInputError, match=r"model_type 'opt' is not supported") as err:
        registry.family_of(config)
    assert "\n" not in str(err.value)
    with pytest.raises(UserInputError, match="'opt'"):
        export_pretrained(tmp_path, module_config=config, params={}, tokenizer=None)
    with pytest.raises(UserInputError, match="'opt'"):
        hf_tensors(object(), config, {})
    with pytest.raises(UserInputError, match="'opt' is not a Llama-family decoder"):
        config.to_hf()
