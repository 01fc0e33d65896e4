"""experiments/tfidf_baseline.py on a tiny generated corpus with separable words."""

import importlib.util
import json
import pathlib
import sys
import types

import numpy as np
import pytest

import sft_jax
from sft_jax.errors import UserInputError

_SCRIPT = pathlib.Path(__file__).resolve().parents[1] / "experiments" / "tfidf_baseline.py"

# Each class has its own cue words; every text also carries shared filler words.
CUES = {
    "neg": ["awful", "dull", "boring", "tedious"],
    "neu": ["average", "okay", "mixed", "fine"],
    "pos": ["great", "superb", "moving", "brilliant"],
}
FILLER = ["the", "film", "plot", "actor", "scene", "story", "movie", "director"]


@pytest.fixture(scope="module")
def baseline():
    spec = importlib.util.spec_from_file_location("tfidf_baseline", _SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _write_split(path, n, seed, *, label_of=lambda name: name, text_field="text"):
    rng = np.random.default_rng(seed)
    names = sorted(CUES)
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):
            name = names[i % len(names)]
            words = list(rng.choice(FILLER, size=5)) + list(rng.choice(CUES[name], size=2))
            rng.shuffle(words)
            record = {text_field: " ".join(words), "label": label_of(name), "id": i}
            f.write(json.dumps(record) + "\n")
    return str(path)


def _splits(tmp_path, **kwargs):
    return {
        split: _write_split(tmp_path / f"{split}.jsonl", n, seed, **kwargs)
        for split, n, seed in (("train", 60, 0), ("validation", 15, 1), ("test", 30, 2))
    }


def test_main_prints_one_json_line(baseline, tmp_path, capsys):
    paths = _splits(tmp_path, text_field="review")
    argv = [
        "--train", paths["train"],
        "--validation", paths["validation"],
        "--test", paths["test"],
        "--text_field", "review",
        "--c_grid", "1,10",
    ]  # fmt: skip
    returned = baseline.main(argv)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1
    result = json.loads(lines[0])
    assert result == returned
    assert result["labels"] == ["neg", "neu", "pos"]
    assert (result["n_train"], result["n_validation"], result["n_test"]) == (60, 15, 30)
    assert result["tuned_on_validation"] is True
    assert set(result["validation_accuracy_by_C"]) == {"1", "10"}
    assert result["C"] in (1.0, 10.0)
    assert result["test_accuracy"] == 1.0
    assert result["test_macro_f1"] == 1.0
    assert result["test_confusion_matrix"] == [[10, 0, 0], [0, 10, 0], [0, 0, 10]]
    assert result["command"].startswith("python experiments/tfidf_baseline.py --train ")
    assert "--text_field review" in result["command"]


def test_integer_labels_fixed_c_without_validation(baseline, tmp_path, capsys):
    ids = {"neg": 0, "neu": 1, "pos": 2}
    paths = _splits(tmp_path, label_of=ids.__getitem__)
    result = baseline.main(["--train", paths["train"], "--test", paths["test"], "--C", "5"])
    assert result["labels"] == ["0", "1", "2"]
    assert result["C"] == 5.0
    assert result["tuned_on_validation"] is False
    assert result["test_accuracy"] == 1.0
    assert json.loads(capsys.readouterr().out) == result


def test_asset_resolves_through_sft_jax_assets(baseline, tmp_path, monkeypatch, capsys):
    _splits(tmp_path)
    fetched = []

    def fetch(name):
        fetched.append(name)
        return tmp_path

    fake = types.ModuleType("sft_jax.assets")
    fake.fetch = fetch
    monkeypatch.setitem(sys.modules, "sft_jax.assets", fake)
    monkeypatch.setattr(sft_jax, "assets", fake, raising=False)
    result = baseline.main(["--asset", "tiny", "--c_grid", "1"])
    capsys.readouterr()
    assert fetched == ["tiny"]
    assert result["source"] == "tiny"
    assert result["n_validation"] == 15
    assert result["test_accuracy"] == 1.0


def test_unknown_test_label_is_a_user_error(baseline, tmp_path):
    paths = _splits(tmp_path)
    with open(paths["test"], "a", encoding="utf-8") as f:
        f.write(json.dumps({"text": "great", "label": "meh"}) + "\n")
    with pytest.raises(UserInputError, match=r"test\.jsonl: labels not in the training split"):
        baseline.main(["--train", paths["train"], "--test", paths["test"]])


@pytest.mark.parametrize(
    ("line", "match"),
    [
        ("{not json", r"bad\.jsonl:2: invalid JSON"),
        ('{"label": "pos"}', r"bad\.jsonl:2: missing field 'text'"),
        ('{"text": "x", "label": 1.5}', r"bad\.jsonl:2: field 'label' must be"),
    ],
)
def test_malformed_jsonl_names_file_and_line(baseline, tmp_path, line, match):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "ok", "label": "pos"}\n' + line + "\n", encoding="utf-8")
    with pytest.raises(UserInputError, match=match):
        baseline.read_jsonl(path, "text", "label")


def test_unicode_line_separators_inside_strings(baseline, tmp_path):
    # U+0085 and U+2028 are line breaks to str.splitlines() but plain characters in JSON.
    path = tmp_path / "u.jsonl"
    records = [{"text": "dull\x85 really", "label": "neg"}, {"text": "a\u2028b", "label": "pos"}]
    path.write_text(
        "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8"
    )
    texts, labels = baseline.read_jsonl(path, "text", "label")
    assert texts == [r["text"] for r in records]
    assert labels == ["neg", "pos"]
