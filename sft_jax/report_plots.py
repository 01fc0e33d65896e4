"""The report's plots (PNG, matplotlib's Agg renderer; no pyplot, no global state).

- `curves_<split>_<metric>.png`: the training loss and the periodic-split metrics against
  the step, one line per group (the mean over its seeds and replicas, or folds, at each
  step) and a band from the minimum to the maximum over them.
- `gap_loss.png`: training and periodic-split loss per group, and their difference
  (validation minus training, the training loss interpolated at the eval steps), when
  both losses are logged.
- `final_<split>_<metric>.png`: each group's final mean with its 95% CI (no bar for n < 2)
  and the seeds' (or folds') values as dots; the best group's point is filled.
Titles say what the runs of a group differ by (`over`: `seeds`, `folds`, ...).

For notebooks, `plot_against` draws a metric against one axis of a sweep (e.g. the
training-set size), one line per value of another (e.g. the control), and `plot_curve`
takes curves regrouped by any label (`aggregate` of relabelled `runs.curve_rows`).
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

from sft_jax import reporting
from sft_jax import runs as runs_lib
from sft_jax.errors import UserInputError

Curve = tuple[list[int], list[float], list[float], list[float]]  # step, mean, min, max


def _figure(width: float = 7.0, height: float = 4.2):
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise UserInputError("the report's plots need matplotlib: "
                             "pip install 'matplotlib>=3.8' (or --plots=false)") from None
    return Figure(figsize=(width, height), dpi=110, layout="constrained")


def _filename(*parts: str) -> str:
    return "_".join(re.sub(r"[^A-Za-z0-9_.-]+", "-", p) for p in parts) + ".png"


def aggregate(curve_rows: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Curve]]:
    """{(split, metric): {group: (steps, means, mins, maxs)}} over the finite values."""
    values: dict[tuple, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in curve_rows:
        if math.isfinite(r["value"]):
            values[(r["split"], r["metric"], r["group"])][r["step"]].append(r["value"])
    out: dict[tuple, dict[str, Curve]] = defaultdict(dict)
    for (split, metric, group), by_step in values.items():
        steps = sorted(by_step)
        out[(split, metric)][group] = (
            steps, [sum(by_step[s]) / len(by_step[s]) for s in steps],
            [min(by_step[s]) for s in steps], [max(by_step[s]) for s in steps])
    return out


def _draw(ax, curves: dict[str, Curve], order: list[str], style: str = "-",
          suffix: str = "") -> None:
    cycle = [f"C{i % 10}" for i in range(len(order))]
    for color, group in zip(cycle, order, strict=True):
        if group not in curves:
            continue
        steps, mean, low, high = curves[group]
        ax.plot(steps, mean, style, color=color, label=f"{group}{suffix}",
                marker="o" if len(steps) < 12 else None, markersize=3)
        if any(lo != hi for lo, hi in zip(low, high, strict=True)):
            ax.fill_between(steps, low, high, color=color, alpha=0.18, linewidth=0)


def _finish(fig, ax, title: str, ylabel: str, path: Path) -> Path:
    ax.set_title(title)
    ax.set_xlabel("step (optimizer updates)")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize="small")
    fig.savefig(path)
    return path


def plot_curve(out_dir: Path, split: str, metric: str, curves: dict[str, Curve],
               order: list[str], over: str = "seeds") -> Path:
    """curves_<split>_<metric>.png: one line per group with its min–max band."""
    fig = _figure()
    ax = fig.add_subplot()
    _draw(ax, curves, order)
    title = f"{split} {metric} (mean over {over}; band: min–max)"
    return _finish(fig, ax, title, f"{split} {metric}", out_dir / _filename("curves", split,
                                                                            metric))


def plot_gap(out_dir: Path, periodic: str, train: dict[str, Curve], evals: dict[str, Curve],
             order: list[str], over: str = "seeds") -> Path:
    """gap_loss.png: training (solid) and `periodic` (dashed) loss, and their difference."""
    import numpy as np

    fig = _figure(7.0, 7.0)
    top, bottom = fig.subplots(2, 1, sharex=True)
    _draw(top, train, order, "-", " (train)")
    _draw(top, evals, order, "--", f" ({periodic})")
    top.set_title(f"training vs {periodic} loss (mean over {over})")
    top.set_ylabel("loss")
    top.grid(alpha=0.3)
    top.legend(fontsize="small")
    for i, group in enumerate(order):
        if group in train and group in evals:
            steps = evals[group][0]
            gap = np.asarray(evals[group][1]) - np.interp(steps, train[group][0], train[group][1])
            bottom.plot(steps, gap, "-o", color=f"C{i % 10}", label=group, markersize=3)
    bottom.axhline(0.0, color="grey", linewidth=0.8)
    return _finish(fig, bottom, f"generalization gap: {periodic} − training loss",
                   f"{periodic} loss − training loss", out_dir / "gap_loss.png")


def plot_final(out_dir: Path, metric: str, groups: list, best: set[str],
               over: str = "seeds") -> Path:
    """final_<split>_<metric>.png: mean and 95% CI per group, each run's value as a dot."""
    fig = _figure(max(5.0, 1.2 * len(groups) + 2.5), 4.5)
    ax = fig.add_subplot()
    for x, group in enumerate(groups):
        stats = group.stats[metric]
        values = [r.get(metric, math.nan) for r in group.rows]
        ax.plot([x] * len(values), values, ".", color="grey", alpha=0.6,
                label=f"one {over[:-1] if over in ('seeds', 'folds') else 'run'}"
                if x == 0 else None)
        if stats.n == 0:
            continue
        err = None
        if math.isfinite(stats.lo):
            err = [[stats.mean - stats.lo], [stats.hi - stats.mean]]
        is_best = group.label in best
        ax.errorbar([x], [stats.mean], yerr=err, fmt="o", color="C0", capsize=5,
                    markerfacecolor="C0" if is_best else "white",
                    label=("mean, 95% CI (filled: best)" if x == 0 else None))
    tilt = len(groups) > 3
    ax.set_xticks(range(len(groups)), [g.label for g in groups], rotation=20 if tilt else 0,
                  ha="right" if tilt else "center")
    ax.set_xlim(-0.6, len(groups) - 0.4)
    split, _, name = metric.partition("/")
    ax.set_title(f"final {split} {name}: mean and 95% CI over {over}")
    ax.set_ylabel(f"{split} {name}")
    ax.grid(axis="y", alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize="small")
    path = out_dir / _filename("final", split, name)
    fig.savefig(path)
    return path


