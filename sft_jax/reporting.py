"""Statistics over seeds or folds and the report of a directory of runs
(`python -m sft_jax.report`).

Rows (`sft_jax.runs.rows`) are grouped by their overrides (the config values that differ
between the runs, the seed and the cross-validation fold `data.fold` excepted), so the
rows of a group are the same setting under different seeds (or replicas) or folds: a
sweep over `data.fold` gives the mean over folds, as cross-validation reports it. For
each group and metric, over the group's finished rows with a finite value: mean, sample
std (ddof=1; NaN for one value), n, and the 95% confidence interval of the mean with
Student's t, mean ± t.ppf(0.975, n-1) * std / sqrt(n) (NaN for n < 2). The best group
per metric is the one with the highest mean, or the lowest for metrics named like a loss
(`loss`, `perplexity`, `ppl`); the runs' `checkpoint.best_mode` decides for
`checkpoint.best_metric`. Ties are all best; nothing is marked when fewer than two
groups have a value.

`write_report(DIR)` writes DIR/summary.csv (one row per run and replica), DIR/groups.csv
(the statistics per group), DIR/summary.md (what was read, and the table) and the plots
under DIR/plots/ (`sft_jax.report_plots`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sft_jax import runs as runs_lib
from sft_jax import storage
from sft_jax.errors import UserInputError

LOWER_IS_BETTER = ("loss", "perplexity", "ppl")
# Not reported by default: counts, not scores (summary.csv still has every metric).
COUNTS = frozenset({"tokens", "support", "examples"})
NON_CURVE_SPLITS = frozenset({"train", "data", "model", "session"})
MISSING = "–"


@dataclass(frozen=True)
class Stats:
    """mean, sample std (ddof=1), n and the 95% Student-t interval [lo, hi] of the mean."""

    mean: float
    std: float
    n: int
    lo: float
    hi: float


@dataclass
class Group:
    """The finished rows sharing one setting of the overrides, and their statistics by
    column name (`test/accuracy`); `best` holds the columns where this group is best."""

    overrides: dict[str, Any]
    label: str
    rows: list[dict[str, Any]]
    stats: dict[str, Stats] = field(default_factory=dict)
    best: set[str] = field(default_factory=set)

    @property
    def n(self) -> int:
        return len(self.rows)


@dataclass
class Report:
    """What `write_report` read and wrote."""

    split: str
    metrics: list[str]
    groups: list[Group]
    markdown: str
    paths: list[Path]


def direction(metric: str, best_metric: str = "", best_mode: str = "max") -> str:
    """`min` or `max`: which way `metric` (a name or `split/name`) improves."""
    name = metric.rsplit("/", 1)[-1]
    if best_metric and name == best_metric and best_mode in ("min", "max"):
        return best_mode
    return "min" if any(word in name.lower() for word in LOWER_IS_BETTER) else "max"


def describe(values: Sequence[float]) -> Stats:
    """Stats of the finite `values`; std and the interval are NaN below two values."""
    import numpy as np

    finite = np.asarray([v for v in values if v is not None and math.isfinite(v)], float)
    n = int(finite.size)
    if n == 0:
        return Stats(math.nan, math.nan, 0, math.nan, math.nan)
    mean = float(finite.mean())
    if n < 2:
        return Stats(mean, math.nan, 1, math.nan, math.nan)
    std = float(finite.std(ddof=1))
    half = t_quantile(n - 1) * std / math.sqrt(n)
    return Stats(mean, std, n, mean - half, mean + half)


def t_quantile(dof: int, level: float = 0.95) -> float:
    """The two-sided Student-t quantile, t.ppf((1 + level) / 2, dof)."""
    try:
        from scipy import stats
    except ImportError:
        raise UserInputError("the report needs scipy: pip install 'scipy>=1.11'") from None
    return float(stats.t.ppf((1 + level) / 2, dof))


def _sort_key(values: tuple) -> tuple:
    def one(v: Any) -> tuple:
        if v is None:
            return (2, "")
        if isinstance(v, bool | int | float):
            return (0, float(v))
        return (1, str(v))

    return tuple(one(v) for v in values)


def group_rows(rows: list[dict[str, Any]], keys: list[str]) -> list[Group]:
    """The finished rows grouped by their values of the override `keys`, groups sorted by
    those values."""
    groups: dict[str, Group] = {}
    for row in rows:
        if not row.get("finished"):
            continue
        values = tuple(row.get(k) for k in keys)
        ident = json.dumps(values, sort_keys=True, default=str)
        if ident not in groups:
            groups[ident] = Group(dict(zip(keys, values, strict=True)), row["group"], [])
        groups[ident].rows.append(row)
    return sorted(groups.values(), key=lambda g: _sort_key(tuple(g.overrides.values())))


def summarize(rows: list[dict[str, Any]], keys: list[str], metrics: list[str],
              modes: dict[str, str]) -> list[Group]:
    """Groups (`group_rows`) with the Stats of each metric column and the best marked;
    `modes` maps a column to `min` or `max`."""
    groups = group_rows(rows, keys)
    for group in groups:
        group.stats = {m: describe([r.get(m, math.nan) for r in group.rows]) for m in metrics}
    for metric in metrics:
        scored = [g for g in groups if math.isfinite(g.stats[metric].mean)]
        if len(scored) < 2:
            continue
        pick = min if modes.get(metric) == "min" else max
        best = pick(g.stats[metric].mean for g in scored)
        for group in scored:
            if group.stats[metric].mean == best:
                group.best.add(metric)
    return groups


def metric_modes(runs: list[runs_lib.Run], metrics: list[str]) -> dict[str, str]:
    """`min`/`max` for each metric column, with the runs' checkpoint.best_mode for their
    checkpoint.best_metric when all runs agree on it."""
    chosen = {(r.config.get("checkpoint", {}).get("best_metric", ""),
               r.config.get("checkpoint", {}).get("best_mode", "max")) for r in runs}
    best_metric, best_mode = chosen.pop() if len(chosen) == 1 else ("", "max")
    return {m: direction(m, best_metric, best_mode) for m in metrics}


def eval_names(runs: list[runs_lib.Run], rows: list[dict[str, Any]]) -> dict[str, list[str]]:
    """Metric names by eval split, from the final results (`rows`) and the eval records."""
    names: dict[str, dict[str, None]] = {}
    for row in rows:
        for column in row:
            split, _, metric = column.partition("/")
            if metric and split != "best":
                names.setdefault(split, {})[metric] = None
    for run in runs:
        for record in run.records:
            if record["split"] in NON_CURVE_SPLITS:
                continue
            for key, value in record.items():
                if key not in runs_lib.RECORD_KEYS and isinstance(value, int | float):
                    names.setdefault(record["split"], {})[key] = None
    return {split: list(metrics) for split, metrics in names.items()}


def choose_metrics(runs: list[runs_lib.Run], rows: list[dict[str, Any]], split: str | None,
                   metrics: Sequence[str] | None) -> tuple[str, list[str]]:
    """(split, metric names) to report: by default `test` if it has results, else
    `validation`, and the headline metrics of that split's final results (the runs'
    `checkpoint.best_metric` first, then every metric that is neither per class, like
    `f1/<label>`, nor a count). UserInputError for a split or a metric that no run has."""
    known = eval_names(runs, rows)
    if split is None:
        split = next((s for s in ("test", "validation") if s in known), None)
        split = split or next(iter(sorted(known)), "validation")
    elif split not in known:
        raise UserInputError(f"--split={split}: no run has it (known: "
                             f"{', '.join(sorted(known)) or 'none'})")
    available = known.get(split, [])
    if not metrics:
        finals = list({c.partition("/")[2]: None for row in rows for c in row
                       if c.startswith(f"{split}/")})
        headline = [m for m in finals if "/" not in m and m not in COUNTS]
        best = {str(r.config.get("checkpoint", {}).get("best_metric", "")) for r in runs}
        headline.sort(key=lambda m: m not in best)  # stable: the best metric first
        return split, headline or finals
    unknown = [m for m in metrics if m not in available]
    if unknown:
        raise UserInputError(f"--metric={','.join(unknown)}: not a {split} metric of these "
                             f"runs (known: {', '.join(available) or 'none'})")
    return split, list(dict.fromkeys(metrics))


def decimals(metric: str, value: float) -> int:
    """Digits after the point: 2 for perplexities and values of 10 or more (BLEU, ROUGE
    in points), else 4 (accuracies, F1, losses)."""
    name = metric.rsplit("/", 1)[-1].lower()
    if "perplexity" in name or "ppl" in name or (math.isfinite(value) and abs(value) >= 10):
        return 2
    return 4


def format_stats(metric: str, stats: Stats) -> tuple[str, str]:
    """(`mean ± std`, `[lo, hi]`) as shown in summary.md; `–` where undefined."""
    if stats.n == 0:
        return MISSING, MISSING
    d = decimals(metric, stats.mean)
    std = f"{stats.std:.{d}f}" if math.isfinite(stats.std) else MISSING
    ci = f"[{stats.lo:.{d}f}, {stats.hi:.{d}f}]" if math.isfinite(stats.lo) else MISSING
    return f"{stats.mean:.{d}f} ± {std}", ci


def show_value(value: Any) -> str:
    """An override value as a table cell."""
    if value is None:
        return MISSING
    return f"{value:g}" if isinstance(value, float) else str(value)


def short_names(keys: list[str]) -> list[str]:
    """The last component of each dotted key, or the whole keys if that is ambiguous."""
    short = [k.rsplit(".", 1)[-1] for k in keys]
    return short if len(set(short)) == len(short) else list(keys)


def markdown_table(groups: list[Group], keys: list[str], metrics: list[str]) -> str:
    """A Markdown table: group columns, n, then per metric `mean ± std [95% CI]`, the best
    group's cells in bold."""
    heads = [*(short_names(keys) or ["runs"]), "n"]
    heads += [metric.partition("/")[2] or metric for metric in metrics]
    lines = ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
    for group in groups:
        cells = [show_value(group.overrides[k]) for k in keys] or [group.label]
        cells.append(str(group.n))
        for metric in metrics:
            stats = group.stats[metric]
            mean, ci = format_stats(metric, stats)
            if 0 < stats.n < group.n:
                mean += f" (n={stats.n})"
            cell = f"{mean} {ci}"
            cells.append(f"**{cell}**" if metric in group.best else cell)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def read_lines(runs: list[runs_lib.Run], states: list[dict[str, Any]], n_rows: int) -> list[str]:
    """What was read: runs found and finished, and the runs missing, unfinished or
    failed, one line each."""
    done = sum(r.finished for r in runs)
    lines = [f"Read {len(runs)} run{'s' if len(runs) != 1 else ''} ({n_rows} rows with "
             f"replicas): {done} finished, {len(runs) - done} unfinished."]
    in_sweep = [s["state"] for s in states if s["listed"]]
    if in_sweep:
        counts = ", ".join(f"{in_sweep.count(s)} {s}" for s in dict.fromkeys(in_sweep))
        plural = "s" if len(in_sweep) != 1 else ""
        lines.append(f"sweep.json lists {len(in_sweep)} run{plural}: {counts}.")
    for state in (s for s in states if not s["finished"] or s["state"] != "done"):
        where = "" if state["found"] else ", no run directory"
        error = f": {state['error']}" if state["error"] else ""
        lines.append(f"- `{state['name']}`: {state['state']}{where}{error}")
    return lines


