"""Records from a data spec: local files, prepared tfds datasets, corpus assets.

`read_records(spec, config_key=...)` returns a list of dicts, one per example, holding the
source's columns plus `"_where"`, the place the record came from (`"path/x.jsonl:17"`,
1-based line; `"tfds:imdb_reviews:test[42]"`, index in the requested split/slice), so later
code can name the place of a missing field or a bad label in a `UserInputError`.

Spec forms (a PATH may be remote, e.g. `gs://bucket/x.jsonl`: see `sft_jax.storage`):
- `PATH.jsonl` / `PATH.json`: one JSON object per line, blank lines skipped (a `.json` file
  holding one JSON array of objects is accepted too; its records are `"x.json[i]"`).
- `PATH.csv` / `PATH.tsv`: the header row gives the field names; values are strings. CSV
  uses the `csv` module's default dialect (quotes allowed); TSV uses `QUOTE_NONE` (quotes
  are ordinary characters, as in GLUE-style files; fields cannot contain tabs).
- `tfds:NAME[/CONFIG][:VERSION]:SPLIT` (SPLIT may be a slice such as `train[:10%]`): a
  dataset already prepared in the tfds data dir (`data_dir` argument, else
  `$TFDS_DATA_DIR`, else tfds' default). Read with `as_data_source` (array_record, no
  TensorFlow needed); only a tfrecord-prepared dataset falls back to `as_dataset`, and only
  when TensorFlow is importable. Nothing is ever downloaded here.
- `ASSET:SPLIT`, ASSET a corpus in `sft_jax.assets.ASSETS` (e.g. `rotten-tomatoes:test`,
  or `mr:all`, the one pool of a cross-validation corpus): fetched into the cache if
  needed, then its `SPLIT.jsonl` is read.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from sft_jax import assets, storage  # one direction: assets/ imports nothing from data/
from sft_jax.errors import UserInputError

FILE_SUFFIXES = (".jsonl", ".json", ".csv", ".tsv")
_TFDS_SPEC = re.compile(
    r"^tfds:(?P<name>[^:\[\]]+?)(?::(?P<version>\d+\.\d+\.\d+))?:(?P<split>.+)$")


def read_records(spec: str, *, config_key: str, data_dir: str | None = None) -> list[dict]:
    """All records of `spec` as dicts with a `"_where"` key; see the module docstring.

    `config_key` (e.g. `"data.train"`) names the config entry in error messages;
    `data_dir` is the tfds data dir for `tfds:` specs.
    """
    if spec.startswith("tfds:"):
        return _read_tfds(spec, config_key=config_key, data_dir=data_dir)
    if spec.endswith(FILE_SUFFIXES):
        return _read_file(spec, config_key=config_key)
    asset_name, sep, split = spec.partition(":")
    if sep and assets.is_asset(asset_name):
        return _read_asset(asset_name, split, config_key=config_key)
    if storage.is_file(spec):
        raise UserInputError(f"{config_key}: {spec}: unsupported file type "
                             f"(use {', '.join(FILE_SUFFIXES)})")
    corpora = ", ".join(f"{n}:SPLIT" for n, a in assets.ASSETS.items() if a.kind == "corpus")
    raise UserInputError(f"{config_key}: {spec!r} is neither an existing file, a "
                         f"tfds:NAME:SPLIT spec nor a corpus asset (known: {corpora})")


# --------------------------------------------------------------------------------- files

def _read_file(path: str, *, config_key: str) -> list[dict]:
    if not storage.is_file(path):
        raise UserInputError(f"{config_key}: no such file: {path}")
    try:
        with storage.open_text(path) as f:  # local, or remote (gs://...)
            if path.endswith((".jsonl", ".json")):
                records = list(_json_lines(f, path))
            else:
                records = list(_delimited(f, path, delimiter="," if path.endswith(".csv")
                                          else "\t"))
    except UnicodeDecodeError as err:
        raise UserInputError(f"{config_key}: {path} is not UTF-8 text ({err.reason})") from None
    if not records:
        raise UserInputError(f"{config_key}: {path} has no records")
    return records


def _json_lines(f, path: str) -> Iterator[dict]:
    """One JSON object per line (blank lines skipped); or one JSON array in a `.json`."""
    for lineno, line in enumerate(f, start=1):
        if not line.strip():
            continue
        if lineno == 1 and path.endswith(".json") and line.lstrip().startswith("["):
            yield from _json_array(line + f.read(), path)
            return
        try:
            obj = json.loads(line.rstrip("\r\n"))  # an error at its end names its column
        except json.JSONDecodeError as err:
            raise UserInputError(f"{path}:{lineno}: malformed JSON: {err.msg} "
                                 f"(column {err.colno})") from None
        if not isinstance(obj, dict):
            raise UserInputError(f"{path}:{lineno}: expected a JSON object, "
                                 f"got {type(obj).__name__}")
        obj["_where"] = f"{path}:{lineno}"
        yield obj


def _json_array(text: str, path: str) -> Iterator[dict]:
    try:
        items = json.loads(text.rstrip())
    except json.JSONDecodeError as err:
        raise UserInputError(f"{path}:{err.lineno}: malformed JSON: {err.msg} "
                             f"(column {err.colno})") from None
    if not isinstance(items, list):
        raise UserInputError(f"{path}: expected a JSON array of objects")
    for i, obj in enumerate(items):
        if not isinstance(obj, dict):
            raise UserInputError(f"{path}[{i}]: expected a JSON object, "
                                 f"got {type(obj).__name__}")
        obj["_where"] = f"{path}[{i}]"
        yield obj


def _delimited(f, path: str, *, delimiter: str) -> Iterator[dict]:
    """Rows of a CSV/TSV file as dicts keyed by the header; `_where` = the row's first line."""
    quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
    reader = csv.reader(f, delimiter=delimiter, quoting=quoting, strict=True)
    header: list[str] | None = None
    start = 1  # physical line on which the next row starts
    try:
        for row in reader:
            lineno, start = start, reader.line_num + 1
            if not row:  # blank line
                continue
            if header is None:
                header = row
                dup = sorted({h for h in header if header.count(h) > 1})
                if dup:
                    raise UserInputError(f"{path}:{lineno}: duplicate column name(s) "
                                         f"{', '.join(dup)} in the header")
                continue
            if len(row) != len(header):
                raise UserInputError(f"{path}:{lineno}: expected {len(header)} columns "
                                     f"({', '.join(header)}), got {len(row)}")
            rec: dict[str, Any] = dict(zip(header, row, strict=True))
            rec["_where"] = f"{path}:{lineno}"
            yield rec
    except csv.Error as err:
        raise UserInputError(f"{path}:{reader.line_num}: malformed row: {err}") from None


