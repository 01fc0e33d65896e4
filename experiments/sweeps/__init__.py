"""Sweep files of the laboratory notebooks and the README (`sft-jax sweep --sweep=FILE`).

The short classification runs they share: `short_runs` for a full run, `TINY` for the
runs the test suite makes at the size of a config's `runlocal` variant.
"""

BUCKETS = (16, 32, 48, 64)  # snippets average 27 tokens; truncated to 64

TINY = {"train.replicas": 2, "checkpoint.export": False, "eval.write_predictions": False,
        "train.progress_bar": False}


def short_runs(steps: int, eval_every: int, *, replicas: int = 3, log_every: int = 10,
               **extra) -> dict:
    """Overrides of a short classification run: `replicas` seeds in one program, `steps`
    updates, the validation split every `eval_every` (checkpoints as often; 0: at the
    end only, checkpoints every half), snippets truncated to 64 tokens in `BUCKETS`, no
    export, no prediction files and no progress bar (each run's output goes to
    DIR/<run>/sweep.log); `extra` overrides added last."""
    return {"train.replicas": replicas, "train.steps": steps, "train.eval_every": eval_every,
            "train.log_every": log_every, "checkpoint.every": eval_every or steps // 2,
            "checkpoint.export": False, "eval.write_predictions": False,
            "data.max_length": 64, "data.buckets": BUCKETS, "train.progress_bar": False,
            **extra}
