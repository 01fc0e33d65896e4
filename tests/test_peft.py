"""LoRA and partial freezing (`sft_jax.peft`): exactness at init, merged = base + adapter,
the adapter in PEFT's layout loaded by `peft` in PyTorch, optimizer memory, freezing,
resume, and a decoder (Llama) family.

The reference for "base + adapter" is PEFT's own formula on activations,
y = x·W + (alpha/r)·(x·A)·B with W untouched, computed by intercepting every
`DenseGeneral` call (an independent path from the weight delta the engine trains with).
"""

from __future__ import annotations

import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import LLAMA, apply_overrides, load_config, read_metrics, tiny_overrides
from flax import linen as nn
from flax import traverse_util

from sft_jax import peft
from sft_jax.errors import UserInputError
from sft_jax.models import layers

LORA = {
    "peft.method": "lora",
    "peft.lora_rank": 4,
    "peft.lora_alpha": 8.0,
    # query/value [D, N, H] and the attention out projection [N, H, D]
    "peft.lora_targets": ("attention/(query|value|out)/kernel",),
    "optim.learning_rate": 5e-3,
    "model.dropout": 0.1,
    "train.steps": 6,
    "train.eval_every": 0,
    "checkpoint.every": 3,
    "eval.splits": ("test",),
    "eval.write_predictions": False,
    "data.buckets": (16,),  # one shape: one compilation
}
TEXTS = ["good movie", "the plot was very dull and boring", "a superb film", "awful"]


def flat(tree) -> dict:
    return {"/".join(k): np.asarray(v) for k, v in
            traverse_util.flatten_dict(nn.meta.unbox(dict(tree))).items()}


def adapter_forward(module, base_params, adapters, scale, *args, **kwargs):
    """Apply `module` with its base weights, adding (x·A)·B·scale to the output of every
    DenseGeneral that has an adapter, as PEFT's LoRA layer does."""

    def interceptor(next_fun, call_args, call_kwargs, context):
        y = next_fun(*call_args, **call_kwargs)
        dense = context.module
        if context.method_name != "__call__" or not isinstance(dense, layers.DenseGeneral):
            return y
        node = adapters
        for key in (*dense.path, "kernel"):
            if key not in node:
                return y
            node = node[key]
        x = call_args[0]
        x2 = x.reshape(*x.shape[: x.ndim - dense.in_dims], -1)  # ... in_features
        update = (x2 @ node["lora_a"]) @ node["lora_b"] * scale  # ... out_features
        return y + update.reshape(y.shape)

    with nn.intercept_methods(interceptor):
        return module.apply({"params": base_params}, *args, **kwargs)


def bert_inputs(model_dir):
    import transformers

    tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
    return tokenizer(TEXTS, padding=True, return_tensors="np")


def bert_logits(module, params, enc) -> np.ndarray:
    out = module.apply({"params": params}, jnp.asarray(enc["input_ids"]),
                       jnp.asarray(enc["attention_mask"]), jnp.asarray(enc["token_type_ids"]))
    return np.asarray(out["logits"])


def peft_config(**overrides):
    config = load_config()
    settings = {"method": "lora", **overrides}
    return apply_overrides(config, {f"peft.{k}": v for k, v in settings.items()}).peft


def test_lora_with_b_zero_is_exactly_the_base_model(tiny_bert_dir):
    from sft_jax.pretrained import load_pretrained

    pre = load_pretrained(tiny_bert_dir, num_labels=2)
    abstract = jax.eval_shape(pre.module.init, jax.random.key(0), jnp.zeros((1, 8), jnp.int32))
    plan = peft.Plan(peft_config(lora_rank=4, lora_targets=("kernel$",)),
                     abstract["params"], pre.params)
    # every kernel but the head's (which trains in full)
    assert {"/".join(t.path) for t in plan.targets} >= {
        "encoder/layer_0/attention/query/kernel", "encoder/layer_1/attention/out/kernel",
        "encoder/layer_1/mlp/wo/kernel", "encoder/pooler/kernel"}
    assert all(t.path[0] != "classifier" for t in plan.targets)
    adapters = plan.init_adapters(jax.random.key(1))
    for t in plan.targets:
        node = adapters
        for key in t.path:
            node = node[key]
        a, b = np.asarray(node["lora_a"]), np.asarray(node["lora_b"])
        assert a.shape == (t.d_in, 4) and b.shape == (4, t.d_out)
        assert np.all(b == 0) and np.abs(a).max() <= 1 / np.sqrt(t.d_in) and a.std() > 0
    trainable, frozen = plan.split(pre.params, adapters)
    assert set(flat(trainable["params"])) == {"classifier/kernel", "classifier/bias"}
    combined = plan.combine(trainable, frozen)
    reference = flat(pre.params)
    assert set(flat(combined)) == set(reference)
    for name, value in flat(combined).items():
        assert np.array_equal(value, reference[name]), name
    enc = bert_inputs(tiny_bert_dir)
    assert np.array_equal(bert_logits(pre.module, combined, enc),
                          bert_logits(pre.module, pre.params, enc))


