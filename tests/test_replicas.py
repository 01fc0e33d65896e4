"""`train.replicas=K`: K replicas in one compiled program equal K separate runs with seeds
seed..seed+K-1 (per-step losses, final metrics, exports), on one device and on a
4-device mesh, for classification and dialogue; resume with replicas is exact."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import apply_overrides, crash_during_step, load_config, read_metrics
from test_train import check, run_cli

TOL = dict(rtol=2e-5, atol=2e-6)


def _losses(workdir: Path, replica: int | None = None) -> np.ndarray:
    rows = read_metrics(workdir, "train")
    return np.array([r["loss"] for r in rows if r.get("replica") == replica])


def _results(workdir: Path) -> dict:
    return json.loads((workdir / "results.json").read_text())


def _numeric(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if isinstance(v, float)}


def _train(name: str, workdir: Path, overrides: dict) -> dict:
    from sft_jax import trainer as trainer_lib

    config = apply_overrides(load_config(name, "runlocal"), overrides)
    return trainer_lib.train_and_evaluate(config, workdir)


def _assert_replicas_equal_separate_runs(replicated: Path, separate: list[Path],
                                         splits=("validation", "test")) -> None:
    results = _results(replicated)
    assert [r["seed"] for r in results["replicas"]] == [int(_config(s)["seed"])
                                                       for s in separate]
    for k, single in enumerate(separate):
        losses = _losses(single)
        assert len(losses) > 1
        np.testing.assert_allclose(_losses(replicated, k), losses, **TOL)
        for split in splits:
            ours, theirs = _numeric(results["replicas"][k][split]), _numeric(
                _results(single)[split])
            assert ours.keys() == theirs.keys()
            for metric, value in theirs.items():
                assert ours[metric] == pytest.approx(value, rel=2e-5, abs=2e-6), (k, metric)
            assert results["replicas"][k][split]["params_from"] == \
                _results(single)[split]["params_from"]
    for split in splits:  # mean and std over the replicas, as results.json states them
        for metric in _numeric(results[split]):
            values = [r[split][metric] for r in results["replicas"]]
            assert results[split][metric] == pytest.approx(np.mean(values))
            assert results["std"][split][metric] == pytest.approx(np.std(values, ddof=1))


def _config(workdir: Path) -> dict:
    return json.loads((workdir / "config.json").read_text())


@pytest.fixture(scope="module")
def classification(tmp_path_factory, tiny_bert_dir, tiny_corpus_dir):
    """Two separate runs (seeds 3, 4) and the same two as replicas, one device. Dropout
    on, so the replicas' dropout rngs are checked too."""
    from conftest import tiny_overrides

    root = tmp_path_factory.mktemp("replicas_classification")
    base = {**tiny_overrides(tiny_bert_dir, tiny_corpus_dir), "model.dropout": 0.1,
            "train.steps": 6, "optim.learning_rate": 5e-3, "seed": 3,
            "train.eval_every": 3, "checkpoint.every": 3}
    separate = []
    for k in range(2):
        separate.append(root / f"seed-{3 + k}")
        _train("classification", separate[-1], {**base, "seed": 3 + k})
    _train("classification", root / "replicas", {**base, "train.replicas": 2})
    return root, base, separate


def test_classification_replicas_equal_separate_runs(classification):
    root, _, separate = classification
    _assert_replicas_equal_separate_runs(root / "replicas", separate)
    # Each replica keeps its own best params and writes its own predictions and export.
    for k in range(2):
        assert any((root / "replicas" / "best" / f"replica-{k}").iterdir())
        assert (root / "replicas" / "predictions" / f"replica-{k}" / "test.jsonl").exists()
        assert (root / "replicas" / "export" / f"replica-{k}" / "model.safetensors").exists()
    from safetensors.numpy import load_file

    ours = load_file(root / "replicas" / "export" / "replica-1" / "model.safetensors")
    theirs = load_file(separate[1] / "export" / "model.safetensors")
    assert ours.keys() == theirs.keys()
    for name, value in theirs.items():
        np.testing.assert_allclose(ours[name], value, rtol=1e-4, atol=1e-5, err_msg=name)
    model = read_metrics(root / "replicas", "model")[0]
    assert model["replicas"] == 2 and model["trained_params"] == model["params"] > 0