def summary_markdown(title: str, read: list[str], split: str, table: str,
                     modes: dict[str, str], over: str = "seeds") -> str:
    """summary.md: title, what was read, the table and how to read it; `over` names
    what a group's runs differ by (`sft_jax.runs.members`)."""
    lower = sorted(m.partition("/")[2] for m, mode in modes.items() if mode == "min")
    rule = f"highest mean; lowest for {', '.join(lower)}" if lower else "highest mean"
    return "\n".join([
        f"# {title}", "", *read, "",
        f"## {split}: mean ± std [95% CI of the mean] over {over}", "", table, "",
        f"n: finished runs ({over.replace(' and ', ', ')}, replicas) of the group; "
        "std: sample std (ddof=1); "
        "95% CI: mean ± t(0.975, n−1)·std/√n (Student's t); – where undefined (n < 2). "
        f"Bold: the best group per metric ({rule}).", ""])


def write_report(path: str | Path, metrics: Sequence[str] | None = None,
                 split: str | None = None, plots: bool = True) -> Report:
    """Reads the runs under `path` and writes `path`/summary.csv, groups.csv, summary.md
    and (with `plots`) `path`/plots/*.png. UserInputError for a missing directory, no
    runs, or an unknown split or metric. `path` may be remote (gs://..., `sft_jax.storage`)."""
    root = storage.path(path)
    runs = runs_lib.read_runs(root)
    rows = runs_lib.rows(runs)
    split, names = choose_metrics(runs, rows, split, metrics)
    columns = [f"{split}/{m}" for m in names]
    keys = runs_lib.override_keys(runs)
    modes = metric_modes(runs, columns)
    groups = summarize(rows, keys, columns, modes)
    table = markdown_table(groups, keys, columns) if groups else "No finished runs yet."
    read = read_lines(runs, runs_lib.run_states(root, runs), len(rows))
    title = f"Report: {root.resolve().name}"
    over = runs_lib.members(runs)
    markdown = summary_markdown(title, read, split, table, modes, over)

    pd = runs_lib.pandas()
    written = [root / "summary.csv", root / "groups.csv", root / "summary.md"]
    storage.write_text(written[0], runs_lib.load(runs).to_csv(index=False))
    storage.write_text(written[1], pd.DataFrame(group_table(groups, keys, columns)).to_csv(
        index=False))
    storage.write_text(written[2], markdown)
    if plots:
        from sft_jax import report_plots

        with storage.staged_dir(root / "plots") as staged:  # matplotlib writes local files
            written += [root / "plots" / p.name for p in report_plots.write_plots(
                staged, runs, groups, columns, over)]
    return Report(split, names, groups, markdown, written)


def group_table(groups: list[Group], keys: list[str], metrics: list[str]) -> list[dict]:
    """groups.csv rows: the overrides, `group`, `n`, and per metric column
    `<m>/mean`, `<m>/std`, `<m>/n`, `<m>/ci_lo`, `<m>/ci_hi`, `<m>/best`."""
    out = []
    for group in groups:
        row: dict[str, Any] = {**{k: group.overrides[k] for k in keys}, "group": group.label,
                               "n": group.n}
        for metric in metrics:
            s = group.stats[metric]
            row.update({f"{metric}/mean": s.mean, f"{metric}/std": s.std,
                        f"{metric}/n": s.n, f"{metric}/ci_lo": s.lo, f"{metric}/ci_hi": s.hi,
                        f"{metric}/best": metric in group.best})
        out.append(row)
    return out
