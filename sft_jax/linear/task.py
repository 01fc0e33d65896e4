r"""The `linear` task: a bag-of-n-grams linear classifier fitted as an ordinary run.

    sft-jax train --config=configs/linear.py --workdir=/tmp/tfidf        # TF-IDF + LR
    sft-jax train --config=configs/linear.py:nbsvm --workdir=/tmp/nbsvm

`sft-jax train` (and `sft_jax.train`) run `train_and_evaluate` for `task=linear` instead
of the train loop: nothing iterates, scikit-learn fits the model once
(`sft_jax.linear.models`). Records are read as every task reads them
(`tasks.base.TaskBase.read_records`: data.train / validation / test, the data limits,
data.train_size / train_fraction, stratified by label) and `data.augment` applies to the
training split as for the classification task (`TaskBase.augment_training`). A record has
`data.text_field` (a string) and `data.label_field` (a string, number or boolean; its
string form is the class). Classes are the sorted training labels (at least 2); an
evaluation label never seen in training is an error.

The features are fitted on the training texts. With `linear.c_grid` non-empty, a
validation split and a classifier with a C (logreg, nbsvm), the model is fitted for each
C of the grid and the one with the best validation accuracy kept (ties: the smaller C);
otherwise C = `linear.C`. The run directory then holds, as a trained run's
(`sft_jax.runs`), every record at step 0 (a fit has nothing to resume: a run in a
directory that holds one starts its metrics.jsonl afresh):
  config.json     the config
  metrics.jsonl   `data` (examples per split, `features`), `model` (`params` =
                  `trained_params`: weights and biases; `C` where the classifier has
                  one), one final record per evaluated split (`"final": 1`,
                  `params_from`: how C was chosen), `session` (`seconds`, and
                  `train_seconds`: the fitting). The C search goes to log.txt.
  results.json    {split: metrics} of `eval.splits`: accuracy, macro_f1, per-class
                  precision/recall/F1, confusion_matrix (`sft_jax.metrics`, as for the
                  classification task), and `loss` (mean negative log-likelihood of the
                  label) for the classifiers with probabilities (logreg, mnb)
  predictions/<split>.jsonl   with `eval.write_predictions`: where, the text, label,
                  prediction, and probabilities (logreg, mnb) or scores (nbsvm) by class
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np

from sft_jax import metrics as metrics_lib
from sft_jax import storage
from sft_jax import workdir as workdir_lib
from sft_jax.errors import UserInputError
from sft_jax.linear import models
from sft_jax.tasks.base import TaskBase, check_field
from sft_jax.tasks.classification import LABEL_TYPES
from sft_jax.writers import MetricWriter, peak_rss_mb, to_json

log = logging.getLogger(__name__)


class LinearTask(TaskBase):
    """Records, classes and class ids of a linear run; `fit` and `evaluate`."""

    def __init__(self, config: ml_collections.ConfigDict, workdir: Path):
        super().__init__(config, workdir)
        self.read_records(self._check, label=self._label)
        self.augment_training()
        if "train" not in self.records:
            raise UserInputError("data.train: required (the linear task fits on it)")
        self.label_names = sorted({self._label(r) for r in self.records["train"]})
        if len(self.label_names) < 2:
            raise UserInputError(
                f"data.train: found {len(self.label_names)} distinct label(s) in field "
                f"{config.data.label_field!r}; classification needs at least 2")
        ids = {name: i for i, name in enumerate(self.label_names)}
        for records in self.records.values():
            for r in records:
                if self._label(r) not in ids:
                    raise UserInputError(
                        f"{r['_where']}: label {self._label(r)!r} (data.label_field) was "
                        f"never seen in training (known: {self.label_names})")
        self.y = {split: np.array([ids[self._label(r)] for r in records], np.int64)
                  for split, records in self.records.items()}

    def _check(self, record: dict) -> None:
        check_field(record, self.config.data.text_field, "data.text_field")
        check_field(record, self.config.data.label_field, "data.label_field", LABEL_TYPES)

    def _label(self, record: dict) -> str:
        return str(record[self.config.data.label_field])

    def texts(self, split: str) -> list[str]:
        return [r[self.config.data.text_field] for r in self.records[split]]

    def fit(self) -> tuple[Any, models.Model, float | None, str]:
        """(fitted vectorizer, model, its C (None for mnb), how C was chosen), as the module
        docstring says."""
        linear = self.config.linear
        vectorizer = models.vectorizer(linear)
        x = vectorizer.fit_transform(self.texts("train"))
        self.stats["features"] = x.shape[1]
        fit = lambda c: models.fit(linear, x, self.y["train"], len(self.label_names), c=c,
                                   seed=int(self.config.seed))
        if linear.classifier == "mnb":
            return vectorizer, fit(float(linear.C)), None, "fitted on the training split"
        if not linear.c_grid or "validation" not in self.records:
            c = float(linear.C)
            return vectorizer, fit(c), c, f"C={c:g} (linear.C)"
        x_val = vectorizer.transform(self.texts("validation"))
        best, best_acc, best_c = None, -1.0, 0.0
        for c in sorted(float(c) for c in linear.c_grid):
            model = fit(c)
            acc = float(np.mean(model.predict(x_val) == self.y["validation"]))
            log.info("C=%g: validation accuracy %.4f", c, acc)
            if acc > best_acc:
                best, best_acc, best_c = model, acc, c
        grid = ", ".join(f"{float(c):g}" for c in sorted(linear.c_grid))
        return vectorizer, best, best_c, f"C={best_c:g} (best validation accuracy of {grid})"

    def evaluate(self, split: str, model: models.Model, x) -> tuple[dict, dict]:
        """(metrics, per-example outputs) of `split` with features x [N, V]."""
        scores = model.scores(x)  # N K
        predictions = np.argmax(scores, axis=1)
        result = metrics_lib.classification_metrics(self.y[split], predictions,
                                                    label_names=self.label_names)
        metrics: dict[str, Any] = {}
        probabilities = model.probabilities(x)
        if probabilities is not None:
            picked = probabilities[np.arange(len(predictions)), self.y[split]]
            metrics["loss"] = float(-np.mean(np.log(np.maximum(picked, 1e-300))))
        metrics.update(result.scalars, confusion_matrix=result.confusion_matrix)
        return metrics, {"prediction": predictions, "scores": scores,
                         "probabilities": probabilities}

    def write_predictions(self, split: str, outputs: dict, path: Path) -> None:
        field = self.config.data.text_field
        kind = "scores" if outputs["probabilities"] is None else "probabilities"
        values = outputs[kind]
        with path.open("w") as f:
            for i, record in enumerate(self.records[split]):
                row = {"where": record["_where"], field: record[field],
                       "label": self.label_names[int(self.y[split][i])],
                       "prediction": self.label_names[int(outputs["prediction"][i])],
                       kind: {name: round(float(v), 6) for name, v in
                              zip(self.label_names, values[i], strict=True)}}
                f.write(json.dumps(row, ensure_ascii=False) + "\n")

    def data_stats(self) -> dict[str, Any]:
        return {**{f"{split}/examples": len(records) for split, records in self.records.items()},
                **self.stats}


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | Path) -> dict:
    """Fits the linear classifier of `config` and evaluates it on `eval.splits` into
    `workdir` (the module docstring); returns the results by split (results.json)."""
    started = time.perf_counter()
    workdir = storage.path(workdir)
    lock = workdir_lib.lock(workdir) if jax.process_index() == 0 else None
    try:
        task = LinearTask(config, workdir)
        fit_started = time.perf_counter()
        vectorizer, model, c, chosen = task.fit()
        fit_seconds = time.perf_counter() - fit_started
        if jax.process_index() != 0:
            return {}
        storage.write_text(workdir / "config.json", config.to_json_best_effort(indent=2) + "\n")
        # every record is at step 0; this fit's records only
        writer = MetricWriter(workdir, tensorboard=False, fresh=True)
        writer.write(0, "data", task.data_stats())
        writer.write(0, "model", {"params": model.num_params, "trained_params": model.num_params,
                                  "replicas": 1, **({} if c is None else {"C": c})})
        log.info("%s on %d features, %s", config.linear.classifier,
                 task.stats["features"], chosen)
        results = {}
        for split in config.eval.splits:
            if split not in task.records:
                continue
            metrics, outputs = task.evaluate(split, model,
                                             vectorizer.transform(task.texts(split)))
            results[split] = {**metrics, "params_from": chosen}
            writer.write(0, split, {"final": 1, **results[split]})
            if config.eval.write_predictions:
                (workdir / "predictions").mkdir(parents=True, exist_ok=True)
                task.write_predictions(split, outputs,
                                       workdir / "predictions" / f"{split}.jsonl")
        storage.write_text(workdir / "results.json", to_json(results, indent=2) + "\n")
        writer.write(0, "session", {"seconds": time.perf_counter() - started,
                                    "train_seconds": fit_seconds, "start_step": 0,
                                    "peak_rss_mb": peak_rss_mb()})
        writer.close()
        return results
    finally:
        if lock is not None:
            lock.release()
