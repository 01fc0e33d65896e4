"""K-fold cross-validation (`data.folds`, `data.fold`): the splits, their errors, the
shared record reader, the sweep helper and the report's grouping over folds."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from test_report import make_config, outcome, write_run

from sft_jax import reporting, runs, sweeps
from sft_jax.config import base_config
from sft_jax.data import folds, sources
from sft_jax.errors import UserInputError
from sft_jax.tasks.base import TaskBase


def pool_file(path: Path, n: int = 60, with_fold: bool = False, **extra) -> Path:
    """n records, 2/3 label "a" and 1/3 "b"; `fold` = i % 5 when asked."""
    lines = []
    for i in range(n):
        record = {"text": f"t{i}", "label": "a" if i % 3 else "b", **extra}
        if with_fold:
            record["fold"] = i % 5
        lines.append(json.dumps(record))
    path.write_text("\n".join(lines) + "\n")
    return path


def cv_data(k: int, fold: int, **keys):
    data = base_config().data
    data.folds, data.fold = k, fold
    data.update(keys)
    return data


def splits_of(records, k, fold, seed=0, **keys):
    labels = [r["label"] for r in records]
    return folds.cross_validation(records, labels, cv_data(k, fold, **keys), seed)


def test_fold_ids_partition_stratified_and_seeded():
    labels = ["a"] * 40 + ["b"] * 21
    ids = folds.fold_ids(labels, len(labels), 5, seed=3)
    assert sorted(Counter(ids).values()) in ([12, 12, 12, 12, 13],)
    for name, n in (("a", 40), ("b", 21)):
        per_fold = Counter(f for f, lab in zip(ids, labels, strict=True) if lab == name)
        assert set(per_fold) == set(range(5)) and max(per_fold.values()) - min(
            per_fold.values()) <= 1 and sum(per_fold.values()) == n
    assert ids == folds.fold_ids(labels, len(labels), 5, seed=3)
    assert ids != folds.fold_ids(labels, len(labels), 5, seed=4)


def test_splits_partition_the_pool_and_test_is_the_held_out_fold(tmp_path):
    pool = sources.read_records(str(pool_file(tmp_path / "p.jsonl")), config_key="data.train")
    ids = folds.record_folds(pool, [r["label"] for r in pool], 5, seed=0)
    seen_tests = []
    for k in range(5):
        s = splits_of(pool, 5, k)
        where = {name: {r["_where"] for r in rs} for name, rs in s.items()}
        assert sum(map(len, where.values())) == len(pool)  # disjoint, and all of the pool
        assert set.union(*where.values()) == {r["_where"] for r in pool}
        assert where["test"] == {r["_where"] for r, f in zip(pool, ids, strict=True) if f == k}
        assert len(s["validation"]) == round(0.1 * (len(pool) - len(s["test"])))
        # 5 of the 32 + 16 others: shares 3.33 and 1.67, the larger remainder gets the 5th
        assert Counter(r["label"] for r in s["validation"]) == {"a": 3, "b": 2}
        seen_tests += where["test"]
    assert sorted(seen_tests) == sorted(r["_where"] for r in pool)  # each record tested once


def test_seeds_fold_field_and_no_validation(tmp_path):
    pool = sources.read_records(str(pool_file(tmp_path / "p.jsonl")), config_key="data.train")
    first = splits_of(pool, 5, 1, seed=0)
    assert splits_of(pool, 5, 1, seed=0) == first
    other_seed = splits_of(pool, 5, 1, seed=1)
    assert other_seed["test"] == first["test"]  # the folds follow fold_seed, not seed
    assert other_seed["validation"] != first["validation"]
    assert splits_of(pool, 5, 1, fold_seed=1)["test"] != first["test"]
    assert set(splits_of(pool, 5, 1, cv_validation_fraction=0.0)) == {"train", "test"}
    fixed = sources.read_records(str(pool_file(tmp_path / "f.jsonl", with_fold=True)),
                                 config_key="data.train")
    assert [r["text"] for r in splits_of(fixed, 5, 2)["test"]] == [
        f"t{i}" for i in range(60) if i % 5 == 2]


@pytest.mark.parametrize(("value", "k"), [(5, 5), (-1, 5), ("x", 5), (1.0, 5), (True, 5)])
def test_bad_fold_field_names_file_and_line(tmp_path, value, k):
    path = pool_file(tmp_path / "p.jsonl", n=3)
    lines = path.read_text().splitlines()
    lines[1] = json.dumps({"text": "x", "label": "a", "fold": value})
    path.write_text("\n".join(lines) + "\n")
    pool = sources.read_records(str(path), config_key="data.train")
    with pytest.raises(UserInputError) as err:
        splits_of(pool, k, 0)
    assert str(err.value).startswith(f"{path}:2: field 'fold' is {value!r}, expected an "
                                     f"integer in 0..{k - 1}"), err.value
    assert "\n" not in str(err.value)


def test_empty_fold_and_nothing_to_train_are_errors():
    pool = [{"text": "x", "label": "a", "fold": 0}, {"text": "y", "label": "b", "fold": 1}]
    with pytest.raises(UserInputError, match=r"^data.fold: fold 2 of data.train has no"):
        splits_of(pool, 3, 2)
    with pytest.raises(UserInputError, match=r"^data.cv_validation_fraction: .* leaves none"):
        splits_of(pool, 3, 0)


def test_task_reader_applies_folds_then_train_size(tmp_path):
    config = base_config()
    config.data.train = str(pool_file(tmp_path / "p.jsonl"))
    config.data.folds, config.data.fold = 5, 0
    config.data.train_size = 10
    config.data.limit_eval = 3
    task = TaskBase(config, tmp_path / "run")
    task.read_records(label=lambda r: r["label"])
    assert list(task.records) == ["train", "validation", "test"]
    assert [len(task.records[s]) for s in task.records] == [10, 3, 3]
    assert Counter(r["label"] for r in task.records["train"]) == {"a": 7, "b": 3}
    tested = {r["_where"] for r in task.records["test"]}
    assert not tested & {r["_where"] for r in task.records["train"] + task.records["validation"]}
    config.data.train_size, config.data.train_fraction = 0, 0.5
    unlabelled = TaskBase(config, tmp_path / "run")  # a task without labels: plain draws
    unlabelled.read_records()
    assert [len(unlabelled.records[s]) for s in unlabelled.records] == [22, 3, 3]  # 60-12-5


def test_fold_sweep_is_one_group_over_folds(tmp_path):
    assert sweeps.run_names(sweeps.folds(3)) == ["fold=0", "fold=1", "fold=2"]
    for lr in (1e-4, 1e-3):
        for fold in range(3):
            config = make_config(lr, 0, data={"folds": 3, "fold": fold})
            write_run(tmp_path / f"lr{lr}_f{fold}", config, [outcome(lr, fold)])
    table = runs.load(tmp_path)
    assert table["fold"].tolist() == [0, 1, 2, 0, 1, 2]
    assert "data.fold" not in table.columns
    report = reporting.write_report(tmp_path, plots=False)
    assert [g.n for g in report.groups] == [3, 3]
    assert [g.overrides for g in report.groups] == [{"optim.learning_rate": 1e-4},
                                                   {"optim.learning_rate": 1e-3}]
    assert "## test: mean ± std [95% CI of the mean] over folds" in report.markdown
    assert "n: finished runs (folds, replicas)" in report.markdown


def test_fold_sweep_parses_with_a_shipped_config(tmp_path):
    sweep = tmp_path / "cv.py"
    sweep.write_text("from sft_jax import sweeps\n\n\ndef get_sweep(arg=None):\n"
                     "    return sweeps.folds(2)\n")
    plan = sweeps.make_plan("configs/classification.py:runlocal", str(sweep))
    assert [run.name for run in plan.runs] == ["fold=0", "fold=1"]
    assert plan.runs[1].args == ("--config.data.folds=2", "--config.data.fold=1",
                                 "--config.data.validation=", "--config.data.test=")