# -------------------------------------------------------------------------------- assets

def _read_asset(name: str, split: str, *, config_key: str) -> list[dict]:
    asset = assets.get(name)
    if asset.kind != "corpus":
        raise UserInputError(f"{config_key}: asset {name} is a {asset.kind}, not a corpus")
    root = assets.fetch(name)
    available = sorted(p.stem for p in Path(root).glob("*.jsonl"))
    if split not in available:
        raise UserInputError(f"{config_key}: corpus asset {name} has no split {split!r} "
                             f"(has: {', '.join(available)})")
    return _read_file(str(Path(root) / f"{split}.jsonl"), config_key=config_key)


# ---------------------------------------------------------------------------------- tfds

def _read_tfds(spec: str, *, config_key: str, data_dir: str | None) -> list[dict]:
    m = _TFDS_SPEC.match(spec)
    if not m:
        raise UserInputError(f"{config_key}: {spec!r} is not of the form "
                             "tfds:NAME[/CONFIG][:VERSION]:SPLIT")
    import tensorflow_datasets as tfds  # slow import, only when needed

    name = m["name"] + (f":{m['version']}" if m["version"] else "")
    split = m["split"]
    root = data_dir or os.environ.get("TFDS_DATA_DIR") or tfds.core.constants.DATA_DIR
    try:
        builder = tfds.builder(name, data_dir=root)
    except tfds.core.registered.DatasetNotFoundError:
        raise UserInputError(f"{config_key}: unknown tfds dataset {name!r}: not registered "
                             f"and not prepared in {root}") from None
    except (ValueError, AssertionError) as err:  # e.g. an unknown config or version
        reason = str(err).splitlines()[0].rsplit('": ', 1)[-1]
        raise UserInputError(f"{config_key}: tfds dataset {name!r}: {reason}") from None
    if not builder.is_prepared():
        raise UserInputError(
            f"{config_key}: tfds dataset {name!r} is not prepared in {root}; prepare it with "
            f"`tfds build {m['name']} --data_dir={root}` (or set $TFDS_DATA_DIR to where it "
            "is prepared); nothing is downloaded at run time")
    try:
        source = builder.as_data_source(split=split)
        examples: Any = _read_all(source)
    except NotImplementedError:  # prepared in a format without random access (tfrecord)
        if importlib.util.find_spec("tensorflow") is None:
            raise UserInputError(
                f"{config_key}: tfds dataset {name!r} is prepared as "
                f"{builder.info.file_format.value}, which needs TensorFlow; rebuild it with "
                "`tfds build --file_format=array_record`") from None
        examples = tfds.as_numpy(builder.as_dataset(split=split, shuffle_files=False))
    except (ValueError, KeyError, AssertionError) as err:  # unknown split, bad slice
        raise UserInputError(f"{config_key}: tfds dataset {name!r}: bad split {split!r}: "
                             f"{str(err).splitlines()[0]}") from None
    records = []
    for i, ex in enumerate(examples):
        rec = _to_python(ex)
        rec["_where"] = f"tfds:{name}:{split}[{i}]"
        records.append(rec)
    if not records:
        raise UserInputError(f"{config_key}: {spec} has no records")
    return records


def _read_all(source, chunk: int = 1024) -> Iterator[Any]:
    """All elements of a tfds random-access data source, read `chunk` at a time."""
    for start in range(0, len(source), chunk):
        yield from source.__getitems__(range(start, min(len(source), start + chunk)))


def _to_python(value: Any) -> Any:
    """bytes → str, numpy scalars → Python scalars, lists and byte-string arrays → lists;
    numeric arrays stay numpy arrays; dicts recursively."""
    if isinstance(value, dict):
        return {k: _to_python(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_to_python(v) for v in value]
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return value
    if isinstance(value, np.ndarray):
        if value.ndim == 0:
            return _to_python(value.item())
        if value.dtype.kind in "OSU":
            return [_to_python(v) for v in value.tolist()]
        return value
    if isinstance(value, np.generic):
        return _to_python(value.item())
    return value
