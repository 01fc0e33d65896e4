"""The `linear` task (`sft_jax.linear`): NBSVM by hand, MNB against scikit-learn, the run
directory as `sft_jax.runs` and the report read it, EDA on its training split, bad input;
and `python -m experiments.reproduce --all --tiny`."""

import json
import math
import os
import random
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO, load_config

import sft_jax
from sft_jax import reporting, runs, tasks, validate
from sft_jax.data import augment
from sft_jax.errors import UserInputError
from sft_jax.linear import models
from sft_jax.linear.task import LinearTask, train_and_evaluate

WORDS = {"pos": ["witty", "moving", "superb"], "neg": ["dull", "flat", "tedious"]}
FILLER = ["the", "film", "plot", "cast", "story", "is", "a", "and"]


def _write_corpus(root, sizes=(60, 20, 30), classes=("neg", "pos"), seed=0):
    """train/validation/test JSONL: fillers, one cue word of the label, and in a third of
    the texts a cue of another label (noisy, so classifiers can disagree)."""
    rng = random.Random(seed)
    cues = {**WORDS, "mid": ["fine", "okay"]}
    root.mkdir(parents=True, exist_ok=True)
    for split, n in zip(("train", "validation", "test"), sizes, strict=True):
        with (root / f"{split}.jsonl").open("w") as f:
            for i in range(n):
                label = classes[i % len(classes)]
                words = [*rng.sample(FILLER, 4), rng.choice(cues[label])]
                if rng.random() < 0.35:
                    words.append(rng.choice(cues[rng.choice(classes)]))
                rng.shuffle(words)
                f.write(json.dumps({"text": " ".join(words), "label": label}) + "\n")
    return root


def _config(variant, corpus, **overrides):
    config = load_config("linear", variant)
    for split in ("train", "validation", "test"):
        config.data[split] = str(corpus / f"{split}.jsonl")
    for key, value in overrides.items():
        section, name = key.split(".")
        config[section][name] = value
    validate.check_config(config)
    return config


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return _write_corpus(tmp_path_factory.mktemp("linear_corpus"))


def test_log_count_ratio_and_interpolation_by_hand():
    x = np.array([[1, 0, 1], [1, 1, 0], [0, 1, 1], [0, 1, 0]], float)  # N=4 V=3
    positive = np.array([True, True, False, False])
    # p = 1 + (2, 1, 1) = (3, 2, 2), ‖p‖₁ = 7; q = 1 + (0, 2, 1) = (1, 3, 2), ‖q‖₁ = 6
    r = models.log_count_ratio(x, positive, alpha=1.0)
    np.testing.assert_allclose(r, np.log([(3 / 7) / (1 / 6), (2 / 7) / (3 / 6),
                                          (2 / 7) / (2 / 6)]))
    # w̄ = (1 + 3) / 2 = 2: w' = 0.75·2 + 0.25·(1, -3); b' = 0.75·2·log 2 + 0.25·0.5
    w, b = models.interpolate(np.array([1.0, -3.0]), 0.5, math.log(2), beta=0.25)
    np.testing.assert_allclose(w, [1.75, 0.75])
    assert b == pytest.approx(1.5 * math.log(2) + 0.125)
    assert models.interpolate(np.array([1.0, -3.0]), 0.5, 0.7, beta=1.0)[1] == 0.5


def test_nbsvm_is_the_interpolated_svm_on_r_scaled_features():
    from sklearn.svm import LinearSVC

    rng = np.random.default_rng(0)
    x = (rng.random((40, 12)) < 0.3).astype(float)  # binarized features
    y = (x[:, 0] + x[:, 1] + rng.random(40) > 1.2).astype(int)
    fitted = models.fit_nbsvm(x, y, 2, alpha=1.0, c=1.0, beta=0.25, max_iter=5000, seed=0)
    r = models.log_count_ratio(x, y == 1, 1.0)
    svm = LinearSVC(C=1.0, max_iter=5000, random_state=0).fit(x * r, y)
    w, b = models.interpolate(svm.coef_.ravel(), svm.intercept_[0],
                              math.log(y.mean() / (1 - y.mean())), 0.25)
    s = (x * r) @ w + b
    np.testing.assert_allclose(fitted.scores(x), np.stack([-s, s], 1), atol=1e-6)
    three = models.fit_nbsvm(x, y + x[:, 2].astype(int), 3, alpha=1.0, c=1.0, beta=0.25,
                             max_iter=5000, seed=0)
    assert three.r.shape == three.weights.shape == (3, 12)  # one-vs-rest
    assert three.scores(x).shape == (40, 3)


def test_mnb_run_predicts_as_scikit_learn(corpus, tmp_path):
    from sklearn.feature_extraction.text import CountVectorizer
    from sklearn.naive_bayes import MultinomialNB

    config = _config("mnb", corpus)
    results = train_and_evaluate(config, tmp_path / "mnb")
    read = lambda split: [json.loads(x) for x in
                          (corpus / f"{split}.jsonl").read_text().splitlines()]
    train, test = read("train"), read("test")
    vectorizer = CountVectorizer(binary=True, ngram_range=(1, 2),
                                 token_pattern=config.linear.token_pattern)
    nb = MultinomialNB(alpha=1.0).fit(vectorizer.fit_transform([r["text"] for r in train]),
                                      [r["label"] for r in train])
    expected = nb.predict(vectorizer.transform([r["text"] for r in test]))
    rows = [json.loads(x) for x in
            (tmp_path / "mnb" / "predictions" / "test.jsonl").read_text().splitlines()]
    assert [r["prediction"] for r in rows] == list(expected)
    assert 0.5 < results["test"]["accuracy"] < 1.0  # noisy: not every text is right
    assert results["test"]["accuracy"] == pytest.approx(np.mean(expected == np.array(
        [r["label"] for r in test])))


