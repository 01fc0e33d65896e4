"""Fine-tuned transformers on MR and SUBJ, 10-fold cross-validation: the rows a paper would
add beside Kim (2014) Table 2 (CNN-non-static: 81.5 on MR, 93.4 on SUBJ).

    sft-jax sweep --config=configs/classification.py \
        --sweep=experiments/sweeps/cv_mr_subj.py[:smollm2] --workdir=DIR
    sft-jax report DIR

Each run holds out one of the asset's ten folds as its test split and carves its
validation split (10%) from the other nine (`sweeps.folds(10)`). The report's mean ± std is
over the ten folds. Sentences are truncated to 64 tokens.

- Default: MiniLM-L6 (lr 1e-4), 300 updates of 32 sentences (about one epoch), validation
  every 100, the params of the best validation accuracy tested: about 8 minutes a fold on
  a 2-core CPU.
- `:smollm2`: SmolLM2-135M-Instruct with its last-token head (lr 5e-5), 100 updates of 16
  sentences (a fifth of an epoch), evaluated once, at the end. An update of 16 takes about
  5 s on a 2-core CPU, so a fold takes about 12 minutes and the twenty about four hours
  (at MiniLM's 300 updates of 32, a fold would take about 50 minutes).
- `:tiny`: folds 0 and 1 of MR's ten at runlocal size (the first 64 sentences of the
  pool), for tests.
"""

from experiments.sweeps import short_runs
from sft_jax import sweeps

POOLS = {"mr": "mr:all", "subj": "subj:all"}
MODELS = {"minilm-l6": {"model.checkpoint": "minilm-l6", "optim.learning_rate": 1e-4},
          "smollm2": {"model.checkpoint": "smollm2-135m-instruct",
                      "optim.learning_rate": 5e-5}}
RUNS = {"minilm-l6": short_runs(300, 100, replicas=1, log_every=20),
        "smollm2": short_runs(100, 0, replicas=1, log_every=10,
                              **{"train.batch_size": 16, "checkpoint.best_metric": ""})}


def get_sweep(arg: str | None = None) -> list[dict]:
    if arg == "tiny":
        return sweeps.product([{"label": "mr", "data.train": POOLS["mr"]}],
                              sweeps.folds(10)[:2],
                              [{"checkpoint.export": False, "train.progress_bar": False}])
    if arg not in (None, "smollm2"):
        raise ValueError(f"unknown sweep variant {arg!r} (known: smollm2, tiny)")
    model = "smollm2" if arg else "minilm-l6"
    pools = [{"label": name, "data.train": pool} for name, pool in POOLS.items()]
    return sweeps.product(pools, sweeps.folds(10), [{**MODELS[model], **RUNS[model]}])
