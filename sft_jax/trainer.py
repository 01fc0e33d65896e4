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

Replicas (`train.replicas = K > 1`): K independent copies of the run train in one
jit-compiled step (`jax.vmap` over a leading replica axis of the state, the batch and the
rng). Replica k is the run with `seed + k`: its new layers' initialisation, dropout and
data order are those of that run, so its losses and metrics equal a separate run's
within float tolerance (batches of the K replicas are padded to one length per step).
Checkpoints hold all replicas; each replica keeps its own best params
(`best/replica-k/`), is evaluated alone and writes `predictions/replica-k/`,
`export/replica-k/`; metrics.jsonl records carry `"replica": k`, and results.json holds
the mean and std over replicas beside each replica's results.

Non-finite guard (`train.on_nonfinite`): each step flags on device whether its loss,
gradient norm and updated params' norm are finite; the loop reads the flags only where it
syncs anyway (logging, saving, evaluating). `stop` raises `NonFiniteError` at the first
such read after a bad step, before anything of that state is saved, chosen as best or
exported; `skip` drops the bad updates on device (per replica); `ignore` trains on. A
state that had a bad step is never chosen as best, and neither is a non-finite metric.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np

from sft_jax import console, optim, parallel, peft, placement, steps, storage, tasks, validate
from sft_jax import state as state_lib
from sft_jax import workdir as workdir_lib
from sft_jax.checkpoint import Checkpoints, read_params
from sft_jax.data import pipeline
from sft_jax.errors import NonFiniteError, UserInputError
from sft_jax.interrupts import GracefulStop, StopRequested
from sft_jax.models.layers import count_params
from sft_jax.replicas import replica_summary
from sft_jax.stopping import EarlyStopping
from sft_jax.writers import MetricWriter, peak_rss_mb, to_json

log = logging.getLogger(__name__)


def _buckets(config: ml_collections.ConfigDict) -> list[int]:
    if config.data.buckets:
        return sorted(int(b) for b in config.data.buckets)
    return pipeline.bucket_lengths(int(config.data.max_length))


def _check_config(config: ml_collections.ConfigDict) -> None:
    train = config.train
    if train.parallelism not in ("jit", "pmap"):
        raise UserInputError(f"train.parallelism: {train.parallelism!r} is not jit or pmap")
    if train.on_nonfinite not in ("stop", "skip", "ignore"):
        raise UserInputError(f"train.on_nonfinite: {train.on_nonfinite!r} is not stop, skip "
                             f"or ignore")
    if train.steps < 0:
        raise UserInputError("train.steps: must be >= 0")
    if train.replicas < 1:
        raise UserInputError("train.replicas: must be >= 1")
    if train.replicas > 1 and train.parallelism != "jit":
        raise UserInputError("train.replicas: replicas train in one jit-compiled program; "
                             "set train.parallelism=jit")
    if train.batch_size < 1 or config.optim.grad_accum < 1:
        raise UserInputError("train.batch_size and optim.grad_accum: must be >= 1")
    per_process = train.batch_size * config.optim.grad_accum
    if per_process % jax.process_count():
        raise UserInputError(
            f"train.batch_size: {train.batch_size} x optim.grad_accum "
            f"{config.optim.grad_accum} does not split over {jax.process_count()} processes"
        )


def write_config(config: ml_collections.ConfigDict, workdir: Path) -> None:
    """workdir/config.json, replaced whole (never half-written)."""
    if jax.process_index() == 0:
        workdir.mkdir(parents=True, exist_ok=True)
        storage.write_text(workdir / "config.json", config.to_json_best_effort(indent=2) + "\n")


def lock_workdir(workdir: Path) -> workdir_lib.WorkdirLock | None:
    """The workdir's lock (`sft_jax.workdir`), taken by process 0; the other processes
    only check the path."""
    if jax.process_index() == 0:
        return workdir_lib.lock(workdir)
    workdir_lib.check(workdir)
    return None


