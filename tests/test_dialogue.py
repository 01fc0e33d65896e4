"""Dialogue SFT end to end on a tiny random Llama with SmolLM2's real tokenizer and chat
template, on real chitchat conversations."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import apply_overrides, load_config, read_metrics


@pytest.mark.parametrize("packing", [True, False])
def test_dialogue_train_and_evaluate(tmp_path, tiny_chat_model, packing):
    import torch
    import transformers

    from sft_jax import trainer as trainer_lib

    config = apply_overrides(load_config("dialogue", "runlocal"), {
        "model.checkpoint": str(tiny_chat_model),
        "data.packing": packing,
        "train.steps": 3,
        "optim.learning_rate": 1e-3,
        "train.progress_bar": False,
    })
    results = trainer_lib.train_and_evaluate(config, tmp_path)
    for split in ("validation", "test"):
        assert results[split]["perplexity"] == pytest.approx(np.exp(results[split]["loss"]))
        assert results[split]["tokens"] > 0
    losses = [r["loss"] for r in read_metrics(tmp_path, "train")]
    assert len(losses) == 3 and losses[-1] < losses[0]
    data = read_metrics(tmp_path, "data")[0]
    assert data["train/examples"] + data["train/dropped"] == 16  # runlocal: 16 records
    assert data["train/examples"] >= 8
    if packing:
        assert 0 <= data["train/packed_waste"] < 0.5

    rows = [json.loads(x) for x in (tmp_path / "predictions" / "test.jsonl").read_text()
            .splitlines()]
    assert len(rows) == data["test/examples"] > 0
    samples = [r for r in rows if "generated" in r]
    assert len(samples) == 2
    assert all(isinstance(r["generated"], str) and r["context"][-1]["role"] == "user"
               for r in samples)

    # The export loads in PyTorch and scores the test split like we did.
    model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "export").eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "export")
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "hi there"},
                                         {"role": "assistant", "content": "hello!"}],
                                        tokenize=True, return_dict=False)
    with torch.no_grad():
        torch_logits = model(torch.tensor([ids])).logits.numpy()
    from sft_jax import load_pretrained

    ours = load_pretrained(tmp_path / "export")
    jax_logits = ours.module.apply({"params": ours.params}, np.asarray([ids], np.int32))["logits"]
    np.testing.assert_allclose(np.asarray(jax_logits), torch_logits, atol=1e-4)


def test_greedy_generation_equals_transformers_generate(tiny_chat_model):
    import torch
    import transformers

    from sft_jax.generation import Sampling, load_chat_model

    model = load_chat_model(str(tiny_chat_model))
    conversations = [[{"role": "user", "content": "hi"}],
                     [{"role": "user", "content": "what do you like to do on weekends?"}]]
    ours = model.respond(conversations, Sampling(max_new_tokens=12, stop_tokens=()))
    reference = transformers.AutoModelForCausalLM.from_pretrained(tiny_chat_model).eval()
    for conversation, reply in zip(conversations, ours, strict=True):
        ids = torch.tensor([model.prompt_ids(conversation)])
        with torch.no_grad():
            out = reference.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                     max_new_tokens=12, pad_token_id=model.pad_id)
        expected = model.tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
        assert reply == expected.strip()


def test_predict_cli(tmp_path, tiny_chat_model):
    import os
    import subprocess
    import sys

    from conftest import REPO

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt": "hello"}) + "\n" + json.dumps(
        {"messages": [{"role": "user", "content": "hi"}]}) + "\n")
    cmd = [sys.executable, "-m", "sft_jax.predict", f"--model={tiny_chat_model}",
           f"--prompts={prompts}", "--max_new_tokens=3"]
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r.get("prompt") for r in rows] == ["hello", None]
    assert all(isinstance(r["response"], str) for r in rows)

    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"text": "no prompt here"}) + "\n")
    proc = subprocess.run([*cmd[:4], f"--prompts={bad}"], cwd=REPO, capture_output=True,
                          text=True, env=env, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith(f"error: {bad}:1:")