def test_bad_peft_settings_are_user_errors(tiny_bert_dir):
    from sft_jax.pretrained import load_pretrained

    pre = load_pretrained(tiny_bert_dir, num_labels=2)
    params = pre.params
    cases = [
        ({"lora_dropout": 0.1}, "peft.lora_dropout"),
        ({"lora_targets": ("nothing_like_this",)}, "peft.lora_targets"),
        ({"lora_targets": ("(",)}, "invalid regular expression"),
        ({"method": "freeze"}, "choose what trains"),
        ({"method": "freeze", "head_only": True, "bitfit": True}, "peft.head_only"),
        ({"method": "freeze", "last_n_layers": 3}, "has 2 layers"),
        ({"method": "adapters"}, "peft.method"),
    ]
    for overrides, message in cases:
        with pytest.raises(UserInputError, match=message):
            peft.Plan(peft_config(**overrides), params, params)


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, tiny_bert_dir, tiny_corpus_dir):
    """A 6-step LoRA run with export (the uninterrupted reference for resume too)."""
    from sft_jax import trainer as trainer_lib

    workdir = tmp_path_factory.mktemp("lora")
    config = apply_overrides(load_config(), {**tiny_overrides(tiny_bert_dir, tiny_corpus_dir),
                                             **LORA})
    trainer = trainer_lib.Trainer(config, workdir)
    trainer.train_and_evaluate()
    return trainer, workdir


def test_lora_training_merges_exactly_and_exports_a_peft_adapter(lora_run, tiny_bert_dir,
                                                                  tmp_path):
    from sft_jax.pretrained import load_pretrained

    trainer, workdir = lora_run
    plan = trainer.peft
    trainable = jax.device_get(trainer.state.params)
    assert set(trainable) == {"params", "lora"}
    assert set(flat(trainable["params"])) == {"classifier/kernel", "classifier/bias"}
    assert len(plan.targets) == 6  # 2 layers x query, value, out
    # The frozen base is the checkpoint's, untouched by training.
    base = flat(load_pretrained(tiny_bert_dir, num_labels=2).params)
    frozen = flat(trainer.frozen)
    assert set(frozen) == set(base) - {"classifier/kernel", "classifier/bias"}
    for name, value in frozen.items():
        assert np.array_equal(value, base[name]), name
    lora_b = [v for k, v in flat(trainable["lora"]).items() if k.endswith("lora_b")]
    assert all(np.abs(b).max() > 1e-4 for b in lora_b)  # the adapters trained

    # merged weights == base + adapter on activations
    enc = bert_inputs(tiny_bert_dir)
    module = trainer.task.module
    merged = jax.device_get(trainer.model_params(trainer.state.params))
    ours = bert_logits(module, merged, enc)
    base_and_head = {**jax.device_get(trainer.frozen), "classifier": trainable["params"][
        "classifier"]}
    reference = adapter_forward(module, base_and_head, trainable["lora"], plan.scale,
                                jnp.asarray(enc["input_ids"]), jnp.asarray(enc["attention_mask"]),
                                jnp.asarray(enc["token_type_ids"]))["logits"]
    np.testing.assert_allclose(ours, np.asarray(reference), atol=1e-5, rtol=0)
    assert np.abs(ours - bert_logits(module, {**base_and_head}, enc)).max() > 1e-4

    # The adapter in PEFT's layout, on top of the Hugging Face base.
    adapter_dir = workdir / "export" / "adapter"
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    assert config["r"] == 4 and config["lora_alpha"] == 8.0
    assert config["modules_to_save"] == ["classifier"] and config["task_type"] == "SEQ_CLS"
    assert len(config["target_modules"]) == 6
    assert (adapter_dir / "adapter_model.safetensors").stat().st_size < (
        workdir / "export" / "model.safetensors").stat().st_size / 5
    assert_exports_score(workdir / "export", tiny_bert_dir, enc, ours)

    # An adapter that moves every logit over a thousand times the tolerance (B and the
    # head's kernel of O(1) random values): a merge or an adapter layout that is wrong by
    # a fraction fails.
    rng = np.random.default_rng(0)
    bold = jax.tree_util.tree_map_with_path(
        lambda path, x: rng.normal(0.0, 1.0, x.shape).astype(x.dtype)
        if path[-1].key in ("lora_b", "kernel") else x, trainable)
    merged = jax.device_get(trainer.model_params(bold))
    ours = bert_logits(module, merged, enc)
    bold_head = {**base_and_head, "classifier": bold["params"]["classifier"]}
    reference = adapter_forward(module, bold_head, bold["lora"], plan.scale,
                                jnp.asarray(enc["input_ids"]), jnp.asarray(enc["attention_mask"]),
                                jnp.asarray(enc["token_type_ids"]))["logits"]
    np.testing.assert_allclose(ours, np.asarray(reference), atol=1e-5, rtol=1e-5)
    assert np.abs(ours - bert_logits(module, bold_head, enc)).min() > 0.1
    out = tmp_path / "export"
    trainer.task.export(out, merged)
    peft.write_adapter(out / "adapter", plan, trainer.adapter, bold, merged, str(tiny_bert_dir))
    assert_exports_score(out, tiny_bert_dir, enc, ours)


