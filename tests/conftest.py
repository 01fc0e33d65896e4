"""Shared fixtures: a tiny BERT checkpoint directory (written by transformers PyTorch)
and a tiny, learnable sentiment corpus, both generated on the fly."""

from __future__ import annotations

import atexit
import functools
import json
import logging
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

# One persistent XLA compilation cache for the test session, shared by the tests and by the
# CLI processes they start (set before anything imports jax): the same programs are
# compiled once, not once per process. It changes no result: a cached executable is the
# one the same program would compile to. Only programs that take a second or more to
# compile are stored (JAX's default): storing and reading every small one cost more than
# compiling it (test_cli_errors + test_commands, 4 alternating pairs: 70 s against 86 s).
_XLA_CACHE = tempfile.mkdtemp(prefix="sft-jax-tests-xla-cache-")
atexit.register(shutil.rmtree, _XLA_CACHE, ignore_errors=True)
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", _XLA_CACHE)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "1")
# XLA:CPU compiles the tests' programs (tiny models: compiling, not running, is most of the
# suite's time) without LLVM's optimisations: about a third less CPU time. The HLO passes,
# and so what is computed, are the same; float results may differ in the last bits from an
# optimised build, within every tolerance here (runs compared bitwise share the flags).
FAST_COMPILE_FLAGS = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {FAST_COMPILE_FLAGS}".strip()

POSITIVE = ["good", "great", "superb", "lovely", "fun", "moving"]
NEGATIVE = ["bad", "awful", "dull", "boring", "weak", "messy"]
NEUTRAL = ["the", "a", "movie", "film", "plot", "actors", "was", "is", "very", "quite"]
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *POSITIVE, *NEGATIVE, *NEUTRAL]


def write_tiny_bert(path: Path, seed: int = 0, **overrides) -> Path:
    """A random tiny BertModel saved by transformers (safetensors) with its tokenizer."""
    import torch
    import transformers

    path.mkdir(parents=True, exist_ok=True)
    (path / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    (path / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "BertTokenizer", "do_lower_case": True, "model_max_length": 64}))
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    assert tokenizer.convert_tokens_to_ids("good") == VOCAB.index("good")
    tokenizer.save_pretrained(path)
    settings = dict(vocab_size=len(VOCAB), hidden_size=32, num_hidden_layers=2,
                    num_attention_heads=4, intermediate_size=48, max_position_embeddings=64,
                    type_vocab_size=2)
    settings.update(overrides)
    torch.manual_seed(seed)
    model = transformers.BertModel(transformers.BertConfig(**settings))
    model.save_pretrained(path, safe_serialization=True)
    return path


def write_tiny_corpus(path: Path, sizes=(64, 32, 32), seed: int = 0) -> Path:
    """train/validation/test JSONL with {"text", "label"}; the label is decided by one word."""
    rng = random.Random(seed)
    path.mkdir(parents=True, exist_ok=True)
    for split, n in zip(("train", "validation", "test"), sizes, strict=True):
        with (path / f"{split}.jsonl").open("w") as f:
            for i in range(n):
                positive = (i + rng.randint(0, 1)) % 2 == 0
                words = rng.sample(NEUTRAL, rng.randint(1, 6))
                words.insert(rng.randint(0, len(words)),
                             rng.choice(POSITIVE if positive else NEGATIVE))
                f.write(json.dumps({"text": " ".join(words),
                                    "label": "pos" if positive else "neg"}) + "\n")
    return path


@pytest.fixture(autouse=True, scope="session")
def _processes_without_torch():
    """The processes the tests start (command-line runs, sweeps, notebook kernels) run as
    an installed sft_jax does, without torch (a test-only dependency): see
    without_torch/sitecustomize.py. A fixture, not import-time code, so that the test
    processes themselves (xdist workers) keep torch."""
    before = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(
        [str(Path(__file__).parent / "without_torch"), *filter(None, [before])])
    yield
    if before is None:
        del os.environ["PYTHONPATH"]
    else:
        os.environ["PYTHONPATH"] = before


@pytest.fixture(autouse=True)
def _full_precision_matmuls():
    """Parity tolerances assume true fp32 matmuls (GPUs may default to TF32)."""
    import jax

    with jax.default_matmul_precision("highest"):
        yield


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory) -> Path:
    return write_tiny_bert(tmp_path_factory.mktemp("tiny_bert"))


