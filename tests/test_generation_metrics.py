"""Generation metrics against sacrebleu and rouge-score called directly on the same strings."""

import numpy as np
import pytest
import sacrebleu
from rouge_score import rouge_scorer

from sft_jax import metrics
from sft_jax.errors import UserInputError

# English → Spanish system outputs and references: one exact, the others partial.
HYPS = [
    "El gato está sentado en la alfombra.",
    "Mañana vamos a la playa con mis amigos.",
    "La reunión fue cancelada por la lluvia.",
    "He reads the newspaper every morning.",
]
REFS = [
    "El gato está sentado en la alfombra.",
    "Mañana iremos a la playa con mis amigos.",
    "La reunión se canceló a causa de la lluvia.",
    "He reads a newspaper each morning.",
]
REFS_2 = [
    "Un gato está sentado sobre la alfombra.",
    "Mañana vamos a ir a la playa con mis amigos.",
    "Cancelaron la reunión por la lluvia.",
    "Every morning he reads the paper.",
]

# Two-sentence summaries, one sentence per line; the prediction swaps the sentence order.
SUMMARY_REF = "The council approved the new budget.\nSchools will get more teachers next year."
SUMMARY_PRED = "Schools will get more teachers next year.\nThe council approved the new budget."


def _bleu_vs_sacrebleu(hyps, per_example_refs, streams, **kwargs):
    ours = metrics.corpus_bleu(hyps, per_example_refs, **kwargs)
    ref = sacrebleu.corpus_bleu(hyps, streams, **kwargs)
    assert ours["bleu"] == pytest.approx(ref.score)
    assert ours["bleu_precisions"] == pytest.approx(ref.precisions)
    assert ours["bleu_bp"] == pytest.approx(ref.bp)
    assert (ours["bleu_sys_len"], ours["bleu_ref_len"]) == (ref.sys_len, ref.ref_len)
    return ours


def test_bleu_single_reference_matches_sacrebleu():
    ours = _bleu_vs_sacrebleu(HYPS, REFS, [REFS])
    assert 20 < ours["bleu"] < 100
    sig = ours["bleu_signature"]
    assert sig.startswith("nrefs:1|case:mixed|")
    assert "tok:13a" in sig and f"version:{sacrebleu.__version__}" in sig


def test_bleu_perfect_match_is_100():
    ours = _bleu_vs_sacrebleu(REFS, REFS, [REFS])
    assert ours["bleu"] == pytest.approx(100.0)
    assert ours["bleu_precisions"] == pytest.approx([100.0] * 4)


def test_bleu_multiple_references_per_hypothesis():
    per_example = [[a, b] for a, b in zip(REFS, REFS_2, strict=True)]
    ours = _bleu_vs_sacrebleu(HYPS, per_example, [REFS, REFS_2])
    assert "nrefs:2|" in ours["bleu_signature"]
    assert ours["bleu"] > metrics.corpus_bleu(HYPS, REFS)["bleu"]
    # Variable reference counts: sacrebleu takes None for a missing reference.
    ragged = [[REFS[0], REFS_2[0]], REFS[1], [REFS[2]], [REFS[3], REFS_2[3]]]
    streams = [REFS, [REFS_2[0], None, None, REFS_2[3]]]
    ours = _bleu_vs_sacrebleu(HYPS, ragged, streams)
    assert "nrefs:var|" in ours["bleu_signature"]


def test_bleu_lowercase_and_tokenizer():
    shouted = [h.upper() for h in HYPS]
    lower = _bleu_vs_sacrebleu(shouted, REFS, [REFS], lowercase=True)
    mixed = _bleu_vs_sacrebleu(shouted, REFS, [REFS], lowercase=False)
    assert "case:lc" in lower["bleu_signature"]
    assert lower["bleu"] == pytest.approx(metrics.corpus_bleu(HYPS, REFS)["bleu"])
    assert mixed["bleu"] < lower["bleu"]
    intl = _bleu_vs_sacrebleu(HYPS, REFS, [REFS], tokenize="intl")
    assert "tok:intl" in intl["bleu_signature"]


@pytest.mark.parametrize("word_order", [0, 2])
def test_chrf_matches_sacrebleu(word_order):
    ours = metrics.corpus_chrf(HYPS, REFS, word_order=word_order)
    ref = sacrebleu.corpus_chrf(HYPS, [REFS], word_order=word_order)
    assert set(ours) == {"chrf", "chrf_signature"}
    assert ours["chrf"] == pytest.approx(ref.score)
    assert f"nw:{word_order}" in ours["chrf_signature"]
    per_example = [[a, b] for a, b in zip(REFS, REFS_2, strict=True)]
    multi = metrics.corpus_chrf(HYPS, per_example, word_order=word_order)
    ref = sacrebleu.corpus_chrf(HYPS, [REFS, REFS_2], word_order=word_order)
    assert multi["chrf"] == pytest.approx(ref.score)
    assert metrics.corpus_chrf(REFS, REFS, word_order=word_order)["chrf"] == pytest.approx(100)


