"""Tests for the Apertium baseline (`sft_jax.assets.apertium`, `experiments.text_baselines`)
without the network or the real tool: a fake `apertium` script in a made-up unpacked tree."""

import json
import stat

import pytest
import sacrebleu

from experiments import text_baselines
from sft_jax import runs
from sft_jax.assets import apertium
from sft_jax.errors import UserInputError

# Upper-cases its input; checks what `translate` must set up: `-d DIR` holding the mode
# with the tree's paths, and the tree's libraries on LD_LIBRARY_PATH.
_UPPER = """#!/bin/sh
while [ $# -gt 1 ]; do [ "$1" = -d ] && data=$2; shift; done
grep -q "ROOT/usr/share/apertium/" "$data/modes/$1.mode" || { echo "no mode" >&2; exit 3; }
case "$LD_LIBRARY_PATH" in ROOT/usr/lib/*) ;; *) echo "no LD_LIBRARY_PATH" >&2; exit 4;; esac
tr a-z A-Z
"""


def fake_tree(root, script):
    """A tree with `usr/bin/apertium` (`script`, ROOT replaced by `root`) and the mode."""
    (root / "usr" / "bin").mkdir(parents=True)
    tool = root / "usr" / "bin" / "apertium"
    tool.write_text(script.replace("ROOT", str(root.resolve())))
    tool.chmod(tool.stat().st_mode | stat.S_IEXEC)
    (root / apertium.MODE_DIR).mkdir(parents=True)
    (root / apertium.MODE_DIR / "eng-spa.mode").write_text(
        "lt-proc '/usr/share/apertium/apertium-eng-spa/eng-spa.automorf.bin' | cat\n")
    return root


def test_translate_keeps_one_line_per_input_line(tmp_path):
    root = fake_tree(tmp_path / "tree", _UPPER)
    lines = ["And God said", "", "Let there be\nlight  ", "   ", "amen"]
    assert apertium.translate(lines, root=root) == ["AND GOD SAID", "", "LET THERE BE LIGHT",
                                                    "", "AMEN"]
    assert apertium.translate(["", " "], root=root) == ["", ""]


@pytest.mark.parametrize("script, message", [
    ("#!/bin/sh\necho 'Error: Mode eng-spa does not exist.' >&2\nexit 1\n",
     r"^apertium-eng-spa: apertium eng-spa failed with exit status 1: Error: Mode eng-spa "
     r"does not exist\.$"),
    ("#!/bin/sh\ngrep -v '^$'\n",  # loses the empty lines between paragraphs
     r"^apertium-eng-spa: apertium eng-spa gave 3 output lines for 3 paragraphs; expected"),
])
def test_translate_reports_a_failing_or_misaligned_tool(tmp_path, script, message):
    root = fake_tree(tmp_path / "tree", script)
    with pytest.raises(UserInputError, match=message):
        apertium.translate(["one", "two", "three"], root=root)


def test_translate_without_the_asset_says_how_to_fetch_it(tmp_path):
    with pytest.raises(UserInputError, match=r"usr/bin/apertium: not found \(fetch it with "
                       r"`sft-jax assets fetch apertium-eng-spa`\)$"):
        apertium.translate(["one"], root=tmp_path)
    with pytest.raises(UserInputError, match="not a str"):
        apertium.translate("one", root=tmp_path)


def test_verify_tree_checks_pins_and_files(tmp_path):
    root = fake_tree(tmp_path / "tree", _UPPER)
    pins = ",".join(f"{p}={v}" for p, v in apertium.PINS.items())
    meta = {"pins": pins, "files": apertium._files(root)}
    (root / "asset.json").write_text(json.dumps(meta))
    apertium.verify_tree(root)
    (root / apertium.MODE_DIR / "eng-spa.mode").write_text("")
    with pytest.raises(UserInputError, match=r"eng-spa\.mode: missing or of the wrong size"):
        apertium.verify_tree(root)
    (root / "asset.json").write_text(json.dumps({**meta, "pins": "apertium=0"}))
    with pytest.raises(UserInputError, match=r"was built from other packages \(apertium=0\)"):
        apertium.verify_tree(root)


