"""Two learning rates x three seeds of MiniLM-L6 on Rotten Tomatoes, short runs.

    python -m sft_jax.sweep --config=configs/classification.py \
        --sweep=experiments/sweeps/lr_seeds.py --workdir=/tmp/rt-lr-seeds [--parallel=2]
    python -m sft_jax.report /tmp/rt-lr-seeds

Every run is 150 updates of 32 snippets truncated to 64 tokens, evaluated and saved every
50 steps. `experiments/sweeps/lr_seeds.py:tiny` is 2 learning rates x 2 seeds without the
shortening keys, for tests with `configs/classification.py:runlocal`.
"""

from sft_jax import sweeps

LEARNING_RATES = [5e-5, 2e-4]

SHORT = {
    "train.steps": 150,
    "train.eval_every": 50,
    "train.log_every": 10,
    "checkpoint.every": 50,
    "data.max_length": 64,
    "data.buckets": (16, 32, 48, 64),
    "train.progress_bar": False,  # each run's output goes to DIR/<run>/sweep.log
}


def get_sweep(arg: str | None = None) -> list[dict]:
    if arg == "tiny":
        return sweeps.product({"optim.learning_rate": LEARNING_RATES}, sweeps.seeds(2))
    if arg:
        raise ValueError(f"unknown sweep variant {arg!r} (known: tiny)")
    return sweeps.product({"optim.learning_rate": LEARNING_RATES}, sweeps.seeds(3), [SHORT])
