"""What a person sees while a command runs, and where the full log goes.

`setup(verbosity, log_level)` (once per process, by the command line) sends log records
to two places:
  the console (stderr)  sft_jax's own lines (loggers `sft_jax.*`) from INFO up, as bare
                        messages (warnings prefixed `warning:`); other libraries' lines
                        (orbax, absl, jax, grain, tensorflow-datasets) only from WARNING
                        up, and without tracebacks. `--verbosity=1` shows their INFO
                        lines too; `--log_level=debug` shows everything at DEBUG.
  `DIR/log.txt`         every record at INFO (DEBUG with `--log_level=debug`) with time,
                        level and logger, from the moment `log_to(DIR)` is called (a run
                        calls it once its workdir is known).
A few library warnings that say nothing to a user (`QUIET_LIBRARY_MESSAGES`) go to the
log file only.

Progress: `TrainProgress` (optimizer steps with loss, learning rate, throughput, ETA) and
`progress(iterable)` (evaluation batches, generation, downloads). On a terminal they are
tqdm bars; elsewhere (CI, `| tee`) the training progress is one plain line per logged step
(at most one per `PLAIN_INTERVAL` seconds, and always the first and the last) and the other
bars are silent.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import sys
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

log = logging.getLogger("sft_jax")

FILE_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
LOG_FILE = "log.txt"
PLAIN_INTERVAL = 10.0  # seconds between plain progress lines (non-terminal consoles)
# Library warnings that say nothing a user can act on: log file only.
QUIET_LIBRARY_MESSAGES = (
    "Skipping merge of OCDBT checkpoints",  # orbax, for every single-array checkpoint item
)

_state: dict[str, Any] = {"console": None, "file": None, "verbosity": 0}


def is_ours(record: logging.LogRecord) -> bool:
    return record.name == "sft_jax" or record.name.startswith("sft_jax.")


class _ConsoleFilter(logging.Filter):
    """Ours from INFO, libraries' from WARNING (INFO with verbosity >= 1), no library
    tracebacks: the failure that matters reaches the user as our one line."""

    def __init__(self, verbosity: int):
        super().__init__()
        self.verbosity = verbosity

    def filter(self, record: logging.LogRecord) -> bool:
        if is_ours(record):
            return True
        if record.levelno < logging.WARNING and self.verbosity < 1:
            return False
        if self.verbosity < 1 and any(m in record.getMessage()
                                      for m in QUIET_LIBRARY_MESSAGES):
            return False
        record.exc_info, record.exc_text, record.stack_info = None, None, None
        return True


class _ConsoleHandler(logging.StreamHandler):
    """stderr; on a terminal through `tqdm.write`, so that lines do not tear a bar."""

    def emit(self, record: logging.LogRecord) -> None:
        if not is_terminal():
            super().emit(record)
            return
        from tqdm import tqdm

        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # logging's contract: never raise from emit
            self.handleError(record)


class _ConsoleFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if is_ours(record):
            if record.levelno >= logging.WARNING:
                return f"{record.levelname.lower()}: {message}"
            return message
        return f"{record.name}: {record.levelname} {message}"


def setup(verbosity: int = 0, log_level: str = "info") -> None:
    """Console handler on the root logger (replacing any earlier one of ours); libraries
    log at INFO so that the log file has them (the console filters)."""
    level = logging.DEBUG if log_level.lower() == "debug" else logging.INFO
    # transformers prints its "advice" (e.g. "PyTorch was not found", at import, on every
    # machine without torch) to stderr through a handler of its own, before any of ours
    # could route it; it concerns its PyTorch models, which sft_jax does not use.
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    root = logging.getLogger()
    root.setLevel(level)
    log.setLevel(logging.DEBUG)  # our details reach log.txt; the console shows INFO up
    if _state["console"] is not None:
        root.removeHandler(_state["console"])
    handler = _ConsoleHandler(sys.stderr)
    handler.setFormatter(_ConsoleFormatter())
    handler.addFilter(_ConsoleFilter(verbosity if level == logging.INFO else 2))
    handler.setLevel(level)
    root.addHandler(handler)
    _state["console"], _state["verbosity"] = handler, verbosity
    sys.unraisablehook = _log_unraisable


def log_to(workdir: str | os.PathLike) -> Path | None:
    """Appends every record from now on to `workdir/log.txt` (a second call moves it).
    A remote workdir (gs://...) logs to a local copy (`storage.local_dir`), uploaded
    whole when the process exits. Returns the local file, or None when it cannot be
    opened (the console still works)."""
    from sft_jax import storage

    root = logging.getLogger()
    if _state["file"] is not None:
        root.removeHandler(_state["file"])
        _state["file"].close()
        _state["file"] = None
    path = storage.local_dir(workdir) / LOG_FILE
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if not storage.is_local(workdir):
            remote = storage.path(workdir) / LOG_FILE
            path.write_text(remote.read_text() if remote.exists() else "")
            atexit.register(_upload, path, remote)
        handler = logging.FileHandler(path, encoding="utf-8")
    except OSError:
        return None
    handler.setFormatter(logging.Formatter(FILE_FORMAT))
    root.addHandler(handler)
    _state["file"] = handler
    log.debug("sft_jax %s", " ".join(sys.argv))
    return path


@contextlib.contextmanager
def session(workdir: str | os.PathLike) -> Iterator[None]:
    """A run started from Python (`sft_jax.train`, `sft_jax.evaluate`) shows what the
    command line shows: the console handler (installed once, unless the program set up
    logging itself) and `workdir/log.txt` for the duration of the run."""
    root = logging.getLogger()
    if _state["console"] is None and not root.handlers:
        setup()
    previous = _state["file"]
    if previous is not None:
        root.removeHandler(previous)
    _state["file"] = None
    import jax

    if jax.process_index() == 0:
        log_to(workdir)
    try:
        yield
    finally:
        if _state["file"] is not None:
            root.removeHandler(_state["file"])
            _state["file"].close()
        _state["file"] = previous
        if previous is not None:
            root.addHandler(previous)


def _upload(local: Path, remote) -> None:
    logging.shutdown()  # flushes the file handler
    with contextlib.suppress(OSError):
        remote.write_text(local.read_text())


def _log_unraisable(unraisable) -> None:
    """An exception no caller could receive (e.g. a checkpoint read's leftover callbacks
    after orbax gave up on an unreadable checkpoint) goes to the log file, not the
    console."""
    logging.getLogger("unraisable").info(
        "ignored: %s: %s", unraisable.exc_type.__name__, unraisable.exc_value,
        exc_info=(unraisable.exc_type, unraisable.exc_value, unraisable.exc_traceback))


def is_terminal() -> bool:
    return sys.stderr.isatty()


# Formatting ------------------------------------------------------------------------------


def count(n: float) -> str:
    """1234567 -> '1.23M'; small counts as they are."""
    for size, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= size:
            return f"{n / size:.3g}{suffix}"
    return f"{n:.3g}"


def duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else \
        f"{rest // 60}:{rest % 60:02d}"


def number(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) >= 1e4 or (value and abs(value) < 1e-3) \
            else f"{value:.4f}"
    return str(value)


def headline_metrics(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """The metrics a table shows: numbers, not per-class ones (`precision/fresh`) nor
    counts (`tokens`)."""
    return {k: v for k, v in metrics.items()
            if isinstance(v, int | float) and not isinstance(v, bool) and "/" not in k
            and k not in ("tokens", "final", "examples")}


def table(rows: Mapping[str, Mapping[str, Any]], first: str = "split") -> list[str]:
    """Aligned lines: a header of metric names, one row per key of `rows`."""
    names = list(dict.fromkeys(k for metrics in rows.values() for k in metrics))
    cells = [[first, *names]] + [[row, *(number(m[k]) if k in m else "-" for k in names)]
                                 for row, m in rows.items()]
    widths = [max(len(c[i]) for c in cells) for i in range(len(cells[0]))]
    return ["  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip()
            for line in cells]


# Progress --------------------------------------------------------------------------------


def progress(iterable: Iterable[T], desc: str, total: int | None = None,
             unit: str = "batch") -> Iterator[T]:
    """`iterable`, with a transient tqdm bar on a terminal (silent elsewhere)."""
    if not is_terminal():
        yield from iterable
        return
    from tqdm import tqdm

    yield from tqdm(iterable, desc=desc, total=total, unit=unit, leave=False,
                    dynamic_ncols=True, file=sys.stderr, mininterval=0.5)


class TrainProgress:
    """Training progress from `start` to `total` steps: a tqdm bar on a terminal, plain
    lines elsewhere (`update(..., logged=...)` carries the values of a logged step)."""

    def __init__(self, start: int, total: int, enabled: bool, unit: str = "examples"):
        self.start, self.total, self.unit = start, total, unit
        self.enabled = enabled and total > start
        self.bar = None
        self.started = time.perf_counter()
        self.last_plain = None
        if self.enabled and is_terminal():
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=start, unit="step", dynamic_ncols=True,
                            file=sys.stderr, mininterval=1.0, desc="train")

    def update(self, step: int, loss: float | None = None, learning_rate: float | None = None,
               rate: float | None = None) -> None:
        """One step done; `loss`, `learning_rate`, `rate` (units/s) at logged steps."""
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(1)
            if loss is not None:
                self.bar.set_postfix_str(self._values(loss, learning_rate, rate),
                                         refresh=False)
            return
        if loss is None:
            return
        now = time.perf_counter()
        last = step == self.total
        if self.last_plain is not None and now - self.last_plain < PLAIN_INTERVAL and not last:
            return
        self.last_plain = now
        done = step - self.start
        eta = (now - self.started) / done * (self.total - step) if done else 0.0
        log.info("step %d/%d  %s  eta %s", step, self.total,
                 self._values(loss, learning_rate, rate), duration(eta))

    def _values(self, loss: float, learning_rate: float | None, rate: float | None) -> str:
        out = f"loss {loss:.4f}"
        if learning_rate is not None:
            out += f"  lr {learning_rate:.3g}"
        if rate is not None:
            out += f"  {count(rate)} {self.unit}/s"
        return out

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
