"""Sequence to sequence: a T5 from scratch with a tokenizer trained on the training split,
and a decoder-only chat model prompted with a template, end to end through the CLI on the
real `bible-en-es` and `aclsum` corpora (`:runlocal` configs); label smoothing against
PyTorch; packed vs padded encoder-decoder losses; truncation; bad input."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import (
    REPO,
    apply_overrides,
    cli_args,
    load_config,
    read_metrics,
    run_two_processes,
)

from sft_jax.generation.sampling import stop_token_ids

EN_ES = {"the": "el", "cat": "gato", "dog": "perro", "eats": "come", "sees": "ve",
         "big": "grande", "small": "pequeño", "house": "casa", "man": "hombre",
         "water": "agua", "drinks": "bebe", "and": "y", "sleeps": "duerme", "bread": "pan"}


def write_parallel_corpus(path: Path, sizes=(40, 6, 6), seed: int = 0) -> Path:
    """train/validation/test JSONL of {"en", "es", "topic"}: word-by-word translations."""
    rng = random.Random(seed)
    path.mkdir(parents=True, exist_ok=True)
    words = sorted(EN_ES)
    for split, n in zip(("train", "validation", "test"), sizes, strict=True):
        with (path / f"{split}.jsonl").open("w") as f:
            for _ in range(n):
                en = [rng.choice(words) for _ in range(rng.randint(2, 9))]
                f.write(json.dumps({"en": " ".join(en), "es": " ".join(EN_ES[w] for w in en),
                                    "topic": rng.choice(["animals", "food"])},
                                   ensure_ascii=False) + "\n")
    return path


def run_cli(workdir: Path, config: str, overrides: dict) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "sft_jax.main", f"--config={config}", f"--workdir={workdir}",
           *cli_args({"train.progress_bar": False, **overrides})]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "JAX_PLATFORMS": "cpu"})


def check(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, proc.stderr[-4000:]


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return write_parallel_corpus(tmp_path_factory.mktemp("en_es"))


@pytest.fixture(scope="module")
def t5_task(corpus, tmp_path_factory):
    """The task of `translation.py:runlocal` (tiny T5 from scratch) on the tiny corpus."""
    from sft_jax import tasks

    config = apply_overrides(load_config("translation", "runlocal"), {
        "data.train": str(corpus / "train.jsonl"),
        "data.validation": str(corpus / "validation.jsonl"),
        "data.test": str(corpus / "test.jsonl"),
        "data.max_source_length": 16,
        "data.max_target_length": 16,
        "train.label_smoothing": 0.1,
    })
    return tasks.get_task(config, tmp_path_factory.mktemp("t5_task"))


def test_label_smoothing_equals_torch_cross_entropy():
    import jax.numpy as jnp
    import torch

    from sft_jax.tasks.base import smoothed_cross_entropy

    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 7, 11)).astype(np.float32) * 3  # B T V
    targets = rng.integers(0, 11, size=(3, 7))
    weights = (rng.random((3, 7)) > 0.3).astype(np.float32)  # 0 = padding
    for eps in (0.0, 0.1, 0.3):
        ours = smoothed_cross_entropy(jnp.asarray(logits), jnp.asarray(targets), eps)
        ours = float(jnp.sum(ours * weights) / weights.sum())
        ignored = np.where(weights > 0, targets, -100)
        ref = torch.nn.functional.cross_entropy(
            torch.tensor(logits).reshape(-1, 11), torch.tensor(ignored).reshape(-1),
            ignore_index=-100, label_smoothing=eps)
        assert ours == pytest.approx(float(ref), rel=1e-5)


def test_source_truncation_keeps_eos(t5_task, tiny_chat_model):
    from sft_jax.data import seq2seq as s2s
    from sft_jax.pretrained import load_tokenizer

    tok, eos = t5_task.tokenizer, t5_task.eos_id
    text = " ".join(["the big dog drinks water"] * 6)
    full, cut = s2s.encode_source(tok, text, eos_id=eos, max_length=None)
    assert not cut and full[-1] == eos and full.count(eos) == 1 and len(full) > 12
    ids, cut = s2s.encode_source(tok, text, eos_id=eos, max_length=12)
    assert cut and ids == [*full[:11], eos]
    assert max(len(p["source_ids"]) for p in t5_task.pairs["train"]) <= 16
    assert all(p["source_ids"][-1] == eos and p["target_ids"][-1] == eos
               for p in t5_task.pairs["train"])
    # Decoder-only prompts: the source text is cut to its first N tokens.
    chat_tok = load_tokenizer(tiny_chat_model)
    kept, cut = s2s.truncate_text(chat_tok, text, 5)
    assert cut and text.startswith(kept)
    assert chat_tok(kept, add_special_tokens=False)["input_ids"] == chat_tok(
        text, add_special_tokens=False)["input_ids"][:5]


def test_packed_pairs_give_the_padded_loss(t5_task):
    import jax

    from sft_jax.data import pipeline
    from sft_jax.data import seq2seq as s2s

    pairs = t5_task.pairs["train"][:12]
    params = t5_task.module.init(jax.random.key(0), **t5_task.init_batch())["params"]
    params = jax.tree.map(lambda x: x.unbox() if hasattr(x, "unbox") else x, params,
                          is_leaf=lambda x: hasattr(x, "unbox"))
    padded = pipeline.pad_batch(
        [s2s.single_pair(p, t5_task.decoder_start_id) for p in pairs], batch_size=len(pairs),
        buckets=t5_task.buckets, pad_values=t5_task.pad_values)
    packed = s2s.pack_pairs(pairs, source_length=32, target_length=32,
                            decoder_start_id=t5_task.decoder_start_id, pad_id=t5_task.pad_id)
    assert len(packed["encoder_input_ids"]) < len(pairs)  # several pairs per row
    assert packed["encoder_segment_ids"].max() > 1
    loss = jax.jit(lambda b: t5_task.loss_fn(params, b, None, True))
    padded_loss, padded_aux = loss({k: padded[k] for k in s2s.FIELDS})
    packed_loss, packed_aux = loss(packed)
    assert float(packed_aux["weight"]) == float(padded_aux["weight"]) == sum(
        len(p["target_ids"]) for p in pairs)
    np.testing.assert_allclose(float(packed_loss), float(padded_loss), rtol=1e-5)


def test_translation_runlocal_t5_from_scratch(tmp_path):
    """`translation.py:runlocal` on bible-en-es: T5 from scratch, tokenizer trained on the
    training split, beam search, BLEU/chrF (resumed runs reuse the tokenizer:
    tests/test_kill.py)."""
    check(run_cli(tmp_path, "configs/translation.py:runlocal", {"train.steps": 2}))
    assert (tmp_path / "tokenizer" / "tokenizer.json").is_file()
    final = read_metrics(tmp_path, "test")[-1]
    assert final["generated"] == 4
    for key in ("bleu", "chrf", "loss", "perplexity"):
        assert np.isfinite(final[key])
    assert final["bleu_signature"].startswith("nrefs:1|case:mixed|eff:no|tok:13a")
    assert "nc:6" in final["chrf_signature"]
    rows = read_jsonl(tmp_path / "predictions" / "test.jsonl")
    assert len(rows) == 6 and all({"source", "reference", "loss"} <= set(r) for r in rows)
    assert sum("prediction" in r for r in rows) == 4
    from sft_jax import assets

    with (assets.fetch("bible-en-es") / "test.jsonl").open() as f:
        first = json.loads(f.readline())
    assert rows[0]["source"] == first["en"] and rows[0]["reference"] == first["es"]
    assert rows[0]["tokens"] == 32  # max_target_length: the loss saw a truncated target
    assert (tmp_path / "export" / "tokenizer.json").is_file()


def test_two_processes_train_like_one(tmp_path, corpus):
    """Two processes (two CPU devices each) give one process's losses: each pads its source
    and its target fields to the longest that either process has this step."""
    base = {"data.train": str(corpus / "train.jsonl"), "data.validation": "", "data.test": "",
            "model.from_scratch.dropout_rate": 0.0, "train.steps": 3, "train.batch_size": 8,
            "checkpoint.export": False, "mesh.data": -1}
    check(run_cli(tmp_path / "single", "configs/translation.py:runlocal", base))
    run_two_processes("configs/translation.py:runlocal", tmp_path / "multi",
                      {**base, "train.progress_bar": False})
    losses = {name: [r["loss"] for r in read_metrics(tmp_path / name, "train")]
              for name in ("single", "multi")}
    assert len(losses["single"]) == 3
    np.testing.assert_allclose(losses["multi"], losses["single"], atol=1e-5, rtol=0)


def test_summarization_runlocal_decoder_only(tmp_path, tiny_chat_model):
    """`summarization.py:runlocal` on aclsum with a tiny chat model: prompts built from the
    record's aspect, loss on the summary only, ROUGE of greedy summaries."""
    check(run_cli(tmp_path, "configs/summarization.py:runlocal",
                  {"model.checkpoint": tiny_chat_model, "train.steps": 2}))
    final = read_metrics(tmp_path, "test")[-1]
    for key in ("rouge1", "rouge2", "rougeL", "rougeLsum"):
        assert 0.0 <= final[key] <= 100.0
    assert final["generated"] == 2 and final["tokens"] > 0
    rows = read_jsonl(tmp_path / "predictions" / "test.jsonl")
    assert len(rows) == 2
    assert all(isinstance(r["prediction"], str) and r["reference"] for r in rows)
    assert [r["step"] for r in read_metrics(tmp_path, "train")] == [1, 2]


