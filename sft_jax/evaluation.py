"""`sft-jax eval` (also `python -m sft_jax.evaluation`): evaluate a model, no training.

    sft-jax eval --config=configs/classification.py --model=minilm-l6 --workdir=/tmp/before
    sft-jax eval --config=configs/classification.py --model=/tmp/run/export --workdir=/tmp/ev

`--model` is an asset name, a Hugging Face directory (e.g. a run's `export/`) or a run's
`best/` directory (read with the model, PEFT and label settings of that run's
config.json and labels.json); default: the config's `model.checkpoint`. The configured
splits (`eval.splits`) are evaluated with the task's metrics by the code of a training
run's final evaluation (`sft_jax.trainer` with `train.steps=0`), which writes results.json,
metrics.jsonl, log.txt and predictions/ to the workdir. Nothing is trained, checkpointed
or exported. The workdir must not hold a training run's checkpoints.
"""

from __future__ import annotations

import json
import os
from typing import Any

import ml_collections
from absl import flags

from sft_jax import storage
from sft_jax.errors import UserInputError

flags.DEFINE_string("model", None, "Asset name, Hugging Face directory (a run's export/) or "
                    "a run's best/ directory; default: the config's model.checkpoint.")

FLAGS = flags.FLAGS


def best_params_run(model: str | os.PathLike) -> os.PathLike | None:
    """The run directory of a best-params directory (`RUN/best`, `RUN/best/replica-k`),
    None when `model` is not one."""
    path = storage.path(model)
    if path.name.startswith("replica-") and path.parent.name == "best":
        path = path.parent
    if path.name != "best" or not path.is_dir():
        return None
    run = path.parent
    if not (run / "config.json").is_file():
        raise UserInputError(f"{model}: a best/ directory needs its run's config.json "
                             f"beside it ({run / 'config.json'} is missing)")
    return run


def _adopt(section: ml_collections.ConfigDict, saved: dict[str, Any], where: str) -> None:
    """`section`'s keys set to the values a run saved (lists back to tuples)."""
    for key, value in saved.items():
        if key not in section:
            continue
        current = section[key]
        if isinstance(current, ml_collections.ConfigDict):
            _adopt(current, value or {}, f"{where}.{key}")
        elif isinstance(current, tuple):
            section[key] = tuple(tuple(v) if isinstance(v, list) else v for v in value)
        else:
            try:
                section[key] = value
            except TypeError as err:
                raise UserInputError(f"{where}.{key}: {err}") from None


def evaluate(config: ml_collections.ConfigDict, workdir: str | os.PathLike,
             model: str | os.PathLike | None = None) -> dict[str, Any]:
    """Evaluates `model` (see the module docstring; None: `config.model.checkpoint`) on
    the config's splits into `workdir`; returns the results by split (results.json)."""
    from sft_jax import tasks, trainer

    tasks.check_loop_task(config.task)
    workdir = storage.path(workdir)
    if (workdir / "checkpoints").is_dir() and any((workdir / "checkpoints").iterdir()):
        raise UserInputError(f"{workdir}: holds a training run's checkpoints; evaluate into "
                             f"another directory (its results.json would be replaced)")
    config = ml_collections.ConfigDict(config.to_dict())  # a copy, unlocked
    params_from, label = None, None
    if model:
        run = best_params_run(model)
        if run is None and (storage.path(model) / "metrics.jsonl").exists():
            raise UserInputError(f"--model: {model} is a run directory; evaluate its export/ "
                                 f"or best/")
        if run is None:
            config.model.checkpoint = str(model)
            label = str(model)
        else:
            saved = json.loads((run / "config.json").read_text())
            for section in ("model", "peft"):
                _adopt(config[section], saved.get(section, {}), section)
            labels = run / "labels.json"
            if labels.is_file() and not (workdir / "labels.json").exists():
                workdir.mkdir(parents=True, exist_ok=True)
                storage.write_text(workdir / "labels.json", labels.read_text())
            params_from = storage.path(model)
    config.train.steps = 0
    config.train.replicas = 1
    config.checkpoint.export = False
    return trainer.Trainer(config, workdir, params_from=params_from,
                           start_label=label).train_and_evaluate()


def _command(config, workdir: str) -> dict:
    return evaluate(config, workdir, FLAGS.model)


def run() -> None:
    """Entry point of `sft-jax eval` and `python -m sft_jax.evaluation`."""
    from sft_jax import main

    main.main(main.parse_flags(__doc__), _command)


if __name__ == "__main__":
    run()