def test_run_directories_read_as_runs_and_report(corpus, tmp_path):
    sweep = tmp_path / "sweep"
    train_and_evaluate(_config(None, corpus, **{"linear.c_grid": (1.0, 10.0)}),
                       sweep / "tfidf")
    train_and_evaluate(_config("nbsvm", corpus, **{"eval.write_predictions": False}),
                       sweep / "nbsvm")
    records = runs.read_records(sweep / "tfidf")
    assert [r["split"] for r in records] == ["data", "model", "validation", "test", "session"]
    assert records[0]["train/examples"] == 60 and records[1]["C"] in (1.0, 10.0)
    assert records[3]["final"] == 1 and records[3]["params_from"].startswith("C=")
    assert records[4]["peak_rss_mb"] > 50  # this process's, in MiB
    table = runs.load(sweep).set_index("run")
    assert table["finished"].all() and set(table.index) == {"tfidf", "nbsvm"}
    assert table.loc["nbsvm", "params"] == table.loc["nbsvm", "trained_params"] > 0
    assert (table["test/accuracy"] > 0.5).all() and (table["wall_seconds"] > 0).all()
    assert math.isnan(table.loc["nbsvm", "test/loss"])  # an SVM has no probabilities
    assert not (sweep / "nbsvm" / "predictions").exists()
    report = reporting.write_report(sweep, plots=False)
    assert report.split == "test" and "accuracy" in report.metrics
    assert len(report.groups) == 2
    # A fit has nothing to resume: the same command again leaves one fit's records.
    train_and_evaluate(_config("nbsvm", corpus, **{"eval.write_predictions": False}),
                       sweep / "nbsvm")
    again = runs.read_records(sweep / "nbsvm")
    assert [r["split"] for r in again] == ["data", "model", "validation", "test", "session"]


def test_eda_applies_to_the_training_split_as_for_classification(corpus, tmp_path,
                                                                   monkeypatch):
    synonyms = {"film": ("movie",), "story": ("tale",), "plot": ("storyline",)}
    monkeypatch.setattr(augment, "wordnet_synonyms", lambda: lambda w: synonyms.get(w, ()))
    plain = LinearTask(_config(None, corpus), tmp_path / "plain")
    config = _config(None, corpus, **{"data.augment": "eda", "data.eda_n_aug": 2})
    task = LinearTask(config, tmp_path / "eda")
    assert task.records["train"] == augment.augment_records(plain.records["train"],
                                                            config.data, 0)
    assert len(task.records["train"]) == 3 * 60 and task.records["test"] == \
        plain.records["test"]
    assert len(task.y["train"]) == 180


def test_bad_input_is_one_line(corpus, tmp_path):
    with pytest.raises(UserInputError, match=r"^--config\.linear\.beta: must be in"):
        _config("nbsvm", corpus, **{"linear.beta": 1.5})
    with pytest.raises(UserInputError, match=r"^--config\.linear\.classifier: must be one"):
        _config(None, corpus, **{"linear.classifier": "svm"})
    bad = tmp_path / "bad"
    _write_corpus(bad, classes=("neg", "pos", "mid"))
    lines = (bad / "train.jsonl").read_text().splitlines(keepends=True)
    (bad / "train.jsonl").write_text("".join(x for x in lines if '"mid"' not in x))
    with pytest.raises(UserInputError, match=r"validation\.jsonl:3: label 'mid' .* never seen"):
        train_and_evaluate(_config(None, bad), tmp_path / "run")
    with pytest.raises(UserInputError, match=r"^task: 'linear' has no network"):
        tasks.get_task(_config(None, corpus), tmp_path / "eval")
    with pytest.raises(UserInputError, match=r"^task: 'linear' has no network"):
        sft_jax.evaluate(_config(None, corpus), tmp_path / "eval")


def test_reproduce_all_tiny_runs_and_reports(tmp_path):
    command = [sys.executable, "-m", "experiments.reproduce", "--tiny", "--workdir", str(tmp_path)]
    run = lambda *args: subprocess.run([*command, *args], cwd=REPO, capture_output=True,
                                       text=True, timeout=600, env=dict(os.environ,
                                                                        JAX_PLATFORMS="cpu"))
    proc = run("--all")
    assert proc.returncode == 0, (proc.stdout[-2000:], proc.stderr[-3000:])
    for name in ("nbsvm_mr", "nbsvm_subj", "mnb_mr"):
        assert f"| {name} |" in proc.stdout
        summary = (tmp_path / name / "summary.md").read_text()
        assert "Baselines and Bigrams" in summary and "(n=2)" in summary
    report = reporting.write_report(tmp_path / "nbsvm_mr", plots=False)
    assert [g.n for g in report.groups] == [2]  # folds (or seeds) are one setting


def test_reproduce_unknown_name_is_one_line(capsys):
    from experiments import reproduce

    with pytest.raises(SystemExit) as exit_:
        reproduce.main(["nbsvm_nope", "--tiny"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown reproduction 'nbsvm_nope' (known: mnb_mr, ") and \
        len(err.splitlines()) == 1
