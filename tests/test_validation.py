"""Validate before work: every config value (`sft_jax.validate`), every record's field
types, the malformed-JSON column; each error one line naming the key or file:line."""

from __future__ import annotations

import functools
import json

import ml_collections
import pytest
import test_cli_errors
from conftest import load_config
from test_cli_errors import assert_user_error, run_cli, write_lines

tiny = test_cli_errors.tiny  # the fixture: overrides for the tiny BERT and corpus

CONFIGS = [("classification", "runlocal"), ("classification", "lora"), ("dialogue", None),
           ("translation", None), ("translation", "decoder"), ("summarization", "t5"),
           ("linear", None)]

# key -> (a value its rule refuses, a fragment of the message). Every rule has a row.
BAD_VALUES = {
    "task": ("regression", "one of 'classification'"),
    "seed": (1.5, "an integer"),
    "label": (3, "a string, got int 3"),
    "model.checkpoint": (3, "a string, got int 3"),
    "model.dtype": ("int8", "floating-point dtype"),
    "model.dropout": (1.0, "< 1"),
    "model.remat": ("some", "'none', 'full', 'dots'"),
    "model.attention": ("flash", "'auto', 'xla', 'blockwise', 'cudnn'"),
    "model.attention_block": (0, ">= 1"),
    "model.pooling": ("max", "'pooler'"),
    "model.classifier_dropout": (2.0, "< 1"),
    "model.from_scratch": ("t5", "a dict"),
    "model.tokenizer": (None, "a string"),
    "data.train": (["a.jsonl"], "a string"),
    "data.validation": (0, "a string"),
    "data.test": (False, "a string"),
    "data.max_length": (0, ">= 2, got 0"),
    "data.buckets": ((32, 16), "strictly increasing"),
    "data.group_by_length": (-1, ">= 0"),
    "data.tfds_data_dir": (1, "a string"),
    "data.limit_train": (-5, ">= 0"),
    "data.train_size": (-1, ">= 0"),
    "data.train_fraction": (0.0, "in (0, 1]"),
    "data.folds": (1, "0 (off) or >= 2"),
    "data.fold": (-1, ">= 0"),
    "data.fold_seed": (0.5, "an integer"),
    "data.cv_validation_fraction": (1.0, "in [0, 1)"),
    "data.augment": ("backtranslate", "one of '', 'eda', 'backtranslation'"),
    "data.bt_model": ("", "a model asset name or Hugging Face directory"),
    "data.bt_pivot": ("Klingon", "one of 'Spanish'"),
    "data.bt_batch_size": (0, ">= 1"),
    "data.bt_max_new_tokens": (0, ">= 1"),
    "data.bt_cache": (None, "a string"),
    "data.eda_alpha_sr": (1.5, "in [0, 1]"),
    "data.eda_alpha_ri": (-0.1, "in [0, 1]"),
    "data.eda_alpha_rs": ("0.1", "a finite number"),
    "data.eda_alpha_rd": (2, "in [0, 1]"),
    "data.eda_n_aug": (-1, ">= 0"),
    "data.limit_eval": (0.5, "an integer"),
    "data.text_field": ("", "non-empty field name"),
    "data.text_pair_field": (None, "a string"),
    "data.label_field": ("", "non-empty"),
    "data.chat_template": (1, "a string"),
    "data.loss_on": ("everything", "'assistant'"),
    "data.packing": ("yes", "true or false"),
    "data.source_field": ("", "non-empty"),
    "data.target_field": ("", "non-empty"),
    "data.source_prefix": ("{0}: ", "str.format template"),
    "data.prompt_template": ("{source", "str.format template"),
    "data.max_source_length": (1, ">= 2"),
    "data.max_target_length": (0, ">= 2"),
    "data.source_buckets": ((0, 8), "positive"),
    "data.target_buckets": (("8",), "a list of integers"),
    "data.vocab_size": (0, ">= 1"),
    "data.tokenizer_kind": ("wordpiece", "'unigram', 'bpe'"),
    "optim.learning_rate": (-1e-4, ">= 0"),
    "optim.schedule": ("step", "'linear'"),
    "optim.warmup_steps": (-1, ">= 0"),
    "optim.warmup_ratio": (1.5, "in [0, 1]"),
    "optim.end_learning_rate_ratio": (-0.1, ">= 0"),
    "optim.weight_decay": (float("nan"), "a finite number"),
    "optim.b1": (1.0, "in [0, 1)"),
    "optim.b2": (-0.5, "in [0, 1)"),
    "optim.eps": (-1e-8, ">= 0"),
    "optim.max_grad_norm": (float("inf"), "a finite number"),
    "optim.grad_accum": (0, ">= 1"),
    "peft.method": ("prefix", "'none', 'lora', 'freeze'"),
    "peft.lora_rank": (0, ">= 1"),
    "peft.lora_alpha": ("16", "a finite number"),
    "peft.lora_dropout": (1.0, "in [0, 1)"),
    "peft.lora_targets": (("query(",), "valid regular expressions"),
    "peft.head_only": (1, "true or false"),
    "peft.last_n_layers": (-2, ">= 0"),
    "peft.bitfit": ("no", "true or false"),
    "peft.train_patterns": ("bias", "a list of strings"),
    "train.steps": (-1, ">= 0"),
    "train.batch_size": (0, ">= 1"),
    "train.parallelism": ("shard_map", "'jit', 'pmap'"),
    "train.on_nonfinite": ("halt", "'stop', 'skip', 'ignore'"),
    "train.replicas": (0, ">= 1"),
    "train.log_every": (0, ">= 1"),
    "train.eval_every": (-10, ">= 0"),
    "train.progress_bar": (None, "true or false"),
    "train.label_smoothing": (1.0, "in [0, 1)"),
    "train.loss_chunk": (-1, ">= 0"),
    "train.early_stopping_patience": (-1, ">= 0"),
    "train.early_stopping_min_delta": (-0.01, ">= 0"),
    "train.neftune_alpha": (-5.0, ">= 0"),
    "eval.batch_size": (0, ">= 1, got 0"),
    "eval.splits": (("train",), "'validation', 'test'"),
    "eval.periodic_split": ("dev", "'validation'"),
    "eval.write_predictions": ("true", "true or false"),
    "eval.metrics": (("meteor",), "'bleu', 'chrf', 'rouge'"),
    "eval.bleu_tokenize": ("spaces", "sacrebleu tokenizer"),
    "eval.num_beams": (0, ">= 1"),
    "eval.length_penalty": (None, "a finite number"),
    "eval.early_stopping": ("never", "true or false"),
    "eval.max_new_tokens": (0, ">= 1"),
    "eval.generation_batch_size": (-1, ">= 1"),
    "eval.generate_limit": (-1, ">= 0"),
    "eval.stop_tokens": ((1,), "a list of strings"),
    "eval.num_samples": (-1, ">= 0"),
    "eval.temperature": (-0.5, ">= 0"),
    "eval.top_k": (-1, ">= 0"),
    "eval.top_p": (0.0, "in (0, 1]"),
    "mesh.data": (0, "-1 (the rest) or >= 1"),
    "mesh.fsdp": (-2, "-1 (the rest) or >= 1"),
    "mesh.tensor": ("2", "an integer"),
    "mesh.rules": ((("batch",),), "pairs"),
    "checkpoint.every": (-1, ">= 0"),
    "checkpoint.keep": (0, ">= 1"),
    "linear.features": ("tf", "'tfidf', 'binary', 'counts'"),
    "linear.classifier": ("svm", "'logreg', 'mnb', 'nbsvm'"),
    "linear.ngram_max": (0, ">= 1"),
    "linear.token_pattern": ("(", "valid regular expression"),
    "linear.lowercase": ("yes", "true or false"),
    "linear.sublinear_tf": (1, "true or false"),
    "linear.C": (0.0, "> 0"),
    "linear.c_grid": ((1.0, -2.0), "() or positive numbers"),
    "linear.alpha": (-1.0, "> 0"),
    "linear.beta": (1.5, "in [0, 1]"),
    "linear.max_iter": (0, ">= 1"),
    "checkpoint.best_metric": (None, "a string"),
    "checkpoint.best_mode": ("maximum", "'max', 'min'"),
    "checkpoint.use_best_for_final": (0, "true or false"),
    "checkpoint.export": ("no", "true or false"),
    "distributed.initialize": ("auto", "true or false"),
    "distributed.coordinator_address": (None, "a string"),
    "distributed.num_processes": (-1, ">= 0"),
    "distributed.process_id": (-2, ">= -1"),
    "distributed.local_device_ids": ((0, -1), "device ids >= 0"),
}

