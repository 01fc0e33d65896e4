"""Runs a sweep plan (`sft_jax.sweeps.Plan`): one ordinary training run per directory.

Contracts:
- Run `name` trains in `DIR/name/` as its own process,
  `python -m sft_jax.main --config=SPEC --workdir=DIR/name COMMON... RUN...`, so resume,
  checkpoints, exports and errors are the engine's own. Its stdout and stderr are appended
  to `DIR/name/sweep.log`.
- A run is done when `DIR/name/results.json` holds a JSON object; done runs are skipped.
  Any other run is (re)started, and the engine resumes it from its latest checkpoint (also
  after the sweep was SIGKILLed: a run resumes exactly from its last checkpoint).
- A run that exits non-zero is recorded as failed with its one-line error (the last
  `error: ` line of its log, else its last line) and the others go on. Exit status 130
  (Ctrl-C) of a run, or SIGINT/SIGTERM to the sweep (forwarded once to every running
  run, which saves a checkpoint and stops), stops starting runs.
- Children die with the sweep: they start with Linux `PR_SET_PDEATHSIG` = SIGKILL (and in
  their own process group, so a terminal's Ctrl-C reaches them once, through the sweep).
- `parallel=K` runs at most K at once in K slots. With `CUDA_VISIBLE_DEVICES` set, its
  list is split into K contiguous parts (K may not exceed its length); otherwise, for
  K > 1, the CPUs of `os.sched_getaffinity(0)` are split into K contiguous, disjoint
  parts (more slots than CPUs: one CPU each, shared round-robin) and each run is pinned.
- `shard=(I, N)` runs only the runs with `index % N == I`.
- `DIR/sweep.json` (see `write_status`) records the plan and every run's state. Shards
  share it: each process rewrites it under an exclusive `flock` of `DIR/.sweep.lock`,
  re-reading it and replacing only its own runs' entries (temp file + `os.replace`).
  States are informative (a SIGKILLed sweep leaves `running`); results.json is the truth.
- DIR may be remote (`gs://...`, `sft_jax.storage`): runs get `--workdir=gs://.../name`;
  each run's log is written in a local directory (`storage.local_dir`) and uploaded to
  `DIR/name/sweep.log` when the run ends; sweep.json is rewritten whole with no lock, so
  shards on several machines may overwrite each other's latest entries (results.json
  still decides what is done).
- Runs share one persistent XLA compilation cache, `DIR/xla-cache/` (for a remote DIR, in
  its local stand-in: one cache per machine), so a program that several runs compile
  alike is compiled once per sweep and machine (up to K at once under `--parallel=K`):
  runs that differ only in data or seed share every program; a learning rate, warm-up,
  weight decay or `train.steps` is baked into the train step, so such runs share only
  their initialisation and evaluation programs. A `JAX_COMPILATION_CACHE_DIR` in the
  environment is used instead (empty: no cache). JAX keys entries by program, flags and
  backend; XLA:CPU refuses an entry compiled for other CPU features and compiles afresh.
  Nothing is evicted; deleting the directory is safe.
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime
import fcntl
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sft_jax import storage
from sft_jax.errors import UserInputError
from sft_jax.sweeps import Plan, Run

STATUS = "sweep.json"
LOG = "sweep.log"
XLA_CACHE = "xla-cache"
STATES = ("done", "failed", "interrupted", "running", "pending")
_PR_SET_PDEATHSIG = 1


# sweep.json ------------------------------------------------------------------------------


def read_status(workdir: str | Path) -> dict[str, Any] | None:
    """DIR/sweep.json as a dict, None when absent; unreadable is a UserInputError."""
    path = storage.path(workdir) / STATUS
    if not path.exists():
        return None
    try:
        status = json.loads(path.read_text())
        if not isinstance(status, dict) or not isinstance(status.get("runs"), list):
            raise ValueError("not a sweep status object")
    except (OSError, ValueError) as err:
        raise UserInputError(f"{path}: unreadable sweep status ({err})") from None
    return status


def _signature(config: str, common: list[str], runs: list[tuple[str, list[str]]]) -> str:
    return json.dumps([config, common, runs])


def check_workdir(plan: Plan, workdir: str | Path) -> None:
    """A DIR that already holds another sweep (other config, common flags or runs) is
    refused; the same planned runs (even from another sweep spec) continue there."""
    status = read_status(workdir)
    if status is None:
        return
    theirs = _signature(status.get("config"), status.get("overrides"),
                        [[r.get("name"), r.get("args")] for r in status["runs"]])
    ours = _signature(plan.config, list(plan.common),
                      [[run.name, list(run.args)] for run in plan.runs])
    if theirs != ours:
        raise UserInputError(
            f"{storage.path(workdir) / STATUS}: this directory holds another sweep "
            f"({status.get('config')}, {status.get('sweep')}, {len(status['runs'])} runs); use "
            f"a new --workdir, or the same config, sweep and overrides to continue it")


def is_done(workdir: str | Path, run: Run) -> bool:
    """The run's results.json exists and holds a JSON object."""
    try:
        return isinstance(json.loads((storage.path(workdir) / run.name / "results.json"
                                      ).read_text()), dict)
    except (OSError, ValueError):
        return False


