"""Train a SentencePiece-style subword tokenizer for from-scratch runs.

`train_tokenizer(texts, out_dir, vocab_size=..., kind="unigram"|"bpe")` trains a Hugging Face
`tokenizers` model on the texts and saves it in `out_dir` so that
`transformers.AutoTokenizer.from_pretrained(out_dir)` loads it as a fast tokenizer with the
special tokens set; it returns that loaded tokenizer.

Pipeline (as T5's SentencePiece tokenizer):
- normalizer: NFKC, optionally lowercase, runs of whitespace → one space, stripped
  (`normalize(tokenizer, text)` gives the normalised text; decoding the encoding of a text
  gives it back when every character of it was seen in training);
- pre-tokenizer: Metaspace (a space becomes `▁`, prepended to the first word too), and the
  Metaspace decoder undoes it;
- model: Unigram (`kind="unigram"`, SentencePiece's and T5's model: the segmentation of
  highest total piece log-probability) or BPE; the vocabulary holds the special tokens
  first, in the order pad, eos, unk[, bos] (ids 0, 1, 2[, 3], as T5);
- post-processor: `$A </s>` (EOS appended, as T5) when `append_eos`, `<s>` prepended when
  `prepend_bos`; pairs get the same around each sequence.

Training is deterministic: the same texts and arguments give the same vocabulary and the
same `tokenizer.json`. `tokenizers`' UnigramTrainer is not (it iterates a hash map of the
word counts, so float sums and tie-breaks, and with them the kept pieces, vary from run to
run), so the Unigram model is built here instead: its pieces are those of a BPE training
of the same size (`BpeTrainer` is deterministic), its scores the log relative frequencies
of the pieces in the Viterbi segmentation of the training words, re-estimated
`unigram_rounds` times (hard EM, add-one smoothed, starting from the BPE segmentation).
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Literal

from sft_jax.errors import UserInputError


def train_tokenizer(
    texts: Iterable[str],
    out_dir: str | Path,
    *,
    vocab_size: int,
    kind: Literal["unigram", "bpe"] = "unigram",
    pad_token: str = "<pad>",
    eos_token: str = "</s>",
    unk_token: str = "<unk>",
    bos_token: str | None = None,
    lowercase: bool = False,
    append_eos: bool = True,
    prepend_bos: bool = False,
    max_piece_length: int = 16,
    unigram_rounds: int = 2,
):
    """Train on `texts`, save into `out_dir`; returns the `PreTrainedTokenizerFast` loaded
    back with `AutoTokenizer.from_pretrained(out_dir)`. See the module docstring."""
    from tokenizers import (
        Regex,
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
        trainers,
    )
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    specials = [pad_token, eos_token, unk_token] + ([bos_token] if bos_token else [])
    if kind not in ("unigram", "bpe"):
        raise UserInputError(f"train_tokenizer: kind must be 'unigram' or 'bpe', got {kind!r}")
    if len(set(specials)) != len(specials) or not all(specials):
        raise UserInputError(f"train_tokenizer: special tokens must be distinct and non-empty, "
                             f"got {specials}")
    if vocab_size <= len(specials):
        raise UserInputError(f"train_tokenizer: vocab_size {vocab_size} leaves no room beside "
                             f"the {len(specials)} special tokens")
    if prepend_bos and not bos_token:
        raise UserInputError("train_tokenizer: prepend_bos needs a bos_token")

    tok = Tokenizer(models.BPE(unk_token=unk_token))
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, max_token_length=max_piece_length,
        show_progress=False)
    tok.normalizer = normalizers.Sequence(
        [normalizers.NFKC(), *([normalizers.Lowercase()] if lowercase else []),
         normalizers.Replace(Regex(r"\s+"), " "), normalizers.Strip()])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    if kind == "unigram":
        texts = list(texts)
    tok.train_from_iterator(texts, trainer=trainer)
    if kind == "unigram":
        words = Counter(w for text in texts for w, _ in tok.pre_tokenizer.pre_tokenize_str(
            tok.normalizer.normalize_str(text)))
        vocab = _unigram_vocab(tok, words, specials, rounds=unigram_rounds)
        tok.model = models.Unigram(vocab, unk_id=specials.index(unk_token), byte_fallback=False)

    ids = {t: tok.token_to_id(t) for t in specials}
    assert list(ids.values()) == list(range(len(specials))), ids
    head = [bos_token] if prepend_bos else []
    tail = [eos_token] if append_eos else []
    used = [t for t in (bos_token, eos_token) if t in head + tail]
    tok.post_processor = processors.TemplateProcessing(
        single=" ".join([*head, "$A", *tail]),
        pair=" ".join([*head, "$A", *tail, *head, "$B:1", *tail]),
        special_tokens=[(t, ids[t]) for t in used])

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token=pad_token, eos_token=eos_token, unk_token=unk_token,
        **({"bos_token": bos_token} if bos_token else {}))
    fast.save_pretrained(str(out))
    special_map = {"pad_token": pad_token, "eos_token": eos_token, "unk_token": unk_token,
                   **({"bos_token": bos_token} if bos_token else {})}
    (out / "special_tokens_map.json").write_text(json.dumps(special_map, indent=2) + "\n")
    return AutoTokenizer.from_pretrained(str(out))


def normalize(tokenizer, text: str) -> str:
    """`text` as the tokenizer's normalizer sees it (what decoding gives back)."""
    return tokenizer.backend_tokenizer.normalizer.normalize_str(text)


def _unigram_vocab(bpe, words: Counter, specials: list[str], *,
                   rounds: int) -> list[tuple[str, float]]:
    """`[(piece, log-probability)]`: the specials (score 0), then the BPE pieces by
    decreasing score, re-estimated by `rounds` of Viterbi hard EM over `words` (counts)."""
    pieces = sorted(p for p in bpe.get_vocab() if p not in specials)
    max_len = max(len(p) for p in pieces)
    counts: Counter = Counter()
    for word in sorted(words):  # start: the BPE segmentation
        for t in bpe.model.tokenize(word):
            counts[t.value] += words[word]

    def log_probs() -> dict[str, float]:
        total = sum(counts[p] + 1 for p in pieces)
        return {p: math.log((counts[p] + 1) / total) for p in pieces}

    for _ in range(rounds):
        logp, counts = log_probs(), Counter()
        for word in sorted(words):
            for piece in _viterbi(word, logp, max_len):
                counts[piece] += words[word]
    logp = log_probs()
    ranked = sorted(pieces, key=lambda p: (-logp[p], p))
    return [(s, 0.0) for s in specials] + [(p, logp[p]) for p in ranked]


def _viterbi(word: str, logp: dict[str, float], max_len: int) -> list[str]:
    """The segmentation of `word` into pieces of `logp` with the highest total log-prob."""
    best = [0.0] + [-math.inf] * len(word)  # best[i]: score of word[:i]
    back = [0] * (len(word) + 1)
    for end in range(1, len(word) + 1):
        for start in range(max(0, end - max_len), end):
            score = logp.get(word[start:end])
            if score is not None and best[start] + score > best[end]:
                best[end], back[end] = best[start] + score, start
    if best[-1] == -math.inf:  # a character BPE left out of its alphabet: one piece per char
        return [c for c in word if c in logp]
    out, end = [], len(word)
    while end > 0:
        out.append(word[back[end]:end])
        end = back[end]
    return out[::-1]
