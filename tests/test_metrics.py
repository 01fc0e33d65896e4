"""sft_jax.metrics against scikit-learn, the reference implementation."""

import json
import math

import numpy as np
import pytest
from sklearn import metrics as skm

from sft_jax import metrics

NAMES = ("ant", "bee", "cat", "dog", "eel")
NUM_CLASSES = len(NAMES)


def _random_case(seed: int, n: int = 300):
    """Labels never contain class 3; predictions never contain class 1."""
    rng = np.random.default_rng(seed)
    labels = rng.choice([0, 1, 2, 4], size=n)
    predictions = np.where(rng.random(n) < 0.6, labels, rng.integers(0, 5, size=n))
    predictions = np.where(predictions == 1, 0, predictions)
    return labels, predictions


def _assert_matches_sklearn(result, labels, predictions, num_classes=NUM_CLASSES):
    classes = np.arange(num_classes)
    s = result.scalars
    assert s["accuracy"] == pytest.approx(skm.accuracy_score(labels, predictions))
    p, r, f, _ = skm.precision_recall_fscore_support(
        labels, predictions, labels=classes, average="macro", zero_division=0
    )
    assert (s["macro_precision"], s["macro_recall"], s["macro_f1"]) == pytest.approx((p, r, f))
    p, r, f, support = skm.precision_recall_fscore_support(
        labels, predictions, labels=classes, average=None, zero_division=0
    )
    names = result.label_names
    np.testing.assert_allclose([s[f"precision/{n}"] for n in names], p)
    np.testing.assert_allclose([s[f"recall/{n}"] for n in names], r)
    np.testing.assert_allclose([s[f"f1/{n}"] for n in names], f)
    assert [s[f"support/{n}"] for n in names] == support.tolist()
    expected_cm = skm.confusion_matrix(labels, predictions, labels=classes)
    assert result.confusion_matrix == expected_cm.tolist()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_sklearn_with_absent_and_never_predicted_classes(seed):
    labels, predictions = _random_case(seed)
    result = metrics.classification_metrics(labels, predictions, label_names=NAMES)
    # The case really exercises both zero divisions.
    assert result.scalars["support/dog"] == 0 and result.scalars["recall/dog"] == 0.0
    assert result.scalars["precision/bee"] == 0.0 and result.scalars["support/bee"] > 0
    _assert_matches_sklearn(result, labels, predictions)


def test_sklearn_default_averaging_differs_only_by_absent_classes():
    # A class absent from both labels and predictions counts as 0 in our macro average
    # (sklearn with labels=range(K)); sklearn's labels=None would drop it.
    labels = np.array([0, 0, 1, 1])
    predictions = np.array([0, 1, 1, 1])
    result = metrics.classification_metrics(labels, predictions, label_names=("a", "b", "c"))
    _assert_matches_sklearn(result, labels, predictions, num_classes=3)
    f1_present = skm.f1_score(labels, predictions, average="macro", zero_division=0)
    assert result.scalars["macro_f1"] == pytest.approx(f1_present * 2 / 3)


def test_perfect_and_binary():
    labels = np.array([1, 0, 1, 1, 0])
    result = metrics.classification_metrics(labels, labels, label_names=("neg", "pos"))
    assert result.scalars["accuracy"] == 1.0
    assert result.scalars["macro_f1"] == 1.0
    assert result.confusion_matrix == [[2, 0], [0, 3]]


def test_masked_update_ignores_filler_rows():
    labels, predictions = _random_case(3, n=64)
    mask = np.arange(64) < 50
    # Filler rows carry garbage, including out-of-range ids, which must be ignored.
    labels_padded = np.where(mask, labels, -1)
    predictions_padded = np.where(mask, predictions, 99)
    cm = metrics.ConfusionMatrix(len(NAMES))
    cm.update(labels_padded, predictions_padded, mask=mask.astype(np.int32))
    assert cm.total == 50
    _assert_matches_sklearn(cm.compute(NAMES), labels[:50], predictions[:50])


