"""The training loop: set up, step, evaluate, checkpoint, export.

It never branches on a task or a model name: it asks the task (`sft_jax.tasks`).
A run writes to its workdir:
  config.json           the resolved config
  labels.json           (classification) the label vocabulary
  metrics.jsonl         one JSON object per logged event: step, split, metrics
  tensorboard/          TensorBoard event files
  checkpoints/, best/   orbax checkpoints (latest k for resume; best by a metric)
  predictions/<split>.jsonl
  export/               a Hugging Face directory of the final (or best) model
"""

from __future__ import annotations

import contextlib
import json
import logging
import signal
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np

from sft_jax import optim, parallel, peft, steps, tasks
from sft_jax import state as state_lib
from sft_jax.checkpoint import Checkpoints
from sft_jax.data import pipeline
from sft_jax.errors import UserInputError
from sft_jax.writers import MetricWriter, Progress


class StopRequested(Exception):
    """Ctrl-C (SIGINT) or SIGTERM arrived; the loop saved a checkpoint at a step boundary."""


class _GracefulStop:
    """First SIGINT/SIGTERM sets a flag the loop checks between steps; a second one raises."""

    def __init__(self):
        self.requested = False
        self._previous = {}

    def _handler(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        logging.warning("Stop requested: saving a checkpoint at the end of this step.")

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError):  # not the main thread (e.g. a notebook)
                self._previous[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc):
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)


def _buckets(config: ml_collections.ConfigDict) -> list[int]:
    if config.data.buckets:
        return sorted(int(b) for b in config.data.buckets)
    return pipeline.bucket_lengths(int(config.data.max_length))


def _check_config(config: ml_collections.ConfigDict) -> None:
    train = config.train
    if train.parallelism not in ("jit", "pmap"):
        raise UserInputError(f"train.parallelism: {train.parallelism!r} is not jit or pmap")
    if train.steps < 0:
        raise UserInputError("train.steps: must be >= 0")
    if train.batch_size < 1 or config.optim.grad_accum < 1:
        raise UserInputError("train.batch_size and optim.grad_accum: must be >= 1")
    per_process = train.batch_size * config.optim.grad_accum
    if per_process % jax.process_count():
        raise UserInputError(
            f"train.batch_size: {train.batch_size} x optim.grad_accum "
            f"{config.optim.grad_accum} does not split over {jax.process_count()} processes"
        )


def write_config(config: ml_collections.ConfigDict, workdir: Path) -> None:
    if jax.process_index() == 0:
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "config.json").write_text(config.to_json_best_effort(indent=2) + "\n")


