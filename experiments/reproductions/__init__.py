"""Published numbers sft_jax reproduces, one module per number; run them with
`python -m experiments.reproduce NAME|--all [--tiny]` (`experiments/reproduce.py`).

A module `NAME.py` (its docstring: one line naming the number) defines `ENTRY`, a
`Reproduction`: the paper, where in it the number stands, the value, the config and the
protocol that reproduce it, the metric compared and a tolerance; and `get_sweep =
ENTRY.get_sweep`, so it is also a sweep file. Run one by hand from the repository root
(the sweep file imports this package):

    python -m sft_jax.sweep --config=configs/linear.py:nbsvm \\
        --sweep=experiments/reproductions/nbsvm_mr.py --workdir=workdirs/reproduce/nbsvm_mr
"""

from __future__ import annotations

from dataclasses import dataclass

from sft_jax import sweeps

TINY = "tiny"
TINY_FOLDS = 2

WANG_MANNING_2012 = (
    "Sida Wang and Christopher D. Manning. Baselines and Bigrams: Simple, Good Sentiment "
    "and Topic Classification. Proceedings of the 50th Annual Meeting of the Association "
    "for Computational Linguistics (Volume 2: Short Papers), pages 90-94, Jeju, Korea, 2012")
KIM_2014 = ("Yoon Kim. Convolutional Neural Networks for Sentence Classification. EMNLP "
            "2014")
# The methods, as configured by configs/linear.py's variants.
NBSVM_BI = ("NBSVM-bi: binarized uni+bigrams, log-count ratio with alpha=1, squared-hinge "
            "linear SVM with C=1, interpolation beta=0.25")
MNB_BI = "MNB-bi: multinomial naive Bayes with alpha=1 on binarized uni+bigrams"


@dataclass(frozen=True)
class Reproduction:
    """One published number and how we reproduce it: `published` (points, the metric
    × 100) stands in `paper` at `where`; `config` (a config spec) runs `method` in
    `folds`-fold cross-validation on `pool` (`ASSET:all`); the mean of `metric` over the
    folds must be within `tolerance` points of it."""

    paper: str
    where: str
    published: float
    config: str
    method: str
    pool: str
    folds: int = 10
    metric: str = "test/accuracy"
    tolerance: float = 1.5

    @property
    def protocol(self) -> str:
        return (f"{self.folds}-fold cross-validation on `{self.pool}` (the asset's folds): "
                f"{self.method}, fitted on the other {self.folds - 1} folds (no validation "
                f"split); {self.metric} of each held-out fold, mean over the folds")

    def get_sweep(self, arg: str | None = None) -> list[dict]:
        """The runs (`cross_validation(pool, folds)`), or `tiny_runs` for `tiny`."""
        if arg == TINY:
            return tiny_runs()
        if arg:
            raise ValueError(f"unknown sweep variant {arg!r} (known: {TINY})")
        return cross_validation(self.pool, self.folds)


def cross_validation(pool: str, folds: int) -> list[dict]:
    """k-fold cross-validation on `pool` (`sweeps.folds`): run k holds out fold k as its
    test split and fits on all the other folds, as the papers do (no validation split)."""
    return sweeps.product([{"data.train": pool, "data.cv_validation_fraction": 0.0}],
                          sweeps.folds(folds))


def tiny_runs() -> list[dict]:
    """Folds 0 and 1 of 2-fold cross-validation on the pool the caller gives as a common
    `--config.data.train` flag."""
    return sweeps.product([{"data.cv_validation_fraction": 0.0}], sweeps.folds(TINY_FOLDS))