@pytest.fixture(scope="session")
def tiny_corpus_dir(tmp_path_factory) -> Path:
    return write_tiny_corpus(tmp_path_factory.mktemp("tiny_corpus"))


# Tiny decoder configs (HF config.json fields) for parity tests.
V = 64
LLAMA = {
    "vocab_size": V,
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "intermediate_size": 48,
    "max_position_embeddings": 64,
    "bos_token_id": 1,
    "eos_token_id": 2,
}
GPT2 = {
    "vocab_size": V,
    "n_embd": 32,
    "n_layer": 2,
    "n_head": 4,
    "n_positions": 64,
    "bos_token_id": 1,
    "eos_token_id": 2,
}


REPO = Path(__file__).resolve().parents[1]


def load_config(name: str = "classification", arg: str | None = "runlocal"):
    """`configs/<name>.py:get_config(arg)`, as the CLI would load it."""
    import importlib.util

    path = REPO / "configs" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"configs_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def tiny_overrides(model_dir: Path, corpus_dir: Path) -> dict:
    """Config overrides for a fast, deterministic run on the tiny model and corpus."""
    return {
        "model.checkpoint": str(model_dir),
        "model.dropout": 0.0,
        "data.train": str(corpus_dir / "train.jsonl"),
        "data.validation": str(corpus_dir / "validation.jsonl"),
        "data.test": str(corpus_dir / "test.jsonl"),
        "train.progress_bar": False,
    }


def apply_overrides(config, overrides: dict):
    for key, value in overrides.items():
        node = config
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return config


def cli_args(overrides: dict) -> list[str]:
    return [f"--config.{k}={v}" for k, v in overrides.items()]


def xla_cpu_devices(n: int) -> str:
    """XLA_FLAGS for `n` CPU devices in one process. The collective timeout is raised from
    XLA's 40 s: on two cores shared with other work, one device's thread can wait that
    long for a core, and XLA then aborts the process mid all-reduce."""
    return (f"--xla_force_host_platform_device_count={n} "
            f"--xla_cpu_collective_call_terminate_timeout_seconds=900 {FAST_COMPILE_FLAGS}")