def plot_against(path: Path, rows: list[dict[str, Any]], x: str, metric: str, series: str,
                 *, xlabel: str = "", log_x: bool = False, title: str = "") -> Path:
    """`path` (a PNG): for each value of the `series` column, the mean of `metric` over the
    rows at each value of the numeric column `x` (rows: seeds, replicas or folds, e.g.
    `runs.rows` or a DataFrame's records), with its 95% Student-t CI as error bars (none
    for n < 2) and every row's value as a dot. Rows with a non-finite value are left out."""
    points: dict[Any, dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
    for row in rows:
        value = row.get(metric)
        if isinstance(value, int | float) and math.isfinite(value):
            points[row[series]][float(row[x])].append(float(value))
    fig = _figure()
    ax = fig.add_subplot()
    for i, (name, by_x) in enumerate(points.items()):
        xs = sorted(by_x)
        stats = [reporting.describe(by_x[v]) for v in xs]
        low = [s.mean - s.lo if math.isfinite(s.lo) else 0.0 for s in stats]
        high = [s.hi - s.mean if math.isfinite(s.hi) else 0.0 for s in stats]
        color = f"C{i % 10}"
        ax.errorbar(xs, [s.mean for s in stats], yerr=[low, high], fmt="-o", color=color,
                    capsize=4, markersize=4, label=str(name))
        for v in xs:
            ax.plot([v] * len(by_x[v]), by_x[v], ".", color=color, alpha=0.35)
    if log_x:
        ax.set_xscale("log")
    split, _, name = metric.partition("/")
    ax.set_title(title or f"{split} {name}: mean and 95% CI; dots: single runs")
    ax.set_xlabel(xlabel or x)
    ax.set_ylabel(f"{split} {name}" if name else metric)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize="small")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


def curve_metrics(runs: list[runs_lib.Run], metrics: list[str]) -> tuple[str, set[str]]:
    """(periodic split, its metrics to plot): the reported metric names, `loss` and the
    runs' checkpoint.best_metric."""
    config = runs[0].config
    periodic = config.get("eval", {}).get("periodic_split", "validation")
    names = {m.rsplit("/", 1)[-1] for m in metrics} | {"loss"}
    names |= {r.config.get("checkpoint", {}).get("best_metric", "") for r in runs} - {""}
    return periodic, names


def write_plots(out_dir: Path, runs: list[runs_lib.Run], groups: list,
                metrics: list[str], over: str = "seeds") -> list[Path]:
    """Every plot of the module docstring that has data; returns the paths written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    curves = aggregate(runs_lib.curve_rows(runs))
    order = list(dict.fromkeys([g.label for g in groups] +
                               sorted({g for by_group in curves.values() for g in by_group})))
    periodic, names = curve_metrics(runs, metrics)
    written = []
    if ("train", "loss") in curves:
        written.append(plot_curve(out_dir, "train", "loss", curves["train", "loss"], order,
                                  over))
    for name in sorted(names):
        if (periodic, name) in curves:
            written.append(plot_curve(out_dir, periodic, name, curves[periodic, name], order,
                                      over))
    if ("train", "loss") in curves and (periodic, "loss") in curves:
        written.append(plot_gap(out_dir, periodic, curves["train", "loss"],
                                curves[periodic, "loss"], order, over))
    for metric in metrics:
        if any(g.stats[metric].n for g in groups):
            best = {g.label for g in groups if metric in g.best}
            written.append(plot_final(out_dir, metric, groups, best, over))
    return written
