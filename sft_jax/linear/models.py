r"""Bag-of-n-grams features and linear classifiers (scikit-learn), for `sft_jax.linear`.

Features (`vectorizer(linear)`, fitted on the training texts): the word n-grams of order
1..`linear.ngram_max`, tokens matched by `linear.token_pattern`, lower-cased with
`linear.lowercase`; by `linear.features`:
  tfidf   tf-idf (`TfidfVectorizer`: tf, or 1 + log tf with `linear.sublinear_tf`, times
          the smoothed idf, each row L2-normalised)
  binary  x̂ = 1{f > 0}, the n-gram occurs (`CountVectorizer(binary=True)`)
  counts  f, its count

Classifiers (`linear.classifier`), fitted on features X [N, V] and class ids y [N] of K
classes; each scores a row x [V] per class, s(x) [K], and predicts argmax_k s_k(x):
  logreg  multinomial logistic regression, L2-regularised with inverse strength C
          (`LogisticRegression`, lbfgs, `linear.max_iter` iterations); s = log-probability.
  mnb     multinomial naive Bayes (`MultinomialNB`, Lidstone smoothing α = `linear.alpha`):
          s_k(x) = log P(k) + Σ_j x_j log θ_kj, θ_k = (α + Σ_{i: y_i = k} x_i) / ‖·‖₁.
          On binarized features this is Wang & Manning's MNB: for two classes,
          s_1 - s_0 = rᵀx̂ + log(N₊/N₋), with r below.
  nbsvm   NBSVM, the SVM with NB features of Wang & Manning (2012), "Baselines and Bigrams:
          Simple, Good Sentiment and Topic Classification", ACL 2012, section 2.3, with the
          paper's hyper-parameters as defaults (α = 1, C = 1, β = 0.25, binarized features):
            p = α + Σ_{i: y_i = 1} x̂_i,  q = α + Σ_{i: y_i = -1} x̂_i             [V]
            r = log((p / ‖p‖₁) / (q / ‖q‖₁))                  (`log_count_ratio`) [V]
            x̃_i = r ∘ x̂_i, and (w, b) the L2-regularised squared-hinge linear SVM on them:
              min ½‖w‖² + C Σ_i max(0, 1 - y_i (wᵀx̃_i + b))²     (`LinearSVC`, liblinear;
              the bias is regularised too, as liblinear's `-B 1` does)
            w' = (1 - β) w̄ + β w,  w̄ = ‖w‖₁ / |V|, the mean magnitude  (`interpolate`)
            b' = (1 - β) w̄ log(N₊/N₋) + β b
            s(x) = w'ᵀ(r ∘ x̂) + b': the class +1 when s > 0
          The paper gives the equation of w' only. b' interpolates the bias the same way,
          between the SVM's b and MNB's log(N₊/N₋) on MNB's scale w̄, so that s is
          (1 - β) w̄ (rᵀx̂ + log(N₊/N₋)) + β (wᵀx̃ + b), the interpolation of the MNB and SVM
          decision functions the paper describes; on balanced data (MR, SUBJ) b' ≈ β b.
          Keeping b whole would leave the SVM's bias at full weight beside a w shrunk by
          β, tilting the model toward the majority class on unbalanced data. With
          K > 2 classes it is one-vs-rest: class k's (r_k, w'_k, b'_k) with y = +1 for k,
          -1 for the others, s_k(x) = w'_kᵀ(r_k ∘ x̂) + b'_k. With K = 2, one model for
          class 1 against class 0, s = (-s(x), s(x)).

Only the log-count ratio and the interpolation are written here; scikit-learn fits the rest.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import ml_collections
import numpy as np
import scipy.sparse

from sft_jax.errors import UserInputError

CLASSIFIERS = ("logreg", "mnb", "nbsvm")
FEATURES = ("tfidf", "binary", "counts")
# scikit-learn's default tokens: runs of 2+ word characters.
SKLEARN_TOKENS = r"(?u)\b\w\w+\b"


def sklearn():
    """The scikit-learn modules this file uses; a one-line UserInputError without it."""
    try:
        from sklearn import feature_extraction, linear_model, naive_bayes, svm
    except ImportError:
        raise UserInputError("task 'linear' needs scikit-learn: pip install "
                             "'scikit-learn>=1.4'") from None
    return feature_extraction.text, linear_model, naive_bayes, svm


def vectorizer(linear: ml_collections.ConfigDict):
    """An unfitted scikit-learn vectorizer of `linear.features` (module docstring)."""
    text = sklearn()[0]
    common = {"ngram_range": (1, int(linear.ngram_max)), "token_pattern": linear.token_pattern,
              "lowercase": bool(linear.lowercase)}
    if linear.features == "tfidf":
        return text.TfidfVectorizer(sublinear_tf=bool(linear.sublinear_tf), **common)
    return text.CountVectorizer(binary=linear.features == "binary", **common)


def log_count_ratio(x, positive: np.ndarray, alpha: float) -> np.ndarray:
    """r [V] of features x [N, V] (dense or scipy sparse) and a boolean [N] marking the
    positive rows: log((p / ‖p‖₁) / (q / ‖q‖₁)), p and q the α-smoothed feature sums of the
    positive and the other rows."""
    positive = np.asarray(positive, bool)
    p = alpha + np.asarray(x[positive].sum(axis=0), np.float64).ravel()
    q = alpha + np.asarray(x[~positive].sum(axis=0), np.float64).ravel()
    return np.log(p / p.sum()) - np.log(q / q.sum())


def interpolate(w: np.ndarray, b: float, prior: float, beta: float) -> tuple[np.ndarray, float]:
    """(w', b') = ((1 - β) w̄ + β w, (1 - β) w̄ prior + β b), w̄ = ‖w‖₁ / |V| (w [V];
    `prior` = log(N₊/N₋))."""
    mean = float(np.abs(w).mean())
    return (1.0 - beta) * mean + beta * w, (1.0 - beta) * mean * prior + beta * b


@dataclass
class NBSVM:
    """Fitted NBSVM: per binary model m, ratios r [M, V], weights w' [M, V] and bias [M];
    M = 1 for two classes, else one per class (module docstring)."""

    r: np.ndarray
    weights: np.ndarray
    bias: np.ndarray

    def scores(self, x) -> np.ndarray:
        """s [N, K] of features x [N, V]."""
        s = np.asarray(x @ (self.r * self.weights).T) + self.bias  # w'ᵀ(r ∘ x) + b
        return np.concatenate([-s, s], axis=1) if len(self.r) == 1 else s


def fit_nbsvm(x, y: np.ndarray, num_classes: int, *, alpha: float, c: float, beta: float,
              max_iter: int, seed: int) -> NBSVM:
    """NBSVM on features x [N, V] and class ids y [N] (module docstring)."""
    svm = sklearn()[3]
    rs, ws, bs = [], [], []
    for k in [1] if num_classes == 2 else range(num_classes):
        positive = y == k
        r = log_count_ratio(x, positive, alpha)
        x_nb = scipy.sparse.csr_matrix(x) @ scipy.sparse.diags(r)  # r ∘ x_i, row by row
        model = svm.LinearSVC(C=c, loss="squared_hinge", penalty="l2", max_iter=max_iter,
                              random_state=seed).fit(x_nb, positive.astype(int))
        prior = float(np.log(positive.sum() / (~positive).sum()))
        w, b = interpolate(model.coef_.ravel(), float(model.intercept_[0]), prior, beta)
        rs.append(r)
        ws.append(w)
        bs.append(b)
    return NBSVM(np.stack(rs), np.stack(ws), np.asarray(bs))


@dataclass
class Model:
    """A fitted classifier: `scores(x)` [N, K], `probabilities(x)` [N, K] (None for nbsvm),
    and its number of weights and biases."""

    classifier: str
    fitted: Any
    num_params: int

    def scores(self, x) -> np.ndarray:
        if self.classifier == "nbsvm":
            return self.fitted.scores(x)
        return self.fitted.predict_log_proba(x)

    def probabilities(self, x) -> np.ndarray | None:
        return None if self.classifier == "nbsvm" else self.fitted.predict_proba(x)

    def predict(self, x) -> np.ndarray:
        return np.argmax(self.scores(x), axis=1)


def fit(linear: ml_collections.ConfigDict, x, y: np.ndarray, num_classes: int, *,
        c: float, seed: int) -> Model:
    """`linear.classifier` fitted on features x [N, V] and class ids y [N] in 0..K-1 (each
    class present), with inverse regularisation `c` (logreg, nbsvm)."""
    _, linear_model, naive_bayes, _ = sklearn()
    features = x.shape[1]
    if linear.classifier == "nbsvm":
        fitted = fit_nbsvm(x, y, num_classes, alpha=float(linear.alpha), c=c,
                           beta=float(linear.beta), max_iter=int(linear.max_iter), seed=seed)
        return Model("nbsvm", fitted, fitted.weights.size + fitted.bias.size)
    if linear.classifier == "mnb":
        fitted = naive_bayes.MultinomialNB(alpha=float(linear.alpha)).fit(x, y)
        return Model("mnb", fitted, num_classes * (features + 1))
    fitted = linear_model.LogisticRegression(C=c, max_iter=int(linear.max_iter)).fit(x, y)
    return Model("logreg", fitted, fitted.coef_.size + fitted.intercept_.size)
