"""Qwen3 against transformers PyTorch on one random tiny model (GQA, explicit head_dim,
attention biases, a sliding-window layer): logits, gradients, cached decoding, packing,
export to Hugging Face (causal LM and sequence classifier) and a LoRA adapter in PEFT.

The checks are written once here, over a `Case` (our module and params next to the HF
model they came from, the module fixture `case`); tests/test_gemma3.py runs the same
tests on Gemma 3.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from conftest import LLAMA, V
from flax import traverse_util

from sft_jax import load_pretrained, peft
from sft_jax.errors import UserInputError
from sft_jax.hf.checkpoint_dir import CONFIG_FILE, WEIGHTS_FILE, save_state_dict
from sft_jax.hf.export import export_pretrained
from sft_jax.models import SequenceClassifier, axes, init_cache, layers, registry
from sft_jax.models.family import Family
from sft_jax.models.qwen3 import FAMILY, Qwen3Config

QWEN3 = {
    **LLAMA,
    "head_dim": 16,  # not hidden_size / heads = 8
    "attention_bias": True,
    "use_sliding_window": True,
    "sliding_window": 3,
    "max_window_layers": 1,  # layer 1 slides, layer 0 is global
}


@dataclasses.dataclass
class Case:
    """One tiny model: the HF causal LM, its directory, and ours loaded from it."""

    family: Family
    hf_model: Any
    path: Path
    module: Any
    params: Any
    config: Any

    @property
    def architectures(self):
        return self.family.architectures[self.config.model_type]


def make_case(family: Family, hf_config: Any, path: Path, seed: int = 0) -> Case:
    """A random HF causal LM with O(1)-scale weights (norm weights near 1), saved to `path`
    and loaded back with `load_pretrained`."""
    arch = family.architectures[hf_config.model_type]
    torch.manual_seed(seed)
    model = getattr(transformers, arch.causal_lm)(hf_config).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen) * 0.2
            p.copy_(noise + float(name.endswith("norm.weight")))
    model.save_pretrained(path, safe_serialization=True)
    pre = load_pretrained(path)
    return Case(family, model, path, pre.module, pre.params, pre.config)


@pytest.fixture(scope="module")
def case(tmp_path_factory) -> Case:
    config = transformers.Qwen3Config(**QWEN3, tie_word_embeddings=False)
    return make_case(FAMILY, config, tmp_path_factory.mktemp("qwen3"))


@functools.cache
def _jitted(module):
    return jax.jit(module.apply)


def apply(module, params, *args, **kwargs):
    return _jitted(module)({"params": params}, *args, **kwargs)


def torch_logits(model, ids, mask=None):
    kw = {} if mask is None else {"attention_mask": torch.tensor(mask)}
    with torch.no_grad():
        return model(input_ids=torch.tensor(ids), **kw).logits.numpy()


def padded_batch(seed: int):
    """ids [3, 10] (never 0) and mask: row 1 right-padded, row 2 left-padded."""
    ids = np.random.default_rng(seed).integers(3, V, (3, 10))
    mask = np.ones_like(ids)
    mask[1, 6:] = 0
    mask[2, :4] = 0
    ids[mask == 0] = 0
    return ids, mask


def forward(case: Case, ids, mask, params=None, module=None) -> np.ndarray:
    """Our logits [B, T, V] for ids and an attention mask, through our batch contract
    (segment ids; positions counting real tokens from 0, as left padding needs). Every
    [3, 10] batch of a module runs one compiled program."""
    segments = jnp.asarray(mask, jnp.int32)
    positions = layers.positions_from_segments(segments)
    out = apply(module or case.module, case.params if params is None else params,
                jnp.asarray(ids, jnp.int32), positions=positions, segment_ids=segments)
    return np.asarray(out["logits"])


# ------------------------------------------------------------------------ shared checks


def check_logits(case: Case, changed: Any = None) -> None:
    """Padded (left and right) and unpadded logits equal HF's; `changed`, a config whose
    difference from `case.config` must change the logits (the feature is exercised)."""
    ids, mask = padded_batch(1)
    ref = torch_logits(case.hf_model, ids, mask)
    assert np.abs(forward(case, ids, mask) - ref)[mask.astype(bool)].max() < 1e-4
    assert np.abs(ref).max() > 1.0  # not a comparison of near-zeros
    full, ones = np.random.default_rng(2).integers(0, V, ids.shape), np.ones_like(mask)
    ours = forward(case, full, ones)
    assert np.abs(ours - torch_logits(case.hf_model, full)).max() < 1e-4
    if changed is not None:
        other = forward(case, full, ones, module=type(case.module)(changed))
        assert np.abs(other - ours).max() > 1e-2


def check_gradients(case: Case) -> None:
    """The gradient of a masked next-token loss equals torch's, tensor by tensor (our
    gradient tree written with the family's converter)."""
    ids, mask = padded_batch(3)
    targets, weights = np.roll(ids, -1, axis=1), np.roll(mask, -1, axis=1) * mask
    weights[:, -1] = 0
    segments = jnp.asarray(mask, jnp.int32)
    kwargs = {"segment_ids": segments, "positions": layers.positions_from_segments(segments)}

    def loss(params):
        logits = case.module.apply({"params": params}, ids, **kwargs)["logits"]
        logp = jax.nn.log_softmax(logits)
        picked = jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
        return -(picked * weights).sum() / weights.sum()

    grads = case.family.converter.params_to_hf(jax.jit(jax.grad(loss))(case.params), case.config)
    model = case.hf_model
    model.zero_grad()
    logits = model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).logits
    logp = torch.log_softmax(logits, dim=-1)
    picked = torch.gather(logp, -1, torch.tensor(targets)[..., None])[..., 0]
    w = torch.tensor(weights, dtype=torch.float32)
    (-(picked * w).sum() / w.sum()).backward()
    theirs = {name: p.grad.numpy() for name, p in model.named_parameters()}
    assert grads.keys() == theirs.keys()
    for name, ref in theirs.items():
        np.testing.assert_allclose(grads[name], ref, atol=2e-5 + 1e-3 * np.abs(ref).max(),
                                   err_msg=name)
    assert max(np.abs(g).max() for g in theirs.values()) > 1e-2