class Trainer:
    """Holds what one run compiles once: placement (mesh), state, step functions,
    checkpoints.

    It holds the workdir's lock from its construction to the end of `train_and_evaluate`
    (or `release()`); `config.json` is written once the config and the resume from the
    workdir's checkpoints (if any) are accepted, so a refused run leaves it as it was."""

    stopped: dict | None = None  # results.json's "stopped" once early stopping ended the run

    def __init__(self, config: ml_collections.ConfigDict, workdir: str | Path,
                 params_from: str | Path | None = None, start_label: str | None = None):
        """`params_from`: a best-params directory (`best/` of a run with the same model
        and PEFT settings) whose params replace the starting point's; `start_label`
        names the starting point in results.json's `params_from` (default `step 0`)."""
        self.started = time.perf_counter()
        self.params_from, self.start_label = params_from, start_label
        validate.check_config(config)  # every value, before the workdir, model or data
        _check_config(config)
        self.config = config
        self.replicas = int(config.train.replicas)
        self.seeds = [int(config.seed) + k for k in range(self.replicas)]
        self.workdir = storage.path(workdir)  # local, or remote (gs://...)
        self.lock = lock_workdir(self.workdir)  # before anything is written there
        try:
            self._setup()
        except BaseException:
            self.release()
            raise

    def release(self) -> None:
        """Frees the workdir's lock (idempotent)."""
        if self.lock is not None:
            self.lock.release()

    def _setup(self) -> None:
        config = self.config
        self.task = tasks.get_task(config, self.workdir)
        self.buckets = getattr(self.task, "buckets", None) or _buckets(config)
        self._eval_orders: dict[str, np.ndarray] = {}  # split: `pipeline.length_order`
        self.accum = int(config.optim.grad_accum)
        self.total_steps = int(config.train.steps)
        # Where the state lives and how the steps run there (jit over the mesh, or pmap).
        self.placement = placement.for_config(config)
        self.mesh, self.rules = self.placement.mesh, self.placement.rules
        self.tx, self.schedule = optim.make_optimizer(config.optim, max(self.total_steps, 1))
        self._setup_state_and_steps()
        base = None if self.peft is None else peft.base_fingerprint(config.model.checkpoint)
        self.checkpoints = Checkpoints(self.workdir, config.checkpoint, base=base,
                                       replicas=self.replicas, create=self.total_steps > 0)
        self.writer = MetricWriter(self.workdir)
        # Non-finite steps per replica: since the last train record, in this session, and
        # the first one (0: none) of a replica whose state took a non-finite update.
        self.nonfinite_unlogged = np.zeros(self.replicas, int)
        self.nonfinite_total = np.zeros(self.replicas, int)
        self.nonfinite_first = np.zeros(self.replicas, int)

    def _setup_state_and_steps(self) -> None:
        """The (replicas') state, sharded where it lives, and the compiled steps."""
        config = self.config
        pretrained, init_batch = self.task.pretrained_params(), self.task.init_batch()
        self.peft = peft.build(config, state_lib.abstract_params(
            self.task.module, init_batch, config.seed), pretrained)
        with self.placement.context():  # the init traces the model: its constraints apply
            self._create_state(pretrained, init_batch)
        del pretrained
        if self.params_from is not None:
            self._load_params(self.params_from)
        self.num_params = (self.peft.num_params if self.peft is not None
                           else count_params(self.state.params) // self.replicas)
        self.trained_params = count_params(self.state.params) // self.replicas
        log.debug("Model: %s, %d parameters", type(self.task.module).__name__, self.num_params)

        combine = None if self.peft is None else self.peft.combine
        train_step = steps.make_train_step(
            self.task.loss_fn, self.tx, self.schedule,
            axis_name=self.placement.axis_name, combine=combine,
            on_nonfinite=config.train.on_nonfinite,
        )
        if self.replicas > 1:
            train_step = steps.over_replicas(train_step, frozen=combine is not None)
        self.train_step = self.placement.compile_train_step(train_step, self.state_shardings,
                                                            frozen=combine is not None)
        self.eval_step = self.placement.compile_eval_step(self.task.eval_fn)
        self.track_nonfinite = steps.nonfinite_tracker(self.placement.mode)
        self._tracker = None  # the steps' flags since the last read, folded on device
        self.adapter = None
        if self.peft is not None:
            self._setup_peft(combine)

    def _create_state(self, pretrained, init_batch) -> None:
        """`state` (stacked over replicas, if any), its shardings and the step's rng."""
        # `shardings` place one replica's state; `state_shardings` the (stacked) state.
        stack = None
        for k, seed in enumerate(self.seeds):
            state, self.shardings, self.frozen = state_lib.create_train_state(
                self.task.module, init_batch, pretrained, self.tx, self.mesh, self.rules,
                seed, peft=self.peft,
            )
            if self.replicas == 1:
                self.state, self.state_shardings = state, self.shardings
                continue
            if stack is None:
                self.state_shardings = state_lib.replica_shardings(self.shardings, self.mesh)
                stack = state_lib.ReplicaStack(self.replicas, self.state_shardings)
            stack.set(k, state)
            del state
        if stack is not None:
            self.state = stack.tree
        # The step's rng (dropout): key(seed + 1) of each replica's seed.
        keys = [jax.random.key(seed + 1) for seed in self.seeds]
        self.rng = keys[0] if self.replicas == 1 else jax.numpy.stack(keys)

    def _load_params(self, directory: str | Path) -> None:
        """The state's params from a best-params directory (one replica's tree)."""
        if self.replicas > 1:
            raise UserInputError("train.replicas: params from a best/ directory start one "
                                 "replica; set train.replicas=1")
        abstract = state_lib.abstract_like(self.state.params, self.state_shardings.params)
        step, params = read_params(directory, abstract)
        self.state = self.state.replace(params=params)
        self.start_label = self.start_label or f"{directory} (step {step})"

    def _setup_peft(self, combine) -> None:
        """Partial training: the steps take the frozen base as an extra argument; the
        state's params are the trainable tree only (see `sft_jax.peft`)."""
        log.debug("%s", self.peft.describe())
        frozen = self.placement.to_steps(self.frozen)
        train_step = self.train_step
        eval_step = self.placement.compile_eval_step(
            lambda params, batch, frozen: self.task.eval_fn(combine(params, frozen), batch))
        self.train_step = lambda state, batch, rng: train_step(state, batch, rng, frozen)
        self.eval_step = lambda params, batch: eval_step(params, batch, frozen)
        self._combine = jax.jit(combine)
        if self.peft.targets and self.config.checkpoint.export:
            layout = peft.adapter_layout(self.peft, self.task.module,
                                         getattr(self.task, "module_config", None))
            if isinstance(layout, str):
                log.warning("no PEFT adapter in export/adapter: %s (export/ holds the "
                            "merged model)", layout)
            else:
                self.adapter = layout

    def header(self, start: int) -> list[str]:
        """What this run is, in a few lines: task and model, data, devices, batch and
        steps, the workdir (and where it resumes)."""
        config = self.config
        model = f"{config.task}: {config.model.checkpoint or 'a new model'} " \
                f"({type(self.task.module).__name__}, {console.count(self.num_params)} params"
        if self.peft is not None:
            model += f"; {self.peft.method}: {console.count(self.trained_params)} trained"
        lines = [model + ")"]
        records = getattr(self.task, "records", {})
        if records:
            lines.append("data: " + ", ".join(f"{split} {len(rows):,}"
                                                for split, rows in records.items()) + " records")
        devices = jax.devices()
        where = f"devices: {len(devices)} {devices[0].platform}"
        if self.mesh is not None:
            where += " · mesh " + " ".join(f"{k}={v}" for k, v in self.mesh.shape.items())
        if jax.process_count() > 1:
            where += f" · {jax.process_count()} processes"
        lines.append(f"{where} · {self.placement.mode}")
        if self.total_steps == 0:
            lines.append("train: none (evaluation of the starting point)")
        else:
            unit = "examples" if self.task_unit() == "examples" else "rows"
            batch = config.train.batch_size * self.accum
            train = (f"train: {self.total_steps:,} steps of {batch} {unit}"
                     + (f" ({config.train.batch_size} x {self.accum} micro-batches)"
                        if self.accum > 1 else "")
                     + f" · lr {config.optim.learning_rate:g} {config.optim.schedule}")
            if self.replicas > 1:
                train += f" · {self.replicas} replicas, seeds {self.seeds[0]}..{self.seeds[-1]}"
            lines.append(train)
        lines.append(f"workdir: {self.workdir}"
                     + (f" (resuming from step {start})" if start else ""))
        return lines

    def task_unit(self) -> str:
        """What a step's `weight` counts: `examples` (classification) or `tokens` (target
        tokens of the LM tasks)."""
        return getattr(self.task, "unit", "tokens")

    def model_params(self, params):
        """The model's params from state params in the jit form (`Placement.from_steps`):
        the same tree for full fine-tuning, else the frozen base combined with the
        trainable tree."""
        if self.peft is None:
            return params
        return self._combine(params, self.frozen)

    # Data --------------------------------------------------------------------------------

    def _train_iterators(self, features: Sequence[dict]) -> list[pipeline.TrainIterator]:
        """One iterator per replica, each shuffled by its replica's seed."""
        lengths = self.task.train_lengths() if self.config.data.group_by_length > 1 else None
        return [pipeline.TrainIterator(
            features,
            global_batch_size=self.config.train.batch_size * self.accum,
            seed=seed,
            buckets=self.buckets,
            pad_values=self.task.pad_values,
            process_index=jax.process_index(),
            process_count=jax.process_count(),
            lengths=lengths,
            group_batches=int(self.config.data.group_by_length),
        ) for seed in self.seeds]

    def _next_batch(self, iterators: list[pipeline.TrainIterator]) -> dict:
        """The next training batch on device: [k, b, ...] micro-batches, or
        [K, k, b, ...] with replicas (each replica's rows from its own iterator, padded
        to one length per field)."""
        if self.replicas == 1:
            return self._device_batch(next(iterators[0]), self.accum)
        rows = [parallel.agree_on_length(next(it), self.task.pad_values) for it in iterators]
        rows = pipeline.pad_to_common_length(rows, self.task.pad_values)
        micro = [parallel.split_micro_batches(r, self.accum) for r in rows]
        stacked = {k: np.stack([m[k] for m in micro]) for k in micro[0]}  # K k b ...
        return parallel.to_global(stacked, self.mesh, leading=2)

    def _data_state(self, iterators: list[pipeline.TrainIterator] | None) -> dict:
        if not iterators:
            return {}
        if self.replicas == 1:
            return iterators[0].get_state()
        return {"replicas": [it.get_state() for it in iterators]}

    @staticmethod
    def _replica_data_states(data_state: dict) -> list[dict]:
        """The iterator state of each replica in a checkpoint's data item."""
        return data_state.get("replicas", [data_state])

    def _set_data_state(self, iterators: list[pipeline.TrainIterator], data_state: dict):
        for it, state in zip(iterators, self._replica_data_states(data_state), strict=True):
            it.set_state(state)

    def _device_batch(self, batch: dict, micro_batches: int | None) -> dict:
        """Host rows -> device arrays: [k, b, ...] micro-batches for training,
        [b, ...] for evaluation (`micro_batches=None`), as the placement lays them out."""
        batch = parallel.agree_on_length(batch, self.task.pad_values)
        if micro_batches is None:
            return self.placement.eval_batch(batch)
        return self.placement.train_batch(batch, micro_batches)

    # Replicas ------------------------------------------------------------------------------

    def _replica_params(self, params, k: int):
        """Replica k's params from the state's params, in the steps' form (there is one
        replica under pmap)."""
        return params if self.replicas == 1 else state_lib.replica(params, k,
                                                                   self.shardings.params)

    @contextlib.contextmanager
    def _as_replica(self, k: int) -> Iterator[None]:
        """While replica k is evaluated, the task sees its seed (e.g. to sample replies),
        as the separate run with that seed would."""
        seed = self.config.seed
        self.config.seed = self.seeds[k]
        try:
            yield
        finally:
            self.config.seed = seed

    def _out_dir(self, name: str, k: int) -> Path:
        """workdir/<name>, or workdir/<name>/replica-k with replicas."""
        out = self.workdir / name
        return out if self.replicas == 1 else out / f"replica-{k}"

    # Evaluation ----------------------------------------------------------------------------

    def evaluate_split(self, split: str, features: Sequence[dict], params) -> tuple[dict, dict]:
        """Runs the eval step over `features` and the task's evaluation of their outputs;
        `params` in the steps' form. Call inside `placement.context()`.

        The examples are batched shortest first (`pipeline.length_order`, computed once per
        split), so most batches pad to a small bucket: on Rotten Tomatoes' validation split
        in the sweeps' buckets, 48,128 padded tokens instead of 82,944 in file order. The
        outputs come back in file order."""
        chunks: list[dict] = []
        if split not in self._eval_orders or len(self._eval_orders[split]) != len(features):
            self._eval_orders[split] = pipeline.length_order(features)
        batches = pipeline.eval_batches(
            features,
            batch_size=self.config.eval.batch_size,
            buckets=self.buckets,
            pad_values=self.task.pad_values,
            process_index=jax.process_index(),
            process_count=jax.process_count(),
            order=self._eval_orders[split],
        )
        total = -(-len(features) // self.config.eval.batch_size)
        for batch in console.progress(batches, f"eval {split}", total=total):
            batch = self._device_batch(batch, None)
            chunks.append(self.placement.host_rows(self.eval_step(params, batch)))
        rows = {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}
        keep = rows["example_mask"] > 0
        order = np.argsort(rows["index"][keep], kind="stable")
        outputs = {k: v[keep][order] for k, v in rows.items()}
        if len(outputs["index"]) != len(features) or np.any(
                outputs["index"] != np.arange(len(features))):
            raise RuntimeError(f"evaluation of {split} did not see every example exactly once")
        host_params = self.model_params(self.placement.from_steps(params))
        return self.task.evaluate(split, outputs, params=host_params), outputs

    # The loop ------------------------------------------------------------------------------

    def train_and_evaluate(self) -> dict[str, Any]:
        """Trains, evaluates and exports; every step, evaluation, prediction and export runs
        inside the placement's context (the mesh and the logical-axis rules)."""
        try:
            with self.placement.context():
                return self._train_and_evaluate()
        finally:
            self.release()

    def _train_and_evaluate(self) -> dict[str, Any]:
        config = self.config
        train_features = self.task.train_features()
        eval_features = self.task.eval_features()
        if self.total_steps > 0 and train_features is None:
            raise UserInputError("data.train: required when train.steps > 0")

        start = 0
        iterators = self._train_iterators(train_features) if train_features is not None \
            else None
        abstract = state_lib.abstract_like(self.state, self.state_shardings)
        restored = self.checkpoints.restore(abstract, check_data=self._check_data_state)
        if restored is not None:
            self.state, data_state, rng = restored
            # Placed as the fresh key is, so the resumed run reuses the compiled steps.
            self.rng = jax.device_put(rng, self.rng.sharding)
            if iterators is not None:
                self._set_data_state(iterators, data_state)
            start = int(np.asarray(self.state.step).reshape(-1)[0])
        self.state = self.placement.to_steps(self.state)
        write_config(config, self.workdir)  # config and resume accepted: it is this run's

        if jax.process_index() == 0:
            for line in self.header(start):
                log.info("%s", line)
            cut = {k: v for k, v in self.task.data_stats().items()
                   if ("truncated" in k or "dropped" in k) and v}
            if cut:  # once per run, counted: the data record of metrics.jsonl has them all
                see = "data.max_length and the task's other length keys" + (
                    ", data.augment" if config.data.get("augment") else "")
                log.warning("data: %s (of the records above; see %s)",
                            ", ".join(f"{k.replace('/', ' ').replace('_', ' ')} {v:,}"
                                      for k, v in cut.items()), see)
        if start == 0:
            self.writer.write(0, "data", self.task.data_stats())
        self.writer.write(start, "model", {"params": self.num_params,
                                           "trained_params": self.trained_params,
                                           "replicas": self.replicas})
        periodic = config.eval.periodic_split
        stopper = EarlyStopping(config, self.replicas)  # train.early_stopping_*
        stopper.resume(self.workdir, start)
        progress = console.TrainProgress(start, self.total_steps,
                                         config.train.progress_bar and jax.process_index() == 0,
                                         unit=self.task_unit())
        step = start
        loop_started = time.perf_counter()
        last_time, last_step = loop_started, start
        try:
            with GracefulStop() as stop:
                while step < self.total_steps and stopper.stopped is None:
                    batch = self._next_batch(iterators)
                    self.state, metrics = self.train_step(self.state, batch, self.rng)
                    step += 1
                    self._tracker = self.track_nonfinite(self._tracker, metrics["finite"],
                                                         step)
                    log_now = step % config.train.log_every == 0 or step == self.total_steps
                    if log_now:
                        now = time.perf_counter()
                        rate = (step - last_step) / (now - last_time)
                        last_time, last_step = now, step
                        progress.update(step, *self._log_train(step, metrics, rate))
                    else:
                        progress.update(step)
                    eval_now = config.train.eval_every and step % config.train.eval_every == 0
                    if eval_now and periodic in eval_features and step < self.total_steps:
                        self._check_nonfinite()
                        if stopper.update(step, self._periodic_eval(
                                step, periodic, eval_features[periodic])):
                            log.info("step %d: %s", step, stopper.stopped["reason"])
                    if (config.checkpoint.every and step % config.checkpoint.every == 0) or (
                            stop.requested):
                        self._save(step, iterators)
                    if stop.requested:
                        raise StopRequested(f"stopped at step {step}; resume with the same "
                                            f"command")
        finally:
            progress.close()
            self.checkpoints.wait()  # a save in flight completes before any exit
        train_seconds = time.perf_counter() - loop_started

        if self.total_steps > 0:
            self._save(step, iterators)
        self.stopped = stopper.stopped  # the final evaluation then uses the best params
        results = self._final(step, eval_features)
        self.checkpoints.wait()
        self.checkpoints.close()
        self.writer.write(step, "session", {
            "seconds": time.perf_counter() - self.started, "train_seconds": train_seconds,
            "start_step": start, "nonfinite_steps": int(self.nonfinite_total.sum()),
            "peak_rss_mb": peak_rss_mb()})
        self.writer.close()
        return results

    def _log_train(self, step: int, metrics: dict, steps_per_second: float
                   ) -> tuple[float, float, float]:
        """Writes the step's train metrics (one record per replica); returns the loss and
        learning rate (means over replicas) and the throughput (task units per second,
        from this step's `weight`) for the progress display."""
        values = self.placement.host_metrics(metrics)
        del values["finite"]  # read through the tracker: it holds every step since the last log
        self._read_nonfinite()
        for k in range(self.replicas):
            record = {name: float(v if self.replicas == 1 else v[k])
                      for name, v in values.items()}
            record["steps_per_second"] = steps_per_second
            record["nonfinite_steps"] = int(self.nonfinite_unlogged[k])
            self.writer.write(step, "train", record,
                              replica=k if self.replicas > 1 else None)
        if self.nonfinite_unlogged.any() and self.config.train.on_nonfinite == "skip":
            log.warning("step %d: %d non-finite update(s) skipped since the last log",
                        step, self.nonfinite_unlogged.sum())
        self.nonfinite_unlogged[:] = 0
        self._check_nonfinite()
        return (float(np.mean(values["loss"])), float(np.mean(values["learning_rate"])),
                float(np.sum(values["weight"])) * steps_per_second)

    def _read_nonfinite(self) -> None:
        """Folds the steps' `finite` flags since the last read into the host counts."""
        if self._tracker is None:
            return
        count, first = (np.atleast_1d(v).astype(int) for v in self.placement.host_metrics(
            dict(zip(("count", "first"), self._tracker, strict=True))).values())
        self._tracker = None
        self.nonfinite_unlogged += count
        self.nonfinite_total += count
        if self.config.train.on_nonfinite != "skip":  # the update was applied: tainted
            fresh = (count > 0) & (self.nonfinite_first == 0)
            self.nonfinite_first[fresh] = first[fresh]

    def _check_nonfinite(self) -> None:
        """Under `train.on_nonfinite=stop`, raises NonFiniteError once any replica's state
        took a non-finite update; call before anything reads the state (save, evaluation)."""
        self._read_nonfinite()
        bad = np.flatnonzero(self.nonfinite_first)
        if not len(bad) or self.config.train.on_nonfinite != "stop":
            return
        k = bad[np.argmin(self.nonfinite_first[bad])]
        last = self.checkpoints.latest_step()
        kept = "no checkpoint was saved before it" if last is None else \
            f"the last good checkpoint {self.checkpoints.latest.directory}/{last} is kept"
        raise NonFiniteError(
            f"step {self.nonfinite_first[k]}"
            f"{f' (replica {k})' if self.replicas > 1 else ''}: non-finite loss, gradient "
            f"norm or parameter norm (train.on_nonfinite=stop); {kept}; lower "
            f"optim.learning_rate, clip with optim.max_grad_norm, or set "
            f"train.on_nonfinite=skip")

    def _check_data_state(self, data_state: dict) -> None:
        saved = len(self._replica_data_states(data_state))
        if saved != self.replicas:
            raise UserInputError(
                f"{self.checkpoints.latest.directory}: the checkpoint holds {saved} "
                f"replica(s), this run has train.replicas={self.replicas}; resume with the "
                f"same train.replicas")

    def _save(self, step: int, iterators) -> None:
        self._check_nonfinite()
        state = self.placement.from_steps(self.state)
        self.checkpoints.save(step, state, self._data_state(iterators), self.rng)

    def _periodic_eval(self, step: int, split: str, features) -> list[dict]:
        """Evaluates every replica on `split`, keeping each one's best params."""
        return [self._periodic_eval_replica(k, step, split, features)
                for k in range(self.replicas)]

    def _periodic_eval_replica(self, k: int, step: int, split: str, features) -> dict:
        params = self._replica_params(self.state.params, k)
        with self._as_replica(k):
            metrics, _ = self.evaluate_split(split, features, params)
        self.writer.write(step, split, metrics, replica=k if self.replicas > 1 else None)
        candidate = not self.nonfinite_first[k] and np.isfinite(
            float(metrics.get(self.checkpoints.metric, 0.0)))
        best = candidate and self.checkpoints.save_best(
            step, self.placement.from_steps(params), metrics, replica=k)
        shown = "  ".join(f"{name} {console.number(value)}" for name, value in
                          console.headline_metrics(metrics).items())
        log.info("step %d %s%s: %s%s", step, split,
                 f" (replica {k})" if self.replicas > 1 else "", shown,
                 f"  (new best {self.checkpoints.metric})" if best else "")
        return metrics

    def _final(self, step: int, eval_features: dict) -> dict[str, Any]:
        per_replica = [self._final_replica(k, step, eval_features)
                       for k in range(self.replicas)]
        results = per_replica[0] if self.replicas == 1 else \
            replica_summary(per_replica, self.seeds)
        if self.stopped is not None:
            results["stopped"] = self.stopped
        if jax.process_index() == 0:  # whole or absent: a sweep takes it as "done"
            storage.write_text(self.workdir / "results.json", to_json(results, indent=2) + "\n")
        return results

    def _final_replica(self, k: int, step: int, eval_features: dict) -> dict[str, Any]:
        """Final evaluation, predictions and export of replica k (the only one, without
        replicas)."""
        config = self.config
        periodic = config.eval.periodic_split
        replica = k if self.replicas > 1 else None
        results: dict[str, Any] = {}
        if periodic in eval_features and self.total_steps > 0:
            results[periodic] = self._periodic_eval_replica(k, step, periodic,
                                                            eval_features[periodic])

        params = self._replica_params(self.state.params, k)
        source = self.start_label if step == 0 and self.start_label else f"step {step}"
        if (config.checkpoint.use_best_for_final or self.stopped) and self.total_steps > 0:
            abstract = state_lib.abstract_like(self.placement.from_steps(self.state.params),
                                               self.shardings.params) \
                if self.replicas == 1 else state_lib.unstacked(self.state.params,
                                                               self.shardings.params)
            best = self.checkpoints.restore_best(abstract, replica=k)
            if best is not None:
                best_step, params = best
                source = f"best {self.checkpoints.metric} at step {best_step}"
                params = self.placement.to_steps(params)
        if self.nonfinite_first[k] and source.startswith("step"):
            log.warning("replica %d had non-finite updates from step %d on "
                        "(train.on_nonfinite=ignore)", k, self.nonfinite_first[k])
        log.debug("Final evaluation%s with the params of %s",
                 f" of replica {k}" if replica is not None else "", source)

        pred_dir = self._out_dir("predictions", k)
        final_params = self.placement.from_steps(params)
        model_params = self.model_params(final_params)
        with self._as_replica(k):
            for split in config.eval.splits:
                if split not in eval_features:
                    continue
                metrics, outputs = self.evaluate_split(split, eval_features[split], params)
                metrics["params_from"] = source
                results[split] = metrics
                self.writer.write(step, split, {"final": 1, **metrics}, replica=replica)
                if config.eval.write_predictions:  # every process: samples may be collective
                    pred_dir.mkdir(parents=True, exist_ok=True)
                    self.task.write_predictions(split, outputs, pred_dir / f"{split}.jsonl",
                                                params=model_params)

        if config.checkpoint.export:
            host = parallel.to_host(model_params)
            trainable = parallel.to_host(final_params) if self.adapter is not None else None
            if jax.process_index() == 0:
                with storage.staged_dir(self._out_dir("export", k)) as export_dir:
                    self.task.export(export_dir, host)
                    if self.adapter is not None:
                        peft.write_adapter(export_dir / "adapter", self.peft,
                                           self.adapter, trainable, host,
                                           self.checkpoints.base["path"])
        return results


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | Path) -> dict:
    """Trains `config.train.steps` updates (resuming from workdir), evaluates, exports.

    Returns the final metrics by split. `train.steps=0` evaluates the starting point only.
    """
    return Trainer(config, workdir).train_and_evaluate()

