"""The run reader (sft_jax.runs) and the report (sft_jax.reporting, `python -m sft_jax.report`)
on run directories written here by hand: no training. The statistics are recomputed with
numpy/scipy from the runs' results.json and compared with summary.csv, groups.csv,
summary.md and the library's values."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats as scipy_stats

from sft_jax import reporting, runs
from sft_jax.errors import UserInputError

REPO = Path(__file__).resolve().parents[1]
LRS = (1e-4, 1e-3)
SEEDS = (0, 1, 2)


def make_config(lr: float, seed: int, replicas: int | None = None, **sections) -> dict:
    config = {
        "task": "classification", "seed": seed,
        "model": {"checkpoint": "tiny-bert", "dtype": "float32"},
        "data": {"train": "train.jsonl", "buckets": [16, 32]},
        "optim": {"learning_rate": lr, "schedule": "linear"},
        "peft": {"method": "none"},
        "train": {"steps": 10, "log_every": 2, "eval_every": 5},
        "eval": {"splits": ["validation", "test"], "periodic_split": "validation"},
        "checkpoint": {"best_metric": "accuracy", "best_mode": "max"},
    }
    if replicas is not None:
        config["train"]["replicas"] = replicas
    for key, values in sections.items():
        config[key].update(values)
    return config


def outcome(lr: float, seed: int) -> dict:
    """Made-up, seed-dependent metrics of one run: lr 1e-3 is better."""
    rng = np.random.default_rng(int(lr * 1e6) * 100 + seed)
    base = 0.7 if lr < 5e-4 else 0.8
    acc = [float(base - 0.1 + rng.normal(0, 0.02)), float(base + rng.normal(0, 0.02))]
    return {
        "val_acc": acc,  # at steps 5 and 10
        "validation": {"accuracy": float(acc[1] + 0.01), "loss": float(1.2 - base)},
        "test": {"accuracy": float(base + rng.normal(0, 0.03)),
                 "macro_f1": float(base - 0.05 + rng.normal(0, 0.03)),
                 "loss": float(1.3 - base + rng.normal(0, 0.05))},
    }


def write_run(path: Path, config: dict, outcomes: list[dict], finished: bool = True) -> None:
    """A run directory as `sft_jax.main` writes it; one outcome per replica."""
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps(config, indent=2))
    k = len(outcomes)
    tag = (lambda r: {"replica": r}) if k > 1 else (lambda r: {})
    records = [{"step": 0, "split": "data", "train_examples": 64},
               {"step": 0, "split": "model", "params": 1000, "trained_params": 800,
                "replicas": k}]
    last = 10 if finished else 6
    for step in range(2, last + 1, 2):
        for r in range(k):
            records.append({"step": step, "split": "train", "loss": 2.0 / step + 0.1 * r,
                            "steps_per_second": 3.0, **tag(r)})
    for i, step in enumerate((5, 10)):
        if step <= last:
            for r, out in enumerate(outcomes):
                records.append({"step": step, "split": "validation", **tag(r),
                                "accuracy": out["val_acc"][i], "loss": 0.5 - 0.01 * i})
    if finished:
        for r, out in enumerate(outcomes):
            for split in ("validation", "test"):
                records.append({"step": 10, "split": split, "final": 1, **tag(r),
                                **out[split], "params_from": "best accuracy at step 10"})
        records.append({"step": 10, "split": "session", "seconds": 12.0,
                        "train_seconds": 5.0, "start_step": 0, "peak_rss_mb": 900.0})
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    if finished:
        (path / "results.json").write_text(json.dumps(results_of(config, outcomes)))


def results_of(config: dict, outcomes: list[dict]) -> dict:
    final = {s: {**outcomes[0][s], "params_from": "best accuracy at step 10"}
             for s in ("validation", "test")}
    if len(outcomes) == 1:
        return final
    means = {s: {m: float(np.mean([o[s][m] for o in outcomes])) for m in outcomes[0][s]}
             for s in ("validation", "test")}
    stds = {s: {m: float(np.std([o[s][m] for o in outcomes], ddof=1)) for m in outcomes[0][s]}
            for s in ("validation", "test")}
    return {**means, "std": stds,
            "replicas": [{"replica": r, "seed": config["seed"] + r, "validation": o["validation"],
                          "test": o["test"]} for r, o in enumerate(outcomes)]}


@pytest.fixture
def sweep(tmp_path) -> Path:
    """2 lrs x 3 seeds done, one running (unfinished), one failed and one pending."""
    root = tmp_path / "sweep"
    entries = []
    for lr in LRS:
        for seed in SEEDS:
            name = f"lr{lr:g}_s{seed}"
            write_run(root / name, make_config(lr, seed), [outcome(lr, seed)])
            entries.append({"name": name, "overrides": {"optim.learning_rate": lr, "seed": seed},
                            "state": "done"})
    write_run(root / "lr0.001_s3", make_config(1e-3, 3), [outcome(1e-3, 3)], finished=False)
    entries += [
        {"name": "lr0.001_s3", "state": "running"},
        {"name": "lr0.0001_s3", "state": "failed",
         "error": "data.train: no such file\n  (train.jsonl)"},
        {"name": "lr0.001_s4", "state": "pending"},
    ]
    (root / "sweep.json").write_text(json.dumps({"runs": entries}))
    return root


def expected_stats(values: list[float]) -> tuple[float, float, float, float]:
    mean, std = float(np.mean(values)), float(np.std(values, ddof=1))
    half = scipy_stats.t.ppf(0.975, len(values) - 1) * std / math.sqrt(len(values))
    return mean, std, mean - half, mean + half


def table_rows(markdown: str) -> dict[str, dict[str, str]]:
    """The summary.md table as {first cell: {header: cell}}, bold marks kept."""
    lines = [line for line in markdown.splitlines() if line.startswith("|")]
    heads = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in lines[2:]]
    return {cells[0]: dict(zip(heads, cells, strict=True)) for cells in rows}


def parse_cell(cell: str) -> list[float]:
    text = cell.replace("**", "").replace("±", " ").replace("[", " ").replace("]", " ")
    return [float(x) for x in text.replace(",", " ").split()]


def test_sweep_statistics_match_results(sweep):
    report = reporting.write_report(sweep, plots=False)
    assert report.split == "test"
    assert report.metrics == ["accuracy", "macro_f1", "loss"]
    assert [g.label for g in report.groups] == ["learning_rate=0.0001", "learning_rate=0.001"]
    assert [g.n for g in report.groups] == [3, 3]

    table = table_rows((sweep / "summary.md").read_text())
    groups_csv = pd.read_csv(sweep / "groups.csv")
    for group, lr in zip(report.groups, LRS, strict=True):
        row = table[f"{lr:g}"]
        assert row["n"] == "3"
        for metric in ("accuracy", "macro_f1", "loss"):
            values = [json.loads((sweep / f"lr{lr:g}_s{s}" / "results.json").read_text())
                      ["test"][metric] for s in SEEDS]
            mean, std, lo, hi = expected_stats(values)
            got = group.stats[f"test/{metric}"]
            assert (got.mean, got.std, got.lo, got.hi) == pytest.approx((mean, std, lo, hi),
                                                                        rel=1e-12)
            assert got.n == 3
            shown = parse_cell(row[metric])  # mean ± std [lo, hi]
            assert shown == pytest.approx([mean, std, lo, hi], abs=0.51e-4)
            csv = groups_csv[groups_csv["optim.learning_rate"] == lr].iloc[0]
            assert [csv[f"test/{metric}/{k}"] for k in ("mean", "std", "ci_lo", "ci_hi")] == \
                pytest.approx([mean, std, lo, hi], rel=1e-9)


def test_best_group_marked(sweep):
    report = reporting.write_report(sweep, plots=False)
    worse, better = report.groups  # lr 1e-3 has the higher accuracy and the lower loss
    assert better.best == {"test/accuracy", "test/macro_f1", "test/loss"}
    assert worse.best == set()
    row = table_rows(report.markdown)["0.001"]
    assert all(row[h].startswith("**") for h in row if h not in ("learning_rate", "n"))
    assert "**" not in "".join(table_rows(report.markdown)["0.0001"].values())
    assert reporting.direction("test/perplexity") == "min"
    assert reporting.direction("validation/ppl") == "min"
    assert reporting.direction("test/bleu") == "max"
    assert reporting.direction("validation/wer", best_metric="wer", best_mode="min") == "min"


def test_summary_csv_rows_and_status(sweep):
    reporting.write_report(sweep, plots=False)
    table = pd.read_csv(sweep / "summary.csv")
    assert len(table) == 7  # 6 done + 1 unfinished
    for column in ("run", "replica", "seed", "group", "optim.learning_rate", "finished", "step",
                   "test/accuracy", "validation/accuracy", "best/accuracy", "best_step",
                   "wall_seconds", "steps_per_second", "peak_rss_mb", "params",
                   "trained_params"):
        assert column in table.columns, column
    assert "seed" not in [c for c in table.columns if c.startswith("optim")]
    done = table[table["finished"]]
    for _, row in done.iterrows():
        results = json.loads((sweep / row["run"] / "results.json").read_text())
        assert row["test/accuracy"] == pytest.approx(results["test"]["accuracy"], rel=1e-12)
        out = outcome(row["optim.learning_rate"], row["seed"])
        assert row["best/accuracy"] == pytest.approx(max(out["val_acc"]))
        assert row["best_step"] == (5, 10)[int(np.argmax(out["val_acc"]))]
    assert done["wall_seconds"].tolist() == [12.0] * 6
    assert done["steps_per_second"].tolist() == [2.0] * 6  # 10 steps / 5 training seconds
    unfinished = table[~table["finished"]].iloc[0]
    assert unfinished["run"] == "lr0.001_s3" and unfinished["step"] == 6
    assert math.isnan(unfinished["test/accuracy"])

    summary = (sweep / "summary.md").read_text()
    assert "Read 7 runs (7 rows with replicas): 6 finished, 1 unfinished." in summary
    assert "sweep.json lists 9 runs: 6 done, 1 running, 1 failed, 1 pending." in summary
    assert "- `lr0.001_s3`: running" in summary
    assert "- `lr0.0001_s3`: failed, no run directory: data.train: no such file " \
           "(train.jsonl)" in summary
    assert "- `lr0.001_s4`: pending, no run directory" in summary


def test_plots_are_png(sweep):
    report = reporting.write_report(sweep)
    plots = {p.name for p in report.paths if p.parent == sweep / "plots"}
    assert plots == {"curves_train_loss.png", "curves_validation_accuracy.png",
                     "curves_validation_loss.png", "gap_loss.png",
                     "final_test_accuracy.png", "final_test_macro_f1.png",
                     "final_test_loss.png"}
    for name in plots:
        data = (sweep / "plots" / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n", name
        assert len(data) > 10_000, name


def test_replicas_expand_to_rows(tmp_path):
    run_dir = tmp_path / "replicated"
    outcomes = [outcome(1e-3, 7 + k) for k in range(3)]
    write_run(run_dir, make_config(1e-3, 7, replicas=3), outcomes)
    table = runs.load(run_dir)
    assert table["replica"].tolist() == [0, 1, 2]
    assert table["seed"].tolist() == [7, 8, 9]
    assert table["run"].tolist() == ["replicated"] * 3
    assert table["test/accuracy"].tolist() == pytest.approx(
        [o["test"]["accuracy"] for o in outcomes], rel=1e-12)
    assert table["best/accuracy"].tolist() == pytest.approx([max(o["val_acc"]) for o in outcomes])
    assert table["params"].tolist() == [1000] * 3  # records without replica: every replica

    report = reporting.write_report(run_dir, metrics=["accuracy"], plots=False)
    (group,) = report.groups
    assert group.n == 3
    results = json.loads((run_dir / "results.json").read_text())
    assert group.stats["test/accuracy"].mean == pytest.approx(results["test"]["accuracy"])
    assert group.stats["test/accuracy"].std == pytest.approx(results["std"]["test"]["accuracy"])
    curves = runs.curves(run_dir)
    train = curves[(curves["split"] == "train") & (curves["metric"] == "loss")]
    assert sorted(set(train["replica"])) == [0, 1, 2]
    assert train[train["step"] == 10]["value"].tolist() == pytest.approx([0.2, 0.3, 0.4])


def test_curves_dedupe_last_record_wins(tmp_path):
    run_dir = tmp_path / "resumed"
    write_run(run_dir, make_config(1e-4, 0), [outcome(1e-4, 0)])
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    resumed = [  # a crash mid-line after step 6, then a resume from the step-4 checkpoint
        '{"step": 6, "split": "tr',
        json.dumps({"step": 4, "split": "model", "params": 1000, "trained_params": 800}),
        json.dumps({"step": 6, "split": "train", "loss": 9.0, "grad_norm": "nan"}),
        json.dumps({"step": 8, "split": "train", "loss": 8.0, "grad_norm": "inf"}),
        json.dumps({"step": 10, "split": "session", "seconds": 3.0, "train_seconds": 2.0,
                    "start_step": 4, "peak_rss_mb": 1000.0}),
    ]
    (run_dir / "metrics.jsonl").write_text("\n".join(lines + resumed) + "\n")
    curves = runs.curves(run_dir)
    assert set(curves.columns) == {"run", "replica", "seed", "group", "split", "step",
                                   "metric", "value"}
    loss = curves[(curves["split"] == "train") & (curves["metric"] == "loss")]
    assert loss["step"].tolist() == [2, 4, 6, 8, 10]
    assert loss["value"].tolist() == pytest.approx([1.0, 0.5, 9.0, 8.0, 0.2])
    grad = curves[curves["metric"] == "grad_norm"]["value"]
    assert grad.isna().all() and len(grad) == 2
    validation = curves[curves["split"] == "validation"]  # final records are not curves
    assert validation["step"].tolist() == [5, 10, 5, 10]
    (row,) = runs.rows(runs.read_runs(run_dir))
    assert row["wall_seconds"] == 15.0
    assert row["steps_per_second"] == pytest.approx(16 / 7)  # (10 + 6) steps / (5 + 2) s
    assert row["peak_rss_mb"] == 1000.0  # the larger session's


def test_single_run(tmp_path):
    run_dir = tmp_path / "one"
    write_run(run_dir, make_config(1e-4, 0), [outcome(1e-4, 0)])
    report = reporting.write_report(run_dir, split="validation")
    assert report.metrics == ["accuracy", "loss"]
    row = table_rows(report.markdown)["one"]
    assert row["n"] == "1"
    assert row["accuracy"].endswith("± – –")  # no std, no interval from one run
    assert "**" not in report.markdown
    assert (run_dir / "plots" / "final_validation_accuracy.png").is_file()


def test_runs_made_by_hand(tmp_path):
    root = tmp_path / "mine"
    write_run(root / "a" / "full", make_config(1e-4, 0), [outcome(1e-4, 0)])
    write_run(root / "lora", make_config(1e-4, 0, data={"buckets": [16]},
                                         peft={"method": "lora", "lora_rank": 8}),
              [outcome(1e-4, 1)])
    (root / "lora" / "checkpoints" / "10").mkdir(parents=True)  # never read as a run
    (root / "lora" / "checkpoints" / "10" / "config.json").write_text("{}")
    assert [p.relative_to(root).as_posix() for p in runs.find_runs(root)] == ["a/full", "lora"]
    table = runs.load(root)
    assert table["run"].tolist() == ["a/full", "lora"]
    overrides = [c for c in table.columns if "." in c and "/" not in c]
    assert overrides == ["data.buckets", "peft.lora_rank", "peft.method"]
    assert table["data.buckets"].tolist() == ["[16, 32]", "[16]"]
    assert table["peft.lora_rank"].tolist() == [None, 8]
    report = reporting.write_report(root, plots=False)
    assert [g.n for g in report.groups] == [1, 1]


def test_unknown_split_or_metric(sweep):
    with pytest.raises(UserInputError, match="--split=train2"):
        reporting.write_report(sweep, split="train2", plots=False)
    with pytest.raises(UserInputError, match="--metric=bleu: not a test metric"):
        reporting.write_report(sweep, metrics=["accuracy", "bleu"], plots=False)


def cli(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    return subprocess.run([sys.executable, "-m", "sft_jax.report", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)


def test_cli_report(sweep):
    done = cli(str(sweep), "--metric=accuracy", "--plots=false")
    assert done.returncode == 0, done.stderr
    assert "| learning_rate | n | accuracy |\n" in done.stdout  # --metric: that one only
    assert str(sweep / "summary.md") in done.stdout


@pytest.mark.parametrize("case", ["missing", "empty", "metric"])
def test_cli_errors(tmp_path, sweep, case):
    (tmp_path / "empty").mkdir()
    args = {"missing": [str(tmp_path / "nope")], "empty": [str(tmp_path / "empty")],
            "metric": [str(sweep), "--metric=bleu"]}[case]
    done = cli(*args)
    assert done.returncode == 2
    assert done.stderr.startswith("error: ") and done.stderr.count("\n") == 1, done.stderr
    assert {"missing": "no such directory", "empty": "no run directories",
            "metric": "--metric=bleu"}[case] in done.stderr


def test_plot_against_an_axis(tmp_path):
    """Means and 95% CIs per (series, x) from the rows themselves; non-finite values out."""
    from matplotlib.figure import Figure

    from sft_jax import report_plots

    drawn = []
    original = Figure.savefig

    def capture(fig, path, *args, **kwargs):
        drawn.append(fig.axes[0])
        return original(fig, path, *args, **kwargs)

    rows = [{"size": size, "control": control, "test/accuracy": value}
            for size, control, value in [(100, "a", 0.6), (100, "a", 0.7), (100, "a", 0.8),
                                         (1000, "a", 0.9), (100, "b", 0.5),
                                         (1000, "b", float("nan"))]]
    Figure.savefig = capture
    try:
        path = report_plots.plot_against(tmp_path / "p" / "x.png", rows, "size",
                                         "test/accuracy", "control", log_x=True)
    finally:
        Figure.savefig = original
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    series = {c.get_label(): c for c in drawn[0].containers}  # errorbar containers
    assert list(series["a"].lines[0].get_xdata()) == [100.0, 1000.0]
    assert list(series["a"].lines[0].get_ydata()) == pytest.approx([0.7, 0.9])
    assert list(series["b"].lines[0].get_xdata()) == [100.0]  # its NaN at 1000 is left out
    bar = series["a"].lines[2][0].get_segments()[0]  # the 95% CI at x = 100:
    assert bar[1][1] - 0.7 == pytest.approx(4.302653 * 0.1 / 3 ** 0.5, rel=1e-5)  # t(2)·s/√3
    assert bar[0][1] - 0.7 == pytest.approx(-4.302653 * 0.1 / 3 ** 0.5, rel=1e-5)
    assert drawn[0].get_xscale() == "log"


def test_a_label_names_the_groups_it_stands_for(tmp_path):
    """`label` replaces the keys it determines in group labels; keys that vary within a
    label (the training size here) still show."""
    settings = [("full", {"method": "none"}, 1e-4), ("lora-r8", {"method": "lora"}, 5e-4)]
    for label, peft, lr in settings:
        for size in (100, 0):
            config = make_config(lr, 0, peft=peft, data={"train_size": size})
            write_run(tmp_path / f"{label}-{size}", {**config, "label": label},
                      [outcome(lr, 0)])
    groups = sorted(set(runs.load(tmp_path)["group"]))
    assert groups == ["full, train_size=0", "full, train_size=100",
                      "lora-r8, train_size=0", "lora-r8, train_size=100"]
    curve_groups = {row["group"] for row in runs.curve_rows(runs.read_runs(tmp_path))}
    assert curve_groups == set(groups)