def check_cached_decoding(case: Case) -> None:
    """Left-padded prompts (6, 4 and 5 tokens): prefill, then 4 one-token steps, equal the
    uncached forward of the whole padded batch."""
    rng = np.random.default_rng(4)
    width, steps = 6, rng.integers(1, V, (3, 4))
    lengths = np.array([6, 4, 5])
    segs = (np.arange(width)[None] >= width - lengths[:, None]).astype(np.int32)
    ids = rng.integers(1, V, (3, width)) * segs
    pos = layers.positions_from_segments(jnp.asarray(segs))
    cache = init_cache(case.config, 3, width + steps.shape[1])
    out = apply(case.module, case.params, ids, positions=pos, segment_ids=segs, cache=cache)
    cached = [np.asarray(out["logits"])]
    for j in range(steps.shape[1]):
        out = apply(case.module, case.params, steps[:, j : j + 1],
                    positions=(lengths + j)[:, None], segment_ids=np.ones((3, 1), np.int32),
                    cache=out["cache"])
        cached.append(np.asarray(out["logits"]))
    assert int(out["cache"]["index"]) == width + steps.shape[1]
    full_segs = np.concatenate([segs, np.ones_like(steps)], axis=1)
    full = forward(case, np.concatenate([ids, steps], axis=1), full_segs)
    err = np.abs(full - np.concatenate(cached, axis=1))[full_segs.astype(bool)]
    assert err.max() < 1e-5


def check_packing(case: Case) -> None:
    """Two sequences packed in one row (then padding) equal each alone in its own row."""
    rng = np.random.default_rng(5)
    a, b = rng.integers(1, V, 4), rng.integers(1, V, 3)
    ids, segments = np.zeros((3, 10), np.int32), np.zeros((3, 10), np.int32)
    ids[0, :7], segments[0, :7] = np.concatenate([a, b]), [1, 1, 1, 1, 2, 2, 2]
    ids[1, :4], segments[1, :4] = a, 1
    ids[2, :3], segments[2, :3] = b, 1
    out = forward(case, ids, segments)
    np.testing.assert_allclose(out[0, :4], out[1, :4], atol=1e-5)
    np.testing.assert_allclose(out[0, 4:7], out[2, :3], atol=1e-5)


def write_hf_dir(path: Path, state: dict, config: Any, arch: str, **extra) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    save_state_dict(state, path / WEIGHTS_FILE)
    hf_config = {**config.to_hf(), "architectures": [arch], **extra}
    (path / CONFIG_FILE).write_text(json.dumps(hf_config))
    return path