def assert_exports_score(export, base_dir, enc, logits) -> None:
    """`export/adapter` on the Hugging Face base under `peft`, and the merged `export/`,
    give `logits` in PyTorch (atol 1e-4)."""
    import torch
    import transformers
    from peft import PeftModel

    hf_base = transformers.BertForSequenceClassification.from_pretrained(base_dir,
                                                                          num_labels=2)
    batch = {k: torch.from_numpy(v) for k, v in enc.items()}
    for model in (PeftModel.from_pretrained(hf_base, export / "adapter"),
                  transformers.AutoModelForSequenceClassification.from_pretrained(export)):
        with torch.no_grad():
            np.testing.assert_allclose(model.eval()(**batch).logits.numpy(), logits,
                                       atol=1e-4, rtol=0)


def test_lora_resume_equals_an_uninterrupted_run(tmp_path, lora_run, tiny_bert_dir,
                                                 tiny_corpus_dir):
    """Resuming from the step-3 checkpoint of the 6-step run (as after a crash during
    step 4) ends with the same params; a changed base is refused."""
    from sft_jax import state as state_lib
    from sft_jax import trainer as trainer_lib
    from sft_jax.checkpoint import Checkpoints

    straight, straight_dir = lora_run
    workdir = tmp_path / "resumed"
    shutil.copytree(straight_dir, workdir, ignore=shutil.ignore_patterns("export", "best"))
    shutil.rmtree(workdir / "checkpoints" / "6")
    # The checkpoint holds what trains and a pointer to the base weights.
    base = json.loads((workdir / "checkpoints" / "3" / "base" / "metadata").read_text())
    assert base["path"] == str(tiny_bert_dir.absolute())
    assert set(base["files"]) == {"model.safetensors"}

    overrides = {**tiny_overrides(tiny_bert_dir, tiny_corpus_dir), **LORA,
                 "checkpoint.export": False}
    resumed = trainer_lib.Trainer(apply_overrides(load_config(), overrides), workdir)
    resumed.train_and_evaluate()
    steps = [r["step"] for r in read_metrics(workdir)]
    assert steps == [1, 2, 3, 4, 5, 6, 4, 5, 6]  # the resumed run started after step 3
    losses = {r["step"]: r["loss"] for r in read_metrics(workdir)}  # later rows win
    reference = {r["step"]: r["loss"] for r in read_metrics(straight_dir)}
    np.testing.assert_allclose([losses[s] for s in (4, 5, 6)],
                               [reference[s] for s in (4, 5, 6)], atol=1e-6, rtol=0)
    a, b = flat(straight.state.params), flat(resumed.state.params)
    assert set(a) == set(b)
    for name in a:
        np.testing.assert_allclose(a[name], b[name], atol=1e-6, rtol=0, err_msg=name)

    # Another base (one bias changed) does not resume these checkpoints.
    from safetensors.numpy import load_file, save_file

    other = tmp_path / "other_base"
    shutil.copytree(tiny_bert_dir, other)
    weights = load_file(other / "model.safetensors")
    weights["encoder.layer.0.output.dense.bias"] += 1.0
    save_file(weights, other / "model.safetensors", metadata={"format": "pt"})
    fingerprint = peft.base_fingerprint(str(other))
    assert fingerprint["files"] != base["files"]
    checkpoints = Checkpoints(workdir, resumed.config.checkpoint, base=fingerprint)
    abstract = state_lib.abstract_like(resumed.state, resumed.shardings)
    with pytest.raises(UserInputError, match="resume with the same base model"):
        checkpoints.restore(abstract)
    checkpoints.close()


