"""Reading runs: the one reader of run directories, used by the report and by notebooks.

    from sft_jax import runs
    table = runs.load("workdirs/sweep")        # pandas: one row per (run, replica)
    long = runs.curves("workdirs/sweep")       # pandas: learning curves in long form

The file formats (what `sft_jax.main` writes; this docstring is their reference):

`RUN/config.json`
    The resolved ml_collections config as nested JSON: `task`, `seed`, `model.*`,
    `data.*`, `optim.*`, `peft.*`, `train.*` (with `train.steps`, and `train.replicas`,
    absent in old runs = 1), `eval.*` (`eval.periodic_split`), `checkpoint.*`
    (`checkpoint.best_metric`, `checkpoint.best_mode` = `max` | `min`), ... Tuples are
    JSON lists. A directory holding `config.json` is a run directory.

`RUN/metrics.jsonl`
    One JSON object per line, `{"step": int, "split": str, <metrics>}`, by split:
    - `train`: `loss`, `grad_norm`, `param_norm`, `learning_rate`, `weight`,
      `steps_per_second`, every `train.log_every` steps.
    - the periodic eval split (`eval.periodic_split`, normally `validation`) and the other
      eval splits: task metrics (`accuracy`, `macro_f1`, `loss`, `perplexity`, `bleu`,
      `rouge1`, ...). Final evaluations carry `"final": 1` and `params_from` (a string).
    - `data` (step 0): data statistics.
    - `model`, written when each process session starts: `{"params": total parameter
      count, "trained_params": count that trains, "replicas": K}`.
    - `session`, written when each process session ends normally: `{"seconds": wall
      seconds of the session, "train_seconds": seconds in the training loop,
      "start_step": first step of the session, "peak_rss_mb": the process's peak resident
      memory in MiB}`; its `step` is the session's last step.
    With `train.replicas = K > 1` every train and eval record also has `"replica": k`
    (0..K-1); replica k is equivalent to an independent run with seed `seed + k`. A record
    without `replica` belongs to every replica. A resumed run appends, so a (split, step,
    replica, final) may appear more than once: the last record wins. Non-finite values
    are written as `null` (strict JSON; older runs wrote strings such as `"nan"`): both
    read as NaN. Train records also hold `nonfinite_steps`, the steps since the previous
    train record whose loss, gradient norm or updated params' norm was not finite (under
    `train.on_nonfinite=skip`, updates not applied); the `session` record holds the
    session's total. A line that is not JSON (a crash mid-write) is skipped. A run of a
    task fitted without the train loop (`task=linear`, `sft_jax.linear`) has no train
    records and writes every record at step 0 (its `model` record also holds `C`).

`RUN/results.json`
    Final metrics by split: `{"validation": {"accuracy": 0.81, ..., "params_from":
    "best accuracy at step 200"}, "test": {...}}`. With K > 1 replicas the splits hold
    the means, plus `"std": {split: {...}}` and `"replicas": [{"replica": k, "seed": s,
    split: {...}, ...}, ...]`. Non-finite values are `null` (read as NaN). A run without
    `results.json` is unfinished (in progress or failed, e.g. stopped by
    `train.on_nonfinite=stop` with exit status 3). A run that early stopping ended
    (`train.early_stopping_patience`) also has `"stopped": {"step": s, "reason": "early
    stopping: no improvement of accuracy > 0.001 in 3 evaluations", "best_step": b}`
    (`best_step` a list, one per replica, with K > 1): the final metrics are those of
    the best params; rows of a run without replicas read it as the columns
    `stopped/step` and `stopped/best_step`.

`SWEEP/sweep.json` (optional; runs made by hand have none)
    `{"runs": [{"name": ..., "overrides": {"optim.learning_rate": 1e-4, "seed": 1},
    "state": "done" | "failed" | "pending" | "running" | "interrupted", "error": "..."},
    ...], ...}`; run `name` lives in `SWEEP/<name>/`.

Rows (`rows`, `load`), one per (run, replica): `run` (path relative to the path read),
`replica`, `seed` (config seed + replica), `fold` (`data.fold`, in cross-validated runs
only), `group` (a label of the overrides; a lone run's name), the overrides (flattened
config keys whose values differ between the runs read, except `seed`, `train.replicas`
and `data.fold`; lists become JSON strings), `finished`, `step`
(last trained step logged), `<split>/<metric>` for every final metric, `best/<metric>`
and `best_step` (the best periodic-split value of `checkpoint.best_metric` under
`checkpoint.best_mode`, earliest step on ties), `wall_seconds` (sum of the sessions'
seconds), `steps_per_second` (steps trained / training seconds over the sessions, else
the mean logged `steps_per_second`; replicas train together, so it is the run's),
`peak_rss_mb` (the largest of the sessions'), `params`, `trained_params`. Missing values
are NaN (None for override values).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sft_jax import storage
from sft_jax.errors import UserInputError

SKIP_DIRS = frozenset({"checkpoints", "best", "export", "xla-cache"})
NOT_OVERRIDES = frozenset({"seed", "train.replicas", "data.fold"})
CURVE_SKIP_SPLITS = frozenset({"data", "model", "session"})
RECORD_KEYS = frozenset({"step", "split", "replica", "final", "params_from"})
LABEL = "label"  # the config key that names a setting (`shown_keys`)
_NONFINITE = frozenset({"nan", "-nan", "inf", "+inf", "-inf", "infinity", "-infinity"})


@dataclass
class Run:
    """One run directory as read: `name` is its path relative to the path read."""

    name: str
    path: Path
    config: dict[str, Any]
    records: list[dict[str, Any]]
    results: dict[str, Any] | None

    @property
    def replicas(self) -> int:
        return int(self.config.get("train", {}).get("replicas", 1) or 1)

    @property
    def seed(self) -> int:
        return int(self.config.get("seed", 0))

    @property
    def fold(self) -> int | None:
        """The held-out fold `data.fold` of a cross-validated run (`data.folds` > 0),
        else None."""
        data = self.config.get("data", {})
        return int(data.get("fold", 0)) if int(data.get("folds", 0) or 0) else None

    @property
    def finished(self) -> bool:
        return self.results is not None


def find_runs(path: str | Path) -> list[Path]:
    """Run directories under `path`: `path` itself if it holds config.json, else every
    descendant holding one (sorted), never looking inside a run's checkpoints/, best/ or
    export/, or a sweep's xla-cache/. Raises UserInputError if `path` is not a directory."""
    root = storage.path(path)  # local, or remote (gs://...)
    if not root.is_dir():
        raise UserInputError(f"{root}: no such directory")
    if (root / "config.json").is_file():
        return [root]
    found: list[Path] = []
    for child in sorted(p for p in root.iterdir() if p.is_dir()):
        if child.name not in SKIP_DIRS:
            found.extend(find_runs(child))
    return found