def new_record(workdir: str | Path, run: Run) -> dict[str, Any]:
    """A sweep.json entry for a run not started by this process: `done` or `pending`."""
    return {"name": run.name, "index": run.index, "overrides": run.overrides,
            "args": list(run.args), "state": "done" if is_done(workdir, run) else "pending",
            "error": None, "returncode": None, "started": None, "ended": None,
            "seconds": None, "host": None, "pid": None}


@contextlib.contextmanager
def _locked(workdir: Path) -> Iterator[None]:
    if not storage.is_local(workdir):  # no flock on an object store (see the module doc)
        yield
        return
    with open(workdir / ".sweep.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def write_status(plan: Plan, workdir: str | Path, records: dict[str, dict[str, Any]]) -> None:
    """Writes DIR/sweep.json atomically: `config` and `sweep` (the specs), `overrides` (the
    common `--config.KEY=VALUE` flags, verbatim), `updated` (ISO 8601) and `runs`, one entry
    per planned run in sweep order: `name`, `index`, `overrides` (the run's dict), `args`
    (its flags), `state` (one of STATES), `error` (one line or null), `returncode`,
    `started`, `ended` (ISO 8601), `seconds`, `host` and `pid` (of the latest attempt).
    `records` replaces the entries of this process's runs; the others keep what is on disk
    (other shards), or start as `done`/`pending` from their results.json."""
    workdir = storage.path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    with _locked(workdir):
        on_disk = {r.get("name"): r for r in (read_status(workdir) or {"runs": []})["runs"]}
        runs = [records.get(run.name) or on_disk.get(run.name) or new_record(workdir, run)
                for run in plan.runs]
        status = {"config": plan.config, "sweep": plan.sweep, "overrides": list(plan.common),
                  "updated": _now(), "runs": runs}
        if not storage.is_local(workdir):
            storage.write_text(workdir / STATUS, json.dumps(status, indent=2) + "\n")
            return
        tmp = workdir / f".{STATUS}.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(status, indent=2) + "\n")
        os.replace(tmp, workdir / STATUS)


def parse_shard(text: str) -> tuple[int, int]:
    """`I/N` with 0 <= I < N, or a UserInputError."""
    match = re.fullmatch(r"(\d+)/(\d+)", text.strip())
    if not match or not int(match[1]) < int(match[2]):
        raise UserInputError(f"--shard={text}: expected I/N with 0 <= I < N, e.g. 0/4")
    return int(match[1]), int(match[2])


# Slots and children ----------------------------------------------------------------------


@dataclass(frozen=True)
class Slot:
    """What one concurrent run gets: CPUs to pin to (None: all) and environment overrides."""

    cpus: tuple[int, ...] | None
    env: dict[str, str]

    def describe(self) -> str:
        if "CUDA_VISIBLE_DEVICES" in self.env:
            return f"CUDA devices {self.env['CUDA_VISIBLE_DEVICES']}"
        return f"cpus {','.join(map(str, self.cpus))}" if self.cpus else ""


def _parts(items: list, k: int) -> list[list]:
    return [items[i * len(items) // k:(i + 1) * len(items) // k] for i in range(k)]


def make_slots(parallel: int, cpus: list[int] | None = None,
               environ: dict[str, str] | None = None) -> list[Slot]:
    """`parallel` slots that share the machine (the rule is in the module doc)."""
    if parallel < 1:
        raise UserInputError(f"--parallel={parallel}: must be >= 1")
    environ = os.environ if environ is None else environ
    visible = [d.strip() for d in environ.get("CUDA_VISIBLE_DEVICES", "").split(",")
               if d.strip()]
    if visible:
        if parallel > len(visible):
            raise UserInputError(f"--parallel={parallel}: CUDA_VISIBLE_DEVICES lists only "
                                 f"{len(visible)} device(s)")
        return [Slot(None, {"CUDA_VISIBLE_DEVICES": ",".join(part)})
                for part in _parts(visible, parallel)]
    if cpus is None and parallel > 1 and hasattr(os, "sched_getaffinity"):
        cpus = sorted(os.sched_getaffinity(0))
    if parallel == 1 or not cpus:
        return [Slot(None, {}) for _ in range(parallel)]
    if parallel > len(cpus):
        return [Slot((cpus[i % len(cpus)],), {}) for i in range(parallel)]
    return [Slot(tuple(part), {}) for part in _parts(list(cpus), parallel)]


def _child_setup(cpus: tuple[int, ...] | None, parent: int) -> Callable[[], None]:
    """Runs in the child between fork and exec: die with the parent, pin the CPUs."""
    prctl = ctypes.CDLL(None, use_errno=True).prctl if sys.platform == "linux" else None

    def setup() -> None:
        if prctl is not None:
            prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
            if os.getppid() != parent:  # the sweep died before prctl took effect
                os._exit(137)
        if cpus and hasattr(os, "sched_setaffinity"):
            os.sched_setaffinity(0, cpus)

    return setup


def compilation_cache_env(workdir: str | Path,
                          environ: dict[str, str] | None = None) -> dict[str, str]:
    """The environment that points a run at the sweep's compilation cache (module doc):
    {} when `environ` (default: os.environ) sets JAX_COMPILATION_CACHE_DIR, even empty."""
    environ = os.environ if environ is None else environ
    if "JAX_COMPILATION_CACHE_DIR" in environ:
        return {}
    return {"JAX_COMPILATION_CACHE_DIR": str(storage.local_dir(workdir) / XLA_CACHE)}


def command(plan: Plan, workdir: str | Path, run: Run) -> list[str]:
    """The training command of `run`."""
    return [sys.executable, "-m", "sft_jax.main", f"--config={plan.config}",
            f"--workdir={storage.path(workdir) / run.name}", *plan.common, *run.args]


def error_line(log: Path, offset: int) -> str:
    """The one-line error of the attempt logged from `offset`: its last `error: ` or
    `interrupted: ` line (prefix dropped), else its last non-empty line."""
    with open(log, "rb") as f:
        f.seek(max(offset, f.seek(0, os.SEEK_END) - 65536))
        text = f.read().decode(errors="replace")
    lines = [line.strip() for line in text.replace("\r", "\n").splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith(("error: ", "interrupted: "))]
    if errors:
        return errors[-1].split(": ", 1)[1]
    return lines[-1] if lines else ""


def _now() -> str:
    return datetime.datetime.now().astimezone().isoformat(timespec="seconds")


# The loop --------------------------------------------------------------------------------


@dataclass
class _Active:
    run: Run
    slot: int
    proc: subprocess.Popen
    log: Path
    offset: int
    start: float


class _StopSignal:
    """SIGINT/SIGTERM to the sweep: stop starting runs and forward the signal once to every
    running child (each saves a checkpoint and exits 130); a second one is forwarded too."""

    def __init__(self, active: dict[int, _Active]):
        self.requested = False
        self.active = active
        self._previous: dict[int, Any] = {}

    def _handler(self, signum, frame) -> None:
        self.requested = True
        for child in self.active.values():
            with contextlib.suppress(ProcessLookupError):
                child.proc.send_signal(signum)

    def __enter__(self) -> _StopSignal:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError):  # not the main thread
                self._previous[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)


def run_sweep(plan: Plan, workdir: str | Path, *, parallel: int = 1,
              shard: tuple[int, int] = (0, 1), echo: Callable[[str], None] = print,
              poll_s: float = 0.2) -> dict[str, dict[str, Any]]:
    """Runs this shard's runs of `plan` in `DIR/<name>/` (see the module doc), at most
    `parallel` at once; returns their sweep.json entries by name. A run is `interrupted`
    when it or the sweep was stopped; `pending` ones were never started."""
    workdir = storage.path(workdir)
    slots = make_slots(parallel)
    index, count = shard
    mine = [run for run in plan.runs if run.index % count == index]
    total = len(plan.runs)
    records = {run.name: new_record(workdir, run) for run in mine}
    write_status(plan, workdir, records)
    queue = []
    for run in mine:
        if records[run.name]["state"] == "done":
            echo(f"[{run.index + 1}/{total}] {run.name}: already done")
        else:
            queue.append(run)
    active: dict[int, _Active] = {}
    with _StopSignal(active) as stop:
        while (queue and not stop.requested) or active:
            for slot in range(len(slots)):
                if slot not in active and queue and not stop.requested:
                    active[slot] = _start(plan, workdir, queue.pop(0), slot, slots[slot],
                                          records)
                    write_status(plan, workdir, records)
                    where = slots[slot].describe()
                    echo(f"[{active[slot].run.index + 1}/{total}] {active[slot].run.name}: "
                         f"started" + (f" ({where})" if where else ""))
            time.sleep(poll_s)
            for slot, child in list(active.items()):
                if child.proc.poll() is None:
                    continue
                del active[slot]
                record = _finish(workdir, child, records)
                stop.requested |= record["state"] == "interrupted"
                write_status(plan, workdir, records)
                echo(f"[{child.run.index + 1}/{total}] {child.run.name}: "
                     f"{_outcome(record, workdir / child.run.name)}")
    return records


def _start(plan: Plan, workdir: Path, run: Run, index: int, slot: Slot,
           records: dict[str, dict[str, Any]]) -> _Active:
    rundir = workdir / run.name
    rundir.mkdir(parents=True, exist_ok=True)
    log = storage.local_dir(rundir) / LOG  # a remote rundir's: uploaded by `_finish`
    log.parent.mkdir(parents=True, exist_ok=True)
    cmd = command(plan, workdir, run)
    with open(log, "ab") as out:
        out.write(f"\n=== sweep: {_now()} start {shlex.join(cmd)}\n".encode())
        out.flush()
        offset = out.tell()
        env = {**os.environ, **compilation_cache_env(workdir), **slot.env,
               "PYTHONUNBUFFERED": "1"}
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=out, env=env,
                                process_group=0,
                                preexec_fn=_child_setup(slot.cpus, os.getpid()))
    records[run.name].update(state="running", error=None, returncode=None, started=_now(),
                             ended=None, seconds=None, host=socket.gethostname(), pid=proc.pid)
    return _Active(run, index, proc, log, offset, time.monotonic())


def _finish(workdir: Path, child: _Active, records: dict[str, dict[str, Any]]
            ) -> dict[str, Any]:
    code = child.proc.returncode
    record = records[child.run.name]
    if not storage.is_local(workdir):
        (workdir / child.run.name / LOG).write_bytes(child.log.read_bytes())
    record.update(returncode=code, ended=_now(),
                  seconds=round(time.monotonic() - child.start, 1))
    if code == 0 and is_done(workdir, child.run):
        record.update(state="done", error=None)
    elif code == 130:
        record.update(state="interrupted", error=error_line(child.log, child.offset))
    else:
        line = error_line(child.log, child.offset)
        if code < 0:
            line = f"killed by {signal.Signals(-code).name}"
        elif code == 0:
            line = "exited 0 without writing results.json"
        record.update(state="failed", error=line)
    return record


def duration(seconds: float) -> str:
    """`13s`, `2m13s`, `1h02m`."""
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def headline(results: dict[str, Any]) -> str:
    """`test accuracy 0.8300` from a results.json: the test split (else the first), its
    accuracy (else its first float metric other than loss, else loss)."""
    splits = [s for s in results if isinstance(results[s], dict) and s not in ("std",)]
    if not splits:
        return ""
    split = "test" if "test" in splits else splits[0]
    floats = {k: v for k, v in results[split].items() if isinstance(v, float)}
    key = "accuracy" if "accuracy" in floats else next(
        (k for k in floats if k != "loss"), "loss" if "loss" in floats else None)
    return f"{split} {key} {floats[key]:.4f}" if key else ""


def _outcome(record: dict[str, Any], rundir: Path) -> str:
    took = duration(record["seconds"] or 0)
    state = record["state"]
    if state == "done":
        line = headline(json.loads((rundir / "results.json").read_text()))
        return f"done in {took}" + (f", {line}" if line else "")
    return f"{state} (exit {record['returncode']}) after {took}: {record['error']}"


def summary(records: dict[str, dict[str, Any]]) -> str:
    """`6 runs: 5 done, 1 failed`."""
    counts = {state: 0 for state in STATES}
    for record in records.values():
        counts[record["state"]] += 1
    parts = [f"{n} {state}" for state, n in counts.items() if n]
    return f"{len(records)} run{'s' * (len(records) != 1)}: {', '.join(parts)}"
