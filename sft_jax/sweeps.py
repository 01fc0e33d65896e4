"""Hyper-parameter and seed sweeps: sweep files, run names, validation, the plan.

A sweep file is a Python file with `get_sweep(arg=None) -> list[dict]`, one dict of config
overrides per run (`{"optim.learning_rate": 1e-4, "seed": 2}`); `FILE:arg` passes `arg`.
`product`, `seeds` and `folds` build the usual grids:

    from sft_jax import sweeps

    def get_sweep(arg=None):
        return sweeps.product({"optim.learning_rate": [5e-5, 1e-4]}, sweeps.seeds(3))

Contracts:
- `make_plan` checks every run's overrides with the parser of `python -m sft_jax.main`
  (a fresh absl `FlagValues` and `config_flags.DEFINE_config_file`, the sweep's common
  `--config.KEY=VALUE` flags first, the run's after) before anything trains: an unknown
  key or a value that does not read back as itself is a `UserInputError` naming the run.
- A run's overrides become `--config.KEY=VALUE` flags that the CLI reads back as the same
  value (`render_value`); common overrides are passed through verbatim.
- Run names (`run_names`) are readable, filesystem-safe and unique within the sweep.
- Running the plan is `sft_jax.sweep_runner`; the CLI is `python -m sft_jax.sweep`.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.machinery
import importlib.util
import json
import re
import sys
import traceback
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ml_collections
from absl import flags
from ml_collections import config_flags

from sft_jax import runs as runs_lib
from sft_jax.errors import UserInputError, flag_error

Overrides = dict[str, Any]
Axis = Mapping[str, Sequence[Any]] | Sequence[Mapping[str, Any]]

_KEY = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")
_UNSAFE = re.compile(r"[^A-Za-z0-9._=,+-]")
_MAX_NAME = 120
# What absl and ml_collections raise for a bad flag, an unknown key, a bad value, or a
# config file that failed to load (as in sft_jax.main).
_PARSE_ERRORS = (flags.Error, UserInputError, AttributeError, KeyError, TypeError, ValueError,
                 OSError)


# Building sweeps -------------------------------------------------------------------------


def product(*axes: Axis) -> list[Overrides]:
    """The cartesian product of `axes`, the first axis outermost.

    An axis is a dict `{key: [values...]}` (one axis per key, in the dict's order) or a list
    of override dicts (e.g. `seeds(3)`). Two axes setting the same key is a ValueError.
    `product({"optim.learning_rate": [5e-5, 1e-4]}, seeds(3))` is 6 runs.
    """
    grid: list[Overrides] = [{}]
    for axis in _expand(axes):
        grid = [_merge(left, right) for left in grid for right in axis]
    return grid


def zip_axes(*axes: Axis) -> list[Overrides]:
    """Runs that take the i-th entry of every axis (axes as in `product`, all one length):
    `zip_axes({"train.batch_size": [16, 32], "optim.learning_rate": [1e-4, 2e-4]})` is 2 runs."""
    expanded = list(_expand(axes))
    if len({len(axis) for axis in expanded}) > 1:
        raise ValueError(f"zip_axes: axes of different lengths {[len(a) for a in expanded]}")
    runs = []
    for entries in zip(*expanded, strict=True):
        run: Overrides = {}
        for entry in entries:
            run = _merge(run, entry)
        runs.append(run)
    return runs


def seeds(n: int, start: int = 0) -> list[Overrides]:
    """`[{"seed": start}, ..., {"seed": start + n - 1}]`."""
    return [{"seed": start + i} for i in range(n)]


def folds(k: int) -> list[Overrides]:
    """K-fold cross-validation of the pool `data.train`: run i holds out fold i,
    `{"data.folds": k, "data.fold": i, "data.validation": "", "data.test": ""}` for i in
    0..k-1 (validation and test come from the pool, so the config's own are cleared). The
    report groups the k runs of a setting as one, over folds."""
    return [{"data.folds": k, "data.fold": i, "data.validation": "", "data.test": ""}
            for i in range(k)]


def _expand(axes: Sequence[Axis]) -> Iterator[list[Overrides]]:
    for axis in axes:
        if isinstance(axis, Mapping):
            for key, values in axis.items():
                if isinstance(values, str | bytes) or not isinstance(values, Sequence):
                    raise ValueError(f"the values of {key!r} must be a list, got {values!r}")
                yield [{key: value} for value in values]
        else:
            yield [dict(entry) for entry in axis]


def _merge(left: Overrides, right: Mapping[str, Any]) -> Overrides:
    shared = left.keys() & right.keys()
    if shared:
        raise ValueError(f"key {sorted(shared)[0]!r} is set by two axes")
    return {**left, **right}


# Sweep files -----------------------------------------------------------------------------


def load_sweep(spec: str) -> list[Overrides]:
    """Runs `get_sweep(arg)` of the sweep file `FILE[:arg]` (arg None without `:`).

    The result must be a non-empty list of dicts with config keys (`optim.learning_rate`)
    and str/int/float/bool/tuple values, without duplicates. Anything else (no such file,
    a syntax error, no get_sweep, an exception inside it) is a one-line UserInputError
    naming the file (and the line where there is one). While it runs, the file's import
    root (`import_root`) is on `sys.path`, so a sweep file inside a package imports that
    package whatever the current directory.
    """
    path_text, sep, arg = spec.partition(":")
    path = Path(path_text)
    if not path.is_file():
        raise UserInputError(f"--sweep: no such file {path_text!r}")
    name = "sft_jax_sweep_" + hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:12]
    loader = importlib.machinery.SourceFileLoader(name, str(path))
    module = importlib.util.module_from_spec(importlib.util.spec_from_loader(name, loader))
    with _importable(import_root(path)):
        try:
            loader.exec_module(module)
        except SyntaxError as err:
            raise UserInputError(f"{path_text}:{err.lineno}: syntax error: {err.msg}") from None
        except Exception as err:
            raise UserInputError(f"{_where(err, path)}: loading the sweep file raised "
                                 f"{type(err).__name__}: {err}") from None
        get_sweep = getattr(module, "get_sweep", None)
        if not callable(get_sweep):
            raise UserInputError(f"{path_text}: no get_sweep(arg) function")
        try:
            runs = get_sweep(arg if sep else None)
        except Exception as err:
            raise UserInputError(f"{_where(err, path)}: get_sweep raised "
                                 f"{type(err).__name__}: {err}") from None
    return check_runs(runs, path_text)


def import_root(path: Path) -> Path:
    """The directory that imports of the file's own packages resolve from: the nearest
    parent of its directory that is not a package (holds no `__init__.py`)."""
    directory = path.resolve().parent
    while (directory / "__init__.py").is_file():
        directory = directory.parent
    return directory


@contextlib.contextmanager
def _importable(directory: Path) -> Iterator[None]:
    """`directory` first on `sys.path` for the duration (unless it is there already)."""
    entry = str(directory)
    added = entry not in sys.path
    if added:
        sys.path.insert(0, entry)
    try:
        yield
    finally:
        if added and entry in sys.path:
            sys.path.remove(entry)


def _where(err: Exception, path: Path) -> str:
    """`FILE:LINE` of the innermost frame of the traceback inside the sweep file."""
    line = None
    for frame in traceback.extract_tb(err.__traceback__):
        if Path(frame.filename).resolve() == path.resolve():
            line = frame.lineno
    return f"{path}:{line}" if line else str(path)


def check_runs(runs: Any, where: str) -> list[Overrides]:
    """`runs` as a list of plain dicts, or a UserInputError naming `where` and the run."""
    if not isinstance(runs, list | tuple):
        raise UserInputError(f"{where}: get_sweep returned {type(runs).__name__}, not a list "
                             f"of override dicts")
    if not runs:
        raise UserInputError(f"{where}: get_sweep returned an empty list")
    seen: dict[str, int] = {}
    checked = []
    for index, run in enumerate(runs):
        if not isinstance(run, Mapping):
            raise UserInputError(f"{where}: run {index} is {type(run).__name__} {run!r:.60}, "
                                 f"not a dict of overrides")
        for key, value in run.items():
            if not isinstance(key, str) or not _KEY.fullmatch(key):
                raise UserInputError(f"{where}: run {index}: {key!r} is not a config key like "
                                     f"'optim.learning_rate'")
            try:
                render_value(value)
            except TypeError as err:
                raise UserInputError(f"{where}: run {index}: {key}: {err}") from None
        canonical = json.dumps(_plain(dict(run)), sort_keys=True)
        if canonical in seen:
            raise UserInputError(f"{where}: runs {seen[canonical]} and {index} are the same "
                                 f"({dict(run)})")
        seen[canonical] = index
        checked.append(dict(run))
    return checked


# Values and names ------------------------------------------------------------------------


def render_value(value: Any) -> str:
    """The `--config.KEY=` text that the CLI parses back to `value`: str as-is, bool
    `True`/`False`, int, float `repr`, list/tuple as a tuple literal."""
    if isinstance(value, bool | int | str):
        return str(value)
    if isinstance(value, float):
        return repr(float(value))
    if isinstance(value, list | tuple):
        return repr(_plain(value))
    raise TypeError(f"{value!r} is not a str, int, float, bool, list or tuple")


def _plain(value: Any) -> Any:
    """Lists as tuples, recursively (how a locked config stores sequences)."""
    if isinstance(value, list | tuple):
        return tuple(_plain(v) for v in value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if value is None or isinstance(value, bool | int | float | str):
        return value
    raise TypeError(f"{value!r} is not a str, int, float, bool, list or tuple")


def run_name(overrides: Mapping[str, Any], keys: Sequence[str] | None = None) -> str:
    """`key=value` pairs of `keys` (default: all of `overrides`), comma-joined in the order
    of `keys`; keys missing from `overrides` are left out, none at all gives `default`.

    A key shows as its last component (`learning_rate`) unless another of `keys` shares it,
    then in full (`train.batch_size`); a `label` shows as its value. Floats are `repr`
    (`5e-05`), sequences `a+b`; any character outside `[A-Za-z0-9._=,+-]` becomes `_`;
    names over 120 characters are cut and end with a hash of the whole.
    """
    keys = list(overrides) if keys is None else list(keys)
    last = [key.rsplit(".", 1)[-1] for key in keys]
    labels = {key: key if last.count(short) > 1 else short for key, short in zip(keys, last,
                                                                                 strict=True)}
    parts = [_name_value(overrides[key]) if key == runs_lib.LABEL
             else f"{labels[key]}={_name_value(overrides[key])}"
             for key in keys if key in overrides]
    name = _UNSAFE.sub("_", ",".join(parts)) or "default"
    if len(name) > _MAX_NAME:
        digest = hashlib.sha1(name.encode()).hexdigest()[:10]
        name = f"{name[:_MAX_NAME - 11]}-{digest}"
    return name


def _name_value(value: Any) -> str:
    if isinstance(value, list | tuple):
        return "+".join(_name_value(v) for v in value)
    return repr(float(value)) if isinstance(value, float) else str(value)


def run_names(runs: Sequence[Mapping[str, Any]]) -> list[str]:
    """One name per run (`run_name`) from the keys whose values differ between runs (a key
    set in some runs only counts as differing), in order of first appearance; a sweep of
    one run names all its keys. A `label` stands for the keys it determines
    (`runs.shown_keys`). Two runs with one name are a UserInputError."""
    keys: list[str] = []
    for run in runs:
        keys += [key for key in run if key not in keys]
    if len(runs) > 1:
        keys = [key for key in keys if len({_key_value(run, key) for run in runs}) > 1]
        keys = runs_lib.shown_keys([dict(run) for run in runs], keys)
    names = [run_name(run, keys) for run in runs]
    first: dict[str, int] = {}
    for index, name in enumerate(names):
        if name in first:
            raise UserInputError(f"runs {first[name]} and {index} of the sweep are both named "
                                 f"{name!r}; make their overrides differ in a readable way")
        first[name] = index
    return names


def _key_value(run: Mapping[str, Any], key: str) -> str:
    return json.dumps(_plain(run[key])) if key in run else "<absent>"


# Validation and the plan -----------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    """One planned run: its place in the sweep, its directory name, its overrides and the
    `--config.KEY=VALUE` flags they become."""

    index: int
    name: str
    overrides: Overrides
    args: tuple[str, ...]


@dataclass(frozen=True)
class Plan:
    """A validated sweep: the task config spec, the sweep spec, the common flags (verbatim)
    and the runs in order."""

    config: str
    sweep: str
    common: tuple[str, ...]
    runs: tuple[Run, ...]


def parse_config(config_spec: str, args: Sequence[str]) -> ml_collections.ConfigDict:
    """The config `python -m sft_jax.main --config=SPEC *args` would train, parsed the same
    way (raises what absl and ml_collections raise)."""
    argv = ["sweep", f"--config={config_spec}", *args]
    values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, flag_values=values, lock_config=True,
                                    sys_argv=argv)
    values(argv)
    config = values.config
    if config is None:
        raise UserInputError("--config is required, e.g. --config=configs/classification.py")
    config.task  # noqa: B018  (a config file that failed to load raises here)
    return config


def check_common(config_spec: str, common: Sequence[str]) -> None:
    """The config spec and the common `--config.KEY=VALUE` flags parse, or UserInputError."""
    try:
        parse_config(config_spec, common)
    except OSError as err:
        raise UserInputError(f"--config: {' '.join(str(err).split())}") from None
    except _PARSE_ERRORS as err:
        raise UserInputError(flag_error(err, ["sweep", *common])) from None


def check_run(config_spec: str, common: Sequence[str], run: Run) -> None:
    """The run's flags parse after the common ones and read back as its own values."""
    try:
        config = parse_config(config_spec, [*common, *run.args])
    except _PARSE_ERRORS as err:
        raise UserInputError(f"sweep run {run.name!r}: {flag_error(err, ['sweep', *run.args])}"
                             ) from None
    for key, value in run.overrides.items():
        got = config
        for part in key.split("."):
            got = got[part]
        if isinstance(got, ml_collections.ConfigDict) or _plain(value) != _plain(got):
            raise UserInputError(f"sweep run {run.name!r}: --config.{key}: {value!r} reads back "
                                 f"as {got!r}; give a {type(got).__name__}")


def make_plan(config_spec: str, sweep_spec: str, common: Iterable[str] = ()) -> Plan:
    """Loads the sweep file, names the runs and validates every one (see module doc)."""
    common = tuple(common)
    check_common(config_spec, common)
    overrides = load_sweep(sweep_spec)
    names = run_names(overrides)
    runs = tuple(
        Run(index, name, run, tuple(f"--config.{k}={render_value(v)}" for k, v in run.items()))
        for index, (name, run) in enumerate(zip(names, overrides, strict=True)))
    for run in runs:
        check_run(config_spec, common, run)
    return Plan(config_spec, sweep_spec, common, runs)
