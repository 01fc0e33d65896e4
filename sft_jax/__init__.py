"""sft_jax: supervised fine-tuning of pretrained transformers in JAX/Flax.

From a notebook, the commands' Python face:

    import sft_jax
    from sft_jax import runs

    config = sft_jax.load_config("configs/classification.py:runlocal",
                                 {"optim.learning_rate": 3e-5})
    results = sft_jax.train(config, "/tmp/run")            # as `sft-jax train`
    before = sft_jax.evaluate(config, "/tmp/before", model="minilm-l6")  # `sft-jax eval`
    table = runs.load("/tmp")                              # metrics of runs, a DataFrame
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["Pretrained", "evaluate", "load_config", "load_pretrained", "train"]


def __getattr__(name: str) -> Any:
    """`Pretrained` and `load_pretrained` load on first use, so that `import sft_jax`
    (and `sft-jax --help`) does not import jax and transformers."""
    if name in ("Pretrained", "load_pretrained"):
        from sft_jax import pretrained

        return getattr(pretrained, name)
    raise AttributeError(f"module 'sft_jax' has no attribute {name!r}")


def load_config(spec: str, overrides: dict[str, Any] | None = None):
    """The config of `FILE.py[:variant]` (as `--config=` takes it) with `overrides`
    applied (`{"optim.learning_rate": 3e-5}`), parsed as `--config.KEY=VALUE` flags are;
    a bad key or value raises `UserInputError` naming it."""
    from absl import flags

    from sft_jax import sweeps
    from sft_jax.errors import UserInputError, flag_error

    args = [f"--config.{k}={sweeps.render_value(v)}" for k, v in (overrides or {}).items()]
    try:
        return sweeps.parse_config(spec, args)
    except (flags.Error, UserInputError, AttributeError, KeyError, TypeError,
            ValueError) as exc:
        raise UserInputError(flag_error(exc, ["sft_jax", *args])) from None


def train(config, workdir: str | Path) -> dict[str, Any]:
    """Trains `config.train.steps` updates in `workdir` (resuming from its checkpoints),
    evaluates and exports, as `sft-jax train` does; returns the final results by split
    (results.json). The console shows what `sft-jax train` shows (unless the program set
    up logging itself); `workdir/log.txt` gets the run's log."""
    from sft_jax import console, tasks, validate

    validate.check_config(config)  # a refused config leaves no trace in the workdir
    with console.session(workdir):
        return tasks.train_and_evaluate(config, workdir)


def evaluate(config, workdir: str | Path, model: str | Path | None = None) -> dict[str, Any]:
    """Evaluates `model` (an asset, a Hugging Face directory such as a run's export/, a
    run's best/; default `config.model.checkpoint`) on the config's splits without
    training, as `sft-jax eval` does; returns the results by split."""
    from sft_jax import console, evaluation, validate

    validate.check_config(config)
    with console.session(workdir):
        return evaluation.evaluate(config, workdir, model)