def test_batched_equals_one_shot_and_merge():
    labels, predictions = _random_case(4, n=301)
    one_shot = metrics.classification_metrics(labels, predictions, label_names=NAMES)

    batch = 32  # last batch padded to a fixed [4, 8] shape, as an eval loop would
    streamed = metrics.ConfusionMatrix(len(NAMES))
    halves = [metrics.ConfusionMatrix(len(NAMES)) for _ in range(2)]
    for i, start in enumerate(range(0, len(labels), batch)):
        y, p = labels[start : start + batch], predictions[start : start + batch]
        pad = batch - len(y)
        mask = np.concatenate([np.ones(len(y), bool), np.zeros(pad, bool)]).reshape(4, 8)
        y = np.pad(y, (0, pad)).reshape(4, 8)
        p = np.pad(p, (0, pad)).reshape(4, 8)
        streamed.update(y, p, mask=mask)
        halves[i % 2].update(y, p, mask=mask)
    halves[0].merge(halves[1])

    assert streamed.compute(NAMES) == one_shot
    assert halves[0].compute(NAMES) == one_shot
    np.testing.assert_array_equal(streamed.counts, np.array(one_shot.confusion_matrix))


def test_jax_arrays_accepted():
    jnp = pytest.importorskip("jax.numpy")
    labels, predictions = _random_case(5, n=40)
    result = metrics.classification_metrics(
        jnp.asarray(labels), jnp.asarray(predictions), label_names=NAMES
    )
    _assert_matches_sklearn(result, labels, predictions)


def test_result_is_loggable():
    labels, predictions = _random_case(6, n=20)
    result = metrics.classification_metrics(labels, predictions, label_names=NAMES)
    assert all(
        isinstance(v, float | int) and not isinstance(v, bool) for v in result.scalars.values()
    )
    assert "confusion_matrix" not in result.scalars
    round_trip = json.loads(json.dumps(result.to_json_dict()))
    assert round_trip["confusion_matrix"] == result.confusion_matrix
    assert round_trip["label_names"] == list(NAMES)
    assert round_trip["scalars"] == result.scalars


def test_empty_accumulator_is_all_zero():
    result = metrics.ConfusionMatrix(2).compute(("a", "b"))
    assert result.scalars["accuracy"] == 0.0
    assert result.scalars["macro_f1"] == 0.0
    assert result.confusion_matrix == [[0, 0], [0, 0]]


def test_reset():
    cm = metrics.ConfusionMatrix(2)
    cm.update(np.array([0, 1]), np.array([1, 1]))
    cm.reset()
    assert cm.total == 0


@pytest.mark.parametrize(
    ("labels", "predictions", "mask", "match"),
    [
        ([0, 1], [0], None, "differ in shape"),
        ([0, 2], [0, 1], None, "labels out of range"),
        ([0, 1], [0, -1], None, "predictions out of range"),
        ([0.0, 1.0], [0, 1], None, "integer class ids"),
        ([0, 1], [0, 1], [0.5, 1.0], "boolean or 0/1"),
        ([0, 1], [0, 1], [1, 1, 0], "mask shape"),
    ],
)
def test_update_rejects_bad_input(labels, predictions, mask, match):
    cm = metrics.ConfusionMatrix(2)
    with pytest.raises(ValueError, match=match):
        cm.update(np.array(labels), np.array(predictions), None if mask is None else np.array(mask))


def test_compute_rejects_bad_names():
    cm = metrics.ConfusionMatrix(2)
    with pytest.raises(ValueError, match="2 classes"):
        cm.compute(("a",))
    with pytest.raises(ValueError, match="duplicate"):
        cm.compute(("a", "a"))
    with pytest.raises(ValueError, match="merge"):
        cm.merge(metrics.ConfusionMatrix(3))


def test_perplexity():
    assert metrics.perplexity(0.0, 10) == 1.0
    assert metrics.perplexity(10 * math.log(4.0), 10) == pytest.approx(4.0)
    assert metrics.perplexity(1e6, 1) == math.inf
    with pytest.raises(ValueError, match="positive token count"):
        metrics.perplexity(1.0, 0)