def _number(value: Any) -> Any:
    """A metric value as read: null and non-finite spellings become NaN."""
    if value is None:
        return math.nan
    if isinstance(value, str) and value.strip().lower() in _NONFINITE:
        return math.nan
    if isinstance(value, float) and not math.isfinite(value):
        return math.nan
    return value


def read_json(path: Path) -> Any:
    """The JSON in `path`; UserInputError naming the file if it is malformed."""
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise UserInputError(f"{path}: not valid JSON ({err.msg}, line {err.lineno})") from None


def read_records(run_dir: str | Path) -> list[dict[str, Any]]:
    """Records of `run_dir/metrics.jsonl` in file order, non-finite values as NaN;
    lines that are not JSON objects are skipped; [] if there is no file."""
    path = storage.path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and "split" in record and "step" in record:
            records.append({k: v if k in RECORD_KEYS else _number(v)
                            for k, v in record.items()})
    return records


def read_run(run_dir: str | Path, root: str | Path | None = None) -> Run:
    """One run directory; `root` (default: its parent) names it."""
    run_dir = storage.path(run_dir)
    base = storage.path(root) if root is not None else run_dir.parent
    name = run_dir.relative_to(base).as_posix() if run_dir != base else run_dir.name
    results_path = run_dir / "results.json"
    results = read_json(results_path) if results_path.is_file() else None
    return Run(name=name or run_dir.resolve().name, path=run_dir,
               config=read_json(run_dir / "config.json"), records=read_records(run_dir),
               results=results)


