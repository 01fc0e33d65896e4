r"""Linear baselines on bag-of-n-grams features (`sft_jax.linear`), as ordinary runs.

Default (`tfidf`): word 1-2-gram TF-IDF with sublinear tf and a multinomial logistic
regression, C chosen on validation accuracy over `linear.c_grid` (Rotten Tomatoes).

    sft-jax train --config=configs/linear.py --workdir=/tmp/rt-tfidf
    sft-jax train --config=configs/linear.py:nbsvm --workdir=/tmp/rt-nbsvm
    sft-jax train --config=configs/linear.py:mnb --workdir=/tmp/rt-mnb
    sft-jax train --config=configs/linear.py:runlocal --workdir=/tmp/rt-tiny
    python -m sft_jax.sweep --config=configs/linear.py:nbsvm \
        --sweep=experiments/reproductions/nbsvm_mr.py --workdir=/tmp/nbsvm-mr

`arg` is a comma-separated list of variants:
  tfidf     (the default) as above
  nbsvm     NBSVM-bi of Wang & Manning (2012): binarized uni+bigrams, log-count ratio
            (alpha=1), squared-hinge linear SVM (C=1) interpolated with beta=0.25
  mnb       MNB-bi of the same paper: multinomial naive Bayes on binarized uni+bigrams,
            alpha=1
  runlocal  a tiny run (the first 64 training and 32 evaluation records)
NBSVM and MNB keep every token, single characters and punctuation included (the paper's
data came tokenized so); TF-IDF keeps scikit-learn's default (words of 2+ characters).
"""

import ml_collections

from sft_jax import config as config_lib
from sft_jax.errors import UserInputError

TFIDF_C_GRID = (0.25, 1.0, 4.0, 16.0, 64.0, 256.0)
# Every word (of 1+ word characters) and every punctuation mark is a token.
ALL_TOKENS = r"(?u)\b\w+\b|[^\w\s]"


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    variants = config_lib.parse_variants(arg, {"tfidf", "nbsvm", "mnb", "runlocal"},
                                         "configs/linear.py")
    if len(variants & {"tfidf", "nbsvm", "mnb"}) > 1:
        raise UserInputError("configs/linear.py: choose one of tfidf, nbsvm, mnb")
    config = ml_collections.ConfigDict()
    config.task = "linear"
    config.seed = 0  # train_size / train_fraction / augment draws; the SVM's solver
    config.label = ""  # a short name of the run's setting (sweeps, reports)

    config.data = config_lib.base_config().data  # the data keys every task shares
    for key in ("max_length", "buckets", "group_by_length"):  # no tokens, no batches
        del config.data[key]
    config.data.train = "rotten-tomatoes:train"
    config.data.validation = "rotten-tomatoes:validation"
    config.data.test = "rotten-tomatoes:test"
    config.data.text_field = "text"
    config.data.label_field = "label"

    config.linear = ml_collections.ConfigDict()
    config.linear.features = "tfidf"  # tfidf | binary | counts
    config.linear.classifier = "logreg"  # logreg | mnb | nbsvm
    config.linear.ngram_max = 2  # word n-grams of order 1..ngram_max
    config.linear.token_pattern = r"(?u)\b\w\w+\b"  # scikit-learn's default
    config.linear.lowercase = True
    config.linear.sublinear_tf = True  # tfidf: 1 + log tf
    config.linear.C = 1.0  # inverse L2 strength (logreg, nbsvm) when not tuned
    config.linear.c_grid = TFIDF_C_GRID  # () = no tuning; else C by validation accuracy
    config.linear.alpha = 1.0  # mnb, nbsvm: smoothing of the feature counts
    config.linear.beta = 0.25  # nbsvm: interpolation weight of the SVM's w
    config.linear.max_iter = 2000  # solver iterations (logreg, nbsvm)

    config.eval = ml_collections.ConfigDict()
    config.eval.splits = ("validation", "test")
    config.eval.write_predictions = True

    if variants & {"nbsvm", "mnb"}:
        config.linear.features = "binary"
        config.linear.token_pattern = ALL_TOKENS
        config.linear.c_grid = ()
        config.linear.classifier = "nbsvm" if "nbsvm" in variants else "mnb"
    if "runlocal" in variants:
        config.data.limit_train = 64
        config.data.limit_eval = 32
    return config
