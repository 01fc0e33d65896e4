"""HF directories and the BERT converter: errors, round trips, export parity."""

from __future__ import annotations

import functools
import json
import logging

import jax
import numpy as np
import pytest
import torch
import transformers
from conftest import TINY_BERT, export_mean_pooled, is_bert_norm, randomize_weights
from safetensors.numpy import save_file

from sft_jax import load_pretrained
from sft_jax.errors import UserInputError
from sft_jax.hf.checkpoint_dir import load_state_dict, read_config
from sft_jax.hf.export import HEAD_WEIGHTS_FILE, export_pretrained
from sft_jax.models import BertConfig, registry
from sft_jax.models.bert import convert as hf_bert

TINY = TINY_BERT
BUFFERS = ("embeddings.position_ids", "embeddings.token_type_ids")


def make_hf_model(path, model_cls=transformers.BertModel, *, seed=0, dtype=None, **overrides):
    """A random tiny HF model with O(1)-scale weights saved as safetensors in `path`."""
    roberta = model_cls.__name__.startswith("Roberta")
    kw = {**TINY, **({"type_vocab_size": 1, "pad_token_id": 1} if roberta else {}), **overrides}
    config = (transformers.RobertaConfig if roberta else transformers.BertConfig)(**kw)
    torch.manual_seed(seed)
    model = model_cls(config).eval()
    randomize_weights(model, seed, is_bert_norm)
    if dtype is not None:
        model = model.to(dtype)
    model.save_pretrained(path, safe_serialization=True)
    return model


def batch(seed=0, *, pad=0, type_vocab=2):
    rng = np.random.default_rng(seed)
    ids = rng.integers(pad + 1, 99, (3, 10))
    mask = np.ones_like(ids)
    mask[1, 6:] = 0
    mask[2, 2:] = 0
    ids[mask == 0] = pad
    return ids, mask, rng.integers(0, type_vocab, ids.shape)


@functools.cache
def _jitted(module):
    return jax.jit(module.apply)


def run(pre, ids, mask, types):
    return _jitted(pre.module)({"params": pre.params}, ids, mask, types)


def torch_logits(model, ids, mask, types):
    with torch.no_grad():
        return model(
            input_ids=torch.tensor(ids),
            attention_mask=torch.tensor(mask),
            token_type_ids=torch.tensor(types),
        ).logits.numpy()


def tree_equal(a, b) -> bool:
    return jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b) and all(
        np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    )


# ------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("model_cls", [transformers.BertModel, transformers.RobertaModel])
def test_round_trip_both_ways(tmp_path, model_cls):
    make_hf_model(tmp_path, model_cls)
    state = load_state_dict(tmp_path)
    config = BertConfig.from_hf(read_config(tmp_path))
    params = hf_bert.params_from_hf(state, config)
    assert set(params) == {"embeddings", "layer_0", "layer_1", "pooler"}
    assert params["layer_0"]["attention"]["query"]["kernel"].shape == (32, 4, 8)
    assert params["layer_0"]["attention"]["out"]["kernel"].shape == (4, 8, 32)
    back = hf_bert.params_to_hf(params, config)
    expected = {k: v for k, v in state.items() if not k.endswith(BUFFERS)}
    assert back.keys() == expected.keys()
    for name, value in expected.items():
        np.testing.assert_array_equal(back[name], value, err_msg=name)
        assert back[name].flags.c_contiguous
    assert tree_equal(hf_bert.params_from_hf(back, config), params)


@pytest.mark.parametrize(
    "model_cls",
    [transformers.BertForSequenceClassification, transformers.RobertaForSequenceClassification],
)
def test_classifier_checkpoint_loads_with_its_head(tmp_path, model_cls):
    """A ...ForSequenceClassification checkpoint: head loaded, logits equal PyTorch."""
    hf_model = make_hf_model(tmp_path, model_cls, num_labels=3)
    pre = load_pretrained(tmp_path, num_labels=3)
    ids, mask, types = batch(1, pad=pre.config.pad_token_id, type_vocab=pre.config.type_vocab_size)
    ref = torch_logits(hf_model, ids, mask, types)
    assert np.abs(np.asarray(run(pre, ids, mask, types)["logits"]) - ref).max() < 1e-5
    state = hf_bert.classifier_to_hf(pre.params, pre.config)
    original = load_state_dict(tmp_path)
    assert state.keys() == {k for k in original if not k.endswith(BUFFERS)}
    loaded = hf_bert.params_from_hf(state, pre.config, with_head=True)
    assert tree_equal(loaded, jax.tree.map(np.asarray, pre.params))