class Trainer:
    """Holds what one run compiles once: mesh, state, step functions, checkpoints."""

    def __init__(self, config: ml_collections.ConfigDict, workdir: str | Path):
        _check_config(config)
        self.config = config
        self.workdir = Path(workdir)
        write_config(config, self.workdir)
        self.task = tasks.get_task(config, self.workdir)
        self.mode = config.train.parallelism
        self.buckets = getattr(self.task, "buckets", None) or _buckets(config)
        self.accum = int(config.optim.grad_accum)
        self.total_steps = int(config.train.steps)

        if self.mode == "pmap":  # state lives on one device, then is replicated
            self.mesh = jax.sharding.Mesh(
                np.asarray(jax.local_devices()[:1]).reshape(1, 1, 1), parallel.MESH_AXES)
        else:
            self.mesh = parallel.make_mesh(config.mesh)
        self.rules = parallel.logical_rules(config.mesh)
        self.tx, self.schedule = optim.make_optimizer(config.optim, max(self.total_steps, 1))
        pretrained, init_batch = self.task.pretrained_params(), self.task.init_batch()
        self.peft = peft.build(config, state_lib.abstract_params(
            self.task.module, init_batch, config.seed), pretrained)
        self.state, self.shardings, self.frozen = state_lib.create_train_state(
            self.task.module, init_batch, pretrained, self.tx, self.mesh, self.rules,
            config.seed, peft=self.peft,
        )
        del pretrained
        self.rng = jax.random.key(config.seed + 1)
        logging.info("Model: %s, %d parameters", type(self.task.module).__name__,
                     state_lib.param_count(self.state.params) if self.peft is None
                     else self.peft.num_params)

        combine = None if self.peft is None else self.peft.combine
        train_step = steps.make_train_step(
            self.task.loss_fn, self.tx, self.schedule,
            axis_name=steps.PMAP_AXIS if self.mode == "pmap" else None, combine=combine,
        )
        self.train_step = steps.compile_train_step(train_step, self.mode, self.mesh,
                                                   self.shardings, frozen=combine is not None)
        self.eval_step = steps.compile_eval_step(self.task.eval_fn, self.mode, self.mesh)
        self.adapter = None
        if self.peft is not None:
            self._setup_peft(combine)
        base = None if self.peft is None else peft.base_fingerprint(config.model.checkpoint)
        self.checkpoints = Checkpoints(self.workdir, config.checkpoint, base=base)
        self.writer = MetricWriter(self.workdir)

    def _setup_peft(self, combine) -> None:
        """Partial training: the steps take the frozen base as an extra argument; the
        state's params are the trainable tree only (see `sft_jax.peft`)."""
        logging.info("%s", self.peft.describe())
        frozen = parallel.replicate(self.frozen) if self.mode == "pmap" else self.frozen
        train_step = self.train_step
        eval_step = steps.compile_eval_step(
            lambda params, batch, frozen: self.task.eval_fn(combine(params, frozen), batch),
            self.mode, self.mesh)
        self.train_step = lambda state, batch, rng: train_step(state, batch, rng, frozen)
        self.eval_step = lambda params, batch: eval_step(params, batch, frozen)
        self._combine = jax.jit(combine)
        if self.peft.targets and self.config.checkpoint.export:
            layout = peft.adapter_layout(self.peft, self.task.module,
                                         getattr(self.task, "module_config", None))
            if isinstance(layout, str):
                logging.warning("no PEFT adapter in export/adapter: %s (export/ holds the "
                                "merged model)", layout)
            else:
                self.adapter = layout

    def model_params(self, params):
        """The model's params from (unreplicated) state params: the same tree for full
        fine-tuning, else the frozen base combined with the trainable tree."""
        if self.peft is None:
            return params
        if self.mode == "pmap":  # a replica of pmap's state, next to the frozen params
            params = jax.device_put(params, parallel.replicated(self.mesh))
        return self._combine(params, self.frozen)

    # Data --------------------------------------------------------------------------------

    def _train_iterator(self, features: Sequence[dict]) -> pipeline.TrainIterator:
        return pipeline.TrainIterator(
            features,
            global_batch_size=self.config.train.batch_size * self.accum,
            seed=self.config.seed,
            buckets=self.buckets,
            pad_values=self.task.pad_values,
            process_index=jax.process_index(),
            process_count=jax.process_count(),
            lengths=self.task.train_lengths() if self.config.data.group_by_length > 1 else None,
            group_batches=int(self.config.data.group_by_length),
        )

    def _device_batch(self, batch: dict, micro_batches: int | None) -> dict:
        """Host rows -> device arrays: [k, b, ...] micro-batches for training,
        [b, ...] for evaluation (`micro_batches=None`); pmap adds a leading device axis."""
        batch = parallel.agree_on_length(batch, self.task.pad_values)
        if self.mode == "pmap":
            batch = parallel.to_pmap(batch, micro_batches or 1)
            return batch if micro_batches else {k: v[:, 0] for k, v in batch.items()}
        if micro_batches is None:
            return parallel.to_global(batch, self.mesh, leading=0)
        return parallel.to_global(parallel.split_micro_batches(batch, micro_batches),
                                  self.mesh, leading=1)

    # Evaluation ----------------------------------------------------------------------------

    def _gather(self, outputs: dict) -> dict[str, np.ndarray]:
        """Per-row outputs -> host numpy arrays holding every process's rows."""
        if self.mode == "pmap":
            outputs = {k: np.asarray(v).reshape((-1, *v.shape[2:])) for k, v in outputs.items()}
            if jax.process_count() > 1:
                from jax.experimental import multihost_utils

                outputs = {k: np.asarray(multihost_utils.process_allgather(v)).reshape(
                    (-1, *v.shape[1:])) for k, v in outputs.items()}
            return outputs
        return {k: np.asarray(v) for k, v in outputs.items()}

    def evaluate_split(self, split: str, features: Sequence[dict], params) -> tuple[dict, dict]:
        chunks: list[dict] = []
        for batch in pipeline.eval_batches(
            features,
            batch_size=self.config.eval.batch_size,
            buckets=self.buckets,
            pad_values=self.task.pad_values,
            process_index=jax.process_index(),
            process_count=jax.process_count(),
        ):
            batch = self._device_batch(batch, None)
            chunks.append(self._gather(self.eval_step(params, batch)))
        rows = {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}
        keep = rows["example_mask"] > 0
        order = np.argsort(rows["index"][keep], kind="stable")
        outputs = {k: v[keep][order] for k, v in rows.items()}
        if len(outputs["index"]) != len(features) or np.any(
                outputs["index"] != np.arange(len(features))):
            raise RuntimeError(f"evaluation of {split} did not see every example exactly once")
        host_params = parallel.unreplicate(params) if self.mode == "pmap" else params
        host_params = self.model_params(host_params)
        return self.task.evaluate(split, outputs, params=host_params), outputs

    # The loop ------------------------------------------------------------------------------

    def train_and_evaluate(self) -> dict[str, Any]:
        config = self.config
        train_features = self.task.train_features()
        eval_features = self.task.eval_features()
        if self.total_steps > 0 and train_features is None:
            raise UserInputError("data.train: required when train.steps > 0")

        start = 0
        iterator = self._train_iterator(train_features) if train_features is not None else None
        abstract = state_lib.abstract_like(self.state, self.shardings)
        restored = self.checkpoints.restore(abstract)
        if restored is not None:
            self.state, data_state, self.rng = restored
            if iterator is not None:
                iterator.set_state(data_state)
            start = int(self.state.step)
        if self.mode == "pmap":
            self.state = parallel.replicate(self.state)

        if start == 0:
            self.writer.write(0, "data", self.task.data_stats())
        periodic = config.eval.periodic_split
        progress = Progress(start, self.total_steps, config.train.progress_bar)
        step = start
        last_time, last_step = time.perf_counter(), start
        try:
            with _GracefulStop() as stop:
                while step < self.total_steps:
                    batch = self._device_batch(next(iterator), self.accum)
                    self.state, metrics = self.train_step(self.state, batch, self.rng)
                    step += 1
                    log_now = step % config.train.log_every == 0 or step == self.total_steps
                    if log_now:
                        metrics = jax.tree.map(lambda x: float(np.asarray(x).reshape(-1)[0]),
                                               metrics)
                        now = time.perf_counter()
                        metrics["steps_per_second"] = (step - last_step) / (now - last_time)
                        last_time, last_step = now, step
                        self.writer.write(step, "train", metrics)
                        progress.update(metrics["loss"])
                    else:
                        progress.update()
                    eval_now = config.train.eval_every and step % config.train.eval_every == 0
                    if eval_now and periodic in eval_features and step < self.total_steps:
                        self._periodic_eval(step, periodic, eval_features[periodic])
                    if (config.checkpoint.every and step % config.checkpoint.every == 0) or (
                            stop.requested):
                        self._save(step, iterator)
                    if stop.requested:
                        raise StopRequested(f"stopped at step {step}; resume with the same "
                                            f"command")
        finally:
            progress.close()
            self.checkpoints.wait()  # a save in flight completes before any exit

        if self.total_steps > 0:
            self._save(step, iterator)
        results = self._final(step, eval_features)
        self.checkpoints.wait()
        self.checkpoints.close()
        self.writer.close()
        return results

    def _final_params(self):
        """Params as a jit-mode (mesh-sharded) tree, whatever the parallelism."""
        return parallel.unreplicate(self.state.params) if self.mode == "pmap" \
            else self.state.params

    def _save(self, step: int, iterator) -> None:
        state = parallel.unreplicate(self.state) if self.mode == "pmap" else self.state
        data_state = iterator.get_state() if iterator is not None else {}
        self.checkpoints.save(step, state, data_state, self.rng)

    def _periodic_eval(self, step: int, split: str, features) -> dict:
        metrics, _ = self.evaluate_split(split, features, self.state.params)
        self.writer.write(step, split, metrics)
        params = self._final_params()
        if self.checkpoints.save_best(step, params, metrics):
            logging.info("step %d: new best %s = %.4f", step, self.checkpoints.metric,
                         metrics[self.checkpoints.metric])
        return metrics

    def _final(self, step: int, eval_features: dict) -> dict[str, Any]:
        config = self.config
        periodic = config.eval.periodic_split
        results: dict[str, Any] = {}
        if periodic in eval_features and self.total_steps > 0:
            results[periodic] = self._periodic_eval(step, periodic, eval_features[periodic])

        params, source = self.state.params, f"step {step}"
        if config.checkpoint.use_best_for_final and self.total_steps > 0:
            abstract = state_lib.abstract_like(self._final_params(), self.shardings.params)
            best = self.checkpoints.restore_best(abstract)
            if best is not None:
                best_step, params = best
                source = f"best {self.checkpoints.metric} at step {best_step}"
                if self.mode == "pmap":
                    params = parallel.replicate(params)
        logging.info("Final evaluation with the params of %s", source)

        pred_dir = self.workdir / "predictions"
        final_params = parallel.unreplicate(params) if self.mode == "pmap" else params
        model_params = self.model_params(final_params)
        for split in config.eval.splits:
            if split not in eval_features:
                continue
            metrics, outputs = self.evaluate_split(split, eval_features[split], params)
            metrics["params_from"] = source
            results[split] = metrics
            self.writer.write(step, split, {"final": 1, **metrics})
            if config.eval.write_predictions:  # every process: samples may be collective
                pred_dir.mkdir(parents=True, exist_ok=True)
                self.task.write_predictions(split, outputs, pred_dir / f"{split}.jsonl",
                                            params=model_params)

        if config.checkpoint.export:
            host = parallel.to_host(model_params)
            trainable = parallel.to_host(final_params) if self.adapter is not None else None
            if jax.process_index() == 0:
                self.task.export(self.workdir / "export", host)
                if self.adapter is not None:
                    peft.write_adapter(self.workdir / "export" / "adapter", self.peft,
                                       self.adapter, trainable, host,
                                       self.checkpoints.base["path"])
        if jax.process_index() == 0:
            (self.workdir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
        return results


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | Path) -> dict:
    """Trains `config.train.steps` updates (resuming from workdir), evaluates, exports.

    Returns the final metrics by split. `train.steps=0` evaluates the starting point only.
    """
    return Trainer(config, workdir).train_and_evaluate()