# (overrides breaking a rule over several keys, fragments of the message)
BAD_COMBINATIONS = {
    "two -1 mesh axes": ({"mesh.data": -1, "mesh.fsdp": -1}, ("--config.mesh.data",
                                                               "at most one of them -1")),
    "coordinator without process id": (
        {"distributed.coordinator_address": "localhost:1234", "distributed.num_processes": 2},
        ("--config.distributed.coordinator_address", "process_id=-1", "0 <= process_id")),
    "train size and fraction": ({"data.train_size": 100, "data.train_fraction": 0.5},
                                ("--config.data.train_size", "at most one of them set")),
    "fold out of range": ({"data.folds": 5, "data.fold": 5, "data.validation": "",
                           "data.test": ""}, ("--config.data.fold", "data.fold < data.folds")),
    "fold without folds": ({"data.fold": 1}, ("--config.data.fold", "data.folds = 0")),
    "validation under folds": ({"data.folds": 10, "data.test": ""},
                               ("--config.data.validation", "empty when data.folds > 0")),
    "test under folds": ({"data.folds": 10, "data.validation": ""},
                         ("--config.data.test", "empty when data.folds > 0")),
    "eda without an operation": (
        {"data.augment": "eda", "data.eda_alpha_sr": 0.0, "data.eda_alpha_ri": 0.0,
         "data.eda_alpha_rs": 0.0, "data.eda_alpha_rd": 0.0},
        ("--config.data.augment", "at least one eda_alpha_* > 0")),
    "early stopping without evaluations": (
        {"train.early_stopping_patience": 3, "train.eval_every": 0},
        ("--config.train.early_stopping_patience", "train.eval_every > 0")),
}


