"""Does data augmentation help? EDA and back-translation x training-set size, for the
fine-tuned MiniLM and for the TF-IDF + logistic-regression baseline.

    sft-jax sweep --config=configs/classification.py \
        --sweep=experiments/sweeps/augmentation.py --workdir=DIR/minilm \
        --config.data.bt_cache=DIR/bt-cache
    sft-jax sweep --config=configs/linear.py \
        --sweep=experiments/sweeps/augmentation.py:tfidf --workdir=DIR/tfidf \
        --config.data.bt_cache=DIR/bt-cache
    sft-jax report DIR

Rotten Tomatoes at `SIZES` training snippets (a stratified subset per seed), 3 seeds each,
with one augmentation (`label`):
- `none`;
- `eda`: Wei & Zou's EDA (EMNLP 2019) with their recommended parameters for the training
  size (their Table 3: alpha 0.05 and 16 new sentences per original at 500, alpha 0.05 and
  8 at 2,000, alpha 0.1 and 4 from 5,000 on), the originals kept;
- `backtranslation`: one paraphrase per snippet, English -> Spanish -> English by the
  prompted Gemma 3 270M (`data.bt_*` defaults), the originals kept; only at `BT_SIZES`
  (the paraphrases of 500- and 2,000-snippet subsets; all 10,258 would take hours of
  generation on a CPU). One cache (`data.bt_cache`) serves every run: a snippet is
  translated once.
MiniLM trains 150 updates of 32 snippets truncated to 64 tokens per run (`train.replicas=3`,
validation every 50, the best validation params at the end), whatever the size of the
augmented set; TF-IDF fits the whole augmented set (seeds as runs).
`:tiny` / `:tfidf-tiny`: `none` and `eda` at the size of the configs' `runlocal` variants,
for tests.
"""

from experiments.sweeps import TINY, short_runs
from sft_jax import sweeps

SIZES = [500, 2000, 0]  # 0: all 10,258
BT_SIZES = [500, 2000]
EDA = {  # size: (alpha of each operation, new sentences per original), Wei & Zou Table 3
    500: (0.05, 16),
    2000: (0.05, 8),
    0: (0.1, 4),
}
MINILM = short_runs(150, 50)


def eda(size: int) -> dict:
    alpha, n_aug = EDA[size]
    return {"data.augment": "eda", "data.eda_n_aug": n_aug,
            **{f"data.eda_alpha_{op}": alpha for op in ("sr", "ri", "rs", "rd")}}


def settings(sizes, bt_sizes) -> list[dict]:
    """Each size with `none`, `eda` and (at `bt_sizes`) `backtranslation`, labelled."""
    runs = []
    for size in sizes:
        runs.append({"label": "none", "data.train_size": size})
        runs.append({"label": "eda", "data.train_size": size, **eda(size)})
        if size in bt_sizes:
            runs.append({"label": "backtranslation", "data.train_size": size,
                         "data.augment": "backtranslation"})
    return runs


def get_sweep(arg: str | None = None) -> list[dict]:
    tiny = [{"label": "none", "data.train_size": 16},
            {"label": "eda", "data.train_size": 16, **eda(500)}]
    if arg == "tiny":
        return sweeps.product(tiny, [TINY])
    if arg == "tfidf-tiny":
        return tiny
    if arg == "tfidf":  # a seed changes nothing without a subset or EDA: one run there
        return [run for setting in settings(SIZES, BT_SIZES)
                for run in sweeps.product([setting], sweeps.seeds(
                    1 if setting["data.train_size"] == 0 and setting["label"] != "eda"
                    else 3))]
    if arg:
        raise ValueError(f"unknown sweep variant {arg!r} (known: tiny, tfidf, tfidf-tiny)")
    return sweeps.product(settings(SIZES, BT_SIZES), [MINILM])
