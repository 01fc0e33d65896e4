"""Back-translation augmentation (`sft_jax.generation.backtranslation`): the cache is
written once and reused (generate calls counted), paraphrases follow their records with
labels kept, empty and identical ones are dropped and counted, one-line errors."""

from __future__ import annotations

import json
import logging

import pytest
from conftest import apply_overrides, load_config, tiny_overrides

from sft_jax import validate
from sft_jax.errors import UserInputError
from sft_jax.generation import backtranslation as bt
from sft_jax.generation import loop


def _data(model, cache, **keys):
    config = load_config("classification", "runlocal")
    config.data.augment = "backtranslation"
    config.data.bt_model = str(model)
    config.data.bt_cache = str(cache)
    for key, value in keys.items():
        config.data[key] = value
    return config


def _count_generate(monkeypatch) -> list[int]:
    """The number of prompts of each `loop.generate` call, from now on."""
    calls: list[int] = []
    generate = loop.generate

    def counted(*args, **kwargs):
        calls.append(len(args[3]))
        return generate(*args, **kwargs)

    monkeypatch.setattr(loop, "generate", counted)
    return calls


def _records(*texts):
    return [{"text": t, "label": i % 2, "_where": f"train.jsonl:{i + 1}"}
            for i, t in enumerate(texts)]


def test_cache_is_written_once_and_reused(tmp_path, tiny_chat_model, monkeypatch):
    data = _data(tiny_chat_model, tmp_path / "cache", bt_max_new_tokens=3,
                 bt_batch_size=2).data
    path = bt.cache_file(tmp_path / "cache", bt.Settings.from_config(data))
    path.parent.mkdir()
    known = {"text": "a good film", "pivot_text": "una buena película",
             "paraphrase": "a fine film"}
    path.write_text(json.dumps(known) + "\n")
    calls = _count_generate(monkeypatch)
    records = _records("a good film", "the plot is dull", "a good film", "no fun")
    out, stats = bt.augment_records(records, data, tmp_path / "workdir")
    assert calls[0] == 2  # the two texts the cache lacks, to the pivot, in one batch
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["text"] for r in lines] == ["a good film", "no fun", "the plot is dull"]
    assert lines[0] == known and all(set(r) == set(known) for r in lines)

    rows = {r["text"]: r for r in lines}
    originals = [r for r in out if "(backtranslation)" not in r["_where"]]
    assert originals == records and stats["train/paraphrases"] == len(out) - 4
    assert out[1]["text"] == "a fine film" and out[1]["label"] == 0
    for i, record in enumerate(out):  # a paraphrase follows its record, label kept
        if "(backtranslation)" in record["_where"]:
            source = out[i - 1]
            assert record["_where"] == f"{source['_where']} (backtranslation)"
            assert record["label"] == source["label"]
            assert record["text"] == rows[source["text"]]["paraphrase"]

    done = len(calls)
    again = bt.augment_records(records, data, tmp_path / "workdir")
    assert len(calls) == done and again == (out, stats)  # nothing generated


def test_empty_and_identical_paraphrases_are_dropped_and_counted(
        tmp_path, tiny_bert_dir, tiny_corpus_dir, monkeypatch, caplog):
    from sft_jax import tasks

    config = apply_overrides(_data(tiny_bert_dir, tmp_path / "cache"),
                             tiny_overrides(tiny_bert_dir, tiny_corpus_dir))
    config.data.limit_train = 6
    train = [json.loads(line) for line in
             (tiny_corpus_dir / "train.jsonl").read_text().splitlines()[:6]]
    assert len({r["text"] for r in train}) == 6
    paraphrase = {0: "", 1: train[1]["text"].upper() + " !"}  # empty; the same words
    path = bt.cache_file(tmp_path / "cache", bt.Settings.from_config(config.data))
    path.parent.mkdir()
    path.write_text("".join(json.dumps({"text": r["text"], "pivot_text": "x",
                                        "paraphrase": paraphrase.get(i, f"new {i}")}) + "\n"
                            for i, r in enumerate(train)) + '{"text": "cut sh')
    monkeypatch.setattr(loop, "generate", None)  # every text is in the cache: not called
    with caplog.at_level(logging.INFO, "sft_jax"):
        task = tasks.get_task(config, tmp_path / "run")
    out = task.records["train"]
    texts = [r["text"] for r in train]
    assert [r["text"] for r in out[:2] + out[2::2]] == texts  # 0 and 1 lost theirs
    assert all(r["_where"].endswith(" (backtranslation)") for r in out[3::2])
    assert [r["text"] for r in out[3::2]] == [f"new {i}" for i in range(2, 6)]
    assert [r["label"] for r in out[3::2]] == [r["label"] for r in train[2:]]
    stats = task.data_stats()
    assert stats["train/paraphrases"] == 4 and stats["train/paraphrases_dropped"] == 2
    assert stats["train/examples"] == 10
    assert any("backtranslation" in m and "0 generated" in m for m in caplog.messages)


def test_bad_settings_are_one_line_naming_the_key(tmp_path, tiny_bert_dir):
    for key, value in (("augment", "backtranslate"), ("bt_batch_size", 0),
                       ("bt_pivot", "Klingon"), ("bt_max_new_tokens", 0)):
        config = _data("gemma3-270m", tmp_path)
        config.data[key] = value
        with pytest.raises(UserInputError) as err:
            validate.check_config(config)
        message = str(err.value)
        assert message.startswith(f"--config.data.{key}: ") and "\n" not in message, message
    with pytest.raises(UserInputError) as err:
        bt.Settings.from_config(_data(tmp_path / "none", tmp_path).data)
    assert str(err.value).startswith("data.bt_model: ") and "\n" not in str(err.value)
    encoder = _data(tiny_bert_dir, tmp_path).data
    with pytest.raises(UserInputError) as err:
        bt.augment_records(_records("a film"), encoder, tmp_path)
    assert str(err.value).startswith("data.bt_model: ") and "decoder-only" in str(err.value)
