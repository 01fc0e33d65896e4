"""Command line: the report of a directory of runs (a sweep, runs made by hand, one run).

    sft-jax report DIR [--metric=accuracy,macro_f1] [--split=test] [--plots=true]

Writes DIR/summary.csv, DIR/groups.csv, DIR/summary.md and DIR/plots/*.png
(`sft_jax.reporting`), prints summary.md and the paths written. Defaults: the `test`
split if the runs have its final results, else `validation`; every metric of that split.
Bad input (DIR missing, no runs under it, an unknown split or metric) prints
`error: <one line>` and exits with status 2.
"""

from __future__ import annotations

import sys

from absl import flags

from sft_jax import cli
from sft_jax.errors import UserInputError

FLAGS = flags.FLAGS
flags.DEFINE_list("metric", [], "Metrics to report (default: every final metric of --split).")
flags.DEFINE_string("split", None, "Split of the final results (default: test, else validation).")
flags.DEFINE_boolean("plots", True, "Write the plots under DIR/plots/.")


def main(argv: list[str]) -> None:
    if len(argv) != 2:
        cli.fail("usage: sft-jax report DIR [--metric=a,b] [--split=test] [--plots=true]")
    from sft_jax import reporting

    try:
        report = reporting.write_report(argv[1], metrics=FLAGS.metric or None,
                                        split=FLAGS.split, plots=FLAGS.plots)
    except UserInputError as err:
        cli.fail(str(err))
    print(report.markdown)
    print("written:")
    for path in report.paths:
        print(f"  {path}")


def run() -> None:
    """Entry point (`sft-jax report`, `python -m sft_jax.report`): flag errors exit with
    status 2."""
    if cli.wants_help(sys.argv[1:]):
        print(cli.flags_help(__doc__, ("metric", "split", "plots")))
        sys.exit(0)
    try:
        argv = FLAGS(sys.argv)
    except flags.Error as exc:
        cli.fail(" ".join(str(exc).split()))
    main(argv)


if __name__ == "__main__":
    run()