# ------------------------------------------------------------------------------ export


@pytest.mark.parametrize("model_type", ["bert", "roberta"])
def test_export_classifier_matches_hf_auto_model(tmp_path, model_type):
    model_cls = transformers.RobertaModel if model_type == "roberta" else transformers.BertModel
    make_hf_model(tmp_path / "src", model_cls, seed=2)
    pre = load_pretrained(tmp_path / "src", num_labels=4, seed=7)  # random head
    rng = np.random.default_rng(0)
    head = {"kernel": rng.normal(0, 0.5, (32, 4)), "bias": rng.normal(0, 0.5, 4)}
    params = {**pre.params, "classifier": jax.tree.map(np.float32, head)}
    out = export_pretrained(
        tmp_path / "out",
        module_config=pre.config,
        params=params,
        tokenizer=None,
        id2label={0: "a", 1: "b", 2: "c", 3: "d"},
        hf_config=pre.hf_config,
    )
    config = json.loads((out / "config.json").read_text())
    cls_name = "RobertaForSequenceClassification" if model_type == "roberta" else "Bert"
    assert config["architectures"][0].startswith(cls_name)
    assert config["id2label"] == {"0": "a", "1": "b", "2": "c", "3": "d"}
    assert config["label2id"]["d"] == 3 and config["model_type"] == model_type
    hf_model = transformers.AutoModelForSequenceClassification.from_pretrained(out).eval()
    assert hf_model.config.num_labels == 4
    ids, mask, types = batch(3, pad=pre.config.pad_token_id, type_vocab=pre.config.type_vocab_size)
    ours = np.asarray(_jitted(pre.module)({"params": params}, ids, mask, types)["logits"])
    ref = torch_logits(hf_model, ids, mask, types)
    assert np.abs(ref).max() > 0.5
    assert np.abs(ours - ref).max() < 1e-5


def test_export_mean_pooling_writes_encoder_and_sidecar_head(tmp_path, caplog):
    make_hf_model(tmp_path / "src", seed=4)
    pre = load_pretrained(tmp_path / "src", num_labels=2, pooling="mean", seed=1)
    out = export_mean_pooled(tmp_path / "out", pre, caplog, architecture="BertModel",
                             head_keys={"kernel", "bias"})
    hf_model = transformers.AutoModel.from_pretrained(out).eval()
    ids, mask, types = batch(5)
    with torch.no_grad():
        ref = hf_model(
            input_ids=torch.tensor(ids),
            attention_mask=torch.tensor(mask),
            token_type_ids=torch.tensor(types),
        ).last_hidden_state.numpy()
    ours = run(pre, ids, mask, types)
    assert np.abs(np.asarray(ours["last_hidden_state"]) - ref).max() < 1e-5
    again = load_pretrained(out, num_labels=2, pooling="mean", seed=99)  # head read back
    np.testing.assert_array_equal(run(again, ids, mask, types)["logits"], ours["logits"])
    # Re-exporting with the pooler head removes the stale sidecar.
    export_pretrained(out, module_config=pre.config, params=pre.params, tokenizer=None)
    assert not (out / HEAD_WEIGHTS_FILE).exists()


# -------------------------------------------------------------------- checkpoint files


def test_sharded_and_bf16_checkpoints(tmp_path):
    make_hf_model(tmp_path / "one")
    model = make_hf_model(tmp_path / "sharded", max_position_embeddings=64)
    model.save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").exists()
    (tmp_path / "sharded" / "model.safetensors").unlink(missing_ok=True)
    one, sharded = load_state_dict(tmp_path / "one"), load_state_dict(tmp_path / "sharded")
    assert one.keys() == sharded.keys()
    assert all(np.array_equal(one[k], sharded[k]) for k in one)

    make_hf_model(tmp_path / "bf16", dtype=torch.bfloat16)
    pre = load_pretrained(tmp_path / "bf16")
    kernel = pre.params["layer_0"]["mlp"]["wi"]["kernel"]
    assert kernel.dtype == np.float32
    bf16 = load_state_dict(tmp_path / "bf16")["encoder.layer.0.intermediate.dense.weight"]
    np.testing.assert_array_equal(kernel, bf16.astype(np.float32).T)


