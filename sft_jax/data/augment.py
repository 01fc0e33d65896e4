"""EDA, easy data augmentation (Wei & Zou, EMNLP 2019), of classification training text.

The four operations work on a word list with a `random.Random` and return a new list:
- `synonym_replacement` (SR): the distinct words that are not `STOP_WORDS`, in random
  order; each that has a synonym has every occurrence replaced by one synonym chosen at
  random, until `n` words are replaced (fewer when fewer have synonyms).
- `random_insertion` (RI): `n` times, a random word with a synonym (at most 10 draws, else
  nothing is inserted) gives a random synonym, inserted at a random position.
- `random_swap` (RS): `n` times, two random positions swapped (the second is drawn at most
  3 times until it differs from the first, else that swap is skipped).
- `random_deletion` (RD): each word deleted with probability `p`; a one-word sentence is
  kept whole, and when every word is deleted one random word of the input is kept, so
  the result is never empty.

`eda(sentence, rng, synonyms, ...)` follows the paper's reference implementation
(github.com/jasonwei20/eda_nlp, `code/eda.py`): the sentence is cleaned (`clean`: lower
case, letters and single spaces only) and split into words; SR, RI and RS change
n = max(1, int(alpha * words)) words, RD uses p = alpha; each operation whose alpha is > 0
makes int(n_aug / k) + 1 new sentences (k such operations; the reference's
int(n_aug / 4) + 1 with all four), each by that ONE operation on the cleaned sentence;
they are shuffled and the first `n_aug` kept. So the operations take equal shares, in a
random order, rather than each new sentence drawing its operation independently. Unlike
the reference, every draw comes from the given `rng` and synonyms are sorted (the
reference draws from a set's hash order, and RI takes its list's first synonym), so the
result is a function of (sentence, rng state).

`augment_records(records, data, seed)` is the training-split hook: each record, then its
`data.eda_n_aug` new sentences in `data.text_field` (labels and other fields kept), each
record's drawn from `random.Random(f"eda:{seed}:{index}")`, so the list is a function of
(records, config, seed) and a resumed run sees the same examples. Synonyms come from
the `wordnet` asset (`wordnet_synonyms`), read with nltk's `WordNetCorpusReader`.
"""

from __future__ import annotations

import functools
import random
import re
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import ml_collections

from sft_jax.errors import UserInputError

# data.augment: "" = off; backtranslation is sft_jax.generation.backtranslation's (a model)
AUGMENTS = ("", "eda", "backtranslation")
Synonyms = Callable[[str], Sequence[str]]  # word -> its synonyms, sorted, never the word

# The reference implementation's stop words (code/eda.py): never replaced by SR.
_STOP_WORDS = """
i me my myself we our ours ourselves you your yours yourself yourselves he him his himself
she her hers herself it its itself they them their theirs themselves what which who whom
this that these those am is are was were be been being have has had having do does did
doing a an the and but if or because as until while of at by for with about against
between into through during before after above below to from up down in out on off over
under again further then once here there when where why how all any both each few more
most other some such no nor not only own same so than too very s t can will just don
should now"""
STOP_WORDS = frozenset(_STOP_WORDS.split())


def clean(sentence: str) -> str:
    """The reference's `get_only_chars`: lower case; ’ ' - tab newline read as spaces;
    only the letters a-z and single spaces kept; no space at either end."""
    text = re.sub(r"[’'\-\t\n]", " ", sentence.lower())
    return " ".join(re.sub(r"[^a-z ]", "", text).split())


def _words(tokens: Sequence[str]) -> list[str]:
    """Tokens (a synonym may hold several words) as single words."""
    return " ".join(tokens).split()


def synonym_replacement(words: Sequence[str], n: int, rng: random.Random,
                        synonyms: Synonyms) -> list[str]:
    """SR: up to `n` distinct non-stop words replaced (all their occurrences)."""
    candidates = sorted({w for w in words if w not in STOP_WORDS})
    rng.shuffle(candidates)
    new, replaced = list(words), 0
    for word in candidates:
        if replaced >= n:
            break
        if options := synonyms(word):
            synonym = rng.choice(options)
            new = [synonym if w == word else w for w in new]
            replaced += 1
    return _words(new)


def random_insertion(words: Sequence[str], n: int, rng: random.Random,
                     synonyms: Synonyms) -> list[str]:
    """RI: `n` times a synonym of a random word inserted at a random position."""
    new = list(words)
    for _ in range(n if new else 0):
        for _ in range(10):
            if options := synonyms(rng.choice(new)):
                new.insert(rng.randrange(len(new)), rng.choice(options))
                break
    return _words(new)


