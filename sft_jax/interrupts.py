"""Ctrl-C and SIGTERM during training: the first asks the loop to stop at a step boundary
(it saves a checkpoint and raises `StopRequested`), a second aborts at once
(`KeyboardInterrupt`)."""

from __future__ import annotations

import contextlib
import logging
import signal

log = logging.getLogger(__name__)


class StopRequested(Exception):
    """Ctrl-C (SIGINT) or SIGTERM arrived; the loop saved a checkpoint at a step boundary."""


class GracefulStop:
    """First SIGINT/SIGTERM sets a flag the loop checks between steps; a second one raises
    KeyboardInterrupt (an abort: the step and any save in flight are abandoned)."""

    def __init__(self):
        self.requested = False
        self._previous = {}

    def _handler(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        log.warning("Stop requested: saving a checkpoint at the end of this step.")

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError):  # not the main thread (e.g. a notebook)
                self._previous[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc):
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
