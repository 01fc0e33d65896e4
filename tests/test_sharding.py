"""Sharding that takes effect: on an 8-device CPU mesh (fsdp=4, tensor=2) the train step of
a tiny Llama (decoder) and a tiny T5 (encoder-decoder), as `trainer_lib.Trainer` traces it,
constrains the attention and MLP activations; each device holds about 1/8 of the params
and optimizer state; and the losses (and the Llama's validation loss, its eval step) equal
a one-device run's.

The 8 devices need a process of their own (`--xla_force_host_platform_device_count` is
read when JAX starts): this file is also what that process runs (`python
tests/test_sharding.py OUT.json LLAMA_DIR CORPUS_DIR WORKDIR`); the one-device runs are
this process's.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

MODELS = ("llama", "t5")
STEPS = 3
# Leaves with fewer elements (norm scales, counters, relative position biases) may be
# sharded fewer than 8 ways: their dimensions do not divide over every mesh axis.
SMALL = 1024
# `sdy.sharding_constraint %x <@mesh, [{"data", "fsdp"}, {}, {"tensor"}, {}]> : tensor<4x9x4x8xf32>`
CONSTRAINT = re.compile(r"sdy\.sharding_constraint %\S+ <@\w+, \[(.*)\]> : tensor<([0-9x]+)x\w+>")


def _overrides(name: str, llama_dir: str, corpus: str) -> tuple[str, str, dict]:
    """(config file, variant, overrides) of the tiny run of `name`: no predictions, no
    export, one checkpoint; the Llama's validation loss at the end (its eval step)."""
    common = {"train.steps": STEPS, "train.batch_size": 4, "model.dropout": 0.0,
              "optim.learning_rate": 1e-3, "train.eval_every": 0, "checkpoint.every": 0,
              "checkpoint.export": False, "checkpoint.best_metric": "",
              "checkpoint.use_best_for_final": False, "train.progress_bar": False,
              "eval.splits": ()}
    if name == "llama":
        return "dialogue", "runlocal", {**common, "model.checkpoint": llama_dir}
    return "translation", "runlocal", {
        **common, "data.train": f"{corpus}/train.jsonl", "data.validation": "",
        "data.test": "", "eval.periodic_split": "", "data.max_source_length": 16,
        "data.max_target_length": 16}


def _state_bytes(state) -> dict:
    """Bytes of params + optimizer state: in all, on each device, in small leaves."""
    import jax

    total, small, per_device = 0, 0, {}
    for leaf in jax.tree.leaves((state.params, state.opt_state)):
        total += leaf.nbytes
        small += leaf.nbytes if leaf.size < SMALL else 0
        for shard in leaf.addressable_shards:
            per_device[shard.device.id] = per_device.get(shard.device.id, 0) + \
                shard.data.nbytes
    return {"total": total, "small": small, "per_device": sorted(per_device.values())}


def _run(name: str, llama_dir: str, corpus: str, workdir: Path, mesh: dict) -> dict:
    """Trains `name` `STEPS` steps; returns its losses, final eval metrics, the state's
    bytes and the sharding constraints of the traced train step ([spec, shape] pairs)."""
    from conftest import apply_overrides, load_config, read_metrics

    from sft_jax import trainer as trainer_lib

    config_name, variant, overrides = _overrides(name, llama_dir, corpus)
    trainer = trainer_lib.Trainer(apply_overrides(load_config(config_name, variant),
                                            {**overrides, **mesh}), workdir)
    state_bytes = _state_bytes(trainer.state)
    compiled, lowered = trainer.train_step, []

    def step(state, batch, rng):
        if not lowered:  # traced as the loop traces it: inside the loop's context
            lowered.append(compiled.lower(state, batch, rng).as_text())
        return compiled(state, batch, rng)

    trainer.train_step = step
    final = trainer.train_and_evaluate()
    return {
        "losses": [r["loss"] for r in read_metrics(workdir, "train")],
        "eval": {f"{split}/{k}": v for split, metrics in final.items()
                 for k, v in metrics.items() if isinstance(v, float)},
        "bytes": state_bytes,
        "constraints": CONSTRAINT.findall(lowered[0]),
    }


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_chat_model) -> dict[int, dict]:
    """Both models on 8 devices (fsdp=4, tensor=2; this file in a process of its own) and
    on this process's one device, concurrently."""
    from conftest import xla_cpu_devices
    from test_seq2seq import write_parallel_corpus

    root = tmp_path_factory.mktemp("sharding")
    corpus = write_parallel_corpus(root / "corpus")
    repo = Path(__file__).resolve().parents[1]
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS=xla_cpu_devices(8),
               PYTHONPATH=os.pathsep.join(filter(None, [str(repo),
                                                        os.environ.get("PYTHONPATH")])))
    cmd = [sys.executable, __file__, str(root / "8.json"), str(tiny_chat_model), str(corpus),
           str(root / "run-8")]
    proc = subprocess.Popen(cmd, cwd=repo, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        one = {name: _run(name, str(tiny_chat_model), str(corpus), root / f"run-1-{name}",
                          {}) for name in MODELS}
    finally:
        _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-4000:]
    return {8: json.loads((root / "8.json").read_text()), 1: one}


