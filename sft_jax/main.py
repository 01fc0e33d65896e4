"""Command line: flags + config -> `train.train_and_evaluate(config, workdir)`.

    python -m sft_jax.main --config=configs/classification.py --workdir=/tmp/run \
        [--config.train.steps=0] [--config.KEY=VALUE ...]

Intentionally thin: everything else is importable from a notebook or a test. Bad input
(sft_jax.errors.UserInputError) prints one line and exits with status 2; a run stopped by
its non-finite guard (sft_jax.errors.NonFiniteError) prints one line and exits with 3.
"""

from __future__ import annotations

import logging
import sys

from absl import flags
from ml_collections import config_flags

from sft_jax.errors import NonFiniteError, UserInputError, flag_error

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics, predictions, export.")
config_flags.DEFINE_config_file("config", None, "Task config file.", lock_config=True)


def _fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        _fail(f"unexpected arguments: {' '.join(argv[1:])}")
    if not FLAGS.workdir:
        _fail("--workdir is required")
    from sft_jax import parallel, train

    if FLAGS.config is None:
        _fail("--config is required, e.g. --config=configs/classification.py")
    try:
        config = FLAGS.config
        config.task  # noqa: B018  (a config file that failed to load raises here)
    except OSError as err:
        _fail(f"--config: {' '.join(str(err).split())}")
    try:
        parallel.initialize_distributed(config)
        parallel.log_devices()
        results = train.train_and_evaluate(config, FLAGS.workdir)
    except UserInputError as err:
        _fail(str(err))
    except NonFiniteError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(err.exit_status)
    except train.StopRequested as stop:
        print(f"interrupted: {stop}", file=sys.stderr)
        sys.exit(130)
    stds = results.get("std", {})  # runs with train.replicas > 1: mean and std
    for split, metrics in results.items():
        if split in ("std", "replicas"):
            continue
        shown = {k: (f"{v:.4f} ± {stds[split][k]:.4f}" if k in stds.get(split, {})
                     else round(v, 4))
                 for k, v in metrics.items() if isinstance(v, float)}
        print(f"{split}: {shown}")
    print(f"outputs: {FLAGS.workdir}")


def run() -> None:
    """Entry point (`python -m sft_jax.main`, `sft-jax`): flag errors exit with status 2."""
    try:
        argv = FLAGS(sys.argv)
    except (flags.Error, UserInputError, AttributeError, KeyError, TypeError, ValueError) as exc:
        # absl reports a bad flag as flags.Error; ml_collections raises AttributeError or
        # KeyError for an unknown config key and TypeError/ValueError for a bad value.
        _fail(flag_error(exc, sys.argv))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    main(argv)


if __name__ == "__main__":
    run()
