r"""`sft-jax train` (also `python -m sft_jax.main`): fine-tune, evaluate, export.

    sft-jax train --config=configs/classification.py --workdir=/tmp/run
    sft-jax train --config=configs/classification.py:runlocal --workdir=/tmp/tiny \
        --config.optim.learning_rate=3e-5 --config.train.steps=100

Intentionally thin: the run itself is `sft_jax.trainer.train_and_evaluate` (from a notebook,
`sft_jax.train(config, workdir)`); `sft-jax eval` (`sft_jax.evaluation`) shares this file's
flags, error handling and exit statuses. Bad input (sft_jax.errors.UserInputError) prints
one line and exits with status 2; a run stopped by its non-finite guard
(sft_jax.errors.NonFiniteError) one line and status 3; a storage fault mid-run
(sft_jax.workdir.StorageError: disk full, a read-only directory) one line and status 1;
Ctrl-C/SIGTERM one line and status 130 (the first saves a checkpoint, a second aborts). The
console shows sft_jax's own lines; the full log is `WORKDIR/log.txt` (`sft_jax.console`).
"""

from __future__ import annotations

import errno
import logging
import os
import sys
from collections.abc import Callable

import absl.logging  # noqa: F401  (defines --verbosity)
from absl import flags
from ml_collections import config_flags

from sft_jax import cli, console, workdir
from sft_jax.errors import NonFiniteError, UserInputError, flag_error
from sft_jax.interrupts import StopRequested

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics, predictions, "
                    "export and log.txt.")
config_flags.DEFINE_config_file("config", None, "Task config file.", lock_config=True)
flags.DEFINE_bool("print_config", False, "Print the resolved config and exit.")
flags.DEFINE_enum("log_level", "info", ["debug", "info"], "debug: every library's DEBUG "
                  "lines on the console and in log.txt.")

log = logging.getLogger("sft_jax.main")

# Errors of a write that the environment refused: reported as a storage fault.
_STORAGE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM)

# The flags `--help` lists, in this order (absl's own are many and rarely wanted).
HELP_FLAGS = ("config", "workdir", "model", "print_config", "verbosity", "log_level")


def _abort(message: str, status: int) -> None:
    """One line, then exit at once: orbax's threads may still wait on a failed or
    abandoned save, and an ordinary exit would wait for them."""
    print(message, file=sys.stderr)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def print_results(results: dict, out_dir: str) -> None:
    """The final metrics as a table per split (mean ± std over replicas, if any) and where
    the outputs are."""
    stds = results.get("std", {})
    rows = {}
    for split, metrics in results.items():
        if split in ("std", "replicas", "stopped") or not isinstance(metrics, dict):
            continue
        rows[split] = {k: (f"{console.number(v)} ± {console.number(stds[split][k])}"
                           if k in stds.get(split, {}) else v)
                       for k, v in console.headline_metrics(metrics).items()}
    sources = {m.get("params_from") for m in results.values() if isinstance(m, dict)} - {None}
    if rows:
        print("results" + (f" (params of {sources.pop()})" if len(sources) == 1 else "") + ":")
        for line in console.table(rows):
            print(f"  {line}")
    from sft_jax import storage

    if "stopped" in results:
        print(f"stopped early at step {results['stopped']['step']}: "
              f"{results['stopped']['reason']}")
    root = storage.path(out_dir)
    for name in ("export", "predictions"):
        if (root / name).is_dir():
            print(f"{name}: {root / name}")
    print(f"outputs: {out_dir}")


def main(argv: list[str], command: Callable[[object, str], dict]) -> None:
    """Runs `command(config, workdir) -> results` with the flags' config and workdir."""
    if len(argv) > 1:
        cli.fail(f"unexpected arguments: {' '.join(argv[1:])}")
    if FLAGS.config is None:
        cli.fail("--config is required, e.g. --config=configs/classification.py")
    try:
        config = FLAGS.config
        config.task  # noqa: B018  (a config file that failed to load raises here)
    except OSError as err:
        cli.fail(f"--config: {' '.join(str(err).split())}")
    if FLAGS.print_config:
        print(config)
        return
    if not FLAGS.workdir:
        cli.fail("--workdir is required")
    try:
        workdir.check(FLAGS.workdir)  # before the slow imports; the run locks it later
    except UserInputError as err:
        cli.fail(str(err))
    import jax

    from sft_jax import parallel, validate

    try:
        validate.check_config(config)  # a refused config leaves no trace in the workdir
        parallel.initialize_distributed(config)
        if jax.process_index() == 0:
            console.log_to(FLAGS.workdir)
        parallel.log_devices()
        results = command(config, FLAGS.workdir)
    except UserInputError as err:
        cli.fail(str(err))
    except NonFiniteError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(err.exit_status)
    except StopRequested as stop:
        print(f"interrupted: {stop}", file=sys.stderr)
        sys.exit(130)
    except KeyboardInterrupt:  # a second Ctrl-C/SIGTERM while stopping, or before the loop
        _abort(f"interrupted: aborted; resume from the last checkpoint in {FLAGS.workdir} "
               f"with the same command", 130)
    except workdir.StorageError as err:
        _abort(f"error: {err}", 1)
    except OSError as err:
        if err.errno not in _STORAGE_ERRNOS:
            raise
        _abort(f"error: {err.filename or FLAGS.workdir}: {os.strerror(err.errno)}", 1)
    print_results(results, FLAGS.workdir)


def parse_flags(doc: str) -> list[str]:
    """absl flags of sys.argv (`--help` prints the command's help and exits 0); errors
    exit with status 2 in one line; then the console is set up."""
    if cli.wants_help(sys.argv[1:]):
        print(cli.flags_help(doc, HELP_FLAGS, [
            "--config.KEY=VALUE: override one config value (any number of them)"],
            verbosity="1: libraries' INFO lines on the console too (log.txt always has "
                      "them)"))
        sys.exit(0)
    try:
        argv = FLAGS(sys.argv)
    except (flags.Error, UserInputError, AttributeError, KeyError, TypeError, ValueError) as exc:
        # absl reports a bad flag as flags.Error; ml_collections raises AttributeError or
        # KeyError for an unknown config key and TypeError/ValueError for a bad value.
        cli.fail(flag_error(exc, sys.argv))
    console.setup(verbosity=FLAGS.verbosity, log_level=FLAGS.log_level)
    return argv


def train(config, out_dir: str) -> dict:
    """The train loop, or the fit of a task that has none (`sft_jax.tasks.FITTED`)."""
    from sft_jax import tasks

    return tasks.train_and_evaluate(config, out_dir)


def run() -> None:
    """Entry point of `sft-jax train` and `python -m sft_jax.main`."""
    main(parse_flags(__doc__), train)


if __name__ == "__main__":
    run()
