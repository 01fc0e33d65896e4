"""Evaluation metrics, computed on host in numpy.

Classification: accuracy, per-class and macro precision/recall/F1, support, and the
confusion matrix, from a streaming `ConfusionMatrix` that eval loops update batch by
batch (filler rows carry mask 0). Perplexity from a summed negative log-likelihood.

Zero division follows scikit-learn's default with ``zero_division=0``: a class never
predicted has precision 0, a class absent from the labels has recall 0, and F1 is
``2·tp / (2·tp + fp + fn)``, 0 when that denominator is 0 (as in scikit-learn ≥ 1.3).

Generation metrics (BLEU/chrF, ROUGE) have their own section below.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np

# --------------------------------------------------------------------------------------
# Classification
# --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ClassificationMetrics:
    """The result of `classification_metrics` / `ConfusionMatrix.compute`.

    Attributes:
      scalars: flat name → number, ready for TensorBoard and metrics.jsonl:
        ``accuracy``, ``macro_precision``, ``macro_recall``, ``macro_f1`` and, for each
        class name, ``precision/<name>``, ``recall/<name>``, ``f1/<name>`` (floats) and
        ``support/<name>`` (int: number of examples whose true label is that class).
      confusion_matrix: counts as a nested list, ``confusion_matrix[true][pred]``, rows and
        columns in the order of `label_names` (scikit-learn's layout).
      label_names: the class names, index i naming class id i.
    """

    scalars: dict[str, float]
    confusion_matrix: list[list[int]]
    label_names: tuple[str, ...]

    def to_json_dict(self) -> dict:
        """Everything as one JSON-serialisable dict (for metrics.jsonl or a report)."""
        return {
            "scalars": dict(self.scalars),
            "confusion_matrix": [list(row) for row in self.confusion_matrix],
            "label_names": list(self.label_names),
        }


class ConfusionMatrix:
    """Streaming confusion-matrix accumulator for batched classification eval.

    Counts are int64 and indexed ``[true, pred]``. Entries whose mask is 0 are ignored
    entirely, so filler rows may carry any label (e.g. -1). Accumulators from different
    hosts or shards combine with `merge`, or by summing their `counts`.

    Example::

        cm = ConfusionMatrix(num_classes=3)
        for batch, logits in ...:
            cm.update(batch["label"], logits.argmax(-1), mask=batch["mask"])
        result = cm.compute(label_names=("neg", "neu", "pos"))
    """

    def __init__(self, num_classes: int):
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = int(num_classes)
        self._counts = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)

    @property
    def counts(self) -> np.ndarray:
        """A copy of the ``[num_classes, num_classes]`` int64 counts, ``[true, pred]``."""
        return self._counts.copy()

    @property
    def total(self) -> int:
        """Number of counted (unmasked) examples so far."""
        return int(self._counts.sum())

    def update(
        self,
        labels: np.ndarray,
        predictions: np.ndarray,
        mask: np.ndarray | None = None,
    ) -> None:
        """Counts one batch.

        Args:
          labels: integer class ids, any shape (jax arrays are fine: they are copied to host).
          predictions: integer class ids, same shape as `labels`.
          mask: optional, same shape; boolean or 0/1 numbers. Entries with mask 0 are
            skipped. Any other value is an error (this counts examples; it does not weigh
            them).
        """
        labels = np.asarray(labels)
        predictions = np.asarray(predictions)
        if labels.shape != predictions.shape:
            raise ValueError(
                f"labels and predictions differ in shape: {labels.shape} vs {predictions.shape}"
            )
        for name, arr in (("labels", labels), ("predictions", predictions)):
            if arr.size and not np.issubdtype(arr.dtype, np.integer):
                raise ValueError(f"{name} must be integer class ids, got dtype {arr.dtype}")
        if mask is not None:
            mask = np.asarray(mask)
            if mask.shape != labels.shape:
                raise ValueError(f"mask shape {mask.shape} differs from labels {labels.shape}")
            if mask.dtype != np.bool_:
                if not np.all((mask == 0) | (mask == 1)):
                    raise ValueError("mask must be boolean or 0/1")
                mask = mask.astype(bool)
            labels, predictions = labels[mask], predictions[mask]
        labels, predictions = labels.reshape(-1), predictions.reshape(-1)
        for name, arr in (("labels", labels), ("predictions", predictions)):
            if arr.size and (arr.min() < 0 or arr.max() >= self.num_classes):
                raise ValueError(
                    f"{name} out of range [0, {self.num_classes}): min {arr.min()}, max {arr.max()}"
                )
        flat = labels.astype(np.int64) * self.num_classes + predictions.astype(np.int64)
        self._counts += np.bincount(flat, minlength=self.num_classes**2).reshape(
            self.num_classes, self.num_classes
        )

    def merge(self, other: ConfusionMatrix) -> None:
        """Adds the counts of another accumulator over the same classes."""
        if other.num_classes != self.num_classes:
            raise ValueError(f"cannot merge {other.num_classes} classes into {self.num_classes}")
        self._counts += other._counts

    def reset(self) -> None:
        self._counts[...] = 0

    def compute(self, label_names: Sequence[str]) -> ClassificationMetrics:
        """Metrics from the counts so far.

        Macro averages are unweighted means over *all* `num_classes` classes, including a
        class absent from both labels and predictions (its P/R/F1 are 0). That matches
        scikit-learn called with ``labels=range(num_classes)``; scikit-learn's own default
        (``labels=None``) would average only over classes that occur. Macro F1 is the mean
        of per-class F1, not the F1 of macro precision and recall. With no examples at all,
        every metric is 0.
        """
        names = tuple(str(n) for n in label_names)
        if len(names) != self.num_classes:
            raise ValueError(f"{len(names)} label names for {self.num_classes} classes")
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate label names: {names}")

        cm = self._counts
        tp = np.diag(cm).astype(np.float64)
        support = cm.sum(axis=1)  # true count per class
        predicted = cm.sum(axis=0)  # predicted count per class
        fp = predicted - tp
        fn = support - tp
        precision = _safe_divide(tp, predicted)
        recall = _safe_divide(tp, support)
        f1 = _safe_divide(2 * tp, 2 * tp + fp + fn)
        total = int(cm.sum())

        scalars: dict[str, float] = {
            "accuracy": float(tp.sum() / total) if total else 0.0,
            "macro_precision": float(precision.mean()),
            "macro_recall": float(recall.mean()),
            "macro_f1": float(f1.mean()),
        }
        for key, values in (("precision", precision), ("recall", recall), ("f1", f1)):
            for name, value in zip(names, values, strict=True):
                scalars[f"{key}/{name}"] = float(value)
        for name, value in zip(names, support, strict=True):
            scalars[f"support/{name}"] = int(value)
        return ClassificationMetrics(
            scalars=scalars, confusion_matrix=cm.tolist(), label_names=names
        )


def classification_metrics(
    labels: np.ndarray,
    predictions: np.ndarray,
    *,
    label_names: Sequence[str],
    mask: np.ndarray | None = None,
) -> ClassificationMetrics:
    """Accuracy, macro and per-class precision/recall/F1, support and confusion matrix.

    One-shot form of `ConfusionMatrix` (see `ConfusionMatrix.compute` for conventions);
    class ids are ``0 .. len(label_names) - 1``.
    """
    cm = ConfusionMatrix(len(label_names))
    cm.update(labels, predictions, mask)
    return cm.compute(label_names)


def _safe_divide(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator / denominator, 0 where the denominator is 0 (``zero_division=0``)."""
    numerator = np.asarray(numerator, dtype=np.float64)
    denominator = np.asarray(denominator, dtype=np.float64)
    out = np.zeros_like(numerator)
    np.divide(numerator, denominator, out=out, where=denominator != 0)
    return out


# --------------------------------------------------------------------------------------
# Language modelling
# --------------------------------------------------------------------------------------


def perplexity(total_nll: float, total_tokens: float) -> float:
    """``exp(total_nll / total_tokens)``, natural-log NLL summed over counted tokens.

    Sum the NLL and the token count (the loss-mask sum) over all eval batches and hosts
    first, then call this once: a mean of per-batch perplexities is not a perplexity.
    Returns ``inf`` when the mean NLL overflows ``exp``.
    """
    total_nll = float(total_nll)
    total_tokens = float(total_tokens)
    if not total_tokens > 0:
        raise ValueError(f"perplexity needs a positive token count, got {total_tokens}")
    try:
        return math.exp(total_nll / total_tokens)
    except OverflowError:
        return math.inf


# --------------------------------------------------------------------------------------
# Generation (translation, summarization, dialogue) — to be added
# --------------------------------------------------------------------------------------
# Corpus-level BLEU and chrF via sacrebleu (`sacrebleu.corpus_bleu`/`corpus_chrf`, with
# the signature logged), ROUGE-1/2/L(sum) via rouge-score (`rouge_scorer.RougeScorer`,
# stemming on, F-measure aggregated over the corpus). Same shape as above: flat
# ``dict[str, float]`` scalars for TensorBoard, anything bulky kept beside them.