def test_decoder_only_prompt_template_and_loss_mask(corpus, tiny_chat_model, tmp_path):
    from sft_jax import tasks

    config = apply_overrides(load_config("translation", "decoder,runlocal"), {
        "model.checkpoint": str(tiny_chat_model),
        "data.train": str(corpus / "train.jsonl"),
        "data.validation": "",
        "data.test": str(corpus / "test.jsonl"),
        "data.prompt_template": "About {topic}. To Spanish: {source}",
    })
    task = tasks.get_task(config, tmp_path)
    record, example = task.records["train"][0], task.examples["train"][0]
    assert task.prompts["train"][0] == f"About {record['topic']}. To Spanish: {record['en']}"
    targets = task.tokenizer.decode(example["input_ids"][example["loss_mask"] > 0])
    assert targets == record["es"] + "<|im_end|>"  # the completion and its end of turn


def test_unknown_source_field_names_the_record(tmp_path, corpus):
    proc = run_cli(tmp_path / "run", "configs/translation.py:runlocal", {
        "data.train": corpus / "train.jsonl", "data.validation": "", "data.test": "",
        "data.source_field": "english"})
    assert proc.returncode == 2, proc.stderr[-3000:]
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith(f"error: {corpus / 'train.jsonl'}:1: missing field 'english' "
                           "(data.source_field"), line


