"""Where files live: local paths, or cloud storage (`gs://`, `s3://`, `az://`) through
`etils.epath`. The only place that decides local vs remote.

`path(p)` is a `pathlib.Path` for a local path (behaviour exactly as with pathlib) and an
`epath.Path` for a remote one (the same API: `/`, `open`, `read_text`, `write_text`,
`exists`, `iterdir`, `mkdir`, ...); orbax takes either. What remote storage cannot do
natively is done here:

- `write_text(p, text)`: whole or absent. Local: written to `<p>.tmp`, then renamed over
  `p`; remote: one object write (already atomic).
- `open_text(p)`: a text file for reading (UTF-8, a BOM dropped, newlines untouched).
- `AppendLines(p)`: a file that grows by lines (metrics.jsonl). Local: appended to; remote
  (objects cannot be appended to): the existing lines are read once at the start and the
  whole object is rewritten at each append.
- `local_copy(p)`: a remote directory (a model directory: transformers and safetensors
  read local files only) copied once into `local_dir(p)` =
  `cache_dir()/remote/<hash of p>/<name>`, then reused; a local one as is. Delete that
  directory to copy the remote one again.
- `staged_dir(p)`: a local directory to write a directory's files into (export/: safetensors
  and tokenizers write local files only); for a remote `p`, a temporary one uploaded to
  `p` when the block ends without error.
- `tensorboard_writer(logdir)`: a tensorboardX SummaryWriter; event files under a remote
  logdir go through epath (tensorboardX's own gs:// writer needs google-cloud-storage),
  rewritten whole at each flush.

The workdir lock on remote storage (no flock there) is `sft_jax.workdir`'s.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from etils import epath

REMOTE_SCHEMES = ("gs", "s3", "az")
_PREFIXES = tuple(f"{s}://" for s in REMOTE_SCHEMES)

AnyPath = Path | epath.Path


def is_local(p: str | os.PathLike) -> bool:
    """Whether `p` is a local path (not `gs://`, `s3://`, `az://`)."""
    return not os.fspath(p).startswith(_PREFIXES)


def path(p: str | os.PathLike) -> AnyPath:
    """`p` as a `pathlib.Path` (local) or an `epath.Path` (remote)."""
    return Path(p) if is_local(p) else epath.Path(p)


def absolute(p: str | os.PathLike) -> AnyPath:
    """`path(p)`, made absolute when local (a remote path is absolute already)."""
    return Path(p).absolute() if is_local(p) else epath.Path(p)


def is_file(p: str | os.PathLike) -> bool:
    """Whether `p` is an existing file (`os.path.isfile` for a local path)."""
    return os.path.isfile(p) if is_local(p) else epath.Path(p).is_file()


def write_text(p: str | os.PathLike, text: str) -> None:
    """`p` holds `text`, whole or not at all (its directory must exist)."""
    p = path(p)
    if not is_local(p):
        p.write_text(text)
        return
    partial = p.with_name(p.name + ".tmp")
    partial.write_text(text)
    partial.replace(p)


def open_text(p: str | os.PathLike) -> IO[str]:
    """`p` opened for reading as UTF-8 text (a leading BOM dropped, newlines as written)."""
    if is_local(p):
        return open(p, encoding="utf-8-sig", newline="")
    return io.StringIO(epath.Path(p).read_bytes().decode("utf-8-sig"), newline="")


class AppendLines:
    """A file that grows by whole lines (see the module docstring for remote files)."""

    def __init__(self, p: str | os.PathLike):
        self.path = path(p)
        self._text: str | None = None  # a remote file's whole content
        if not is_local(self.path):
            self._text = self.path.read_text() if self.path.exists() else ""

    def append(self, line: str) -> None:
        """Adds `line` (with its newline) at the end."""
        if self._text is None:
            with self.path.open("a") as f:
                f.write(line)
            return
        self._text += line
        self.path.write_text(self._text)


def _copy_tree(src: AnyPath, dst: AnyPath) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    for child in src.iterdir():
        if child.is_dir():
            _copy_tree(child, dst / child.name)
            continue
        with child.open("rb") as fin, (dst / child.name).open("wb") as fout:
            shutil.copyfileobj(fin, fout)


def local_dir(p: str | os.PathLike) -> Path:
    """`p` itself when local; for a remote `p`, the local directory that stands for it:
    `cache_dir()/remote/<hash of p>/<name>` (not created here)."""
    if is_local(p):
        return Path(p)
    from sft_jax.assets.base import cache_dir

    remote = epath.Path(p)
    key = hashlib.sha256(str(remote).encode()).hexdigest()[:16]
    return cache_dir() / "remote" / key / remote.name


def local_copy(p: str | os.PathLike) -> Path:
    """A local directory with the files of directory `p` (see the module docstring)."""
    dest = local_dir(p)
    if not is_local(p) and not dest.is_dir():
        remote = epath.Path(p)
        dest.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
            _copy_tree(remote, Path(tmp) / remote.name)
            try:
                (Path(tmp) / remote.name).rename(dest)
            except OSError:
                if not dest.is_dir():  # else another process copied it first
                    raise
    return dest


@contextlib.contextmanager
def staged_dir(p: str | os.PathLike) -> Iterator[Path]:
    """A local directory whose files end up in directory `p` (see the module docstring)."""
    if is_local(p):
        yield Path(p)
        return
    with tempfile.TemporaryDirectory(prefix="sft_jax-") as tmp:
        yield Path(tmp)
        _copy_tree(Path(tmp), epath.Path(p))


class _EpathEventFile:
    """An event file written through epath: buffered, rewritten whole at each flush."""

    def __init__(self, p: str):
        self.path = epath.Path(p)
        self.buffer = io.BytesIO()

    def write(self, data: bytes) -> None:
        self.buffer.write(data)

    def flush(self) -> None:
        self.path.write_bytes(self.buffer.getvalue())

    def close(self) -> None:
        self.flush()


class _EpathEventFiles:
    """tensorboardX's writer factory for a remote scheme."""

    def open(self, p: str) -> _EpathEventFile:
        return _EpathEventFile(p)

    def directory_check(self, p: str) -> None:
        epath.Path(p).mkdir(parents=True, exist_ok=True)


def tensorboard_writer(logdir: str | os.PathLike) -> Any:
    """A tensorboardX `SummaryWriter` writing to `logdir` (local or remote)."""
    from tensorboardX import SummaryWriter, record_writer

    if not is_local(logdir):
        for scheme in REMOTE_SCHEMES:
            record_writer.register_writer_factory(scheme, _EpathEventFiles())
    return SummaryWriter(os.fspath(logdir))