def read_runs(path: str | Path) -> list[Run]:
    """Every run under `path` (see `find_runs`); UserInputError if there is none."""
    dirs = find_runs(path)
    if not dirs:
        raise UserInputError(f"{path}: no run directories (none holds a config.json)")
    root = storage.path(path) if len(dirs) > 1 or dirs[0] != storage.path(path) else None
    return [read_run(d, root) for d in dirs]


def read_sweep(path: str | Path) -> dict[str, Any] | None:
    """`path/sweep.json`, or None if there is none."""
    sweep = storage.path(path) / "sweep.json"
    return read_json(sweep) if sweep.is_file() else None


def run_states(path: str | Path, runs: list[Run]) -> list[dict[str, Any]]:
    """What became of each run: the runs found and those `path/sweep.json` lists, as
    {"name", "state", "error", "found", "finished", "listed"}. `state` is sweep.json's
    when it lists the run (listed=True), else `done` (has results.json) or `unfinished`;
    sweep entries without a run directory have found=False."""
    sweep = read_sweep(path) if storage.path(path).is_dir() else None
    listed = {str(e.get("name")): e for e in (sweep or {}).get("runs", []) if "name" in e}
    found = {run.name: run for run in runs}
    states = []
    for name in [*found, *(n for n in listed if n not in found)]:
        entry, run = listed.get(name, {}), found.get(name)
        finished = run is not None and run.finished
        state = entry.get("state") or ("done" if finished else "unfinished")
        states.append({"name": name, "state": str(state),
                       "error": " ".join(str(entry.get("error") or "").split()),
                       "found": run is not None, "finished": finished,
                       "listed": name in listed})
    return states


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dict -> {"a.b.c": value}; lists (and dicts inside lists) become JSON
    strings, so every value is hashable."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        elif isinstance(value, list):
            flat[name] = json.dumps(value, sort_keys=True)
        else:
            flat[name] = value
    return flat


def override_keys(runs: list[Run]) -> list[str]:
    """Flattened config keys whose values differ between `runs` (missing counts as a
    value), except `seed`, `train.replicas` and `data.fold` (the members of a group: the
    folds of a cross-validation are the same setting, as seeds are); sorted."""
    flats = [flatten(r.config) for r in runs]
    keys = sorted(set().union(*flats) - NOT_OVERRIDES) if flats else []
    return [k for k in keys if len({json.dumps(f.get(k), sort_keys=True) for f in flats}) > 1]


def members(runs: list[Run]) -> str:
    """What the runs of one setting differ by: `folds`, `seeds` or `folds and seeds`
    (`seeds` also for replicas, and when nothing differs)."""
    folds = {r.fold for r in runs} - {None}
    seeds = {r.seed + k for r in runs for k in range(r.replicas)}
    kinds = [name for name, values in (("folds", folds), ("seeds", seeds)) if len(values) > 1]
    return " and ".join(kinds) or "seeds"


def shown_keys(configs: list[dict[str, Any]], keys: list[str]) -> list[str]:
    """The keys of `keys` that name a setting among the flat `configs`: all of them, except
    that a `label` comes first and stands for the keys it determines (those with a single
    value among the configs of each label)."""
    if LABEL not in keys:
        return keys
    labels = {c.get(LABEL) for c in configs}

    def determined(key: str) -> bool:
        return all(len({json.dumps(c.get(key), sort_keys=True, default=str)
                        for c in configs if c.get(LABEL) == label}) == 1 for label in labels)

    return [LABEL, *(k for k in keys if k != LABEL and not determined(k))]


