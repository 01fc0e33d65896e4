r"""Command line of sweeps: many ordinary training runs from one sweep file.

    sft-jax sweep --config=configs/TASK.py[:variant] --sweep=FILE[:arg] \
        --workdir=DIR [--config.KEY=VALUE ...] [--parallel=K] [--shard=I/N] [--dry_run]

Each run trains in DIR/<run name>/ with `python -m sft_jax.main`; `--config.KEY=VALUE`
flags (this form, with `=`) apply to every run, before the run's own overrides. Starting
the same command again skips done runs and resumes the others from their checkpoints.
Relative paths (config, sweep file, DIR, data) are resolved from the current directory,
by the sweep and by its runs alike.
Bad input prints one line and exits with status 2; otherwise the status is 0 when every
run of this shard is done, 130 when interrupted, 1 when some run failed. The library is
`sft_jax.sweeps` (sweep files, names, validation) and `sft_jax.sweep_runner` (running).
"""

from __future__ import annotations

import re
import shlex
import sys
from pathlib import Path

from absl import flags

from sft_jax import cli, storage, sweep_runner, sweeps
from sft_jax.errors import UserInputError

FLAGS = flags.FLAGS
flags.DEFINE_string("config", None, "Task config file, as for sft_jax.main: "
                    "configs/TASK.py[:variant].")
flags.DEFINE_string("sweep", None, "Sweep file FILE[:arg]: get_sweep(arg) returns one dict "
                    "of config overrides per run.")
flags.DEFINE_string("workdir", None, "Sweep directory: DIR/<run name>/ per run, DIR/sweep.json.")
flags.DEFINE_integer("parallel", 1, "Runs at once; each gets a disjoint share of the CPUs "
                     "(or of CUDA_VISIBLE_DEVICES).")
flags.DEFINE_string("shard", "0/1", "I/N: run only the runs whose index % N == I.")
flags.DEFINE_bool("dry_run", False, "Print the planned runs; train nothing.")

_OVERRIDE = re.compile(r"^--?(no)?config\.")


def dry_run(plan: sweeps.Plan, workdir: Path, shard: tuple[int, int]) -> None:
    mine = [run for run in plan.runs if run.index % shard[1] == shard[0]]
    for run in mine:
        done = " (done)" if sweep_runner.is_done(workdir, run) else ""
        print(f"[{run.index + 1}/{len(plan.runs)}] {run.name}{done}: {shlex.join(run.args)}")
    done = sum(sweep_runner.is_done(workdir, run) for run in mine)
    where = f" (shard {shard[0]}/{shard[1]} of {len(plan.runs)})" if shard[1] > 1 else ""
    print(f"{len(mine)} runs planned{where}, {done} done; nothing trained (--dry_run)")


def main(argv: list[str], common: list[str]) -> int:
    if len(argv) > 1:
        raise UserInputError(f"unexpected arguments: {' '.join(argv[1:])}")
    for name in ("config", "sweep", "workdir"):
        if not getattr(FLAGS, name):
            raise UserInputError(f"--{name} is required")
    shard = sweep_runner.parse_shard(FLAGS.shard)
    sweep_runner.make_slots(FLAGS.parallel)  # a bad --parallel fails before anything runs
    workdir = storage.path(FLAGS.workdir)  # local, or remote (gs://...)
    plan = sweeps.make_plan(FLAGS.config, FLAGS.sweep, common)
    sweep_runner.check_workdir(plan, workdir)
    if FLAGS.dry_run:
        dry_run(plan, workdir, shard)
        return 0
    records = sweep_runner.run_sweep(plan, workdir, parallel=FLAGS.parallel, shard=shard)
    prefix = f"shard {shard[0]}/{shard[1]}: " if shard[1] > 1 else ""
    print(f"{prefix}{sweep_runner.summary(records)}")
    for record in records.values():
        if record["state"] == "failed":
            print(f"  failed: {record['name']}: see {workdir / record['name'] / 'sweep.log'}")
    if "interrupted" in {record["state"] for record in records.values()}:
        print("start the same command again to resume")
    print(f"status: {workdir / sweep_runner.STATUS}")
    print(f"compare the runs: sft-jax report {workdir}")
    states = {record["state"] for record in records.values()}
    if "interrupted" in states:
        return 130
    return 1 if "failed" in states else 0


def run() -> None:
    """Entry point (`sft-jax sweep`, `python -m sft_jax.sweep`); `--config.KEY=VALUE`
    flags are collected here and passed to every run verbatim."""
    if cli.wants_help(sys.argv[1:]):
        print(cli.flags_help(__doc__, ("config", "sweep", "workdir", "parallel", "shard",
                                       "dry_run"),
                             ["--config.KEY=VALUE: an override for every run"]))
        sys.exit(0)
    common = [arg for arg in sys.argv[1:] if _OVERRIDE.match(arg)]
    try:
        argv = FLAGS([arg for arg in sys.argv if not _OVERRIDE.match(arg)])
    except flags.Error as exc:
        cli.fail(" ".join(str(exc).split()))
    try:
        code = main(argv, common)
    except UserInputError as err:
        cli.fail(str(err))
    sys.exit(code)


if __name__ == "__main__":
    run()