def test_freeze_selections(tiny_bert_dir):
    """What trains in full under each selector (no training needed)."""
    from sft_jax.pretrained import load_pretrained

    params = load_pretrained(tiny_bert_dir, num_labels=2).params
    names = set(flat(params))
    head = {"classifier/kernel", "classifier/bias"}

    def trained(**overrides) -> set[str]:
        plan = peft.Plan(peft_config(method="freeze", **overrides), params, params)
        return set(flat(plan.partition(params)[0]))

    assert trained(head_only=True) == head
    assert trained(last_n_layers=1) == {n for n in names if n.startswith("encoder/layer_1/")
                                        } | head
    assert trained(last_n_layers=2) == {n for n in names if "/layer_" in n} | head
    assert trained(bitfit=True) == {n for n in names if n.endswith("/bias")} | head
    assert trained(train_patterns=("pooler|embeddings/norm",)) == {
        "encoder/pooler/kernel", "encoder/pooler/bias", "encoder/embeddings/norm/scale",
        "encoder/embeddings/norm/bias"} | head
    # Params the checkpoint lacks train whatever the selection.
    missing = {k: v for k, v in params.items() if k != "classifier"}
    missing["encoder"] = {k: v for k, v in params["encoder"].items() if k != "pooler"}
    plan = peft.Plan(peft_config(method="freeze", head_only=True), params, missing)
    assert set(flat(plan.partition(params)[0])) == head | {"encoder/pooler/kernel",
                                                           "encoder/pooler/bias"}


def test_bitfit_trains_only_biases_and_the_head(tmp_path, tiny_bert_dir, tiny_corpus_dir):
    from sft_jax import trainer as trainer_lib
    from sft_jax.pretrained import load_pretrained

    overrides = {**tiny_overrides(tiny_bert_dir, tiny_corpus_dir), "peft.method": "freeze",
                 "peft.bitfit": True, "train.steps": 3, "optim.learning_rate": 5e-3,
                 "optim.warmup_steps": 1, "train.eval_every": 0, "eval.splits": (),
                 "checkpoint.export": False, "data.buckets": (16,)}
    trainer = trainer_lib.Trainer(apply_overrides(load_config(), overrides), tmp_path)
    before = flat(jax.device_get(trainer.state.params))
    trainer.train_and_evaluate()
    after = flat(trainer.state.params)

    base = flat(load_pretrained(tiny_bert_dir, num_labels=2).params)
    expected = {f"params/{k}" for k in base if k.endswith("/bias") or k.startswith(
        "classifier/")}
    assert set(after) == expected
    # (A key bias shifts every logit of a query alike: softmax ignores it, its gradient
    # is zero.)
    for name in {n for n in expected if not n.endswith("attention/key/bias")}:
        assert np.abs(after[name] - before[name]).max() > 1e-6, name
    frozen = flat(trainer.frozen)
    assert set(frozen) == {k for k in base if f"params/{k}" not in expected}
    for name, value in frozen.items():
        assert np.array_equal(value, base[name]), name


