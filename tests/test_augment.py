"""EDA augmentation (`sft_jax.data.augment`): the four operations on fixed seeds, `eda`'s
counts and determinism, the classification training-split hook (and a resume), the
`wordnet` asset read by nltk, and one-line errors."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from conftest import apply_overrides, load_config, tiny_overrides

from sft_jax import validate
from sft_jax.data import augment
from sft_jax.errors import UserInputError

THESAURUS = {"good": ("fine", "well"), "movie": ("film", "motion picture"), "plot": ("story",),
             "actors": ("players",)}
WORDS = ["the", "good", "movie", "has", "a", "plot", "and", "the", "actors", "are", "good"]


def synonyms(word: str) -> tuple[str, ...]:
    return THESAURUS.get(word, ())


def _config(**eda):
    config = load_config("classification", "runlocal")
    config.data.augment = "eda"
    for key, value in eda.items():
        config.data[f"eda_{key}"] = value
    return config


def test_clean_keeps_lower_case_letters_and_single_spaces():
    assert augment.clean("It's a  GREAT\tfilm -- 10/10!\n") == "it s a great film"


def test_synonym_replacement_replaces_n_distinct_non_stop_words():
    one_word = lambda w: tuple(s for s in synonyms(w) if " " not in s)
    for seed in range(5):
        new = augment.synonym_replacement(WORDS, 2, random.Random(seed), one_word)
        changed = {a for a, b in zip(WORDS, new, strict=True) if a != b}
        assert len(changed) == 2 and changed <= set(THESAURUS), (seed, new)
        if "good" in changed:  # every occurrence of a replaced word, by one synonym
            assert len({new[1], new[-1]}) == 1 and new[1] in THESAURUS["good"]
    many = augment.synonym_replacement(WORDS, 9, random.Random(0), synonyms)
    assert "motion" in many and "picture" in many  # a two-word synonym gives two words
    assert [w for w in many if w in augment.STOP_WORDS] == \
        [w for w in WORDS if w in augment.STOP_WORDS]


def test_random_insertion_inserts_n_synonyms():
    flat = {w for s in THESAURUS.values() for x in s for w in x.split()}
    new = augment.random_insertion(WORDS, 3, random.Random(1), synonyms)
    added = Counter(new) - Counter(WORDS)
    assert sum(added.values()) in (3, 4) and set(added) <= flat, new  # "motion picture": 2
    assert augment.random_insertion(["zzz"], 2, random.Random(0), synonyms) == ["zzz"]


def test_random_swap_swaps_n_pairs_of_the_same_words():
    words = [f"w{i}" for i in range(10)]
    one = augment.random_swap(words, 1, random.Random(0))
    assert sorted(one) == sorted(words) and sum(a != b for a, b in zip(words, one,
                                                                        strict=True)) == 2
    three = augment.random_swap(words, 3, random.Random(0))
    assert sorted(three) == sorted(words) and 0 < sum(
        a != b for a, b in zip(words, three, strict=True)) <= 6
    assert augment.random_swap(["one"], 3, random.Random(0)) == ["one"]


def test_random_deletion_deletes_with_probability_alpha_and_never_empties():
    words = [f"w{i}" for i in range(2000)]
    kept = augment.random_deletion(words, 0.1, random.Random(0))
    assert 0.87 < len(kept) / len(words) < 0.93 and kept == [w for w in words if w in kept]
    assert augment.random_deletion(words, 0.0, random.Random(0)) == words
    for seed in range(20):
        left = augment.random_deletion(["a", "b", "c"], 1.0, random.Random(seed))
        assert len(left) == 1 and left[0] in "abc"
    assert augment.random_deletion(["solo"], 1.0, random.Random(0)) == ["solo"]


def test_eda_makes_n_aug_sentences_one_operation_each_seeded():
    sentence = "The good movie has a plot, and the actors are good!"
    new = augment.eda(sentence, random.Random(3), synonyms, n_aug=9)
    assert len(new) == 9 and sentence not in new
    assert new == augment.eda(sentence, random.Random(3), synonyms, n_aug=9)
    assert new != augment.eda(sentence, random.Random(4), synonyms, n_aug=9)
    only_swaps = augment.eda(sentence, random.Random(0), synonyms, alpha_sr=0, alpha_ri=0,
                             alpha_rd=0, n_aug=5)
    clean = augment.clean(sentence).split()
    assert len(only_swaps) == 5 and all(sorted(s.split()) == sorted(clean) for s in only_swaps)
    assert augment.eda("?!", random.Random(0), synonyms, n_aug=2) == ["?!", "?!"]
    assert augment.eda(sentence, random.Random(0), synonyms, n_aug=0) == []


def test_augment_records_keeps_each_record_and_its_label_and_is_seeded():
    records = [{"text": f"a good movie number {i} with a plot", "label": i % 2,
                "_where": f"train.jsonl:{i + 1}"} for i in range(6)]
    data = _config(n_aug=3).data
    out = augment.augment_records(records, data, seed=0, synonyms=synonyms)
    assert len(out) == 6 * 4 and out[::4] == records
    for i, record in enumerate(records):
        copies = out[4 * i + 1:4 * i + 4]
        assert [c["label"] for c in copies] == [record["label"]] * 3
        assert [c["_where"] for c in copies] == [f"train.jsonl:{i + 1} (eda {k})"
                                                 for k in (1, 2, 3)]
    assert out == augment.augment_records(records, data, seed=0, synonyms=synonyms)
    assert out != augment.augment_records(records, data, seed=1, synonyms=synonyms)


def test_wordnet_asset_gives_known_synonyms():
    from sft_jax import assets

    good = augment.wordnet_synonyms()("good")
    assert "well" in good and "good" not in good and list(good) == sorted(good)
    lexnames = (assets.fetch("wordnet") / "lexnames").read_text().splitlines()
    assert len(lexnames) == 45 and lexnames[0] == "00\tadj.all\t3" \
        and lexnames[-1] == "44\tadj.ppl\t3"


def test_training_split_grows_by_n_aug_per_record_and_a_resume_sees_the_same(
        tmp_path, tiny_bert_dir, tiny_corpus_dir, monkeypatch):
    from sft_jax import tasks

    monkeypatch.setattr(augment, "wordnet_synonyms", lambda: synonyms)
    config = apply_overrides(_config(n_aug=2), tiny_overrides(tiny_bert_dir, tiny_corpus_dir))
    config.data.limit_train = 8
    plain = apply_overrides(load_config("classification", "runlocal"),
                            tiny_overrides(tiny_bert_dir, tiny_corpus_dir))
    plain.data.limit_train = 8
    base = tasks.get_task(plain, tmp_path / "plain").records
    first = tasks.get_task(config, tmp_path / "run").records
    resumed = tasks.get_task(config, tmp_path / "run").records
    assert len(first["train"]) == 3 * len(base["train"]) == 24
    assert first["train"][::3] == base["train"] and first["validation"] == base["validation"]
    assert resumed == first


def test_augment_on_another_task_is_one_line_naming_it():
    config = load_config("dialogue", None)
    config.data.augment = "eda"
    with pytest.raises(UserInputError) as err:
        validate.check_config(config)
    assert str(err.value).startswith("--config.data.augment: ") and "classification" in \
        str(err.value) and "\n" not in str(err.value)


def test_wordnet_not_fetchable_is_one_line(tmp_path, monkeypatch):
    augment._reader.cache_clear()
    monkeypatch.setenv("SFT_JAX_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PATH", str(tmp_path))  # no apt-get
    with pytest.raises(UserInputError) as err:
        augment.wordnet_synonyms()
    message = str(err.value)
    assert message.startswith("data.augment: asset wordnet: ") and "apt-get" in message \
        and "\n" not in message, message
