"""Overfitting controls: early stopping (the rule, a run that stops, resume), label
smoothing for classification and dialogue, NEFTune noise, and `data.train_size`."""

from __future__ import annotations

import functools
import json
import math
from collections import Counter
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from conftest import apply_overrides, load_config, read_metrics, tiny_overrides

from experiments import bench_models as bm
from sft_jax.errors import UserInputError
from sft_jax.models import layers, registry

TINY_BART = {"model_type": "bart", "vocab_size": 128, "d_model": 16, "encoder_layers": 1,
             "decoder_layers": 1, "encoder_attention_heads": 2, "decoder_attention_heads": 2,
             "encoder_ffn_dim": 32, "decoder_ffn_dim": 32, "max_position_embeddings": 32}


@pytest.fixture()
def tiny(tiny_bert_dir, tiny_corpus_dir) -> dict:
    return tiny_overrides(tiny_bert_dir, tiny_corpus_dir)


# Early stopping --------------------------------------------------------------------------


def test_the_stopping_rule_on_metric_sequences(tmp_path):
    from sft_jax.stopping import EarlyStopping, best_index, stop_index

    rise = [0.5, 0.6, 0.7, 0.7, 0.69, 0.71, 0.8]
    assert stop_index(rise, patience=2, min_delta=0, mode="max") == 4  # 0.7, 0.69: no
    assert stop_index(rise, patience=3, min_delta=0, mode="max") is None  # 0.71 improves
    # 0.71 beats the reference 0.7 by less than min_delta: the third evaluation without
    assert stop_index(rise, patience=3, min_delta=0.02, mode="max") == 5
    assert stop_index(rise, patience=0, min_delta=0, mode="max") is None  # off
    fall = [2.0, 1.5, float("nan"), 1.6, 1.4]
    assert stop_index(fall, patience=2, min_delta=0, mode="min") == 3  # NaN never improves
    assert stop_index(fall, patience=3, min_delta=0, mode="min") is None
    assert best_index(rise, "max") == 6 and best_index([1, 3, 3], "max") == 1
    assert best_index(fall, "min") == 4 and best_index([math.nan], "min") is None

    # Resume: the periodic values at or before the checkpoint's step, the last of a step
    # (a crashed session's evaluations after it are redone), never the final ones.
    config = load_config()
    config.train.early_stopping_patience = 2
    records = [(2, 0.5, {}), (4, 0.4, {}), (4, 0.5, {}), (4, 0.9, {"final": 1}),
               (6, 0.9, {}), (4, 0.1, {"split": "test"})]
    (tmp_path / "metrics.jsonl").write_text("".join(
        json.dumps({"step": step, "split": "validation", "accuracy": value, **extra}) + "\n"
        for step, value, extra in records))
    stopper = EarlyStopping(config, replicas=1)
    stopper.resume(tmp_path, 4)
    assert stopper.history == [[(2, 0.5), (4, 0.5)]] and stopper.stopped is None
    assert stopper.update(6, [{"accuracy": 0.5}])["step"] == 6

    # Replicas: the run stops once every replica has stopped improving.
    config.train.early_stopping_patience = 1
    stopper = EarlyStopping(config, replicas=2)
    assert stopper.update(10, [{"accuracy": 0.5}, {"accuracy": 0.5}]) is None
    assert stopper.update(20, [{"accuracy": 0.4}, {"accuracy": 0.6}]) is None
    stopped = stopper.update(30, [{"accuracy": 0.9}, {"accuracy": 0.6}])
    assert stopped == {"step": 30, "best_step": [30, 20], "reason":
                       "early stopping: no improvement of accuracy > 0 in 1 evaluations"}


def _stopping_run(tiny: dict, steps: int) -> ml_collections.ConfigDict:
    """Learning rate 0: validation accuracy never changes, so the first evaluation (step
    2) is the best and an uninterrupted run stops at its third evaluation without
    improvement, step 8."""
    return apply_overrides(load_config(), {
        **tiny, "train.steps": steps, "optim.learning_rate": 0.0, "train.eval_every": 2,
        "train.log_every": 2, "checkpoint.every": 0, "train.early_stopping_patience": 3,
        "train.early_stopping_min_delta": 0.001, "eval.write_predictions": False,
        "eval.splits": ("validation",), "data.limit_eval": 8, "checkpoint.export": False,
        "checkpoint.use_best_for_final": False, "data.buckets": (16,),
        "data.max_length": 16})  # one bucket: one program to compile per step kind