def group_label(overrides: dict[str, Any]) -> str:
    """`learning_rate=0.0001, method=lora` (last key components; a `label` by its value
    alone: `lora-r8, train_size=100`), or `all runs`."""
    if not overrides:
        return "all runs"
    short = [k.rsplit(".", 1)[-1] for k in overrides]
    names = short if len(set(short)) == len(short) else list(overrides)
    return ", ".join(_show(v) if k == LABEL else f"{n}={_show(v)}"
                     for k, n, v in zip(overrides, names, overrides.values(), strict=True))


def _show(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _replica_of(record: dict[str, Any]) -> int | None:
    replica = record.get("replica")
    return None if replica is None else int(replica)


def latest_records(records: list[dict[str, Any]], replica: int) -> list[dict[str, Any]]:
    """The records of one replica (its own and those without `replica`), one per
    (split, step, final): the last one in the file wins. Sorted by (split, step)."""
    latest: dict[tuple, dict[str, Any]] = {}
    for record in records:
        owner = _replica_of(record)
        if owner is None or owner == replica:
            latest[(record["split"], int(record["step"]), bool(record.get("final")))] = record
    return [latest[k] for k in sorted(latest, key=lambda k: (k[0], k[1], k[2]))]


def final_metrics(results: dict[str, Any] | None, replica: int) -> dict[str, float]:
    """{"<split>/<metric>": value} of the numeric final metrics of one replica."""
    if not results:
        return {}
    source = results
    if "replicas" in results:
        by_replica = {int(r.get("replica", i)): r for i, r in enumerate(results["replicas"])}
        source = by_replica.get(replica, {})
    out = {}
    for split, metrics in source.items():
        if split in ("std", "replicas", "replica", "seed") or not isinstance(metrics, dict):
            continue
        for name, value in metrics.items():
            value = _number(value)
            if isinstance(value, int | float) and not isinstance(value, bool):
                out[f"{split}/{name}"] = float(value)
    return out


def best_periodic(config: dict[str, Any], records: list[dict[str, Any]]) -> tuple[float, int]:
    """(best value, its step) of `checkpoint.best_metric` in the periodic-split records
    (not the final ones) of one replica; (NaN, -1) if there is none."""
    metric = config.get("checkpoint", {}).get("best_metric", "")
    mode = config.get("checkpoint", {}).get("best_mode", "max")
    split = config.get("eval", {}).get("periodic_split", "validation")
    best, best_step = math.nan, -1
    for record in records:
        value = record.get(metric)
        if record["split"] != split or record.get("final") or not isinstance(value, int | float):
            continue
        if math.isnan(value):
            continue
        if math.isnan(best) or (value > best if mode == "max" else value < best):
            best, best_step = float(value), int(record["step"])
    return best, best_step


def timing(records: list[dict[str, Any]]) -> tuple[float, float]:
    """(wall seconds, steps per second) over the `session` records (all of them: each is
    one process session); steps/s falls back to the mean logged train `steps_per_second`."""
    sessions = [r for r in records if r["split"] == "session"]
    wall = sum(float(r.get("seconds", 0.0)) for r in sessions) if sessions else math.nan
    steps = sum(int(r["step"]) - int(r.get("start_step", 0)) for r in sessions)
    seconds = sum(float(r.get("train_seconds", 0.0)) for r in sessions)
    if steps > 0 and seconds > 0:
        return wall, steps / seconds
    logged = [r["steps_per_second"] for r in records if r["split"] == "train"
              and isinstance(r.get("steps_per_second"), int | float)
              and math.isfinite(r["steps_per_second"])]
    return wall, (sum(logged) / len(logged) if logged else math.nan)


def peak_memory(records: list[dict[str, Any]]) -> float:
    """The largest `peak_rss_mb` of the `session` records (MiB); NaN without one."""
    peaks = [float(r["peak_rss_mb"]) for r in records
             if r["split"] == "session" and isinstance(r.get("peak_rss_mb"), int | float)]
    return max(peaks) if peaks else math.nan


def _model_info(records: list[dict[str, Any]]) -> dict[str, float]:
    models = [r for r in records if r["split"] == "model"]
    last = models[-1] if models else {}
    return {k: last.get(k, math.nan) for k in ("params", "trained_params")}


def _labels(runs: list[Run], keys: list[str]) -> list[str]:
    """Each run's group label (`group_label` of its `shown_keys`); a lone run is named by
    itself."""
    if len(runs) == 1:
        return [runs[0].name]
    flats = [flatten(run.config) for run in runs]
    shown = shown_keys(flats, keys)
    return [group_label({k: flat.get(k) for k in shown}) for flat in flats]


def run_rows(run: Run, keys: list[str], label: str) -> list[dict[str, Any]]:
    """The rows of one run (one per replica) with the override columns `keys`."""
    flat = flatten(run.config)
    overrides = {k: flat.get(k) for k in keys}
    wall, speed = timing(run.records)
    best_metric = run.config.get("checkpoint", {}).get("best_metric", "")
    rows = []
    for replica in range(run.replicas):
        records = latest_records(run.records, replica)
        trained = [int(r["step"]) for r in records if r["split"] == "train"]
        row: dict[str, Any] = {"run": run.name, "replica": replica,
                               "seed": run.seed + replica, "group": label,
                               **({} if run.fold is None else {"fold": run.fold}),
                               **overrides, "finished": run.finished,
                               "step": max(trained) if trained else 0}
        row.update(final_metrics(run.results, replica))
        if best_metric:
            value, step = best_periodic(run.config, records)
            row[f"best/{best_metric}"] = value
            row["best_step"] = step if step >= 0 else math.nan
        row.update(wall_seconds=wall, steps_per_second=speed,
                   peak_rss_mb=peak_memory(run.records), **_model_info(run.records))
        rows.append(row)
    return rows


def rows(runs: list[Run]) -> list[dict[str, Any]]:
    """One plain dict per (run, replica), the columns of the module docstring."""
    keys = override_keys(runs)
    return [row for run, label in zip(runs, _labels(runs, keys), strict=True)
            for row in run_rows(run, keys, label)]


def curve_rows(runs: list[Run]) -> list[dict[str, Any]]:
    """Learning curves in long form, one dict per numeric value of a train or periodic
    (non-final) eval record: run, replica, seed, group, split, step, metric, value."""
    keys = override_keys(runs)
    out = []
    for run, label in zip(runs, _labels(runs, keys), strict=True):
        for replica in range(run.replicas):
            for record in latest_records(run.records, replica):
                if record["split"] in CURVE_SKIP_SPLITS or record.get("final"):
                    continue
                for metric, value in record.items():
                    if metric in RECORD_KEYS or isinstance(value, bool) or \
                            not isinstance(value, int | float):
                        continue
                    out.append({"run": run.name, "replica": replica,
                                "seed": run.seed + replica, "group": label,
                                "split": record["split"], "step": int(record["step"]),
                                "metric": metric, "value": float(value)})
    return out


def pandas():
    """The pandas module; a one-line UserInputError if it is not installed."""
    try:
        import pandas as pd
    except ImportError:
        raise UserInputError("reading runs as tables needs pandas: "
                             "pip install 'pandas>=2.1'") from None
    return pd


def _runs(source: str | Path | list[Run]) -> list[Run]:
    return source if isinstance(source, list) else read_runs(source)


def load(source: str | Path | list[Run]):
    """A pandas DataFrame with one row per (run, replica) of the runs under `source` (a
    path, or runs already read); columns as in the module docstring."""
    pd = pandas()
    runs = _runs(source)
    frame = pd.DataFrame(rows(runs))
    keys = override_keys(runs)
    for key in keys:  # overrides keep their values (None when a run lacks the key)
        frame[key] = frame[key].astype(object).where(frame[key].notna(), None)
    return frame


def curves(source: str | Path | list[Run]):
    """A pandas DataFrame of the learning curves (`curve_rows`), sorted by run, replica,
    split, metric and step."""
    pd = pandas()
    columns = ["run", "replica", "seed", "group", "split", "step", "metric", "value"]
    frame = pd.DataFrame(curve_rows(_runs(source)), columns=columns)
    return frame.sort_values(["run", "replica", "split", "metric", "step"],
                             ignore_index=True)