def _rouge_reference(preds, refs, types, use_stemmer=True):
    scorer = rouge_scorer.RougeScorer(list(types), use_stemmer=use_stemmer)
    scores = [
        scorer.score(r, p) if isinstance(r, str) else scorer.score_multi(r, p)
        for p, r in zip(preds, refs, strict=True)
    ]
    out = {}
    for t in types:
        out[t] = 100 * np.mean([s[t].fmeasure for s in scores])
        out[f"{t}_precision"] = 100 * np.mean([s[t].precision for s in scores])
        out[f"{t}_recall"] = 100 * np.mean([s[t].recall for s in scores])
    return out


@pytest.mark.parametrize("use_stemmer", [True, False])
def test_rouge_matches_rouge_score(use_stemmer):
    preds = ["The cats were running in the park.", *HYPS, SUMMARY_PRED]
    refs = ["A cat runs in the park.", *REFS, SUMMARY_REF]
    ours = metrics.rouge(preds, refs, use_stemmer=use_stemmer)
    expected = _rouge_reference(preds, refs, metrics.ROUGE_TYPES, use_stemmer)
    assert ours.keys() == expected.keys()
    for key, value in expected.items():
        assert ours[key] == pytest.approx(value), key
    assert 0 < ours["rouge2"] < ours["rouge1"] < 100


def test_rouge_multiple_references_and_perfect_match():
    refs = [[a, b] for a, b in zip(REFS, REFS_2, strict=True)]
    refs[1] = REFS[1]  # a plain string is one reference
    types = ("rouge1", "rougeL")
    ours = metrics.rouge(HYPS, refs, types=types)
    expected = _rouge_reference(HYPS, refs, types)
    assert ours == pytest.approx(expected)
    perfect = metrics.rouge(REFS, REFS, types=types)
    assert perfect == pytest.approx({k: 100.0 for k in expected})


def test_rouge_lsum_uses_lines_as_sentences():
    ours = metrics.rouge([SUMMARY_PRED], [SUMMARY_REF], types=("rougeL", "rougeLsum"))
    # Swapped sentences: one sentence's worth of in-order LCS, but every sentence is
    # matched at summary level.
    assert ours["rougeLsum"] == pytest.approx(100.0)
    assert ours["rougeL"] < 60
    # On one line, rougeLsum has a single sentence and equals rougeL.
    flat = metrics.rouge(
        [SUMMARY_PRED.replace("\n", " ")],
        [SUMMARY_REF.replace("\n", " ")],
        types=("rougeL", "rougeLsum"),
    )
    assert flat["rougeLsum"] == pytest.approx(flat["rougeL"])
    assert flat["rougeL"] == pytest.approx(ours["rougeL"])
    # split_sentences_newlines restores the one-sentence-per-line layout.
    assert metrics.split_sentences_newlines(SUMMARY_PRED.replace("\n", " ")) == SUMMARY_PRED


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("One. Two! Three? Four", "One.\nTwo!\nThree?\nFour"),
        ("¿Qué hora es? Son las tres.  ¡Vamos!", "¿Qué hora es?\nSon las tres.\n¡Vamos!"),
        ('He said "stop." Then he left.', 'He said "stop."\nThen he left.'),
        ("It costs 3.50 euros, e.g. for tea. Fine.", "It costs 3.50 euros, e.g. for tea.\nFine."),
        ("  line one\n\nline two.  ", "line one\nline two."),
        ("", ""),
    ],
)
def test_split_sentences_newlines(text, expected):
    assert metrics.split_sentences_newlines(text) == expected


@pytest.mark.parametrize("fn", [metrics.corpus_bleu, metrics.corpus_chrf, metrics.rouge])
@pytest.mark.parametrize(
    ("hyps", "refs", "match"),
    [
        (HYPS, REFS[:3], "4 hypotheses but 3 references"),
        ([], [], "empty input"),
        ("a hypothesis", ["a reference"], "not a str"),
        (HYPS[:1], [[]], r"references\[0\] is empty"),
        (HYPS[:1], [[None]], "NoneType, not str"),
        ([None], ["a reference"], r"hypotheses\[0\] is NoneType"),
    ],
)
def test_bad_input_raises_user_input_error(fn, hyps, refs, match):
    with pytest.raises(UserInputError, match=match) as err:
        fn(hyps, refs)
    assert "\n" not in str(err.value)


def test_bad_options_raise_user_input_error():
    with pytest.raises(UserInputError, match="unknown tokenize='moses'"):
        metrics.corpus_bleu(HYPS, REFS, tokenize="moses")
    with pytest.raises(UserInputError, match="word_order must be 0, 1 or 2"):
        metrics.corpus_chrf(HYPS, REFS, word_order=3)
    with pytest.raises(UserInputError, match=r"unknown ROUGE types \['rougeW'\]"):
        metrics.rouge(HYPS, REFS, types=("rouge1", "rougeW"))