def test_early_stopping_ends_the_run_and_a_resumed_one_at_the_same_step(tmp_path, tiny):
    """Killed past the best step (a session of 4 steps, evaluated at 2 and 4), resumed
    for 40: the evaluations without improvement are read back from the workdir, so the
    run stops at step 8 as an uninterrupted one (a count restarted at the resume would
    stop at 12), with the best params, and results.json says where and why."""
    import sft_jax

    expected = {"step": 8, "best_step": 2, "reason": "early stopping: no improvement of "
                "accuracy > 0.001 in 3 evaluations"}
    run = tmp_path / "run"
    assert "stopped" not in sft_jax.train(_stopping_run(tiny, 4), run)
    results = sft_jax.train(_stopping_run(tiny, 40), run)
    assert results["stopped"] == expected
    assert json.loads((run / "results.json").read_text())["stopped"] == expected
    assert results["validation"]["params_from"] == "best accuracy at step 2"
    assert [r["step"] for r in read_metrics(run, "train")] == [2, 4, 6, 8]


# Label smoothing --------------------------------------------------------------------------


def test_classification_label_smoothing_is_optax_smoothed_cross_entropy():
    from sft_jax.tasks.base import training_loss

    logits = np.random.default_rng(0).normal(size=(6, 5)).astype(np.float32) * 3  # B C
    labels = np.asarray([0, 4, 2, 2, 1, 3])

    @functools.partial(jax.jit, static_argnums=0)
    def both(eps):
        expected = optax.softmax_cross_entropy(
            logits, optax.smooth_labels(jax.nn.one_hot(labels, 5), eps))
        return training_loss(eps)(logits, labels), expected

    for eps in (0.1, 0.3):
        np.testing.assert_allclose(*both(eps), rtol=1e-5, atol=1e-6)
    assert training_loss(0.0) is optax.softmax_cross_entropy_with_integer_labels


def test_dialogue_label_smoothing_in_training_only():
    """The dialogue loss over a stand-in model's logits: seq2seq's smoothed formula per
    target token in training, plain cross-entropy in evaluation."""
    from sft_jax.tasks.base import smoothed_cross_entropy
    from sft_jax.tasks.dialogue import DialogueTask

    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 8, 11)).astype(np.float32) * 3  # B T V
    ids = rng.integers(0, 11, (2, 8)).astype(np.int32)
    task = DialogueTask.__new__(DialogueTask)  # just what the loss reads
    task.module = SimpleNamespace(apply=lambda *args, **kwargs: {"logits": logits})
    task.config = SimpleNamespace(train=SimpleNamespace(label_smoothing=0.2, loss_chunk=0))
    loss_mask = np.ones((2, 8), np.float32)
    loss_mask[:, :3] = 0
    batch = {"input_ids": ids, "positions": np.tile(np.arange(8), (2, 1)),
             "segment_ids": np.ones((2, 8), np.int32), "loss_mask": loss_mask,
             "index": np.arange(2), "example_mask": np.ones(2, np.float32)}

    @jax.jit
    def run(batch):
        loss, aux = task.loss_fn(None, batch, None, True)
        targets = (logits[:, :-1], ids[:, 1:])  # next-token targets
        return (loss, aux["weight"], task.eval_fn(None, batch)["nll"].sum(),
                smoothed_cross_entropy(*targets, 0.2),
                optax.softmax_cross_entropy_with_integer_labels(*targets))

    loss, weight, nll, smoothed, plain = run(batch)
    weights = loss_mask[:, 1:]
    np.testing.assert_allclose(loss, np.sum(smoothed * weights), rtol=1e-5)
    assert float(weight) == weights.sum()
    np.testing.assert_allclose(nll, np.sum(plain * weights), rtol=1e-5)  # unsmoothed


# NEFTune ----------------------------------------------------------------------------------


def test_neftune_noise_has_the_papers_scale_per_example():
    alpha, d = 5.0, 256
    segments = np.zeros((2, 64), np.int32)
    segments[0, :40] = 1  # a padded row: one example of 40 tokens
    segments[1, :16], segments[1, 16:48] = 1, 2  # a packed row: 16 and 32 tokens
    noise = jax.jit(lambda x, key: layers.neftune_noise(x, segments, alpha, key) - x)(
        np.ones((2, 64, d), np.float32), jax.random.key(0))
    noise = np.asarray(noise)
    assert not noise[segments == 0].any()  # padding gets none
    for row, segment, length in ((0, 1, 40), (1, 1, 16), (1, 2, 32)):
        values = noise[row][segments[row] == segment]  # L D
        bound = alpha / math.sqrt(length * d)
        assert np.abs(values).max() <= bound * (1 + 1e-6)
        assert np.abs(values).max() > 0.99 * bound
        assert np.mean(values**2) == pytest.approx(alpha**2 / (3 * length * d), rel=0.06)


