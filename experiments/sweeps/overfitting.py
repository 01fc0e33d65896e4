"""Overfitting controls x training-set size: MiniLM-L6 on Rotten Tomatoes, 3 seeds each.

    sft-jax sweep --config=configs/classification.py \
        --sweep=experiments/sweeps/overfitting.py --workdir=DIR
    sft-jax report DIR

Sizes 100 / 500 / 2,000 / all (10,258) training snippets (a stratified subset per seed,
`data.train_size`), each trained for the same 150 updates of 32 (48 epochs of the 100,
0.47 of all of them), with one of four controls:

- `none`: no dropout, no weight decay, no label smoothing; the final params are evaluated;
- `dropout+wd`: dropout 0.1 and weight decay 0.01 (BERT's fine-tuning recipe);
- `early-stopping`: `none`, stopped after 2 validation evaluations without a better
  accuracy, evaluated with the params of its best one;
- `label-smoothing`: `none` with label smoothing 0.1.

Each run's `label` is its control. Seeds are `train.replicas=3` (seeds 0, 1, 2 in one
compiled program). The validation split is evaluated every 30 updates: the learning curves
of the notebook. `:tiny` is two runs at the size of `configs/classification.py:runlocal`
(16 and all 64 records, `none` and `early-stopping`, 2 replicas): the notebook's code
path, for tests.
"""

from experiments.sweeps import TINY, short_runs
from sft_jax import sweeps

SIZES = [100, 500, 2000, 0]  # 0: the whole training split

NO_REGULARISATION = {"model.dropout": 0.0, "optim.weight_decay": 0.0,
                     "train.label_smoothing": 0.0, "train.early_stopping_patience": 0,
                     "checkpoint.use_best_for_final": False}
CONTROLS = {
    "none": NO_REGULARISATION,
    "dropout+wd": {**NO_REGULARISATION, "model.dropout": 0.1, "optim.weight_decay": 0.01},
    "early-stopping": {**NO_REGULARISATION, "train.early_stopping_patience": 2,
                       "checkpoint.use_best_for_final": True},
    "label-smoothing": {**NO_REGULARISATION, "train.label_smoothing": 0.1},
}

FULL = short_runs(150, 30)


def get_sweep(arg: str | None = None) -> list[dict]:
    if arg == "tiny":
        return sweeps.product(sweeps.zip_axes(
            {"data.train_size": [16, 0]}, labelled(["none", "early-stopping"])), [TINY])
    if arg:
        raise ValueError(f"unknown sweep variant {arg!r} (known: tiny)")
    return sweeps.product({"data.train_size": SIZES}, labelled(CONTROLS), [FULL])


def labelled(names) -> list[dict]:
    """The controls `names`, each with its name as the run's `label`."""
    return [{"label": name, **CONTROLS[name]} for name in names]