def check_export(case: Case, tmp_path: Path) -> None:
    """Our params, changed, written by the converter as `...ForCausalLM` and as a
    `...ForSequenceClassification` (pooling 'last'), load in transformers and give our
    logits."""
    conv, arch = case.family.converter, case.architectures
    params = jax.tree.map(lambda x: x * 1.1, case.params)
    out = write_hf_dir(tmp_path / "lm", conv.params_to_hf(params, case.config), case.config,
                       arch.causal_lm)
    hf = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    ids, mask = padded_batch(6)
    ours = forward(case, ids, mask, params)
    assert np.abs(ours - torch_logits(hf, ids, mask))[mask.astype(bool)].max() < 1e-4

    module = SequenceClassifier(config=case.config, num_labels=3, pooling="last",
                                encoder_cls=type(case.module), classifier_bias=False)
    head = {"kernel": np.random.default_rng(7).normal(0, 0.3, (case.config.hidden_size, 3))
            .astype(np.float32)}
    cls_params = {"encoder": {k: v for k, v in params.items() if k != "lm_head"},
                  "classifier": head}
    state = conv.classifier_to_hf(cls_params, case.config)
    out = write_hf_dir(tmp_path / "cls", state, case.config, arch.sequence_classification,
                       num_labels=3, pad_token_id=0)
    hf = transformers.AutoModelForSequenceClassification.from_pretrained(out).eval()
    ids[2] = np.roll(ids[2], -4)  # HF finds the last token by pad id: right padding only
    mask[2] = np.roll(mask[2], -4)
    ours = np.asarray(apply(module, cls_params, ids, mask)["logits"])
    np.testing.assert_allclose(ours, torch_logits(hf, ids, mask), atol=1e-4)
    # The exported classifier reads back whole (backbone and score).
    back = load_pretrained(out, num_labels=3)
    assert jax.tree.all(jax.tree.map(np.array_equal, back.params, cls_params))
    check_adapter_tables(case, conv.params_to_hf(params, case.config), params, None)
    check_adapter_tables(case, state, cls_params, 3)


def check_adapter_tables(case: Case, state: dict, params: Any, num_labels: int | None) -> None:
    """`converter.adapter_tables` names every exported tensor once, each from leaves of
    our tree that hold it (PEFT adapter export reads them)."""
    flat = traverse_util.flatten_dict(params)
    names = set()
    for table in case.family.converter.adapter_tables(case.config, num_labels):
        for entry in table.entries:
            leaves = [flat[(*table.ours, *path)] for path in entry.paths]
            np.testing.assert_array_equal(entry.to_hf(*leaves), state[table.hf_prefix
                                                                      + entry.hf_name])
            names.add(table.hf_prefix + entry.hf_name)
    assert names == set(state)


def check_export_pretrained(case: Case, tmp_path: Path) -> None:
    """`export_pretrained` writes the causal LM transformers reads back."""
    out = export_pretrained(tmp_path / "export", module_config=case.config,
                            params=case.params, tokenizer=None)
    hf = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    full = np.random.default_rng(8).integers(0, V, (3, 10))
    ours = forward(case, full, np.ones_like(full))
    np.testing.assert_allclose(ours, torch_logits(hf, full), atol=1e-4)


def check_lora_in_peft(case: Case, tmp_path: Path) -> None:
    """LoRA on every projection kernel of the layers; the adapter written in PEFT's layout
    and loaded by `peft.PeftModel` on the HF model gives our merged logits."""
    from peft import PeftModel
    from test_peft import peft_config

    ids, mask = np.random.default_rng(9).integers(1, V, (3, 10)), np.ones((3, 10), np.int32)
    abstract = jax.eval_shape(case.module.init, jax.random.key(0), jnp.asarray(ids))["params"]
    plan = peft.Plan(peft_config(lora_rank=4, lora_alpha=12.0,
                                 lora_targets=(r"layer_\d+/(attention|mlp)/\w+/kernel",)),
                     abstract, case.params)
    assert len(plan.targets) == 7 * case.config.num_hidden_layers
    adapters = plan.init_adapters(jax.random.key(0))
    rng = np.random.default_rng(0)
    adapters = jax.tree_util.tree_map_with_path(  # a trained-looking adapter: random B
        lambda p, x: jnp.asarray(rng.normal(0, 0.05, x.shape), x.dtype)
        if p[-1].key == "lora_b" else x, adapters)
    _, frozen = plan.split(case.params, adapters)
    merged = jax.device_get(plan.combine({"lora": adapters}, frozen))
    ours = forward(case, ids, mask, merged)
    assert np.abs(ours - forward(case, ids, mask)).max() > 1e-3
    layout = peft.adapter_layout(plan, case.module, case.config)
    assert not isinstance(layout, str), layout
    out = peft.write_adapter(tmp_path / "adapter", plan, layout, {"lora": adapters}, merged,
                             str(case.path))
    adapter_config = json.loads((out / "adapter_config.json").read_text())
    assert adapter_config["task_type"] == "CAUSAL_LM"
    assert "model.layers.1.self_attn.o_proj" in adapter_config["target_modules"]
    hf = getattr(transformers, case.architectures.causal_lm).from_pretrained(case.path)
    model = PeftModel.from_pretrained(hf, out).eval()
    with torch.no_grad():
        theirs = model(input_ids=torch.from_numpy(ids.astype(np.int64))).logits.numpy()
    np.testing.assert_allclose(theirs, ours, atol=1e-4)


