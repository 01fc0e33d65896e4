"""Tests for sft_jax.data.sources: files, a real prepared tfds dataset, corpus assets."""

import numpy as np
import pytest
import tensorflow_datasets as tfds

from sft_jax.data.sources import read_records
from sft_jax.errors import UserInputError

KEY = "data.train"


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def read(spec, **kw):
    return read_records(spec, config_key=KEY, **kw)


# --------------------------------------------------------------------------------- JSONL

def test_jsonl(tmp_path):
    p = write(tmp_path, "a.jsonl", '{"text": "hi", "label": 1}\n\n{"text": "yo", "label": 0}\n')
    assert read(p) == [{"text": "hi", "label": 1, "_where": f"{p}:1"},
                       {"text": "yo", "label": 0, "_where": f"{p}:3"}]


def test_json_lines_and_json_array(tmp_path):
    p = write(tmp_path, "a.json", '{"x": 1}\n{"x": 2}\n')
    assert [r["_where"] for r in read(p)] == [f"{p}:1", f"{p}:2"]
    q = write(tmp_path, "b.json", '[{"x": 1},\n {"x": 2}]\n')
    assert read(q) == [{"x": 1, "_where": f"{q}[0]"}, {"x": 2, "_where": f"{q}[1]"}]


def test_utf8_bom_is_accepted(tmp_path):
    p = tmp_path / "bom.jsonl"
    p.write_bytes(b'\xef\xbb\xbf{"text": "caf\xc3\xa9"}\n')
    assert read(str(p))[0]["text"] == "café"


def test_jsonl_lines_end_at_newline_only(tmp_path):
    """Raw U+2028 / U+0085 (legal in JSON strings, written by ensure_ascii=False) and CRLF."""
    p = write(tmp_path, "u.jsonl", '{"t": "a\u2028b\x85c"}\r\n{"t": "d"}\n')
    assert [r["t"] for r in read(p)] == ["a\u2028b\x85c", "d"]


@pytest.mark.parametrize("text,match", [
    ('{"a": 1}\n{"a": 2}\n\n{"a": \n', r":4: malformed JSON: Expecting value"),
    ('{"a": 1}\n[1, 2]\n', r":2: expected a JSON object, got list"),
])
def test_jsonl_errors_name_the_line(tmp_path, text, match):
    p = write(tmp_path, "bad.jsonl", text)
    with pytest.raises(UserInputError, match=f"^{p}{match}"):
        read(p)


def test_missing_empty_and_non_utf8_files(tmp_path):
    with pytest.raises(UserInputError, match=rf"^data\.train: no such file: {tmp_path}/x\.jsonl$"):
        read(str(tmp_path / "x.jsonl"))
    p = write(tmp_path, "empty.jsonl", "\n  \n")
    with pytest.raises(UserInputError, match=rf"^data\.train: {p} has no records$"):
        read(p)
    q = write(tmp_path, "header_only.csv", "text,label\n")
    with pytest.raises(UserInputError, match="has no records"):
        read(q)
    r = tmp_path / "latin1.jsonl"
    r.write_bytes(b'{"text": "caf\xe9"}\n')
    with pytest.raises(UserInputError, match="is not UTF-8 text"):
        read(str(r))


# ------------------------------------------------------------------------------ CSV/TSV

def test_csv_with_quoted_newline_reports_the_row_start(tmp_path):
    p = write(tmp_path, "a.csv", 'text,label\n"one, two",1\n\n"multi\nline",0\nlast,1\n')
    recs = read(p)
    assert [r["text"] for r in recs] == ["one, two", "multi\nline", "last"]
    assert [r["label"] for r in recs] == ["1", "0", "1"]
    assert [r["_where"] for r in recs] == [f"{p}:2", f"{p}:4", f"{p}:6"]


def test_tsv_keeps_quotes(tmp_path):
    p = write(tmp_path, "a.tsv", 'sentence\tlabel\n"great" fun\t1\nmeh\t0\n')
    assert read(p) == [{"sentence": '"great" fun', "label": "1", "_where": f"{p}:2"},
                       {"sentence": "meh", "label": "0", "_where": f"{p}:3"}]


def test_csv_wrong_column_count_names_its_line(tmp_path):
    p = write(tmp_path, "a.csv", "text,label\nok,1\nbad\n")
    with pytest.raises(UserInputError,
                       match=rf"^{p}:3: expected 2 columns \(text, label\), got 1$"):
        read(p)
    q = write(tmp_path, "b.tsv", "a\tb\n1\t2\t3\n")
    with pytest.raises(UserInputError, match=rf"^{q}:2: expected 2 columns"):
        read(q)


