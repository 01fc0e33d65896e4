r"""Runs published-number reproductions (`experiments/reproductions/`) and compares.

    python -m experiments.reproduce nbsvm_mr [--workdir=workdirs/reproduce] [--parallel=2]
    python -m experiments.reproduce --all
    python -m experiments.reproduce --all --tiny --workdir=/tmp/reproduce-tiny

Each entry's sweep (`ENTRY.get_sweep` with `ENTRY.config`) runs through the sweep runner
(`sft_jax.sweep_runner`) in `DIR/NAME/`, one run directory per fold; starting the same
command again skips the runs that are done. The entry's metric of every finished run
(× 100, in points) gives mean ± std over the runs (`sft_jax.reporting.describe`); the
command prints one table, paper value | ours ± std (n) | delta | within tolerance, and
writes `DIR/NAME/summary.md` (citation, protocol, command, the comparison, each run's
value and the wall time).

`--tiny` runs every step of the same path at toy size: the entry's `tiny` sweep (two runs,
`experiments.reproductions.tiny_runs`) on a small synthetic corpus written to
`DIR/tiny-data/`; it checks that the path runs, not the numbers. Exit status: 0; 1 when a
run failed, or a full reproduction's mean misses its tolerance; 2 (one `error:` line) for
bad input, such as an unknown NAME.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import random
import sys
from pathlib import Path
from types import ModuleType

from experiments import reproductions
from sft_jax import cli, reporting, sweep_runner, sweeps
from sft_jax import runs as runs_lib
from sft_jax.errors import UserInputError

REPO = Path(__file__).resolve().parents[1]
ENTRIES = REPO / "experiments" / "reproductions"

# The synthetic corpus of --tiny: each text has cue words of its label among fillers.
_CUES = {"negative": ["dull", "tedious", "flat", "bland"],
         "positive": ["moving", "witty", "superb", "lively"]}
_FILLER = ["the", "film", "plot", "cast", "story", "scene", "score", "ending"]


def names() -> list[str]:
    """The entries: every module of experiments/reproductions/, sorted."""
    return sorted(p.stem for p in ENTRIES.glob("*.py") if not p.stem.startswith("_"))


def load(name: str) -> ModuleType:
    """The entry's module (its docstring and `ENTRY`); UserInputError for an unknown one."""
    if name not in names():
        raise UserInputError(f"unknown reproduction {name!r} (known: {', '.join(names())})")
    return importlib.import_module(f"experiments.reproductions.{name}")


