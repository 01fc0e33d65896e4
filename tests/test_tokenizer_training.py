"""Tests for sft_jax.data.tokenizer_training: small corpora, trained in well under 5 s."""

import json
import time

import pytest
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from sft_jax.data.tokenizer_training import normalize, train_tokenizer
from sft_jax.errors import UserInputError

CORPUS = [
    "In the beginning God created the heaven and the earth.",
    "And the earth was without form, and void; and darkness was upon the face of the deep.",
    "And God said, Let there be light: and there was light.",
    "And God saw the light, that it was good: and God divided the light from the darkness.",
    "And God called the light Day, and the darkness he called Night.",
    "EN el principio crió Dios los cielos y la tierra.",
    "Y dijo Dios: Sea la luz: y fué la luz.",
    "Ｆｕｌｌｗｉｄｔｈ letters and ligatures ﬁne are NFKC-normalised.",
] * 5


@pytest.mark.parametrize("kind", ["unigram", "bpe"])
def test_trains_fast_round_trips_and_appends_eos(tmp_path, kind):
    start = time.perf_counter()
    tok = train_tokenizer(CORPUS, tmp_path, vocab_size=120, kind=kind)
    assert time.perf_counter() - start < 5
    assert isinstance(tok, PreTrainedTokenizerFast) and len(tok) == 120
    assert (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2)
    for text in [*CORPUS[:8], "  the   light  of God \n", "Dios creó la tierra."]:
        ids = tok(text)["input_ids"]
        assert ids[-1] == 1 and 1 not in ids[:-1]
        assert 2 not in ids  # every character was seen
        assert tok.decode(ids, skip_special_tokens=True) == normalize(tok, text)
    assert normalize(tok, " ﬁne  Ｆｕｌｌ\t x ") == "fine Full x"  # NFKC, spaces collapsed
    assert tok.convert_ids_to_tokens(tok("the light")["input_ids"])[0].startswith("▁")
    # an unseen character is <unk>
    assert 2 in tok("ж")["input_ids"]
    # pairs: $A </s> $B </s>
    pair = tok("light", "luz")["input_ids"]
    assert pair.count(1) == 2 and pair[-1] == 1


@pytest.mark.parametrize("kind", ["unigram", "bpe"])
def test_auto_tokenizer_loads_the_saved_files(tmp_path, kind):
    train_tokenizer(CORPUS, tmp_path, vocab_size=100, kind=kind, bos_token="<s>",
                    prepend_bos=True)
    assert {p.name for p in tmp_path.iterdir()} >= {"tokenizer.json", "tokenizer_config.json",
                                                    "special_tokens_map.json"}
    tok = AutoTokenizer.from_pretrained(tmp_path)
    assert isinstance(tok, PreTrainedTokenizerFast)
    assert (tok.pad_token, tok.eos_token, tok.unk_token, tok.bos_token) == (
        "<pad>", "</s>", "<unk>", "<s>")
    assert (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id, tok.bos_token_id) == (
        0, 1, 2, 3)
    ids = tok("God said")["input_ids"]
    assert ids[0] == 3 and ids[-1] == 1
    batch = tok(["God", "the light of God"], padding=True)["input_ids"]
    assert batch[0][-1] == 0 and batch[1][-1] == 1  # padded with <pad>
    assert json.loads((tmp_path / "special_tokens_map.json").read_text())["bos_token"] == "<s>"


def test_eos_can_be_left_off_and_lowercase(tmp_path):
    tok = train_tokenizer(CORPUS, tmp_path, vocab_size=100, append_eos=False, lowercase=True)
    ids = tok("And GOD said")["input_ids"]
    assert 1 not in ids
    assert tok.decode(ids) == "and god said"


@pytest.mark.parametrize("kind", ["unigram", "bpe"])
def test_deterministic(tmp_path, kind):
    a = train_tokenizer(iter(CORPUS), tmp_path / "a", vocab_size=110, kind=kind)
    b = train_tokenizer(list(CORPUS), tmp_path / "b", vocab_size=110, kind=kind)
    assert a.get_vocab() == b.get_vocab()
    assert (tmp_path / "a" / "tokenizer.json").read_bytes() == (
        tmp_path / "b" / "tokenizer.json").read_bytes()
    other = train_tokenizer(CORPUS[:5], tmp_path / "c", vocab_size=110, kind=kind)
    assert other.get_vocab() != a.get_vocab()


def test_unigram_scores_are_log_probabilities(tmp_path):
    """Unigram pieces carry log-probs summing to 1 over the non-special pieces; frequent
    pieces outscore rare ones; the segmentation maximises the total score."""
    import math

    train_tokenizer(CORPUS, tmp_path, vocab_size=120, kind="unigram")
    model = json.loads((tmp_path / "tokenizer.json").read_text())["model"]
    assert model["type"] == "Unigram" and model["unk_id"] == 2
    vocab = dict(map(tuple, model["vocab"][3:]))
    assert math.isclose(sum(math.exp(s) for s in vocab.values()), 1.0, rel_tol=1e-9)
    assert vocab["▁the"] > sorted(vocab.values())[len(vocab) // 2]  # "the" is frequent
    # brute force: no segmentation of "▁light" scores higher than the one the model picks
    tok = PreTrainedTokenizerFast(tokenizer_file=str(tmp_path / "tokenizer.json"))
    pieces = tok.convert_ids_to_tokens(tok("light", add_special_tokens=False)["input_ids"])
    word = "▁light"

    def best(s):
        if not s:
            return 0.0
        return max((vocab[s[:i]] + best(s[i:]) for i in range(1, len(s) + 1)
                    if s[:i] in vocab), default=-math.inf)

    assert "".join(pieces) == word
    assert math.isclose(sum(vocab[p] for p in pieces), best(word))


def test_bad_arguments():
    with pytest.raises(UserInputError, match="kind must be 'unigram' or 'bpe'"):
        train_tokenizer(CORPUS, "/nonexistent", vocab_size=100, kind="wordpiece")
    with pytest.raises(UserInputError, match="vocab_size 3 leaves no room"):
        train_tokenizer(CORPUS, "/nonexistent", vocab_size=3)
    with pytest.raises(UserInputError, match="prepend_bos needs a bos_token"):
        train_tokenizer(CORPUS, "/nonexistent", vocab_size=100, prepend_bos=True)
    with pytest.raises(UserInputError, match="distinct"):
        train_tokenizer(CORPUS, "/nonexistent", vocab_size=100, pad_token="</s>")
