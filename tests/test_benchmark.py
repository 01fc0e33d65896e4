"""experiments/benchmark.py: the smoke suite end to end (tiny models, ours vs PyTorch), the
results.json schema, the same-loss check against transformers, and the FLOP count."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys

import jax
import numpy as np
import pytest
from conftest import REPO

from sft_jax.models import registry

if str(REPO) not in sys.path:  # `experiments` is a top-level package of the repository
    sys.path.insert(0, str(REPO))
from experiments import bench_models as bm


@pytest.fixture(scope="module")
def smoke(tmp_path_factory, tiny_bert_dir) -> dict:
    out = tmp_path_factory.mktemp("bench")
    # With torch (PyTorch is one side of the benchmark): the repository alone on its path.
    # The replicas section's command-line runs train the tiny BERT, not MiniLM.
    proc = subprocess.run(
        [sys.executable, "-m", "experiments.benchmark", "--suite", "smoke", "--out", str(out),
         "--replicas_model", str(tiny_bert_dir)],
        cwd=REPO, capture_output=True, text=True, timeout=900,
        env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (out / "results.md").read_text().startswith("# Benchmark: suite `smoke`")
    return json.loads((out / "results.json").read_text())


def test_schema(smoke):
    assert smoke["schema"] == "sft_jax.benchmark/1" and smoke["suite"] == "smoke"
    assert smoke["errors"] == []
    words = shlex.split(smoke["command"])
    assert words[:5] == ["python", "-m", "experiments.benchmark", "--suite", "smoke"]
    assert words[5] == "--out" and words[7] == "--replicas_model"
    assert smoke["replicas"][0]["name"] == f"minilm@{os.path.basename(words[8])}"
    assert {"backend", "threads", "xla_flags", "versions"} <= set(smoke["machine"])
    assert smoke["peak"]["flops_per_s"] > 0
    assert [(r["model"], r["dtype"]) for r in smoke["train"]] == [
        ("bert", "float32"), ("llama", "bfloat16")]
    for row in smoke["train"]:
        for side in ("ours", "torch_eager"):
            s = row["sides"][side]
            assert s["tokens_per_s"] > 0 and 0 < s["mfu"] < 1
            assert s["nonpad_tokens_per_s"] <= s["tokens_per_s"]
            assert s["peak_rss_bytes"] > 0
            assert len(s["step_s"]) == 2 and s["step_s_median"] == np.median(s["step_s"])
        assert row["ratio_vs_eager"] == pytest.approx(
            row["sides"]["ours"]["tokens_per_s"] / row["sides"]["torch_eager"]["tokens_per_s"])
        # The warm-up step: same weights and batch, so the same loss within the dtype's
        # tolerance (bfloat16: ours in model.dtype, theirs under autocast).
        ours, eager = (row["sides"][side]["first_loss"] for side in ("ours", "torch_eager"))
        assert row["first_loss_rel_diff"] == pytest.approx(abs(ours - eager) / abs(eager))
        assert row["first_loss_rel_diff"] < {"float32": 1e-3, "bfloat16": 3e-2}[row["dtype"]]
    assert set(smoke["machine"]["cpu"]["flags"]) >= {"avx512_bf16", "amx_bf16"}
    assert [d["batch"] for d in smoke["decode"]] == [1, 8]
    for d in smoke["decode"]:
        assert d["ours"]["tokens_per_s"] > 0 and d["torch"]["tokens_per_s"] > 0
        # Same weights, greedy: the tiny random model's continuations agree with HF's.
        assert d["same_tokens_fraction"] == 1.0
    [rep] = smoke["replicas"]  # K=2 replicas in one process vs 2 sequential runs
    assert rep["replicas"] == 2 and rep["one_program"]["processes"] == 1
    assert rep["sequential"]["processes"] == 2
    for side in ("one_program", "sequential"):
        s = rep[side]
        assert 0 < s["train_s"] < s["wall_s"] and s["peak_rss_bytes"] > 0
        assert s["examples_per_s"] == pytest.approx(2 * 2 * 8 / s["train_s"])
    assert rep["wall_speedup"] == pytest.approx(rep["sequential"]["wall_s"]
                                                / rep["one_program"]["wall_s"])
    pk = smoke["packing"]
    assert pk["source"] == "synthetic"
    assert pk["packing"]["fill"] > pk["padding"]["fill"]
    assert pk["ratio"] == pytest.approx(pk["packing"]["effective_tokens_per_s"]
                                        / pk["padding"]["effective_tokens_per_s"])
    assert {(r["remat"], r["batch"]) for r in smoke["scaling"]} == {
        ("none", 1), ("none", 2), ("full", 1), ("full", 2)}
    assert all(r["memory"]["total"] > 0 for r in smoke["scaling"])
    assert {t["name"] for t in smoke["targets"] if t["name"].startswith("same loss")} == {
        "same loss bert: max relative difference over 20 steps",
        "same loss llama: max relative difference over 20 steps"}


def test_same_loss_as_pytorch(smoke):
    rows = {r["model"]: r for r in smoke["same_loss"]}
    assert set(rows) == {"bert", "llama"}
    for row in rows.values():
        assert len(row["ours"]) == len(row["torch"]) == 20
        assert row["passed"] and row["max_rel_diff"] < 1e-4
        assert row["ours"][0] != row["ours"][-1]  # the weights did move


def test_flop_count_matches_the_parameter_tree():
    hf = bm.without_dropout(bm.TINY["llama"])  # tied embeddings: the head is the table
    module, _ = registry.build_model(hf)
    params = module.init(jax.random.key(0), **bm.init_batch(hf))["params"]
    total = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
    d, v, f, n_layers = 32, 128, 64, 2
    per_layer = d * 4 * 8 + 2 * d * 2 * 8 + 4 * 8 * d + 3 * d * f + 2 * d  # q, k+v, o, mlp, norms
    assert total == v * d + n_layers * per_layer + d
    n = bm.matmul_params(params, hf)
    assert n == total - v * d + v * d  # the table is not a matmul, the tied head is
    assert bm.train_flops_per_token(n, hf, 16) == 6 * n + 12 * n_layers * 16 * 4 * 8


def test_bf16_matmul_study_times_every_formulation(tmp_path, monkeypatch, capsys):
    """Two of its XLA_FLAGS settings (each a child process), every formulation, torch."""
    from experiments import bf16_matmul

    settings = bf16_matmul.FLAG_SETTINGS[:2]
    monkeypatch.setattr(bf16_matmul, "FLAG_SETTINGS", settings)
    assert bf16_matmul.main(["--n", "64", "--repeats", "1", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "results.json").read_text())
    assert tuple(result["jax"]) == settings
    for row in result["jax"].values():
        assert set(row) == set(bf16_matmul.FORMULATIONS) and min(row.values()) > 0
    assert result["torch"]["f32"] > 0 and result["torch"]["bf16"] > 0
    assert set(result["cpu"]["flags"]) == set(bf16_matmul.BF16_FLAGS)
    table = (tmp_path / "results.md").read_text()
    assert all(name in table for name in bf16_matmul.FORMULATIONS)
    assert table in capsys.readouterr().out


def test_bf16_attention_times_both_forms(capsys):
    from experiments import bf16_attention

    best = bf16_attention.measure(bf16_attention.TINY_SHAPES[0], repeats=1)
    assert set(best) == set(bf16_attention.FORMS) and min(best.values()) > 0
    assert bf16_attention.main(["--tiny", "--repeats", "1"]) == 0
    table = capsys.readouterr().out
    assert table.startswith("CPU: ") and "bf16 flags" in table
    assert len([line for line in table.splitlines() if line.startswith("| tiny | 1×16 |")]) == 1