def _dims(spec: str) -> list[str]:
    """'{"data", "fsdp"}, {}, {"tensor"}' -> ['data,fsdp', '', 'tensor']."""
    return [d.replace('"', "").replace(" ", "") for d in re.findall(r"\{([^}]*)\}", spec)]


@pytest.mark.parametrize("name", MODELS)
def test_train_step_constrains_attention_and_mlp_activations(runs, name):
    """Queries and attention outputs [B, T, N, H] are sharded over heads on 'tensor', the
    MLP hidden [B, T, F] over 'tensor'; the batch dimension over (data, fsdp) throughout.
    (Without the mesh and the logical-axis rules around tracing there is no constraint.)"""
    hidden, heads, head_dim = 64, 4, 8  # F, N, H of both tiny models
    found = {(tuple(_dims(spec)), tuple(int(s) for s in shape.split("x")))
             for spec, shape in runs[8][name]["constraints"]}
    assert found, "the traced train step has no sharding constraint"
    attention = [shape for dims, shape in found if len(shape) == 4
                 and shape[2:] == (heads, head_dim) and dims == ("data,fsdp", "", "tensor", "")]
    mlp = [shape for dims, shape in found if len(shape) == 3 and shape[2] == hidden
           and dims == ("data,fsdp", "", "tensor")]
    assert attention and mlp, sorted(found)
    assert all(dims[0] == "data,fsdp" for dims, _ in found), sorted(found)


@pytest.mark.parametrize("name", MODELS)
def test_each_device_holds_an_eighth_of_the_state(runs, name):
    state = runs[8][name]["bytes"]
    assert len(state["per_device"]) == 8
    assert max(state["per_device"]) <= state["total"] / 8 + state["small"], state
    assert state["small"] < state["total"] / 50, state  # the bound above is tight
    assert runs[1][name]["bytes"]["per_device"] == [runs[1][name]["bytes"]["total"]]


@pytest.mark.parametrize("name", MODELS)
def test_losses_and_evaluation_equal_one_device(runs, name):
    sharded, single = runs[8][name], runs[1][name]
    assert len(single["losses"]) == STEPS
    np.testing.assert_allclose(sharded["losses"], single["losses"], rtol=1e-5, atol=0)
    assert sharded["eval"].keys() == single["eval"].keys()
    assert ("validation/loss" in single["eval"]) == (name == "llama")
    for metric, value in single["eval"].items():
        assert sharded["eval"][metric] == pytest.approx(value, rel=1e-5, abs=1e-6), metric


if __name__ == "__main__":  # the 8-device half of `runs`
    out, llama_dir, corpus, workdir = sys.argv[1:]
    mesh = {"mesh.data": 1, "mesh.fsdp": 4, "mesh.tensor": 2}
    Path(out).write_text(json.dumps({name: _run(name, llama_dir, corpus,
                                                Path(workdir) / name, mesh)
                                     for name in MODELS}))
