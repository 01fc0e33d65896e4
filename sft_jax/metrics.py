"""Evaluation metrics, computed on host in numpy.

Classification: accuracy, per-class and macro precision/recall/F1, support, and the
confusion matrix, from a streaming `ConfusionMatrix` that eval loops update batch by
batch (filler rows carry mask 0). Perplexity from a summed negative log-likelihood.

Zero division follows scikit-learn's default with ``zero_division=0``: a class never
predicted has precision 0, a class absent from the labels has recall 0, and F1 is
``2·tp / (2·tp + fp + fn)``, 0 when that denominator is 0 (as in scikit-learn ≥ 1.3).

Generation metrics: corpus BLEU and chrF (sacrebleu, with signatures) and ROUGE
(rouge-score); see their section below for the reference layout.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Sequence

import numpy as np

from sft_jax.errors import UserInputError

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
# Generation (translation, summarization, dialogue)
# --------------------------------------------------------------------------------------
# Corpus-level BLEU and chrF via sacrebleu's metric objects (so the signature, which pins
# tokenizer, casing, smoothing and version, can be logged beside the score), ROUGE via
# rouge-score's `RougeScorer`, per-example scores averaged over the corpus. sacrebleu and
# rouge-score (which imports nltk, ~1 s) are imported inside the functions so that
# classification-only runs do not pay for them.
#
# References, for every function here, are *per hypothesis*: ``references[i]`` is either
# one string or a non-empty sequence of strings, all references of ``hypotheses[i]``
# (Hugging Face `evaluate`'s layout). Examples may have different numbers of references.
# sacrebleu's own "reference streams" layout (``streams[k][i]`` = k-th reference of
# example i) is *not* accepted: the two cannot be told apart when there are as many
# streams as examples. Use ``[list(refs) for refs in zip(*streams)]`` to convert.

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")

# A sentence ends at . ! ? or … , optionally followed by closing quotes or brackets, then
# whitespace.
_SENTENCE_END = re.compile(r"[.!?…][\"'”’»)\]]*\s+")


def corpus_bleu(
    hypotheses: Sequence[str],
    references: Sequence[str] | Sequence[Sequence[str]],
    *,
    tokenize: str = "13a",
    lowercase: bool = False,
) -> dict:
    """Corpus BLEU (sacrebleu defaults: exponential smoothing, max n-gram order 4).

    Args:
      hypotheses: one detokenized string per example.
      references: per hypothesis, one string or a sequence of strings (see the section
        comment above).
      tokenize: a sacrebleu tokenizer name: ``13a`` (the WMT default), ``intl``, ``zh``,
        ``char``, ``none``, ... (``ja-mecab``/``ko-mecab`` need extra packages).
      lowercase: case-insensitive BLEU.

    Returns:
      ``bleu`` (0-100), ``bleu_bp`` (brevity penalty, 0-1), ``bleu_sys_len`` and
      ``bleu_ref_len`` (token counts) as numbers; ``bleu_precisions``, a list of the four
      n-gram precisions (0-100); ``bleu_signature``, e.g.
      ``nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:2.6.0`` (``nrefs:var`` when
      examples have different numbers of references). Only the numbers are scalars for
      TensorBoard.
    """
    from sacrebleu.metrics import BLEU

    streams = _reference_streams(hypotheses, references, "corpus_bleu")
    try:
        metric = BLEU(tokenize=tokenize, lowercase=lowercase)
    except KeyError:
        raise UserInputError(
            f"corpus_bleu: unknown tokenize={tokenize!r}; choose one of "
            f"{', '.join(sorted(BLEU.TOKENIZERS))}"
        ) from None
    score = metric.corpus_score(list(hypotheses), streams)
    return {
        "bleu": float(score.score),
        "bleu_precisions": [float(p) for p in score.precisions],
        "bleu_bp": float(score.bp),
        "bleu_sys_len": int(score.sys_len),
        "bleu_ref_len": int(score.ref_len),
        "bleu_signature": str(metric.get_signature()),
    }


def corpus_chrf(
    hypotheses: Sequence[str],
    references: Sequence[str] | Sequence[Sequence[str]],
    *,
    word_order: int = 0,
) -> dict:
    """Corpus chrF (character 6-grams, beta 2), or chrF++ with ``word_order=2``.

    References are per hypothesis, as for `corpus_bleu`. Returns ``chrf`` (0-100) and
    ``chrf_signature``; the keys are the same for chrF++, whose signature reads ``nw:2``.
    """
    from sacrebleu.metrics import CHRF

    streams = _reference_streams(hypotheses, references, "corpus_chrf")
    if word_order not in (0, 1, 2):
        raise UserInputError(f"corpus_chrf: word_order must be 0, 1 or 2, got {word_order!r}")
    metric = CHRF(word_order=word_order)
    score = metric.corpus_score(list(hypotheses), streams)
    return {"chrf": float(score.score), "chrf_signature": str(metric.get_signature())}


def rouge(
    predictions: Sequence[str],
    references: Sequence[str] | Sequence[Sequence[str]],
    *,
    types: Sequence[str] = ROUGE_TYPES,
    use_stemmer: bool = True,
) -> dict[str, float]:
    """ROUGE F-measure, precision and recall (×100), each averaged over examples.

    Computed by rouge-score's `RougeScorer`; with several references for an example, its
    `score_multi` keeps, per ROUGE type, the reference with the best F-measure.

    ``rougeLsum`` is summary-level LCS over sentences, and rouge-score finds sentences
    *only* at newlines: put one sentence per line in predictions and references (e.g. with
    `split_sentences_newlines`), or ``rougeLsum`` is just ``rougeL``.

    rouge-score's tokenizer is English-centric: it lowercases and keeps only ``[a-z0-9]``
    runs, so accented letters split words (``canción`` → ``canci``, ``n``), and the Porter
    stemmer is English. Scores on other languages are comparable among themselves only.

    Args:
      predictions: one string per example.
      references: per prediction, one string or a sequence of strings.
      types: ROUGE types: ``rouge1`` ... ``rouge9``, ``rougeL``, ``rougeLsum``.
      use_stemmer: Porter-stem tokens before matching (the usual setting for papers).

    Returns:
      For each type ``t``: ``t`` (the F-measure), ``t_precision`` and ``t_recall``.
    """
    from rouge_score import rouge_scorer

    streams = _reference_streams(predictions, references, "rouge")
    types = [types] if isinstance(types, str) else list(types)
    bad = [t for t in types if not re.fullmatch(r"rouge[1-9]|rougeL|rougeLsum", t)]
    if not types or bad:
        raise UserInputError(
            f"rouge: unknown ROUGE types {bad or types}; use rouge1..rouge9, rougeL, rougeLsum"
        )
    scorer = rouge_scorer.RougeScorer(types, use_stemmer=use_stemmer)
    totals = {t: np.zeros(3) for t in types}  # precision, recall, F-measure
    for i, prediction in enumerate(predictions):
        refs = [stream[i] for stream in streams if stream[i] is not None]
        if len(refs) == 1:
            scores = scorer.score(refs[0], prediction)
        else:
            scores = scorer.score_multi(refs, prediction)
        for t in types:
            totals[t] += scores[t]
    out: dict[str, float] = {}
    for t in types:
        precision, recall, fmeasure = 100 * totals[t] / len(predictions)
        out[t] = float(fmeasure)
        out[f"{t}_precision"] = float(precision)
        out[f"{t}_recall"] = float(recall)
    return out


def text_metrics(
    predictions: Sequence[str],
    references: Sequence[str] | Sequence[Sequence[str]],
    *,
    metrics: Sequence[str],
    bleu_tokenize: str = "13a",
) -> dict:
    """What the seq2seq tasks report for generated text (`eval.metrics`,
    `eval.bleu_tokenize`): ``generated`` (the number of predictions), then for "bleu"
    `corpus_bleu`, for "chrf" `corpus_chrf`, for "rouge" `rouge` of the texts cut into one
    sentence per line (`split_sentences_newlines`, for ROUGE-Lsum)."""
    out: dict = {"generated": len(predictions)}
    if "bleu" in metrics:
        out.update(corpus_bleu(predictions, references, tokenize=bleu_tokenize))
    if "chrf" in metrics:
        out.update(corpus_chrf(predictions, references))
    if "rouge" in metrics:
        split = split_sentences_newlines
        out.update(rouge([split(p) for p in predictions],
                         [split(r) if isinstance(r, str) else [split(x) for x in r]
                          for r in references]))
    return out


def split_sentences_newlines(text: str) -> str:
    """One sentence per line, for ``rougeLsum``; a simple rule, no nltk data needed.

    A sentence ends at ``.``, ``!``, ``?`` or ``…`` (optionally followed by closing quotes
    or brackets) followed by whitespace, unless the next character is a lowercase letter
    (so ``e.g. this`` stays whole). That whitespace becomes a newline; existing line breaks
    are kept, and lines are stripped, empty ones dropped. Abbreviations before a capital
    (``Dr. Smith``) are split: good enough for ROUGE-Lsum, not for linguistics.
    """
    pieces, start = [], 0
    for match in _SENTENCE_END.finditer(text):
        end = match.end()
        if end < len(text) and text[end].islower():
            continue
        pieces.append(text[start : match.start()] + match.group().rstrip())
        start = end
    pieces.append(text[start:])
    lines = (line.strip() for piece in pieces for line in piece.splitlines())
    return "\n".join(line for line in lines if line)


def _reference_streams(
    hypotheses: Sequence[str], references: Sequence, caller: str
) -> list[list[str | None]]:
    """Per-hypothesis references → sacrebleu reference streams, padded with None.

    Checks the inputs: a non-empty sequence of strings, one (non-empty) reference entry per
    hypothesis. Raises `UserInputError` otherwise.
    """
    for name, value in (("hypotheses", hypotheses), ("references", references)):
        if isinstance(value, str):
            raise UserInputError(f"{caller}: {name} must be a sequence of strings, not a str")
    if len(hypotheses) == 0:
        raise UserInputError(f"{caller}: no hypotheses (empty input)")
    if len(hypotheses) != len(references):
        raise UserInputError(
            f"{caller}: {len(hypotheses)} hypotheses but {len(references)} references; "
            "give one reference (or one list of references) per hypothesis"
        )
    for i, hypothesis in enumerate(hypotheses):
        if not isinstance(hypothesis, str):
            raise UserInputError(
                f"{caller}: hypotheses[{i}] is {type(hypothesis).__name__}, not str"
            )
    per_example: list[list[str]] = []
    for i, refs in enumerate(references):
        refs = [refs] if isinstance(refs, str) else list(refs)
        if not refs:
            raise UserInputError(f"{caller}: references[{i}] is empty")
        for ref in refs:
            if not isinstance(ref, str):
                raise UserInputError(
                    f"{caller}: references[{i}] holds a {type(ref).__name__}, not str"
                )
        per_example.append(refs)
    num_streams = max(len(refs) for refs in per_example)
    return [
        [refs[k] if k < len(refs) else None for refs in per_example] for k in range(num_streams)
    ]