def test_legacy_names_and_missing_pooler(tmp_path, caplog):
    make_hf_model(tmp_path / "src")
    state = load_state_dict(tmp_path / "src")
    rename = {"LayerNorm.weight": "LayerNorm.gamma", "LayerNorm.bias": "LayerNorm.beta"}
    legacy = {
        functools.reduce(lambda name, kv: name.replace(*kv), rename.items(), k): v
        for k, v in state.items()
        if not k.startswith("pooler.")
    }
    config = BertConfig.from_hf(read_config(tmp_path / "src"))
    params = hf_bert.params_from_hf(legacy, config)
    assert "pooler" not in params
    reference = hf_bert.params_from_hf(state, config)
    assert tree_equal(params, {k: v for k, v in reference.items() if k != "pooler"})

    (tmp_path / "nopool").mkdir()
    (tmp_path / "nopool" / "config.json").write_text((tmp_path / "src" / "config.json").read_text())
    save_file(legacy, str(tmp_path / "nopool" / "model.safetensors"))
    with caplog.at_level(logging.WARNING, logger="sft_jax.pretrained"):
        pre = load_pretrained(tmp_path / "nopool")
    assert "checkpoint has no pooler; newly initialised" in caplog.text
    assert pre.params["pooler"]["kernel"].shape == (32, 32)


def _model_dir(tmp_path, files):
    root = tmp_path / "m"
    root.mkdir()
    for name, text in files.items():
        (root / name).write_text(text)
    return root


def test_directory_errors(tmp_path):
    config = json.dumps({**TINY, "model_type": "bert"})
    missing = tmp_path / "nope"
    with pytest.raises(UserInputError) as err:
        load_pretrained(missing)
    assert str(err.value) == f"{missing}: neither a model directory nor a known asset name"
    with pytest.raises(UserInputError) as err:
        read_config(missing)
    assert str(err.value) == f"{missing}: model directory does not exist"

    root = _model_dir(tmp_path, {"model.safetensors": ""})
    with pytest.raises(UserInputError) as err:
        load_pretrained(root)
    assert str(err.value) == f"{root}/config.json: missing (not a Hugging Face model directory?)"

    (root / "model.safetensors").unlink()
    (root / "config.json").write_text(config)
    (root / "pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(UserInputError) as err:
        load_pretrained(root)
    assert str(err.value).startswith(
        f"{root}/pytorch_model.bin: pickle checkpoints are not loaded (safetensors only); "
        "convert it with"
    )
    assert "\n" not in str(err.value)

    (root / "pytorch_model.bin").unlink()
    with pytest.raises(UserInputError) as err:
        load_pretrained(root)
    assert str(err.value) == f"{root}: no model.safetensors (or index) in model directory"

    (root / "config.json").write_text(json.dumps({**TINY, "model_type": "foo"}))
    with pytest.raises(UserInputError) as err:
        load_pretrained(root)
    assert str(err.value) == (
        f"{root}/config.json: model_type 'foo' is not supported "
        f"(supported: {', '.join(registry.FAMILIES)})"
    )

    (root / "config.json").write_text('{"model_type": "bert",\n "vocab_size": }')
    with pytest.raises(UserInputError, match=r"config.json:2: invalid JSON"):
        read_config(root)

    (root / "config.json").write_text(config)
    (root / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(UserInputError, match=r"model.safetensors: cannot read safetensors file"):
        load_pretrained(root)


def test_missing_and_misshaped_weights(tmp_path):
    make_hf_model(tmp_path)
    state = load_state_dict(tmp_path)
    config = BertConfig.from_hf(read_config(tmp_path))
    partial = {k: v for k, v in state.items() if k != "encoder.layer.1.output.dense.bias"}
    with pytest.raises(UserInputError) as err:
        hf_bert.params_from_hf(partial, config, where="/ckpt")
    assert str(err.value) == "/ckpt: missing weight encoder.layer.1.output.dense.bias"
    wide = BertConfig.from_hf({**read_config(tmp_path), "vocab_size": 100})
    with pytest.raises(UserInputError) as err:
        hf_bert.params_from_hf(state, wide, where="/ckpt")
    assert str(err.value) == (
        "/ckpt: weight embeddings.word_embeddings.weight has shape [99, 32], "
        "config.json implies [100, 32]"
    )
    with pytest.raises(UserInputError, match=r"missing weight embeddings\.word_embeddings\.weight"):
        hf_bert.params_from_hf({"foo": np.zeros(1)}, config, where="/ckpt")