def test_seq2seq_picks_the_task_by_the_model(t5_task, corpus, tiny_bert_dir, tmp_path):
    """From scratch: the encoder-decoder task; an encoder checkpoint: one clear error."""
    from sft_jax import tasks
    from sft_jax.errors import UserInputError
    from sft_jax.tasks.encdec import EncDecTask

    assert isinstance(t5_task, EncDecTask)
    config = apply_overrides(load_config("translation", "runlocal"), {
        "data.train": str(corpus / "train.jsonl"), "data.validation": "", "data.test": "",
        "model.checkpoint": str(tiny_bert_dir)})
    with pytest.raises(UserInputError, match="is an encoder; seq2seq needs an encoder-decoder"):
        tasks.get_task(config, tmp_path)


def test_gemma_variant_prompts_in_plain_text(corpus, tiny_gemma_base, tmp_path):
    """`translation.py:gemma` on a base model without a chat template: the training row is
    <bos> + the plain prompt + the Spanish + <eos>, the loss on the Spanish and <eos> only,
    and generation starts from exactly the tokens before the loss; a newline stops a reply.
    `summarization.py:gemma` renders its prompt the same way."""
    from sft_jax import tasks

    config = apply_overrides(load_config("translation", "gemma,runlocal"), {
        "model.checkpoint": str(tiny_gemma_base),
        "data.train": str(corpus / "train.jsonl"),
        "data.validation": "",
        "data.test": str(corpus / "test.jsonl"),
    })
    task = tasks.get_task(config, tmp_path)
    assert task.tokenizer.chat_template is None
    record, example = task.records["train"][0], task.examples["train"][0]
    assert task.prompts["train"][0] == ("Translate the English text to Spanish.\n\n"
                                        f"English:\n{record['en']}\n\nSpanish:\n")
    ids, mask = list(example["input_ids"]), example["loss_mask"] > 0
    first_target = int(np.argmax(mask))
    assert task.tokenizer.decode(example["input_ids"][mask]) == record["es"] + "<eos>"
    assert mask[first_target:].all()
    prompt = task.chat_model.prompt_ids([{"role": "user", "content": task.prompts["train"][0]}])
    assert prompt == ids[:first_target]
    assert prompt[0] == task.tokenizer.bos_token_id
    newline = task.tokenizer.convert_tokens_to_ids("\n")
    assert newline in stop_token_ids(task.tokenizer, config.eval.stop_tokens)
    summarization = load_config("summarization", "gemma")
    assert summarization.eval.stop_tokens == config.eval.stop_tokens
    assert summarization.data.prompt_template.format(aspect="outcome", source="P.") == (
        "Summarize the outcome of this paper in one sentence.\n\nPaper:\nP.\n\n"
        "Summary of the outcome:\n")