def test_classification_replicas_on_a_four_device_mesh(classification, tmp_path):
    _, base, separate = classification
    check(run_cli(tmp_path, {**base, "train.replicas": 2}, devices=4))
    _assert_replicas_equal_separate_runs(tmp_path, separate)


def test_replicas_with_lora_and_gradient_accumulation(classification, tmp_path):
    """LoRA (one frozen base shared by the replicas, adapters and head per replica) and two
    micro-batches per update: still each replica equals its separate run."""
    _, base, _ = classification
    lora = {**base, "peft.method": "lora", "peft.lora_rank": 2, "optim.grad_accum": 2,
            "train.batch_size": 4, "train.steps": 4, "train.eval_every": 2,
            "checkpoint.every": 2, "checkpoint.export": False, "eval.splits": ("test",)}
    separate = [tmp_path / f"seed-{3 + k}" for k in range(2)]
    for k, workdir in enumerate(separate):
        _train("classification", workdir, {**lora, "seed": 3 + k})
    _train("classification", tmp_path / "replicas", {**lora, "train.replicas": 2})
    _assert_replicas_equal_separate_runs(tmp_path / "replicas", separate, splits=("test",))
    model = read_metrics(tmp_path / "replicas", "model")[0]
    assert 0 < model["trained_params"] < model["params"] / 10


def test_replicas_resume_exactly_after_a_crash(classification, tmp_path):
    """A crash during step 5 (after the step-3 checkpoint), then the same run again: the
    same per-step losses and final params as the uninterrupted replicated run."""
    from sft_jax import trainer as trainer_lib

    root, base, _ = classification

    def config():
        return apply_overrides(load_config(), {**base, "train.replicas": 2})

    crashing = trainer_lib.Trainer(config(), tmp_path)
    crash_during_step(crashing, 5)
    with pytest.raises(RuntimeError, match="simulated crash"):
        crashing.train_and_evaluate()
    trainer_lib.Trainer(config(), tmp_path).train_and_evaluate()

    uninterrupted = root / "replicas"
    for k in range(2):
        losses = {r["step"]: r["loss"] for r in read_metrics(tmp_path)
                  if r.get("replica") == k}  # the last record of each step wins
        np.testing.assert_allclose([losses[s] for s in range(1, 7)],
                                   _losses(uninterrupted, k), atol=1e-6, rtol=0)
    assert _results(tmp_path)["test"] == _results(uninterrupted)["test"]


def test_resume_with_another_replica_count_is_refused(classification, tmp_path):
    from sft_jax.errors import UserInputError

    root, base, _ = classification
    shutil.copytree(root / "replicas", tmp_path / "run")  # 2 replicas, checkpoints at 3, 6
    with pytest.raises(UserInputError, match=r"holds 2 replica\(s\), this run has "
                                             r"train.replicas=3; resume with the same"):
        _train("classification", tmp_path / "run", {**base, "train.steps": 9,
                                                     "train.replicas": 3})


@pytest.fixture(scope="module")
def dialogue(tmp_path_factory, tiny_chat_model):
    root = tmp_path_factory.mktemp("replicas_dialogue")
    base = {"model.checkpoint": str(tiny_chat_model), "model.dropout": 0.1,
            "train.steps": 3, "train.batch_size": 4, "optim.learning_rate": 1e-3,
            "train.progress_bar": False, "seed": 1}
    separate = []
    for k in range(2):
        separate.append(root / f"seed-{1 + k}")
        _train("dialogue", separate[-1], {**base, "seed": 1 + k})
    return root, base, separate


def test_dialogue_replicas_equal_separate_runs(dialogue, tmp_path):
    _, base, separate = dialogue
    _train("dialogue", tmp_path, {**base, "train.replicas": 2})
    _assert_replicas_equal_separate_runs(tmp_path, separate)
    for k in range(2):
        ours = (tmp_path / "predictions" / f"replica-{k}" / "test.jsonl").read_text()
        assert ours == (separate[k] / "predictions" / "test.jsonl").read_text()


def test_dialogue_replicas_on_a_four_device_mesh(dialogue, tmp_path):
    _, base, separate = dialogue
    # No sample replies here: the one-device test compares them; this one the metrics.
    check(run_cli(tmp_path, {**base, "train.replicas": 2, "eval.num_samples": 0}, devices=4,
                  config="configs/dialogue.py:runlocal"))
    _assert_replicas_equal_separate_runs(tmp_path, separate)
