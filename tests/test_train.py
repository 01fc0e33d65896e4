"""The training engine end to end: outputs of a run, invariances, multi-host (interrupted
runs that resume: tests/test_kill.py).

Runs that need a particular device count go through the CLI in a subprocess with
`--xla_force_host_platform_device_count`, exactly as a user would start them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import (
    REPO,
    apply_overrides,
    cli_args,
    load_config,
    read_metrics,
    run_two_processes,
    tiny_overrides,
    xla_cpu_devices,
)


def run_cli(workdir: Path, overrides: dict, devices: int = 1, extra_env=None,
            config: str = "configs/classification.py:runlocal") -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["XLA_FLAGS"] = xla_cpu_devices(devices)
    env["JAX_PLATFORMS"] = "cpu"
    env.update(extra_env or {})
    cmd = [sys.executable, "-m", "sft_jax.main", f"--config={config}",
           f"--workdir={workdir}", *cli_args(overrides)]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def check(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def train_losses(workdir: Path) -> np.ndarray:
    return np.array([r["loss"] for r in read_metrics(workdir, "train")])


@pytest.fixture()
def tiny(tiny_bert_dir, tiny_corpus_dir) -> dict:
    return tiny_overrides(tiny_bert_dir, tiny_corpus_dir)


def test_train_and_evaluate_writes_every_output(tmp_path, tiny):
    import torch
    import transformers

    from sft_jax import trainer as trainer_lib

    config = apply_overrides(load_config(), {**tiny, "train.steps": 6, "optim.learning_rate":
                                             5e-3})
    results = trainer_lib.train_and_evaluate(config, tmp_path)

    assert set(results) == {"validation", "test"}
    for split in ("validation", "test"):
        assert 0.0 <= results[split]["accuracy"] <= 1.0
        assert {"macro_f1", "macro_precision", "macro_recall", "loss"} <= set(results[split])
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["train"]["steps"] == 6
    train_rows = read_metrics(tmp_path, "train")
    assert [r["step"] for r in train_rows] == list(range(1, 7))
    assert all({"loss", "grad_norm", "param_norm", "learning_rate"} <= set(r) for r in train_rows)
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert (tmp_path / "checkpoints").is_dir() and (tmp_path / "best").is_dir()

    # predictions/<split>.jsonl: one row per example, in order.
    preds = [json.loads(line) for line in
             (tmp_path / "predictions" / "test.jsonl").read_text().splitlines()]
    assert len(preds) == 32
    accuracy = np.mean([p["prediction"] == p["label"] for p in preds])
    assert accuracy == pytest.approx(results["test"]["accuracy"])

    # export/ is a Hugging Face directory whose PyTorch predictions are ours.
    export = tmp_path / "export"
    model = transformers.AutoModelForSequenceClassification.from_pretrained(export).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(export)
    texts = [p["text"] for p in preds]
    with torch.no_grad():
        logits = model(**tokenizer(texts, padding=True, return_tensors="pt")).logits
    probs = torch.softmax(logits, -1).numpy()
    ours = np.array([[p["probabilities"][model.config.id2label[i]] for i in range(2)]
                     for p in preds])
    np.testing.assert_allclose(probs, ours, atol=1e-5)


def test_zero_steps_evaluates_the_starting_point(tmp_path, tiny):
    proc = check(run_cli(tmp_path, {**tiny, "train.steps": 0}))
    assert "results (params of step 0):" in proc.stdout and str(tmp_path) in proc.stdout
    assert any(line.split()[:1] == ["test"] for line in proc.stdout.splitlines())
    assert read_metrics(tmp_path, "train") == []
    assert read_metrics(tmp_path, "test")[0]["params_from"] == "step 0"
    assert not (tmp_path / "checkpoints").exists() or not any((tmp_path / "checkpoints").iterdir())


def test_grad_accumulation_equals_the_larger_batch(tmp_path, tiny):
    from sft_jax import trainer as trainer_lib

    runs = {}
    for name, batch, accum in (("big", 8, 1), ("accum", 4, 2)):
        overrides = {**tiny, "train.steps": 3, "train.batch_size": batch,
                     "optim.grad_accum": accum, "checkpoint.export": False,
                     "optim.learning_rate": 1e-3}
        config = apply_overrides(load_config(), overrides)
        trainer = trainer_lib.Trainer(config, tmp_path / name)
        trainer.train_and_evaluate()
        runs[name] = (train_losses(tmp_path / name), jax_leaves(trainer.state.params))
    np.testing.assert_allclose(runs["big"][0], runs["accum"][0], atol=1e-5, rtol=0)
    for a, b in zip(runs["big"][1], runs["accum"][1], strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=0)


def jax_leaves(tree) -> list[np.ndarray]:
    import jax

    return [np.asarray(x) for x in jax.tree.leaves(tree)]


def test_same_losses_on_one_device_a_mesh_and_pmap(tmp_path, tiny):
    base = {**tiny, "train.steps": 4, "train.batch_size": 8, "checkpoint.export": False,
            "train.eval_every": 0, "optim.learning_rate": 1e-3}
    one = check(run_cli(tmp_path / "one", base, devices=1))
    mesh = check(run_cli(tmp_path / "mesh", {**base, "mesh.data": 2, "mesh.fsdp": 2},
                         devices=4))
    pmap = check(run_cli(tmp_path / "pmap", {**base, "train.parallelism": "pmap"}, devices=4))
    del one, mesh, pmap
    reference = train_losses(tmp_path / "one")
    assert len(reference) == 4
    for name in ("mesh", "pmap"):
        np.testing.assert_allclose(train_losses(tmp_path / name), reference, atol=1e-5, rtol=0,
                                   err_msg=name)
    for name in ("mesh", "pmap"):
        a = read_metrics(tmp_path / "one", "test")[-1]["accuracy"]
        assert read_metrics(tmp_path / name, "test")[-1]["accuracy"] == a


def test_two_processes_train_like_one(tmp_path, tiny):
    base = {**tiny, "train.steps": 3, "train.batch_size": 8, "checkpoint.export": False,
            "train.eval_every": 0, "optim.learning_rate": 1e-3, "mesh.data": -1}
    check(run_cli(tmp_path / "single", base, devices=1))

    run_two_processes("configs/classification.py:runlocal", tmp_path / "multi", base)
    np.testing.assert_allclose(train_losses(tmp_path / "multi"),
                               train_losses(tmp_path / "single"), atol=1e-5, rtol=0)


def test_train_and_evaluate_on_tfds_data(tmp_path, tiny_bert_dir, tiny_corpus_dir):
    """A prepared (array_record) tfds dataset, read without TensorFlow, trains and evaluates."""
    import tensorflow_datasets as tfds

    from sft_jax import trainer as trainer_lib

    def rows(split):
        lines = (tiny_corpus_dir / f"{split}.jsonl").read_text().splitlines()
        return [json.loads(line) for line in lines]

    class SftJaxTinySentiment(tfds.core.GeneratorBasedBuilder):
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
                "sentence": tfds.features.Text(),
                "label": tfds.features.ClassLabel(names=["neg", "pos"]),
            }))

        def _split_generators(self, dl_manager):
            return {split: self._generate_examples(split) for split in ("train", "test")}

        def _generate_examples(self, split):
            for i, row in enumerate(rows(split)):
                yield i, {"sentence": row["text"], "label": row["label"]}

    data_dir = tmp_path / "tfds"
    SftJaxTinySentiment(data_dir=str(data_dir), file_format="array_record").download_and_prepare()
    overrides = {
        **tiny_overrides(tiny_bert_dir, tiny_corpus_dir),
        "data.train": "tfds:sft_jax_tiny_sentiment:train",
        "data.validation": "tfds:sft_jax_tiny_sentiment:test[:50%]",
        "data.test": "tfds:sft_jax_tiny_sentiment:test",
        "data.tfds_data_dir": str(data_dir),
        "data.text_field": "sentence",
        "train.steps": 4,
        "optim.learning_rate": 5e-3,
    }
    results = trainer_lib.train_and_evaluate(apply_overrides(load_config(), overrides),
                                       tmp_path / "run")
    assert json.loads((tmp_path / "run" / "labels.json").read_text()) == ["0", "1"]
    assert sum(results["test"][f"support/{c}"] for c in ("0", "1")) == 32
    assert sum(results["validation"][f"support/{c}"] for c in ("0", "1")) == 16
    predictions = (tmp_path / "run" / "predictions" / "test.jsonl").read_text().splitlines()
    first = json.loads(predictions[0])
    assert first["where"] == "tfds:sft_jax_tiny_sentiment:test[0]"
    assert first["sentence"] in {row["text"] for row in rows("test")}


def test_classification_with_a_decoder_model(tmp_path, tiny_chat_model, tiny_corpus_dir):
    """A decoder-only checkpoint gets a last-token classification head and exports as
    LlamaForSequenceClassification with the same predictions."""
    import torch
    import transformers

    from sft_jax import trainer as trainer_lib

    overrides = {**tiny_overrides(tiny_chat_model, tiny_corpus_dir), "train.steps": 4,
                 "optim.learning_rate": 5e-3}
    results = trainer_lib.train_and_evaluate(apply_overrides(load_config(), overrides), tmp_path)
    assert 0.0 <= results["test"]["accuracy"] <= 1.0
    preds = [json.loads(line) for line in
             (tmp_path / "predictions" / "test.jsonl").read_text().splitlines()]
    model = transformers.AutoModelForSequenceClassification.from_pretrained(
        tmp_path / "export").eval()
    assert type(model).__name__ == "LlamaForSequenceClassification"
    tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "export")
    for p in preds[:8]:
        with torch.no_grad():
            logits = model(**tokenizer([p["text"]], return_tensors="pt")).logits
        probs = torch.softmax(logits, -1)[0].numpy()
        ours = [p["probabilities"][model.config.id2label[i]] for i in range(2)]
        np.testing.assert_allclose(probs, ours, atol=1e-5)
