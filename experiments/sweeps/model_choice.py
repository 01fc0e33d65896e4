"""Which model should I choose? Every classifier-capable model asset at two training sizes.

    sft-jax sweep --config=configs/classification.py \
        --sweep=experiments/sweeps/model_choice.py --workdir=DIR/transformers
    sft-jax sweep --config=configs/linear.py \
        --sweep=experiments/sweeps/model_choice.py:tfidf --workdir=DIR/tfidf
    sft-jax report DIR

Rotten Tomatoes, 500 and 2,000 training snippets (`data.train_size`, a stratified subset
per seed), 3 seeds each. The transformers (`MODELS`: the encoder MiniLM-L6, and the
decoders SmolLM2-135M-Instruct and Gemma 3 270M with a last-token classification head)
train the same 100 updates of 16 snippets truncated to 64 tokens, as `train.replicas=3`,
and are evaluated once, at the end (validation and test); `:tfidf` is the TF-IDF +
logistic-regression baseline of `configs/linear.py` on the same subsets (seeds as runs).
Each run's `label` is its model. `:tiny` and `:tfidf-tiny` are two runs each at the size
of the configs' `runlocal` variants, for tests; `:tiny` trains the config's model (a common
`--config.model.checkpoint` chooses another) under the label `tiny`.
"""

from experiments.sweeps import TINY, short_runs
from sft_jax import sweeps

SIZES = [500, 2000]
MODELS = {  # label: overrides (learning rates: the usual range of each kind)
    "minilm-l6": {"model.checkpoint": "minilm-l6", "optim.learning_rate": 1e-4},
    "smollm2-135m": {"model.checkpoint": "smollm2-135m-instruct",
                     "optim.learning_rate": 5e-5},
    "gemma3-270m": {"model.checkpoint": "gemma3-270m", "optim.learning_rate": 5e-5},
}
FULL = short_runs(100, 0, **{"train.batch_size": 16, "checkpoint.best_metric": ""})


def labelled(names) -> list[dict]:
    """The models `names`, each with its name as the run's `label`."""
    return [{"label": name, **MODELS[name]} for name in names]


def get_sweep(arg: str | None = None) -> list[dict]:
    if arg == "tiny":  # the config's model (runlocal: MiniLM), or --config.model.checkpoint
        return sweeps.product([{"label": "tiny"}], {"data.train_size": [16, 0]}, [TINY])
    if arg == "tfidf-tiny":
        return sweeps.product([{"label": "tfidf"}], {"data.train_size": [16, 0]})
    if arg == "tfidf":
        return sweeps.product([{"label": "tfidf"}], {"data.train_size": SIZES},
                              sweeps.seeds(3))
    if arg:
        raise ValueError(f"unknown sweep variant {arg!r} (known: tiny, tfidf, tfidf-tiny)")
    return sweeps.product(labelled(MODELS), {"data.train_size": SIZES}, [FULL])