def _loose(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """An unlocked, type-unsafe copy, so that a test can put any value anywhere."""
    return ml_collections.ConfigDict(config.to_dict(), type_safe=False)


def _set(config: ml_collections.ConfigDict, key: str, value) -> None:
    section, _, name = key.rpartition(".")
    (config[section] if section else config)[name] = value


@functools.cache
def _config_with(key: str) -> ml_collections.ConfigDict:
    """A shipped config that has `key`."""
    from sft_jax import validate

    for name, arg in CONFIGS:
        config = load_config(name, arg)
        if key in validate.flat_items(config):
            return config
    raise AssertionError(f"no shipped config has {key}")


def test_every_key_of_every_shipped_config_has_a_rule_and_passes_it():
    from sft_jax import validate

    keys = set()
    for name, arg in CONFIGS:
        config = load_config(name, arg)
        validate.check_config(config)
        keys |= set(validate.flat_items(config))
    assert keys == set(validate.RULES), "add a rule in sft_jax/validate.py for each new key"
    assert set(BAD_VALUES) == set(validate.RULES), "add a refused value to BAD_VALUES"


@pytest.mark.parametrize("key", BAD_VALUES)
def test_bad_value_names_the_key(key):
    from sft_jax import validate
    from sft_jax.errors import UserInputError

    value, fragment = BAD_VALUES[key]
    config = _loose(_config_with(key))
    _set(config, key, value)
    with pytest.raises(UserInputError) as err:
        validate.check_config(config)
    message = str(err.value)
    assert message.startswith(f"--config.{key}: must be "), message
    assert fragment in message and "\n" not in message, message


@pytest.mark.parametrize("case", BAD_COMBINATIONS)
def test_bad_combination_names_the_keys(case):
    from sft_jax import validate
    from sft_jax.errors import UserInputError

    overrides, fragments = BAD_COMBINATIONS[case]
    config = _loose(load_config("classification", "runlocal"))
    for key, value in overrides.items():
        _set(config, key, value)
    with pytest.raises(UserInputError) as err:
        validate.check_config(config)
    assert all(f in str(err.value) for f in fragments), str(err.value)


@pytest.mark.parametrize(("key", "value"), [("eval.batch_size", 0), ("data.max_length", 0)])
def test_bad_config_value_stops_the_cli_before_any_work(tmp_path, tiny, key, value):
    workdir = tmp_path / "run"
    proc = run_cli(workdir, {**tiny, key: value})
    assert_user_error(proc, f"--config.{key}: must be ", f"got {value}")
    assert not workdir.exists(), sorted(p.name for p in workdir.iterdir())


def _records(tmp_path, *records: dict):
    return write_lines(tmp_path / "train.jsonl", [json.dumps(r) for r in records])


def test_classification_text_that_is_a_number_stops_before_training(tmp_path, tiny):
    good = [{"text": "good", "label": "pos"}, {"text": "bad", "label": "neg"}] * 5
    train = _records(tmp_path, good[0], {"text": 3, "label": "neg"}, *good)
    proc = run_cli(tmp_path / "run", {**tiny, "data.train": train})
    assert_user_error(proc, f"{train}:2: field 'text' is a number, expected a string "
                            "(data.text_field)")
    assert not (tmp_path / "run" / "checkpoints").exists()
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def _read(tmp_path, config, check, *records: dict) -> str:
    """The one-line error of reading `records` as data.train with the task's `check`."""
    from sft_jax.errors import UserInputError
    from sft_jax.tasks.base import TaskBase

    config = _loose(config)
    _set(config, "data.train", str(_records(tmp_path, *records)))
    for split in ("validation", "test"):
        _set(config, f"data.{split}", "")
    with pytest.raises(UserInputError) as err:
        TaskBase(config, tmp_path).read_records(check)
    return str(err.value)


def test_record_field_types_per_task(tmp_path):
    from sft_jax.data import chat
    from sft_jax.tasks import base, seq2seq

    config = load_config("translation", "runlocal")
    train = tmp_path / "train.jsonl"
    message = _read(tmp_path, config, functools.partial(seq2seq.check_record, config.data),
                    {"en": "a", "es": "b"}, {"en": ["a", "list"], "es": "b"})
    assert message == f"{train}:2: field 'en' is a list, expected a string (data.source_field)"
    message = _read(tmp_path, config, functools.partial(seq2seq.check_record, config.data),
                    {"en": "a", "es": 7.5})
    assert message == f"{train}:1: field 'es' is a number, expected a string (data.target_field)"
    message = _read(tmp_path, load_config("dialogue", "runlocal"), chat.conversation,
                    {"messages": [{"role": "user", "content": 42}]})
    assert message.startswith(f"{train}:1: messages[0].content must be a string"), message
    label = ("label", "data.label_field", (str, int, bool))
    with pytest.raises(Exception, match=r"^r:1: field 'label' is a list, expected a string or "
                                        r"a number or a boolean \(data\.label_field\)$"):
        base.check_field({"label": ["pos"], "_where": "r:1"}, *label)
    base.check_field({"label": 1, "_where": "r:1"}, *label)


@pytest.mark.parametrize(("text", "line", "column"), [
    ('{"a": 1}\n{"text": "oops", "label": \n', 2, 27),
    ('{"a": 1}\n{"text": "x" "label": 1}\n', 2, 14),
])
def test_malformed_json_names_the_real_column(tmp_path, text, line, column):
    from sft_jax.data import sources
    from sft_jax.errors import UserInputError

    path = tmp_path / "x.jsonl"
    path.write_text(text)
    with pytest.raises(UserInputError) as err:
        sources.read_records(str(path), config_key="data.train")
    assert str(err.value).startswith(f"{path}:{line}: malformed JSON: "), str(err.value)
    assert str(err.value).endswith(f"(column {column})"), str(err.value)