def test_lora_optimizer_state_is_a_small_fraction_on_minilm():
    """LoRA r=8 on query/value of the MiniLM classifier: optimizer state (AdamW moments)
    against full fine-tuning, from shapes alone."""
    from sft_jax import assets, optim
    from sft_jax import state as state_lib
    from sft_jax.hf.checkpoint_dir import read_config
    from sft_jax.models import registry

    config = load_config("classification", "lora")
    assert config.peft.lora_rank == 8
    module, _ = registry.build_model(read_config(assets.fetch("minilm-l6")), num_labels=2)
    ids = np.zeros((1, 8), np.int32)
    abstract = state_lib.abstract_params(module, {"input_ids": ids, "attention_mask": ids + 1,
                                                  "token_type_ids": ids})
    tx, _ = optim.make_optimizer(config.optim, 100)
    plan = peft.build(config, abstract, None)
    full = jax.eval_shape(tx.init, nn.meta.unbox(abstract))
    lora = jax.eval_shape(tx.init, plan.abstract_trainable(abstract))

    def nbytes(tree) -> int:
        return sum(int(np.prod(x.shape)) * x.dtype.itemsize for x in jax.tree.leaves(tree))

    ratio = nbytes(lora) / nbytes(full)
    print(f"optimizer state: LoRA {nbytes(lora)} bytes, full {nbytes(full)} bytes, "
          f"ratio {ratio:.5f}")
    assert len(plan.targets) == 12  # 6 layers x query, value
    assert nbytes(full) > 2 * 4 * 22_000_000  # two fp32 moments of ~22.7M params
    assert ratio <= 0.05


@pytest.fixture(scope="module")
def tiny_llama_dir(tmp_path_factory):
    import torch
    import transformers

    path = tmp_path_factory.mktemp("tiny_llama_lm")
    torch.manual_seed(0)
    config = transformers.LlamaConfig(**LLAMA, tie_word_embeddings=False)
    transformers.LlamaForCausalLM(config).save_pretrained(path, safe_serialization=True)
    return path


def test_lora_on_a_llama_decoder(tmp_path, tiny_llama_dir):
    """Every linear kernel of the layers (q, k, v [D, K, H], o [N, H, D], gate, up, down) of
    a causal LM; the adapter loads with PEFT on LlamaForCausalLM."""
    import torch
    import transformers
    from peft import PeftModel

    from sft_jax.pretrained import load_pretrained

    pre = load_pretrained(tiny_llama_dir)
    ids = np.array([[1, 5, 9, 33, 2, 17, 40, 63], [1, 7, 7, 8, 60, 3, 2, 11]], np.int32)
    abstract = jax.eval_shape(pre.module.init, jax.random.key(0), jnp.asarray(ids))["params"]
    plan = peft.Plan(peft_config(lora_rank=4, lora_alpha=12.0,
                                 lora_targets=(r"layer_\d+/.*/kernel",)), abstract, pre.params)
    assert len(plan.targets) == 2 * 7
    adapters = plan.init_adapters(jax.random.key(0))
    trainable, frozen = plan.split(pre.params, adapters)
    assert "params" not in trainable  # a causal LM has no head: only the adapters train

    def logits(params):
        return np.asarray(pre.module.apply({"params": params}, jnp.asarray(ids))["logits"])

    base_logits = logits(pre.params)
    assert np.array_equal(logits(plan.combine(trainable, frozen)), base_logits)

    # A trained-looking adapter: random B.
    rng = np.random.default_rng(0)
    adapters = jax.tree_util.tree_map_with_path(
        lambda p, x: jnp.asarray(rng.normal(0, 0.05, x.shape), x.dtype)
        if p[-1].key == "lora_b" else x, adapters)
    trainable = {"lora": adapters}
    merged = jax.device_get(plan.combine(trainable, frozen))
    ours = logits(merged)
    reference = adapter_forward(pre.module, pre.params, adapters, plan.scale,
                                jnp.asarray(ids))["logits"]
    np.testing.assert_allclose(ours, np.asarray(reference), atol=1e-5, rtol=0)
    assert np.abs(ours - base_logits).max() > 1e-3

    layout = peft.adapter_layout(plan, pre.module, pre.config)
    assert not isinstance(layout, str), layout
    out = peft.write_adapter(tmp_path / "adapter", plan, layout, jax.device_get(trainable),
                             merged, str(tiny_llama_dir))
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["task_type"] == "CAUSAL_LM" and config["modules_to_save"] is None
    assert "model.layers.1.self_attn.o_proj" in config["target_modules"]
    hf = transformers.LlamaForCausalLM.from_pretrained(tiny_llama_dir)
    model = PeftModel.from_pretrained(hf, out).eval()
    with torch.no_grad():
        theirs = model(input_ids=torch.from_numpy(ids.astype(np.int64))).logits.numpy()
    np.testing.assert_allclose(theirs, ours, atol=1e-4, rtol=0)