def random_swap(words: Sequence[str], n: int, rng: random.Random) -> list[str]:
    """RS: `n` swaps of two random positions (the same multiset of words)."""
    new = list(words)
    for _ in range(n if len(new) > 1 else 0):
        i = j = rng.randrange(len(new))
        for _ in range(3):
            j = rng.randrange(len(new))
            if j != i:
                new[i], new[j] = new[j], new[i]
                break
    return new


def random_deletion(words: Sequence[str], p: float, rng: random.Random) -> list[str]:
    """RD: each word deleted with probability `p`; never empty (for a non-empty input)."""
    if len(words) <= 1:
        return list(words)
    new = [w for w in words if rng.random() > p]
    return new or [rng.choice(words)]


def eda(sentence: str, rng: random.Random, synonyms: Synonyms, *, alpha_sr: float = 0.1,
        alpha_ri: float = 0.1, alpha_rs: float = 0.1, alpha_rd: float = 0.1,
        n_aug: int = 4) -> list[str]:
    """`n_aug` new sentences (cleaned, see the module docstring), the original not among
    them. A sentence without a letter is returned as it is, `n_aug` times."""
    words = clean(sentence).split()
    if n_aug == 0:
        return []
    if not words:
        return [sentence] * n_aug
    count = lambda alpha: max(1, int(alpha * len(words)))
    ops = [op for alpha, op in (
        (alpha_sr, lambda: synonym_replacement(words, count(alpha_sr), rng, synonyms)),
        (alpha_ri, lambda: random_insertion(words, count(alpha_ri), rng, synonyms)),
        (alpha_rs, lambda: random_swap(words, count(alpha_rs), rng)),
        (alpha_rd, lambda: random_deletion(words, alpha_rd, rng)),
    ) if alpha > 0]
    if n_aug and not ops:
        raise ValueError("eda: every alpha is 0, no operation to apply")
    new = [" ".join(op()) for op in ops for _ in range(n_aug // max(1, len(ops)) + 1)]
    rng.shuffle(new)
    return new[:n_aug]


def augment_records(records: Sequence[dict], data: ml_collections.ConfigDict, seed: int,
                    synonyms: Synonyms | None = None) -> list[dict]:
    """Training records with `data.eda_n_aug` EDA copies after each (see the module
    docstring); `synonyms` defaults to `wordnet_synonyms()`. A copy's `_where` says which."""
    synonyms = synonyms or wordnet_synonyms()
    alphas = {f"alpha_{op}": float(data[f"eda_alpha_{op}"]) for op in ("sr", "ri", "rs", "rd")}
    out = []
    for i, record in enumerate(records):
        out.append(record)
        rng = random.Random(f"eda:{seed}:{i}")
        texts = eda(str(record[data.text_field]), rng, synonyms, n_aug=int(data.eda_n_aug),
                    **alphas)
        for k, text in enumerate(texts, 1):
            copy = {**record, data.text_field: text}
            if "_where" in record:
                copy["_where"] = f"{record['_where']} (eda {k})"
            out.append(copy)
    return out


def wordnet_synonyms() -> Synonyms:
    """Synonyms from the `wordnet` asset (fetched when missing), as the reference's
    `get_synonyms`: every lemma of every synset of the word (nltk's morphy finds the
    base form), `_` and `-` read as spaces, lower case, letters and spaces only, the word
    itself left out; sorted. UserInputError (naming data.augment) when unavailable."""
    from sft_jax import assets

    try:
        root = assets.fetch("wordnet")
    except UserInputError as err:
        raise UserInputError(f"data.augment: {err}") from None
    return _synonyms_of(_reader(root))


@functools.cache
def _reader(root: Path):
    import nltk.data
    from nltk.corpus.reader import WordNetCorpusReader

    class Reader(WordNetCorpusReader):
        def map_wn(self, version="wordnet"):
            return None  # the asset is WordNet 3.0, the version nltk maps others onto

    if str(root) not in nltk.data.path:
        nltk.data.path.append(str(root))  # nltk reads corpora only under its data paths
    with warnings.catch_warnings():  # no Open Multilingual Wordnet: English only
        warnings.filterwarnings("ignore", "The multilingual functions", UserWarning)
        return Reader(str(root), None)


def _synonyms_of(reader) -> Synonyms:
    @functools.lru_cache(maxsize=1 << 16)
    def synonyms(word: str) -> tuple[str, ...]:
        found = set()
        for synset in reader.synsets(word):
            for lemma in synset.lemmas():
                name = lemma.name().replace("_", " ").replace("-", " ").lower()
                found.add(" ".join(re.sub(r"[^a-z ]", "", name).split()))
        return tuple(sorted(found - {word, ""}))

    return synonyms
