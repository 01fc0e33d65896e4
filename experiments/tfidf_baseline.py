"""TF-IDF + logistic-regression baseline for text classification.

A non-neural reference point for the classification task: word 1–2-gram TF-IDF features
with sublinear term frequency, and an L2-regularised (multinomial) logistic regression,
both from scikit-learn (Pedregosa et al., "Scikit-learn: Machine Learning in Python",
JMLR 12:2825–2830, 2011). When a validation split is given, the inverse regularisation
strength C is chosen on validation accuracy over a small grid (ties go to the smaller C)
and the final model is fitted on the training split only. Test accuracy and macro F1 come
from `sft_jax.metrics`, the same code that scores fine-tuned models.

Input is JSONL, one record per line, e.g. {"text": "...", "label": "fresh"}; labels may be
strings or integers. Class names are the sorted distinct training labels.

    python experiments/tfidf_baseline.py --asset rotten-tomatoes
    python experiments/tfidf_baseline.py --train train.jsonl --validation val.jsonl \\
        --test test.jsonl --text_field text --label_field label

Prints one line of JSON with the result and the command that produced it.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import shlex
import sys
import time
from collections.abc import Sequence

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression

from sft_jax import metrics
from sft_jax.errors import UserInputError

DEFAULT_C_GRID = (0.25, 1.0, 4.0, 16.0, 64.0, 256.0)


def read_jsonl(path: str | pathlib.Path, text_field: str, label_field: str):
    """(texts, labels) from a JSONL file; bad lines raise UserInputError naming file:line."""
    texts, labels = [], []
    path = pathlib.Path(path)
    try:
        # Not str.splitlines(): it also splits on U+0085, U+2028, ... which JSON strings
        # may hold raw. File iteration splits on newlines only.
        with path.open(encoding="utf-8") as f:
            lines = list(f)
    except OSError as err:
        raise UserInputError(f"{path}: cannot read: {err.strerror or err}") from err
    except UnicodeDecodeError as err:
        raise UserInputError(f"{path}: not UTF-8 (byte {err.start})") from err
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise UserInputError(f"{where}: invalid JSON: {err.msg}") from err
        if not isinstance(record, dict):
            raise UserInputError(f"{where}: expected a JSON object")
        for field in (text_field, label_field):
            if field not in record:
                raise UserInputError(f"{where}: missing field {field!r}")
        text, label = record[text_field], record[label_field]
        if not isinstance(text, str):
            raise UserInputError(f"{where}: field {text_field!r} is not a string")
        if isinstance(label, bool) or not isinstance(label, str | int):
            raise UserInputError(f"{where}: field {label_field!r} must be a string or integer")
        texts.append(text)
        labels.append(label)
    if not texts:
        raise UserInputError(f"{path}: no records")
    return texts, labels


def _class_ids(labels: list, classes: list, path: str) -> np.ndarray:
    index = {c: i for i, c in enumerate(classes)}
    unknown = sorted({repr(x) for x in labels if x not in index})
    if unknown:
        raise UserInputError(f"{path}: labels not in the training split: {', '.join(unknown)}")
    return np.array([index[x] for x in labels], dtype=np.int64)


def _parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="TF-IDF + logistic-regression text-classification baseline (scikit-learn)."
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--asset", help="named corpus from sft_jax.assets, e.g. rotten-tomatoes")
    source.add_argument("--train", help="training split, JSONL")
    parser.add_argument("--validation", help="validation split, JSONL (enables tuning C)")
    parser.add_argument("--test", help="test split, JSONL (required with --train)")
    parser.add_argument("--text_field", default="text")
    parser.add_argument("--label_field", default="label")
    parser.add_argument(
        "--C", type=float, default=None, help="fixed C (no tuning); default: tune on validation"
    )
    parser.add_argument(
        "--c_grid",
        default=",".join(str(c) for c in DEFAULT_C_GRID),
        help="comma-separated C values to try on validation",
    )
    args = parser.parse_args(argv)
    if args.asset and (args.test or args.validation):
        parser.error("--asset gives all splits; do not combine with --test/--validation")
    if args.train and not args.test:
        parser.error("--train needs --test")
    try:
        args.c_grid = sorted(float(c) for c in args.c_grid.split(","))
    except ValueError:
        parser.error(f"--c_grid must be comma-separated numbers, got {args.c_grid!r}")
    if (args.C is not None and args.C <= 0) or any(c <= 0 for c in args.c_grid):
        parser.error("C values must be positive")
    return args


def _resolve_splits(args: argparse.Namespace) -> dict[str, str | None]:
    if not args.asset:
        return {"train": args.train, "validation": args.validation, "test": args.test}
    from sft_jax import assets  # only needed here; resolved late

    root = pathlib.Path(assets.fetch(args.asset))
    validation = root / "validation.jsonl"
    return {
        "train": str(root / "train.jsonl"),
        "validation": str(validation) if validation.exists() else None,
        "test": str(root / "test.jsonl"),
    }


def run(args: argparse.Namespace) -> dict:
    """Fits, tunes and evaluates; returns the result dict (without the command)."""
    start = time.perf_counter()
    paths = _resolve_splits(args)
    read = lambda path: read_jsonl(path, args.text_field, args.label_field)
    train_texts, train_labels = read(paths["train"])
    test_texts, test_labels = read(paths["test"])

    classes = sorted(set(train_labels), key=lambda x: (isinstance(x, str), x))
    if len(classes) < 2:
        raise UserInputError(f"{paths['train']}: needs at least 2 classes, found {classes}")
    names = [str(c) for c in classes]
    y_train = _class_ids(train_labels, classes, paths["train"])
    y_test = _class_ids(test_labels, classes, paths["test"])

    vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True)
    x_train = vectorizer.fit_transform(train_texts)
    fit = lambda c: LogisticRegression(C=c, max_iter=2000).fit(x_train, y_train)

    result: dict = {"baseline": "tfidf_logreg", "source": args.asset or paths["train"]}
    validation_accuracy: dict[str, float] = {}
    model = None
    if args.C is not None:
        best_c = args.C
    elif paths["validation"]:
        val_texts, val_labels = read(paths["validation"])
        y_val = _class_ids(val_labels, classes, paths["validation"])
        x_val = vectorizer.transform(val_texts)
        best_c, best_acc = None, -1.0
        for c in args.c_grid:
            candidate = fit(c)
            acc = float(np.mean(candidate.predict(x_val) == y_val))
            validation_accuracy[f"{c:g}"] = round(acc, 4)
            if acc > best_acc:
                best_c, best_acc, model = c, acc, candidate
        result["n_validation"] = len(val_texts)
    else:
        best_c = 1.0  # scikit-learn's default

    if model is None:
        model = fit(best_c)
    predictions = model.predict(vectorizer.transform(test_texts))
    test = metrics.classification_metrics(y_test, predictions, label_names=names)
    result.update(
        {
            "n_train": len(train_texts),
            "n_test": len(test_texts),
            "labels": names,
            "num_features": len(vectorizer.vocabulary_),
            "C": best_c,
            "tuned_on_validation": bool(validation_accuracy),
            "validation_accuracy_by_C": validation_accuracy,
            "test_accuracy": round(test.scalars["accuracy"], 4),
            "test_macro_f1": round(test.scalars["macro_f1"], 4),
            "test_confusion_matrix": test.confusion_matrix,
            "seconds": round(time.perf_counter() - start, 2),
        }
    )
    return result


def main(argv: Sequence[str] | None = None) -> dict:
    """Runs the baseline, prints the result as one JSON line and returns it."""
    argv = list(sys.argv[1:] if argv is None else argv)
    result = run(_parse_args(argv))
    result["command"] = shlex.join(["python", "experiments/tfidf_baseline.py", *argv])
    print(json.dumps(result), flush=True)
    return result


if __name__ == "__main__":
    try:
        main()
    except UserInputError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