def test_baseline_scores_as_sacrebleu_and_writes_a_run(tmp_path):
    sources = ["In the beginning", "God created the heaven", "and the earth"]
    refs = ["En el principio", "creó Dios los cielos", "y la tierra"]
    hyps = ["En el comienzo", "Dios creó el cielo", "y la tierra"]
    records = {"test": [{"en": s, "es": r, "_where": f"t.jsonl:{i + 1}"}
                        for i, (s, r) in enumerate(zip(sources, refs, strict=True))]}
    config = {"data": {"test": "t.jsonl", "source_field": "en", "target_field": "es"},
              "eval": {"splits": ["test"], "metrics": ["bleu", "chrf"],
                       "bleu_tokenize": "13a"}, "task": "apertium"}
    table = dict(zip(sources, hyps, strict=True))
    results, seconds = text_baselines.evaluate(
        records, tmp_path / "run", config, lambda lines: [table[x] for x in lines],
        "a table")
    test = results["test"]
    assert test["bleu"] == pytest.approx(sacrebleu.corpus_bleu(hyps, [refs]).score)
    assert test["chrf"] == pytest.approx(sacrebleu.corpus_chrf(hyps, [refs]).score)
    assert test["generated"] == 3 and "tok:13a" in test["bleu_signature"]
    text = (tmp_path / "run/predictions/test.jsonl").read_text(encoding="utf-8")
    rows = [json.loads(x) for x in text.splitlines()]
    expected = zip([f"t.jsonl:{i}" for i in (1, 2, 3)], sources, refs, hyps, strict=True)
    assert [(r["where"], r["source"], r["reference"], r["prediction"]) for r in rows] == [
        tuple(x) for x in expected]
    row, = runs.rows(runs.read_runs(tmp_path / "run"))
    assert row["finished"] and row["test/bleu"] == pytest.approx(test["bleu"])
    assert row["wall_seconds"] >= seconds["test"] >= 0
    assert test["params_from"] == "a table"
    line = text_baselines.summary_line("apertium", "t.jsonl", test, seconds["test"])
    assert line.startswith(f"apertium on t.jsonl (3 examples): BLEU {test['bleu']:.1f}, "
                           f"chrF {test['chrf']:.1f}, ")


def test_lead_is_the_first_sentence_scored_by_rouge_score(tmp_path):
    """Lead-1 keeps each source's first sentence (tokenized text too) and is scored with
    rouge-score as the summarization task scores its models."""
    from rouge_score import rouge_scorer

    sources = ["We study X . However , it fails . We fix it .",
               "Terms matter in MT. We propose Y, e.g. analogies. It works."]
    assert text_baselines.lead_sentences(sources) == ["We study X .", "Terms matter in MT."]
    refs = ["We study X and fix it .", "We propose Y for terms in MT."]
    records = {"test": [{"document": s, "summary": r} for s, r in zip(sources, refs,
                                                                        strict=True)]}
    config = {"data": {"test": "a.jsonl", "source_field": "document",
                       "target_field": "summary"},
              "eval": {"splits": ["test"], "metrics": ["rouge"], "bleu_tokenize": "13a"},
              "task": "lead"}
    results, _ = text_baselines.evaluate(records, tmp_path / "lead", config,
                                         text_baselines.lead_sentences, "Lead-1")
    scorer = rouge_scorer.RougeScorer(["rouge1"], use_stemmer=True)
    expected = [scorer.score(r, p)["rouge1"].fmeasure
                for r, p in zip(refs, text_baselines.lead_sentences(sources), strict=True)]
    assert results["test"]["rouge1"] == pytest.approx(100 * sum(expected) / 2, rel=1e-6)
