"""Checkpoints with orbax: periodic saves (keep the latest k), the best by a metric, resume.

workdir/checkpoints/<step>/  state (params, optimizer, step), data iterator state, rng
workdir/best/<step>/         params only, the best `checkpoint.best_metric` seen so far
workdir/best/replica-<k>/<step>/   the same per replica when `train.replicas` > 1 (each
                             replica keeps its own best, as a separate run would)

Under `sft_jax.peft` the state's params are the trainable tree only (LoRA factors, params
trained in full), so checkpoints hold no frozen weights; each periodic checkpoint then
also holds `base` (JSON: `model.checkpoint`, its directory, size and sha256 of each
weight file), and a resume from it is refused unless the base is the same.

Resume reads the newest readable checkpoint: one that cannot be read (a truncated file, a
missing item, garbled metadata) is reported in one warning line and moved aside to
`checkpoints/corrupt-<step>/` (kept, not deleted), provided an older one reads; when none
does, nothing is moved and resume stops with one line (UserInputError). A save that fails
(disk full, a directory made read-only), including an async save's background write,
raises `sft_jax.workdir.StorageError` at the next save or `wait()`; checkpoints already
written stay intact (orbax writes each one to a temporary directory, renamed when whole).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from typing import Any

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from sft_jax import storage
from sft_jax.errors import UserInputError
from sft_jax.peft import check_base
from sft_jax.workdir import StorageError, describe_os_error

log = logging.getLogger(__name__)


class Checkpoints:
    """The run's two orbax managers behind save / restore calls the loop understands."""

    def __init__(self, workdir: str | os.PathLike, config: ml_collections.ConfigDict,
                 base: dict | None = None, replicas: int = 1, create: bool = True):
        """`base`: the fingerprint of the frozen base weights (`peft.base_fingerprint`)
        for a run whose checkpoints hold only what trains; None for full fine-tuning.
        `replicas`: how many replicas keep a best copy each (the state saved by `save`
        holds all of them stacked). `create=False` (a run that trains nothing) creates no
        directory."""
        workdir = storage.absolute(workdir)  # local, or remote (gs://...)
        self.every = int(config.every)
        self.metric = str(config.best_metric)
        self.mode = str(config.best_mode)
        self.base = base
        self.latest = ocp.CheckpointManager(
            workdir / "checkpoints",
            options=ocp.CheckpointManagerOptions(max_to_keep=max(int(config.keep), 1),
                                                 create=create),
            item_names=("state", "data", "rng") + (("base",) if base is not None else ()),
        )
        self.bests: list[ocp.CheckpointManager] = []
        if self.metric:
            best_dirs = [workdir / "best"] if replicas == 1 else [
                workdir / "best" / f"replica-{k}" for k in range(replicas)]
            self.bests = [ocp.CheckpointManager(
                directory,
                options=ocp.CheckpointManagerOptions(
                    max_to_keep=1,
                    best_fn=lambda m: m[self.metric],
                    best_mode=self.mode,
                    keep_checkpoints_without_metrics=False,
                    create=create,
                ),
                item_names=("params",),
            ) for directory in best_dirs]

    # Latest ------------------------------------------------------------------------------

    def latest_step(self) -> int | None:
        return self.latest.latest_step()

    def save(self, step: int, state: Any, data_state: dict, rng: jax.Array) -> None:
        if step in self.latest.all_steps():
            return
        items = {
            "state": ocp.args.StandardSave(state),
            "data": ocp.args.JsonSave(data_state),
            "rng": ocp.args.ArraySave(np.asarray(jax.random.key_data(rng))),
        }
        if self.base is not None:
            items["base"] = ocp.args.JsonSave(self.base)
        with _storage(self.latest.directory, step):
            self.latest.save(step, args=ocp.args.Composite(**items))

    def restore(self, abstract_state: Any, check_data=None
                ) -> tuple[Any, dict, jax.Array] | None:
        """(state, data iterator state, rng) of the newest readable checkpoint, or None
        when there is none. Unreadable newer ones are moved aside (see the module
        docstring). `check_data(data_state)` may refuse the checkpoint (raise) before the
        state is read, e.g. when it was written with another number of replicas."""
        steps = sorted(self.latest.all_steps(), reverse=True)
        unreadable: list[tuple[int, str]] = []
        for step in steps:
            try:
                out = self._restore_step(step, abstract_state, check_data)
            except UserInputError:
                raise
            except Exception as err:  # any failure to read it: try the next older one
                unreadable.append((step, f"{type(err).__name__}: {describe_os_error(err)}"))
                continue
            for bad, reason in unreadable:
                self._move_aside(bad, reason, step)
            if unreadable:
                self.latest.reload()
            return out
        if not steps:
            return None
        step, reason = unreadable[0]
        raise UserInputError(
            f"{self.latest.directory}: no readable checkpoint to resume from (step {step}: "
            f"{reason}" + (f"; {len(steps) - 1} older ones unreadable too" if len(steps) > 1
                           else "") + "); remove the directory to start afresh")

    def _move_aside(self, step: int, reason: str, used: int) -> None:
        directory = storage.path(self.latest.directory)
        aside = directory / f"corrupt-{step}"
        if jax.process_index() == 0:
            k = 1
            while aside.exists():
                k += 1
                aside = directory / f"corrupt-{step}.{k}"
            (directory / str(step)).rename(aside)
        log.warning("%s/%d: unreadable (%s); moved to %s, resuming from step %d",
                    directory, step, reason, aside, used)

    def _restore_step(self, step: int, abstract_state: Any, check_data
                      ) -> tuple[Any, dict, jax.Array]:
        log.info("Resuming from %s/%d", self.latest.directory, step)
        where = f"{self.latest.directory}/{step}"
        has_base = (storage.path(self.latest.directory) / str(step) / "base").exists()
        if has_base != (self.base is not None):
            raise UserInputError(
                f"{where}: written by a run that trained "
                f"{'part of the params' if has_base else 'every param'}; resume with the "
                f"same peft.* settings"
            )
        if self.base is not None:
            saved = self.latest.restore(step, args=ocp.args.Composite(
                base=ocp.args.JsonRestore())).base
            check_base(saved, self.base, where)
        if check_data is not None:
            check_data(dict(self.latest.restore(step, args=ocp.args.Composite(
                data=ocp.args.JsonRestore())).data))
        out = self.latest.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state),
                data=ocp.args.JsonRestore(),
                rng=ocp.args.ArrayRestore(),
            ),
        )
        rng = jax.random.wrap_key_data(np.asarray(out.rng))
        return out.state, dict(out.data), rng

    # Best --------------------------------------------------------------------------------

    def best_value(self, replica: int = 0) -> float | None:
        if not self.bests:
            return None
        best = self.bests[replica]
        with _storage(best.directory, None):
            best.wait_until_finished()  # metrics of an async save are written at its end
        if best.best_step() is None:
            return None
        return float(best.metrics(best.best_step())[self.metric])

    def is_better(self, metrics: dict, replica: int = 0) -> bool:
        if not self.bests or self.metric not in metrics:
            return False
        best = self.best_value(replica)
        value = float(metrics[self.metric])
        if best is None:
            return True
        return value > best if self.mode == "max" else value < best

    def save_best(self, step: int, params: Any, metrics: dict, replica: int = 0) -> bool:
        """Saves `params` (of one replica) when `metrics` beat that replica's best so far;
        returns whether it did."""
        if not self.is_better(metrics, replica) or step in self.bests[replica].all_steps():
            return False
        scalars = {k: float(v) for k, v in metrics.items() if np.ndim(v) == 0}
        with _storage(self.bests[replica].directory, step):
            self.bests[replica].save(
                step, args=ocp.args.Composite(params=ocp.args.StandardSave(params)),
                metrics=scalars)
        return True

    def restore_best(self, abstract_params: Any, replica: int = 0) -> tuple[int, Any] | None:
        if not self.bests:
            return None
        best = self.bests[replica]
        with _storage(best.directory, None):
            best.wait_until_finished()
        step = best.best_step()
        if step is None:
            return None
        out = best.restore(
            step, args=ocp.args.Composite(params=ocp.args.StandardRestore(abstract_params))
        )
        return step, out.params

    def wait(self) -> None:
        """Until every save in flight is written; raises StorageError if one failed."""
        for manager in (self.latest, *self.bests):
            with _storage(manager.directory, None):
                manager.wait_until_finished()

    def close(self) -> None:
        self.latest.close()
        for best in self.bests:
            best.close()


