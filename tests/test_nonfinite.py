"""The non-finite guard (`train.on_nonfinite`): a diverging run stops with exit status 3
and keeps its last good checkpoint, `skip` drops the bad updates on device, and every JSON
output stays strict JSON (non-finite values as null)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from conftest import apply_overrides, load_config, tiny_overrides
from test_cli_errors import run_cli

# A learning rate that overflows float32 params at the first update it applies: warm-up
# makes update 1 a no-op (rate 0), so the checkpoint of step 1 is good and update 2 is not.
DIVERGE = {"optim.learning_rate": 1e30, "optim.max_grad_norm": 0, "optim.warmup_steps": 2}


@pytest.fixture()
def tiny(tiny_bert_dir, tiny_corpus_dir) -> dict:
    return tiny_overrides(tiny_bert_dir, tiny_corpus_dir)


def _refuse(constant: str):
    raise AssertionError(f"bare {constant} in a JSON output")


def strict_json(text: str):
    return json.loads(text, parse_constant=_refuse)


def strict_records(workdir) -> list[dict]:
    return [strict_json(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def all_finite(tree) -> bool:
    import jax

    return all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(tree))


def test_divergence_stops_with_exit_3_and_keeps_the_last_good_checkpoint(tmp_path, tiny):
    import orbax.checkpoint as ocp

    workdir = tmp_path / "run"
    proc = run_cli(workdir, {**tiny, **DIVERGE, "checkpoint.every": 1})
    assert proc.returncode == 3, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("error: step 2: non-finite"), line
    assert f"{workdir / 'checkpoints' / '1'}" in line, line

    assert not (workdir / "export").exists()
    assert not (workdir / "best").exists() or not any((workdir / "best").iterdir())
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()) == ["1"]
    records = strict_records(workdir)
    assert [r["step"] for r in records if r["split"] == "train"] == [1, 2]
    if (workdir / "results.json").exists():
        strict_json((workdir / "results.json").read_text())

    with ocp.CheckpointManager(workdir / "checkpoints", item_names=("state",)) as manager:
        state = manager.restore(1, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
    assert all_finite(state.state)


def test_skip_drops_the_bad_updates_and_finishes_finite(tmp_path, tiny):
    from sft_jax import runs
    from sft_jax import trainer as trainer_lib

    config = apply_overrides(load_config(), {
        **tiny, **DIVERGE, "train.on_nonfinite": "skip", "data.validation": "",
        "data.test": "", "checkpoint.every": 0, "checkpoint.export": False})
    trainer = trainer_lib.Trainer(config, tmp_path)
    trainer.train_and_evaluate()
    assert all_finite(trainer.state.params)
    assert int(np.asarray(trainer.state.step)) == 4  # the step counter still advances

    records = strict_records(tmp_path)
    train_rows = [r for r in records if r["split"] == "train"]
    assert [r["nonfinite_steps"] for r in train_rows] == [0, 1, 1, 1]
    assert [r["nonfinite_steps"] for r in records if r["split"] == "session"] == [3]
    assert [r["peak_rss_mb"] > 50 for r in records if r["split"] == "session"] == [True]
    assert runs.read_records(tmp_path)[-1]["nonfinite_steps"] == 3


def _toy_step(on_nonfinite: str, replicas: bool = False):
    """A linear model's train step: loss_sum = sum(x @ w), one loss term per row."""
    import jax.numpy as jnp
    import optax

    from sft_jax import steps

    def loss_fn(params, batch, rng, deterministic):
        return jnp.sum(batch["x"] @ params["w"]), {"weight": jnp.float32(batch["x"].shape[0])}

    tx = optax.sgd(0.1)
    step = steps.make_train_step(loss_fn, tx, optax.constant_schedule(0.1),
                                 on_nonfinite=on_nonfinite)
    return (steps.over_replicas(step) if replicas else step), tx


def _toy_state(tx, replicas: int = 0):
    import jax
    import jax.numpy as jnp

    from sft_jax.state import TrainState

    params = {"w": jnp.ones(3)}
    state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))
    if replicas:
        state = jax.tree.map(lambda x: jnp.stack([x] * replicas), state)
    return state


def test_the_step_flags_a_nan_loss_on_device_and_skip_keeps_the_state():
    import jax
    import jax.numpy as jnp

    rng = jax.random.key(0)
    x = np.ones((2, 4, 3), np.float32)  # k=2 micro-batches of 4 rows
    bad = x.copy()
    bad[1, 2, 0] = np.nan  # one row of the second micro-batch
    for mode in ("stop", "skip"):
        step, tx = _toy_step(mode)
        state = _toy_state(tx)
        good_state, metrics = jax.jit(step)(state, {"x": jnp.asarray(x)}, rng)
        assert float(metrics["finite"]) == 1.0
        new, metrics = jax.jit(step)(good_state, {"x": jnp.asarray(bad)}, rng)
        assert float(metrics["finite"]) == 0.0
        assert int(new.step) == 2
        kept = np.array_equal(np.asarray(new.params["w"]), np.asarray(good_state.params["w"]))
        assert kept == (mode == "skip"), mode

    step, tx = _toy_step("skip", replicas=True)  # replica 0 diverges, replica 1 trains on
    new, metrics = jax.jit(step)(_toy_state(tx, replicas=2),
                                 {"x": jnp.asarray(np.stack([bad, x]))}, jax.random.split(rng))
    np.testing.assert_array_equal(np.asarray(metrics["finite"]), [0.0, 1.0])
    w = np.asarray(new.params["w"])
    np.testing.assert_array_equal(w[0], np.ones(3))
    assert np.all(w[1] < 1)


def test_tracker_counts_nonfinite_steps_and_names_the_first():
    import jax.numpy as jnp

    from sft_jax import steps

    track = steps.nonfinite_tracker("jit")
    tracker = None
    for step, flags in enumerate(([1, 1], [1, 0], [0, 0], [1, 0]), start=1):
        tracker = track(tracker, jnp.asarray(flags, jnp.float32), step)
    count, first = (np.asarray(t) for t in tracker)
    np.testing.assert_array_equal(count, [1, 3])
    np.testing.assert_array_equal(first, [3, 2])


def test_metrics_and_results_write_nonfinite_values_as_null(tmp_path):
    from sft_jax import runs, writers

    writer = writers.MetricWriter(tmp_path)
    writer.write(3, "train", {"loss": np.float32(np.nan), "grad_norm": math.inf, "weight": 8})
    writer.close()
    (record,) = strict_records(tmp_path)
    assert record == {"step": 3, "split": "train", "loss": None, "grad_norm": None, "weight": 8}
    (read,) = runs.read_records(tmp_path)
    assert math.isnan(read["loss"]) and math.isnan(read["grad_norm"]) and read["weight"] == 8
    assert strict_json(writers.to_json({"test": {"loss": -math.inf}})) == {"test": {"loss": None}}
    assert math.isnan(runs.final_metrics({"test": {"loss": None}}, 0)["test/loss"])