# ------------------------------------------------------------------------------ tests


def test_config_reads_and_writes_qwen3(case):
    cfg = case.config
    assert isinstance(cfg, Qwen3Config) and registry.family_of(cfg).module_cls is FAMILY.module_cls
    assert (cfg.head_dim, cfg.qkv_bias, cfg.out_bias, cfg.mlp_bias) == (16, True, True, False)
    assert cfg.layer_types == ("full_attention", "sliding_attention")
    assert [cfg.window(i) for i in range(2)] == [None, 3]
    hf = transformers.Qwen3Config(**cfg.to_hf())
    assert Qwen3Config.from_hf(hf.to_dict()) == cfg
    assert Qwen3Config.from_hf({**QWEN3, "model_type": "qwen3", "head_dim": None}).head_dim == 8
    assert Qwen3Config.from_hf({**LLAMA, "model_type": "qwen3"}).head_dim == 128  # HF default
    with pytest.raises(UserInputError, match=r"x\.json: model_type 'qwen2' is not Qwen3"):
        Qwen3Config.from_hf({**QWEN3, "model_type": "qwen2"}, where="x.json")
    with pytest.raises(UserInputError, match=r"x\.json: missing field"):
        Qwen3Config.from_hf({"model_type": "qwen3"}, where="x.json")
    norm = case.params["layer_0"]["attention"]["q_norm"]["scale"]
    assert norm.shape == (16,)


# The family-independent tests: tests/test_gemma3.py imports them, so pytest runs them
# there on its own `case`.


def test_params_have_logical_axes_and_remat_traces(case):
    """Every parameter has logical axis names (the head-dim norms: ('kv',)); with
    `remat_policy` 'full' the module traces (its layers' static arguments are right) and
    computes logits of the same shape (remat changes no value by construction)."""
    ids = jnp.ones((3, 10), jnp.int32)
    params = jax.eval_shape(case.module.init, jax.random.key(0), ids)["params"]
    leaves = jax.tree_util.tree_leaves(params, is_leaf=lambda x: isinstance(x, nn.Partitioned))
    assert all(isinstance(leaf, nn.Partitioned) for leaf in leaves)
    assert all(len(leaf.names) == leaf.value.ndim for leaf in leaves)
    specs = nn.get_partition_spec(params)["layer_1"]["attention"]
    assert specs["q_norm"]["scale"] == jax.sharding.PartitionSpec(axes.KV)
    remat = type(case.module)(dataclasses.replace(case.config, remat_policy="full"))
    out = jax.eval_shape(functools.partial(remat.apply, deterministic=False),
                         {"params": case.params}, ids, rngs={"dropout": jax.random.key(0)})
    assert out["logits"].shape == (3, 10, V)


def test_logits_match_hf(case):
    check_logits(case, changed=dataclasses.replace(case.config, sliding_window=None))


def test_gradients_match_torch(case):
    check_gradients(case)


def test_cached_decoding_equals_full_forward(case):
    check_cached_decoding(case)


def test_packed_rows_equal_separate_sequences(case):
    check_packing(case)


def test_export_to_hf_causal_lm_and_classifier(case, tmp_path):
    check_export(case, tmp_path)


def test_export_pretrained(case, tmp_path):
    check_export_pretrained(case, tmp_path)


def test_lora_adapter_loads_in_peft(case, tmp_path):
    check_lora_in_peft(case, tmp_path)
