"""Every config value checked before any work: one table of rules, one pass.

`check_config(config)` runs at the start of a run (before the workdir, the model or the
data is touched) and raises `UserInputError` naming the first bad `--config.KEY`, its
value and what it must be. `RULES` maps each key of the shipped configs (`configs/*.py`,
defaults in `sft_jax.config`) to its type and range; a key a config does not have is not
checked, a key without a rule is left alone (a notebook may add its own). `CROSS` holds
the few rules that join several keys. Checks that need the model or the data (a bucket
list ending at a task's own length, `checkpoint.best_metric` naming a task metric) stay
with the code that has them.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import ml_collections

from sft_jax import tasks
from sft_jax.data.augment import AUGMENTS
from sft_jax.data.chat import LOSS_ON
from sft_jax.data.seq2seq import check_template
from sft_jax.errors import UserInputError
from sft_jax.generation.backtranslation import PIVOTS
from sft_jax.linear.models import CLASSIFIERS, FEATURES
from sft_jax.models.attention import IMPLEMENTATIONS
from sft_jax.models.common import REMAT_POLICIES, canonical_dtype
from sft_jax.models.heads import POOLINGS
from sft_jax.peft.plan import METHODS

SPLITS = ("validation", "test")  # the evaluated splits
TEXT_METRICS = ("bleu", "chrf", "rouge")  # seq2seq eval.metrics
SCHEDULES = ("linear", "cosine", "constant")
TOKENIZER_KINDS = ("unigram", "bpe")


@dataclass(frozen=True)
class Rule:
    """`kind`: int | float (finite; ints accepted) | bool | str | strs / ints / floats (a
    tuple or list of them) | dict (a ConfigDict, not looked into) | rules (mesh rules); `ok` tests
    a value of that kind, `expect` says what it wants."""

    kind: str
    ok: Callable[[Any], bool] | None = None
    expect: str = ""


_KINDS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "int": (lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer"),
    "float": (lambda v: isinstance(v, int | float) and not isinstance(v, bool)
              and math.isfinite(v), "a finite number"),
    "bool": (lambda v: isinstance(v, bool), "true or false"),
    "str": (lambda v: isinstance(v, str), "a string"),
    "strs": (lambda v: isinstance(v, Sequence) and not isinstance(v, str)
             and all(isinstance(x, str) for x in v), "a list of strings"),
    "floats": (lambda v: isinstance(v, Sequence) and not isinstance(v, str)
               and all(isinstance(x, int | float) and not isinstance(x, bool)
                       and math.isfinite(x) for x in v), "a list of finite numbers"),
    "ints": (lambda v: isinstance(v, Sequence) and not isinstance(v, str)
             and all(isinstance(x, int) and not isinstance(x, bool) for x in v),
             "a list of integers"),
    "dict": (lambda v: isinstance(v, ml_collections.ConfigDict | dict), "a dict"),
    "rules": (lambda v: isinstance(v, Sequence) and all(_is_axis_rule(r) for r in v),
              "a list of (logical axis, mesh axis or axes or None) pairs"),
}


def _is_axis_rule(rule: Any) -> bool:
    if not isinstance(rule, Sequence) or isinstance(rule, str) or len(rule) != 2:
        return False
    axes = rule[1]
    return isinstance(rule[0], str) and (
        axes is None or isinstance(axes, str)
        or (isinstance(axes, Sequence) and all(isinstance(a, str) for a in axes)))


def at_least(low: float, kind: str = "int") -> Rule:
    return Rule(kind, lambda v: v >= low, f">= {low}")


def within(low: float, high: float, *, open_high: bool = False, open_low: bool = False
           ) -> Rule:
    """A float in [low, high] (`open_*`: that end excluded)."""
    return Rule("float",
                lambda v: (v > low if open_low else v >= low)
                and (v < high if open_high else v <= high),
                f"in {'(' if open_low else '['}{low}, {high}{')' if open_high else ']'}")


def one_of(choices: Sequence[str]) -> Rule:
    return Rule("str", lambda v: v in choices,
                "one of " + ", ".join(repr(c) for c in choices))


def each_of(choices: Sequence[str]) -> Rule:
    return Rule("strs", lambda v: all(x in choices for x in v),
                "a list of " + ", ".join(repr(c) for c in choices))


def _passes(check: Callable[[Any], Any], value: Any) -> bool:
    try:
        check(value)
    except (UserInputError, re.error, TypeError):
        return False
    return True


def _bleu_tokenizers() -> list[str]:
    from sacrebleu.metrics import BLEU  # only read when a config has eval.bleu_tokenize

    return sorted(BLEU.TOKENIZERS)


NAME = Rule("str", bool, "a non-empty field name")
TEMPLATE = Rule("str", lambda v: _passes(lambda t: check_template(t, ""), v),
                "a str.format template with named fields only")
REGEXES = Rule("strs", lambda v: all(_passes(re.compile, p) for p in v),
               "a list of valid regular expressions")
BUCKETS = Rule("ints", lambda v: all(b > 0 for b in v) and list(v) == sorted(set(v)),
               "() or positive, strictly increasing lengths")
MESH_AXIS = Rule("int", lambda v: v == -1 or v >= 1, "-1 (the rest) or >= 1")
DROPOUT = Rule("float", lambda v: v < 1, "< 1 (negative: the checkpoint's own rates)")
POSITIVE = Rule("float", lambda v: v > 0, "> 0")

RULES: dict[str, Rule] = {
    "task": one_of(sorted([*tasks.TASKS, *tasks.FITTED])),
    "seed": Rule("int"),
    "label": Rule("str"),
    # model
    "model.checkpoint": Rule("str"),
    "model.dtype": Rule("str", lambda v: _passes(canonical_dtype, v),
                        "a floating-point dtype (float32, bfloat16, float16)"),
    "model.dropout": DROPOUT,
    "model.remat": one_of(REMAT_POLICIES),
    "model.attention": one_of(IMPLEMENTATIONS),
    "model.attention_block": at_least(1),
    "model.pooling": one_of(("", *POOLINGS)),
    "model.classifier_dropout": DROPOUT,
    "model.from_scratch": Rule("dict"),
    "model.tokenizer": Rule("str"),
    # data
    "data.train": Rule("str"),
    "data.validation": Rule("str"),
    "data.test": Rule("str"),
    "data.max_length": at_least(2),
    "data.buckets": BUCKETS,
    "data.group_by_length": at_least(0),
    "data.tfds_data_dir": Rule("str"),
    "data.limit_train": at_least(0),
    "data.limit_eval": at_least(0),
    "data.train_size": at_least(0),
    "data.train_fraction": within(0, 1, open_low=True),
    "data.folds": Rule("int", lambda v: v == 0 or v >= 2, "0 (off) or >= 2"),
    "data.fold": at_least(0),
    "data.fold_seed": Rule("int"),
    "data.cv_validation_fraction": within(0, 1, open_high=True),
    "data.augment": one_of(AUGMENTS),
    "data.eda_alpha_sr": within(0, 1),
    "data.eda_alpha_ri": within(0, 1),
    "data.eda_alpha_rs": within(0, 1),
    "data.eda_alpha_rd": within(0, 1),
    "data.eda_n_aug": at_least(0),
    "data.bt_model": Rule("str", bool, "a model asset name or Hugging Face directory"),
    "data.bt_pivot": one_of(PIVOTS),
    "data.bt_batch_size": at_least(1),
    "data.bt_max_new_tokens": at_least(1),
    "data.bt_cache": Rule("str"),
    "data.text_field": NAME,
    "data.text_pair_field": Rule("str"),
    "data.label_field": NAME,
    "data.chat_template": Rule("str"),
    "data.loss_on": one_of(LOSS_ON),
    "data.packing": Rule("bool"),
    "data.source_field": NAME,
    "data.target_field": NAME,
    "data.source_prefix": TEMPLATE,
    "data.prompt_template": TEMPLATE,
    "data.max_source_length": at_least(2),
    "data.max_target_length": at_least(2),
    "data.source_buckets": BUCKETS,
    "data.target_buckets": BUCKETS,
    "data.vocab_size": at_least(1),
    "data.tokenizer_kind": one_of(TOKENIZER_KINDS),
    # linear (sft_jax.linear)
    "linear.features": one_of(FEATURES),
    "linear.classifier": one_of(CLASSIFIERS),
    "linear.ngram_max": at_least(1),
    "linear.token_pattern": Rule("str", lambda v: bool(v) and _passes(re.compile, v),
                                 "a non-empty valid regular expression"),
    "linear.lowercase": Rule("bool"),
    "linear.sublinear_tf": Rule("bool"),
    "linear.C": POSITIVE,
    "linear.c_grid": Rule("floats", lambda v: all(c > 0 for c in v), "() or positive numbers"),
    "linear.alpha": POSITIVE,
    "linear.beta": within(0, 1),
    "linear.max_iter": at_least(1),
    # optim
    "optim.learning_rate": at_least(0, "float"),
    "optim.schedule": one_of(SCHEDULES),
    "optim.warmup_steps": at_least(0),
    "optim.warmup_ratio": within(0, 1),
    "optim.end_learning_rate_ratio": at_least(0, "float"),
    "optim.weight_decay": at_least(0, "float"),
    "optim.b1": within(0, 1, open_high=True),
    "optim.b2": within(0, 1, open_high=True),
    "optim.eps": at_least(0, "float"),
    "optim.max_grad_norm": at_least(0, "float"),
    "optim.grad_accum": at_least(1),
    # peft
    "peft.method": one_of(METHODS),
    "peft.lora_rank": at_least(1),
    "peft.lora_alpha": Rule("float"),
    "peft.lora_dropout": within(0, 1, open_high=True),
    "peft.lora_targets": REGEXES,
    "peft.head_only": Rule("bool"),
    "peft.last_n_layers": at_least(0),
    "peft.bitfit": Rule("bool"),
    "peft.train_patterns": REGEXES,
    # train
    "train.steps": at_least(0),
    "train.batch_size": at_least(1),
    "train.parallelism": one_of(("jit", "pmap")),
    "train.on_nonfinite": one_of(("stop", "skip", "ignore")),
    "train.replicas": at_least(1),
    "train.log_every": at_least(1),
    "train.eval_every": at_least(0),
    "train.progress_bar": Rule("bool"),
    "train.label_smoothing": within(0, 1, open_high=True),
    "train.loss_chunk": at_least(0),
    "train.early_stopping_patience": at_least(0),
    "train.early_stopping_min_delta": at_least(0, "float"),
    "train.neftune_alpha": at_least(0, "float"),
    # eval
    "eval.batch_size": at_least(1),
    "eval.splits": each_of(SPLITS),
    "eval.periodic_split": one_of(("", *SPLITS)),
    "eval.write_predictions": Rule("bool"),
    "eval.metrics": each_of(TEXT_METRICS),
    "eval.bleu_tokenize": Rule("str", lambda v: v in _bleu_tokenizers(),
                               "a sacrebleu tokenizer (13a, intl, zh, char, none, ...)"),
    "eval.num_beams": at_least(1),
    "eval.length_penalty": Rule("float"),
    "eval.early_stopping": Rule("bool"),
    "eval.max_new_tokens": at_least(1),
    "eval.generation_batch_size": at_least(1),
    "eval.generate_limit": at_least(0),
    "eval.stop_tokens": Rule("strs"),
    "eval.num_samples": at_least(0),
    "eval.temperature": at_least(0, "float"),
    "eval.top_k": at_least(0),
    "eval.top_p": within(0, 1, open_low=True),
    # mesh
    "mesh.data": MESH_AXIS,
    "mesh.fsdp": MESH_AXIS,
    "mesh.tensor": MESH_AXIS,
    "mesh.rules": Rule("rules"),
    # checkpoint
    "checkpoint.every": at_least(0),
    "checkpoint.keep": at_least(1),
    "checkpoint.best_metric": Rule("str"),
    "checkpoint.best_mode": one_of(("max", "min")),
    "checkpoint.use_best_for_final": Rule("bool"),
    "checkpoint.export": Rule("bool"),
    # distributed
    "distributed.initialize": Rule("bool"),
    "distributed.coordinator_address": Rule("str"),
    "distributed.num_processes": at_least(0),
    "distributed.process_id": at_least(-1),
    "distributed.local_device_ids": Rule("ints", lambda v: all(i >= 0 for i in v),
                                         "a list of device ids >= 0"),
}

# (keys, test over their values, what it wants): checked once every key passed its rule.
CROSS: list[tuple[tuple[str, ...], Callable[..., bool], str]] = [
    (("mesh.data", "mesh.fsdp", "mesh.tensor"),
     lambda *axes: list(axes).count(-1) <= 1, "at most one of them -1"),
    (("distributed.coordinator_address", "distributed.num_processes",
      "distributed.process_id"),
     lambda address, n, i: not address or (n >= 1 and 0 <= i < n),
     "with a coordinator address, num_processes >= 1 and 0 <= process_id < num_processes"),
    (("data.train_size", "data.train_fraction"),
     lambda size, fraction: not size or fraction == 1, "at most one of them set"),
    (("data.fold", "data.folds"),
     lambda fold, folds: fold < folds or fold == folds == 0,
     "0 <= data.fold < data.folds (data.folds = 0: cross-validation off, fold 0)"),
    (("data.train", "data.folds"), lambda train, folds: bool(train) or not folds,
     "the pool to cross-validate in data.train when data.folds > 0"),
    (("data.validation", "data.folds"), lambda split, folds: not split or not folds,
     "data.validation empty when data.folds > 0 (it is carved from the pool)"),
    (("data.test", "data.folds"), lambda split, folds: not split or not folds,
     "data.test empty when data.folds > 0 (the held-out fold is the test split)"),
    (("data.augment", "task"),
     lambda augment, task: not augment or task in ("classification", "linear"),
     "task 'classification' or 'linear' (training-text augmentation is for classifiers "
     "only)"),
    (("data.augment", "data.eda_n_aug", "data.eda_alpha_sr", "data.eda_alpha_ri",
      "data.eda_alpha_rs", "data.eda_alpha_rd"),
     lambda augment, n_aug, *alphas: augment != "eda" or not n_aug or any(alphas),
     "with eda and eda_n_aug > 0, at least one eda_alpha_* > 0"),
    (("train.early_stopping_patience", "train.eval_every", "checkpoint.best_metric",
      "eval.periodic_split"),
     lambda patience, every, metric, split: not patience or (every and metric and split),
     "with a patience > 0, train.eval_every > 0, a checkpoint.best_metric and an "
     "eval.periodic_split"),
]


def flat_items(config: ml_collections.ConfigDict, prefix: str = "") -> dict[str, Any]:
    """'section.key' -> value of every leaf (a `dict` rule's value is one leaf)."""
    out: dict[str, Any] = {}
    for name, value in config.items():
        key = prefix + name
        rule = RULES.get(key)
        if isinstance(value, ml_collections.ConfigDict) and (rule is None or rule.kind != "dict"):
            out.update(flat_items(value, key + "."))
        else:
            out[key] = value
    return out


def check_config(config: ml_collections.ConfigDict) -> None:
    """Raises `UserInputError` naming the first `--config.KEY` whose value breaks its
    rule in `RULES` or `CROSS`; returns None when every value is fine."""
    values = flat_items(config)
    for key, value in values.items():
        rule = RULES.get(key)
        if rule is None:
            continue
        is_kind, kind_text = _KINDS[rule.kind]
        if not is_kind(value):
            raise UserInputError(f"--config.{key}: must be {kind_text}"
                                 f"{' ' + rule.expect if rule.expect else ''}, "
                                 f"got {type(value).__name__} {value!r:.80}")
        if rule.ok is not None and not rule.ok(value):
            raise UserInputError(f"--config.{key}: must be {rule.expect}, got {value!r:.80}")
    for keys, ok, expect in CROSS:
        if all(k in values for k in keys) and not ok(*(values[k] for k in keys)):
            shown = ", ".join(f"{k}={values[k]!r}" for k in keys)
            raise UserInputError(f"--config.{keys[0]}: {shown}: must have {expect}")