def read_params(directory: str | os.PathLike, abstract_params: Any) -> tuple[int, Any]:
    """(step, params) of the checkpoint kept in a best-params directory (`best/` or
    `best/replica-k/` of a run), restored to `abstract_params`; one line if unreadable."""
    directory = storage.absolute(directory)
    manager = ocp.CheckpointManager(directory, item_names=("params",),
                                    options=ocp.CheckpointManagerOptions(create=False))
    try:
        step = manager.latest_step()
        if step is None:
            raise UserInputError(f"{directory}: no checkpoint in it")
        out = manager.restore(step, args=ocp.args.Composite(
            params=ocp.args.StandardRestore(abstract_params)))
    except UserInputError:
        raise
    except Exception as err:  # any failure to read it (a mismatched tree, a bad file)
        raise UserInputError(f"{directory}: cannot be read as this run's params "
                             f"({type(err).__name__}: {describe_os_error(err)})") from None
    finally:
        manager.close()
    return step, out.params


@contextlib.contextmanager
def _storage(directory, step: int | None) -> Iterator[None]:
    """Turns a failed write under `directory` into one StorageError line."""
    try:
        yield
    except (UserInputError, KeyboardInterrupt):
        raise
    except Exception as err:
        when = "" if step is None else f", noticed when saving step {step}"
        raise StorageError(
            f"{directory}: writing a checkpoint failed ({describe_os_error(err)}{when}); "
            f"the checkpoints written before it are intact") from err
