"""The run's directory: checked before use, locked while a run writes to it.

`check(path)` refuses, in one line each, a `--workdir` that is a regular file, lies under
one, or cannot be written. `lock(path)` checks, creates the directory and holds
`path/.lock` (an exclusive `flock`, released by the kernel when the process ends, however
it ends) with the holder's host, pid and start time as JSON, so that a second run on the
same directory stops at once naming the holder. A lock file whose holder is gone (it
still names a host and pid because that run was killed) is taken over with a warning.

A remote workdir (`gs://...`, see `sft_jax.storage`) has no `flock`: `lock` writes the
`.lock` object with the holder's host, pid and start time and `release` deletes it. A
second run that finds it stops naming the holder, unless that holder is a pid of this
host that is gone (taken over with a warning, as locally). The lock is not atomic: two runs
starting at the same moment can both take it; and one of a run killed on another host
stays until removed by hand (the error says so). `check` of a remote path refuses only an
object where the directory should be (writability is known at the first write).

`StorageError` is a write to the workdir that failed mid-run (disk full, a directory made
read-only): an environmental fault, not bad input; the CLI prints it as one line and exits
with status 1.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import socket
import time
from pathlib import Path

from sft_jax import storage
from sft_jax.errors import UserInputError

LOCK_FILE = ".lock"

log = logging.getLogger(__name__)


class StorageError(Exception):
    """A write to the workdir failed mid-run; `str(err)` is the whole one-line message."""


# Storage faults as the OS words them; TensorStore reports a full disk its own way.
_FAULTS = {errno.ENOSPC: ("No space left", "RESOURCE_EXHAUSTED"), errno.EDQUOT: ("quota",),
           errno.EROFS: ("Read-only file system",), errno.EACCES: ("Permission denied",)}


def describe_os_error(err: BaseException) -> str:
    """`err` as a short phrase: the OS's words for its errno (e.g. "No space left on
    device"), also when a library wrapped it in its own text; else its first line."""
    for exc in (err, err.__cause__, err.__context__):
        if isinstance(exc, OSError) and exc.errno:
            return os.strerror(exc.errno)
    text = str(err)
    for code, phrases in _FAULTS.items():
        if any(phrase in text for phrase in phrases):
            return os.strerror(code)
    lines = text.strip().splitlines()
    return lines[0][:200] if lines else type(err).__name__


def check(path: str | Path) -> Path:
    """`path` as an absolute Path, if it can be a workdir: not a file, not under a file,
    writable (itself, or the nearest existing directory above it). Creates nothing.
    A remote path: only not an object (a file)."""
    if not storage.is_local(path):
        return _check_remote(storage.path(path))
    path = Path(path).absolute()
    try:
        if path.exists() and not path.is_dir():
            raise UserInputError(f"--workdir: {path} is a file, not a directory")
        existing = path
        while not existing.exists():
            existing = existing.parent
    except OSError as err:
        raise UserInputError(f"--workdir: cannot access {path} "
                             f"({describe_os_error(err)})") from None
    if not existing.is_dir():
        raise UserInputError(f"--workdir: {existing} is a file, so {path} cannot be a "
                             f"directory under it")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserInputError(f"--workdir: {existing} is not writable")
    return path


def _check_remote(path):
    try:
        if path.exists() and not path.is_dir():
            raise UserInputError(f"--workdir: {path} is a file, not a directory")
    except OSError as err:
        raise UserInputError(f"--workdir: cannot access {path} "
                             f"({describe_os_error(err)})") from None
    return path


class WorkdirLock:
    """An exclusive lock on a workdir for this process; `release()` (or the process's end)
    frees it."""

    def __init__(self, path: Path, file):
        self.path = path
        self._file = file

    def release(self) -> None:
        if self._file is None:
            return
        if not storage.is_local(self.path):  # a remote lock: `_file` is the object's path
            with contextlib.suppress(OSError):
                self._file.unlink(missing_ok=True)
            self._file = None
            return
        with contextlib.suppress(OSError):
            self._file.truncate(0)  # empty: released cleanly, nobody to name
        fcntl.flock(self._file, fcntl.LOCK_UN)
        self._file.close()
        self._file = None


def _holder(text: str) -> dict:
    try:
        holder = json.loads(text)
    except ValueError:
        return {}
    return holder if isinstance(holder, dict) else {}


def _pid_alive(pid) -> bool:
    try:
        os.kill(int(pid), 0)
    except (ProcessLookupError, ValueError, TypeError):
        return False
    except PermissionError:
        return True
    return True


def lock(path: str | Path) -> WorkdirLock:
    """Checks `path` (`check`), creates it and locks it; raises UserInputError naming the
    holder's host and pid when another run holds it."""
    path = check(path)
    lock_path = path / LOCK_FILE
    if not storage.is_local(path):
        return _lock_remote(path, lock_path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        file = open(lock_path, "a+")  # noqa: SIM115  (held open while the run lasts)
    except OSError as err:
        raise UserInputError(f"--workdir: cannot write {lock_path} "
                             f"({describe_os_error(err)})") from None
    try:
        fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        if err.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
            log.warning("%s: this filesystem has no file locks (%s); the workdir is not "
                        "locked against a second run", lock_path, os.strerror(err.errno))
            file.close()
            return WorkdirLock(path, None)
        file.seek(0)
        holder = _holder(file.read())
        file.close()
        raise UserInputError(
            f"--workdir: {path} is in use by another run (host {holder.get('host', '?')}, "
            f"pid {holder.get('pid', '?')}, since {holder.get('since', '?')}; {lock_path}); "
            f"wait for it to end or use another --workdir") from None
    file.seek(0)
    previous = _holder(file.read())
    if previous.get("pid") is not None:
        alive = previous.get("host") == socket.gethostname() and _pid_alive(previous["pid"])
        _taking_over(lock_path, previous, ", that pid now belongs to another process"
                     if alive else "")
    try:
        file.seek(0)
        file.truncate(0)
        file.write(_holder_line())
        file.flush()
    except OSError as err:
        fcntl.flock(file, fcntl.LOCK_UN)
        file.close()
        raise UserInputError(f"--workdir: cannot write {lock_path} "
                             f"({describe_os_error(err)})") from None
    return WorkdirLock(path, file)


def _holder_line() -> str:
    return json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                       "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}) + "\n"


def _taking_over(lock_path, previous: dict, note: str) -> None:
    log.warning("%s: taking over the lock of a run that ended without releasing it "
                "(host %s, pid %s%s)", lock_path, previous.get("host", "?"), previous["pid"],
                note)


def _lock_remote(path, lock_path) -> WorkdirLock:
    """The lock of a remote workdir: the `.lock` object (see the module docstring)."""
    try:
        previous = _holder(lock_path.read_text()) if lock_path.exists() else {}
        if previous.get("pid") is not None:
            if previous.get("host") != socket.gethostname() or _pid_alive(previous["pid"]):
                raise UserInputError(
                    f"--workdir: {path} is in use by another run (host "
                    f"{previous.get('host', '?')}, pid {previous['pid']}, since "
                    f"{previous.get('since', '?')}; {lock_path}); wait for it to end or use "
                    f"another --workdir (remove {lock_path} if that run is gone)")
            _taking_over(lock_path, previous, "")
        lock_path.write_text(_holder_line())
    except OSError as err:
        raise UserInputError(f"--workdir: cannot write {lock_path} "
                             f"({describe_os_error(err)})") from None
    return WorkdirLock(path, lock_path)
