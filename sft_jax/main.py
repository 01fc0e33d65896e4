"""Command line: flags + config -> `train.train_and_evaluate(config, workdir)`.

    python -m sft_jax.main --config=configs/classification.py --workdir=/tmp/run \
        [--config.train.steps=0] [--config.KEY=VALUE ...]

Intentionally thin: everything else is importable from a notebook or a test. Bad input
(sft_jax.errors.UserInputError) prints one line and exits with status 2; a run stopped by
its non-finite guard (sft_jax.errors.NonFiniteError) one line and status 3; a storage fault
mid-run (sft_jax.workdir.StorageError: disk full, a read-only directory) one line and
status 1; Ctrl-C/SIGTERM one line and status 130 (the first saves a checkpoint, a second
aborts).
"""

from __future__ import annotations

import errno
import logging
import os
import sys

from absl import flags
from ml_collections import config_flags

from sft_jax import workdir
from sft_jax.errors import NonFiniteError, UserInputError, flag_error

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics, predictions, export.")
config_flags.DEFINE_config_file("config", None, "Task config file.", lock_config=True)


# Errors of a write that the environment refused: reported as a storage fault.
_STORAGE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM)


def _fail(message: str, status: int = 2) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(status)


def _abort(message: str, status: int) -> None:
    """One line, then exit at once: orbax's threads may still wait on a failed or
    abandoned save, and an ordinary exit would wait for them."""
    print(message, file=sys.stderr)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        _fail(f"unexpected arguments: {' '.join(argv[1:])}")
    if not FLAGS.workdir:
        _fail("--workdir is required")
    try:
        workdir.check(FLAGS.workdir)  # before the slow imports; the run locks it later
    except UserInputError as err:
        _fail(str(err))
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
    except KeyboardInterrupt:  # a second Ctrl-C/SIGTERM while stopping, or before the loop
        _abort(f"interrupted: aborted; resume from the last checkpoint in {FLAGS.workdir} "
               f"with the same command", 130)
    except workdir.StorageError as err:
        _abort(f"error: {err}", 1)
    except OSError as err:
        if err.errno not in _STORAGE_ERRNOS:
            raise
        _abort(f"error: {err.filename or FLAGS.workdir}: {os.strerror(err.errno)}", 1)
    stds = results.get("std", {})  # runs with train.replicas > 1: mean and std
    for split, metrics in results.items():
        if split in ("std", "replicas"):
            continue
        shown = {k: (f"{v:.4f} ± {stds[split][k]:.4f}" if k in stds.get(split, {})
                     else round(v, 4))
                 for k, v in metrics.items() if isinstance(v, float)}
        print(f"{split}: {shown}")
    print(f"outputs: {FLAGS.workdir}")


def _no_library_tracebacks(record: logging.LogRecord) -> bool:
    """Console filter: a library's log record keeps its line, not its traceback (the
    failure that matters reaches the user as our one line)."""
    if record.name != "root" and not record.name.startswith("sft_jax"):
        record.exc_info, record.exc_text, record.stack_info = None, None, None
    return True


def _log_unraisable(unraisable) -> None:
    """An exception no caller could receive (e.g. a checkpoint read's leftover callbacks
    after orbax gave up on an unreadable checkpoint) goes to the log, not the console."""
    logging.getLogger("unraisable").info(
        "ignored: %s: %s", unraisable.exc_type.__name__, unraisable.exc_value,
        exc_info=(unraisable.exc_type, unraisable.exc_value, unraisable.exc_traceback))


def run() -> None:
    """Entry point (`python -m sft_jax.main`, `sft-jax`): flag errors exit with status 2."""
    try:
        argv = FLAGS(sys.argv)
    except (flags.Error, UserInputError, AttributeError, KeyError, TypeError, ValueError) as exc:
        # absl reports a bad flag as flags.Error; ml_collections raises AttributeError or
        # KeyError for an unknown config key and TypeError/ValueError for a bad value.
        _fail(flag_error(exc, sys.argv))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    for handler in logging.getLogger().handlers:
        handler.addFilter(_no_library_tracebacks)
    sys.unraisablehook = _log_unraisable
    main(argv)


if __name__ == "__main__":
    run()