def run_two_processes(config: str, workdir: Path, overrides: dict) -> None:
    """`sft_jax.main` as two processes (two CPU devices each) joined over loopback;
    asserts that both exit 0."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = dict(os.environ, XLA_FLAGS=xla_cpu_devices(2), JAX_PLATFORMS="cpu")
    procs = []
    for pid in range(2):
        args = {**overrides, "distributed.coordinator_address": f"127.0.0.1:{port}",
                "distributed.num_processes": 2, "distributed.process_id": pid}
        cmd = [sys.executable, "-m", "sft_jax.main", f"--config={config}",
               f"--workdir={workdir}", *cli_args(args)]
        procs.append(subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    for proc in procs:
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-4000:]


def read_metrics(workdir: Path, split: str = "train") -> list[dict]:
    lines = (Path(workdir) / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["split"] == split]


@pytest.fixture(scope="session")
def tiny_chat_model(tmp_path_factory):
    """A tiny random Llama (GQA, tied embeddings) with SmolLM2's real tokenizer and chat
    template (from the `smollm2-135m-instruct` asset)."""
    import torch
    import transformers

    from sft_jax import assets

    smollm = assets.fetch("smollm2-135m-instruct")
    path = tmp_path_factory.mktemp("tiny_llama")
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        if (smollm / name).exists():
            shutil.copy(smollm / name, path / name)
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    config = transformers.LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(config).save_pretrained(path, safe_serialization=True)
    return path


@pytest.fixture(scope="session")
def tiny_gemma_base(tmp_path_factory):
    """A tiny random Gemma 3 with Gemma-3-270M's real tokenizer (from the `gemma3-270m`
    asset): a base model's tokenizer, with no chat template."""
    import torch
    import transformers

    from sft_jax import assets

    gemma = assets.fetch("gemma3-270m")
    path = tmp_path_factory.mktemp("tiny_gemma")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(gemma / name, path / name)
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    config = transformers.Gemma3TextConfig(
        vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, head_dim=8, max_position_embeddings=512,
        sliding_window=8, layer_types=["sliding_attention", "full_attention"],
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    transformers.Gemma3ForCausalLM(config).save_pretrained(path, safe_serialization=True)
    return path


def crash_during_step(trainer, step: int) -> None:
    """Makes `trainer` raise RuntimeError("simulated crash") when it starts update `step`
    (after the updates before it ran, and their checkpoints were saved)."""
    real_step, calls = trainer.train_step, []

    def step_then_crash(state, batch, rng):
        if len(calls) == step - 1:
            raise RuntimeError("simulated crash")
        calls.append(1)
        return real_step(state, batch, rng)

    trainer.train_step = step_then_crash


def export_mean_pooled(out: Path, pre, caplog, *, architecture: str, head_keys: set) -> Path:
    """Export a mean-pooled classifier (no Hugging Face class computes it): the backbone as
    `architecture` plus our sidecar head, with a warning saying so."""
    from safetensors.numpy import load_file

    from sft_jax.hf.export import HEAD_CONFIG_FILE, HEAD_WEIGHTS_FILE, export_pretrained

    with caplog.at_level(logging.WARNING, logger="sft_jax.hf.export"):
        out = export_pretrained(out, module_config=pre.config, params=pre.params,
                                tokenizer=None, num_labels=2, pooling="mean")
    assert "pooling 'mean' has no Hugging Face class" in caplog.text
    assert json.loads((out / "config.json").read_text())["architectures"] == [architecture]
    assert json.loads((out / HEAD_CONFIG_FILE).read_text())["pooling"] == "mean"
    assert set(load_file(str(out / HEAD_WEIGHTS_FILE))) == head_keys
    return out


def assert_logically_partitioned(params) -> list:
    """Every param leaf is boxed with one known logical axis name per dimension."""
    import flax.linen as nn
    import jax

    from sft_jax.models import axes

    leaves = jax.tree_util.tree_leaves(params, is_leaf=lambda x: isinstance(x, nn.Partitioned))
    assert leaves
    for leaf in leaves:
        assert isinstance(leaf, nn.Partitioned), type(leaf)
        assert len(leaf.names) == len(leaf.value.shape)
        assert all(name in axes.ALL for name in leaf.names), leaf.names
    return leaves


# A tiny BERT config (HF field names) for parity tests.
TINY_BERT = {
    "vocab_size": 99,
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 37,
    "max_position_embeddings": 64,
}


def torch_logits(model, ids, mask=None):
    """A transformers model's logits (numpy) for ids [B, T] and an optional mask [B, T]."""
    import torch

    with torch.no_grad():
        kw = {} if mask is None else {"attention_mask": torch.tensor(mask)}
        return model(input_ids=torch.tensor(ids), **kw).logits.numpy()


@functools.cache
def _jitted_apply(module):
    import jax

    return jax.jit(module.apply, static_argnames=("deterministic",))


def jit_apply(module, params, *args, **kwargs):
    """`module.apply({'params': params}, ...)`, jitted once per module."""
    return _jitted_apply(module)({"params": params}, *args, **kwargs)


def randomize_weights(model, seed: int, is_norm) -> None:
    """O(1)-scale random weights in place, so that parity tests compare non-trivial values:
    N(0, 0.2^2) everywhere, plus 1 on the parameters `is_norm(name)` selects (norm scales)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen) * 0.2
            p.copy_(noise + 1.0 if is_norm(name) else noise)


def is_decoder_norm(name: str) -> bool:
    return ("norm" in name or ".ln_" in name) and name.endswith("weight")


def is_bert_norm(name: str) -> bool:
    return name.endswith("LayerNorm.weight")


# The files that take longest (minutes, mostly command-line runs), scheduled first so that
# two xdist workers (`make test`: -n 2 --dist loadfile) finish together. Order only: any
# order passes.
SLOW_FILES = ("test_benchmark.py", "test_kill.py", "test_replicas.py", "test_seq2seq.py",
              "test_train.py", "test_sweep.py", "test_gemma3_asset.py", "test_sharding.py",
              "test_dialogue.py", "test_gguf.py", "test_bart.py", "test_workdir.py",
              "test_peft.py", "test_linear.py", "test_fast_paths.py", "test_notebooks.py")


def pytest_collection_modifyitems(items: list) -> None:
    rank = {name: i for i, name in enumerate(SLOW_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(SLOW_FILES)))