def test_csv_duplicate_header(tmp_path):
    p = write(tmp_path, "a.csv", "text,text\na,b\n")
    with pytest.raises(UserInputError, match=rf"^{p}:1: duplicate column name"):
        read(p)


# ---------------------------------------------------------------------------- bad specs

def test_unknown_spec_lists_the_choices(tmp_path):
    with pytest.raises(UserInputError, match=r"^data\.train: 'nope' is neither an existing "
                       r"file, a tfds:NAME:SPLIT spec nor a corpus asset \(known: .*"
                       r"rotten-tomatoes:SPLIT"):
        read("nope")
    p = write(tmp_path, "a.txt", "hello\n")
    with pytest.raises(UserInputError, match="unsupported file type"):
        read(p)
    with pytest.raises(UserInputError, match="is a model, not a corpus"):
        read("minilm-l6:train")


# --------------------------------------------------------------------------------- tfds

class SftJaxTinyReviews(tfds.core.GeneratorBasedBuilder):
    """A 10/4-example text classification dataset, prepared on disk by the test."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
            "text": tfds.features.Text(),
            "label": tfds.features.ClassLabel(names=["neg", "pos"]),
            "score": np.float32,
            "tokens": tfds.features.Sequence(tfds.features.Text()),
        }))

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(10), "test": self._generate_examples(4)}

    def _generate_examples(self, n):
        for i in range(n):
            yield i, {"text": f"review {i}", "label": i % 2, "score": i / 2,
                      "tokens": ["review", str(i)]}


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("tfds")
    SftJaxTinyReviews(data_dir=str(data_dir), file_format="array_record").download_and_prepare()
    return str(data_dir)


def test_tfds_array_record_without_tensorflow(tfds_dir):
    recs = read("tfds:sft_jax_tiny_reviews:train", data_dir=tfds_dir)
    assert len(recs) == 10
    for r in recs:
        i = int(r["text"].split()[1])
        assert r == {"text": f"review {i}", "label": i % 2, "score": i / 2,
                     "tokens": ["review", str(i)], "_where": r["_where"]}
        assert type(r["label"]) is int and type(r["score"]) is float
    assert sorted(r["text"] for r in recs) == sorted(f"review {i}" for i in range(10))
    assert [r["_where"] for r in recs] == [f"tfds:sft_jax_tiny_reviews:train[{i}]"
                                           for i in range(10)]


def test_tfds_slice_version_and_env_data_dir(tfds_dir, monkeypatch):
    monkeypatch.setenv("TFDS_DATA_DIR", tfds_dir)
    recs = read("tfds:sft_jax_tiny_reviews:1.0.0:train[:30%]")
    assert len(recs) == 3
    assert recs[2]["_where"] == "tfds:sft_jax_tiny_reviews:1.0.0:train[:30%][2]"
    assert len(read("tfds:sft_jax_tiny_reviews:test")) == 4


def test_tfds_errors(tfds_dir, tmp_path):
    with pytest.raises(UserInputError, match=r"^data\.train: unknown tfds dataset 'no_such_ds'"):
        read("tfds:no_such_ds:train", data_dir=tfds_dir)
    with pytest.raises(UserInputError, match=r"is not prepared in .*tfds build"):
        read("tfds:sft_jax_tiny_reviews:train", data_dir=str(tmp_path))
    with pytest.raises(UserInputError, match=r"bad split 'validation'"):
        read("tfds:sft_jax_tiny_reviews:validation", data_dir=tfds_dir)
    with pytest.raises(UserInputError, match=r"'sft_jax_tiny_reviews:9\.9\.9': .*version"):
        read("tfds:sft_jax_tiny_reviews:9.9.9:train", data_dir=tfds_dir)
    with pytest.raises(UserInputError, match="not of the form"):
        read("tfds:sft_jax_tiny_reviews", data_dir=tfds_dir)
    assert not list(tmp_path.iterdir())  # nothing was downloaded or created


# ------------------------------------------------------------------------------- assets

def test_corpus_asset_spec():
    recs = read("rotten-tomatoes:validation")
    assert len(recs) > 1000
    assert set(recs[0]) == {"text", "label", "movie", "_where"}
    assert recs[0]["_where"].endswith("validation.jsonl:1")
    assert {r["label"] for r in recs} == {"fresh", "rotten"}
    with pytest.raises(UserInputError, match=r"has no split 'dev' \(has: test, train, valid"):
        read("rotten-tomatoes:dev")