def tiny_data(workdir: Path, records: int = 40) -> list[str]:
    """Writes the --tiny corpus under `workdir` (a pool with a `fold` field, 0 or 1);
    returns the common `--config.data.train` flag that points the runs at it."""
    rng = random.Random(0)
    labels = sorted(_CUES)

    def record(i: int) -> dict:
        label = labels[i % 2]
        words = [*rng.sample(_FILLER, 5), rng.choice(_CUES[label])]
        if rng.random() < 0.3:  # a cue of the other label: not separable
            words.append(rng.choice(_CUES[labels[1 - i % 2]]))
        rng.shuffle(words)
        return {"text": " ".join(words), "label": label, "fold": i // 2 % 2}

    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "pool.jsonl"
    path.write_text("".join(json.dumps(record(i)) + "\n" for i in range(records)))
    return [f"--config.data.train={path}"]


def run_entry(name: str, workdir: Path, *, tiny: bool, common: list[str], parallel: int
              ) -> dict:
    """Runs (or resumes) entry `name`'s sweep in `workdir/name`; returns its comparison:
    entry, values (points, by run), stats, delta, ok (None for --tiny), failed runs."""
    module = load(name)
    entry: reproductions.Reproduction = module.ENTRY
    sweep = str(ENTRIES / f"{name}.py") + (f":{reproductions.TINY}" if tiny else "")
    path, colon, variant = entry.config.partition(":")
    plan = sweeps.make_plan(str(REPO / path) + colon + variant, sweep, common)
    out = workdir / name
    sweep_runner.check_workdir(plan, out)
    records = sweep_runner.run_sweep(plan, out, parallel=parallel,
                                     echo=lambda line: print(f"{name} {line}", flush=True))
    rows = runs_lib.rows(runs_lib.read_runs(out))
    values = {row["run"]: 100 * row[entry.metric] for row in rows
              if row["finished"] and math.isfinite(row.get(entry.metric, math.nan))}
    stats = reporting.describe(list(values.values()))
    delta = stats.mean - entry.published
    ok = None if tiny else bool(stats.n and abs(delta) <= entry.tolerance)
    failed = [r["name"] for r in records.values() if r["state"] != "done"]
    wall = sum(row["wall_seconds"] for row in rows if math.isfinite(row["wall_seconds"]))
    return {"name": name, "title": (module.__doc__ or name).strip().splitlines()[0],
            "entry": entry, "values": values, "stats": stats, "delta": delta,
            "ok": ok, "failed": failed, "plan": plan, "dir": out, "wall": wall}


def _ours(result: dict) -> str:
    s = result["stats"]
    if not s.n:
        return "–"
    std = f"{s.std:.2f}" if math.isfinite(s.std) else "–"
    return f"{s.mean:.2f} ± {std} (n={s.n})"


def _verdict(result: dict) -> str:
    if result["ok"] is None:
        return "tiny: not compared"
    return "yes" if result["ok"] else "NO"


def table(results: list[dict]) -> list[str]:
    """The comparison as Markdown table lines, one row per entry."""
    lines = ["| reproduction | paper | ours ± std | delta | within tolerance |",
             "|---|---|---|---|---|"]
    for r in results:
        e = r["entry"]
        delta = f"{r['delta']:+.2f}" if math.isfinite(r["delta"]) else "–"
        lines.append(f"| {r['name']} | {e.published:g} | {_ours(r)} | {delta} | "
                     f"{_verdict(r)} (±{e.tolerance:g}) |")
    return lines


def summary_markdown(result: dict, tiny: bool) -> str:
    """DIR/NAME/summary.md."""
    e, plan = result["entry"], result["plan"]
    command = " ".join(["python -m sft_jax.sweep", f"--config={e.config}",
                        f"--sweep=experiments/reproductions/{result['name']}.py"
                        + (f":{reproductions.TINY}" if tiny else ""),
                        f"--workdir={result['dir']}", *plan.common])
    lines = [f"# {result['name']}: {result['title']}", ""]
    if tiny:
        lines += ["**--tiny**: the same code path on a toy synthetic corpus; the values "
                  "check that it runs and mean nothing.", ""]
    lines += [f"- Paper: {e.paper}", f"- Where: {e.where}",
              f"- Published: {e.published:g} ({e.metric} × 100)",
              f"- Protocol: {e.protocol}", f"- Config: `{e.config}`",
              f"- Command: `{command}`", "", *table([result]), "",
              f"Per run ({e.metric} × 100):", ""]
    lines += [f"- `{run}`: {value:.2f}" for run, value in sorted(result["values"].items())]
    lines += [*(f"- `{run}`: not done" for run in result["failed"]), "",
              f"Wall time of the runs: {sweep_runner.duration(result['wall'])}.", ""]
    return "\n".join(lines)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m experiments.reproduce",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("name", nargs="?", help=f"one of: {', '.join(names())}")
    parser.add_argument("--all", action="store_true", help="every reproduction")
    parser.add_argument("--tiny", action="store_true", help="toy size: checks the path runs")
    parser.add_argument("--workdir", default="workdirs/reproduce", help="DIR (DIR/NAME/ each)")
    parser.add_argument("--parallel", type=int, default=1, help="runs at once")
    args = parser.parse_args(argv)
    if bool(args.name) == args.all:
        cli.fail("give one reproduction NAME or --all")
    return args


def main(argv: list[str] | None = None) -> int:
    """Runs the reproductions of the command line; returns the exit status."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    workdir = Path(args.workdir).resolve()
    try:
        chosen = names() if args.all else [load(args.name).__name__.rsplit(".", 1)[-1]]
        common = tiny_data(workdir / "tiny-data") if args.tiny else []
        results = [run_entry(name, workdir, tiny=args.tiny, common=common,
                             parallel=args.parallel) for name in chosen]
    except UserInputError as err:
        cli.fail(str(err))
    for result in results:
        (result["dir"] / "summary.md").write_text(summary_markdown(result, args.tiny))
    print("\n".join(table(results)))
    for result in results:
        for run in result["failed"]:
            print(f"not done: {result['name']}/{run}: see {result['dir'] / run / 'sweep.log'}")
        print(f"summary: {result['dir'] / 'summary.md'}")
    failed = any(r["failed"] for r in results) or any(r["ok"] is False for r in results)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