FAMILIES = {"bert": bm.TINY["bert"], "llama": bm.TINY["llama"], "gpt2": bm.TINY["gpt2"],
            "t5": bm.TINY["t5"], "bart": TINY_BART}


@pytest.mark.parametrize("family", FAMILIES)
def test_neftune_in_training_calls_only_and_alpha_zero_is_todays_model(family, monkeypatch):
    """Traced, not run: a training call of every family noises its input token embeddings
    (once per stack: twice for an encoder-decoder) with its segment ids [B, T]; a
    deterministic call never does; alpha = 0 traces today's program, op for op (so its
    loss is bitwise the same)."""
    hf = registry.with_dropout(FAMILIES[family], 0.1)
    today, _ = registry.build_model(hf)
    zero, _ = registry.build_model(hf, neftune_alpha=0.0)
    noisy, config = registry.build_model(hf, neftune_alpha=5.0)
    assert config.neftune_alpha == 5.0 and "neftune_alpha" not in config.to_hf()
    stacks = 2 if registry.family_of(config).kind == "encoder-decoder" else 1
    ids = jnp.ones((2, 6), jnp.int32)
    args = (ids,) * stacks
    params = jax.eval_shape(today.init, jax.random.key(0), *args)["params"]
    calls = []
    real = layers.neftune_noise
    monkeypatch.setattr(layers, "neftune_noise", lambda x, segments, alpha, rng: (
        calls.append((x.shape, segments.shape, alpha)),
        real(x, segments, alpha, rng))[1])

    def trace(module, deterministic):
        calls.clear()
        return str(jax.make_jaxpr(lambda p: module.apply(
            {"params": p}, *args, deterministic=deterministic,
            rngs={"dropout": jax.random.key(7)}))(params))

    assert trace(zero, False) == trace(today, False) and not calls
    assert trace(noisy, True) == trace(today, True) and not calls
    noised, recorded = trace(noisy, False), list(calls)
    assert noised != trace(today, False)
    width = next(v for k, v in config.to_hf().items() if k in ("hidden_size", "n_embd",
                                                              "d_model"))
    assert recorded == [((2, 6, width), (2, 6), 5.0)] * stacks


# data.train_size --------------------------------------------------------------------------


def test_subset_indices_are_stratified_and_seeded():
    from sft_jax.tasks.base import subset_indices

    labels = ["a"] * 70 + ["b"] * 25 + ["c"] * 5
    picked = subset_indices(20, labels, 100, seed=0)
    assert Counter(labels[i] for i in picked) == {"a": 14, "b": 5, "c": 1}
    assert picked == sorted(set(picked)) and picked == subset_indices(20, labels, 100, 0)
    assert picked != subset_indices(20, labels, 100, seed=1)
    # largest remainders: 7 x 0.7 = 4.9, 7 x 0.25 = 1.75, 7 x 0.05 = 0.35 -> 5, 2, 0
    assert Counter(labels[i] for i in subset_indices(7, labels, 100, 3)) == {"a": 5, "b": 2}
    plain = subset_indices(30, None, 100, seed=0)
    assert len(set(plain)) == 30 and plain == subset_indices(30, None, 100, seed=0)


def test_train_size_and_fraction_cut_the_training_split(tmp_path, tiny):
    from sft_jax.tasks.base import TaskBase

    def labels(overrides: dict) -> list:
        task = TaskBase(apply_overrides(load_config(), {**tiny, **overrides}), tmp_path)
        task.read_records(label=lambda r: str(r["label"]))
        assert len(task.records["validation"]) == 32  # evaluation splits stay whole
        return [r["label"] for r in task.records["train"]]

    everything = Counter(labels({}))
    assert sum(everything.values()) == 64
    for overrides in ({"data.train_size": 16}, {"data.train_fraction": 0.25}):
        kept = Counter(labels(overrides))
        assert sum(kept.values()) == 16
        assert all(abs(kept[k] - everything[k] / 4) < 1 for k in everything)
    with pytest.raises(UserInputError, match=r"^data.train_size: 65 is more than the 64 "):
        labels({"data.train_size": 65})
