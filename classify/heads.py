"""The classifier heads, as data: name -> scikit-learn pipeline behind a StandardScaler."""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.linear_model import LogisticRegression
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC
from sklearn.utils.multiclass import unique_labels
from sklearn.utils.validation import check_is_fitted


def rbf_kernel32(A: np.ndarray, B: np.ndarray, gamma: float) -> np.ndarray:
    """exp(-gamma * |a - b|^2) for all rows of A and B, via one float32 matrix product.

    Returns float64, which libsvm's precomputed-kernel interface requires.
    """
    A = np.asarray(A, np.float32)
    B = np.asarray(B, np.float32)
    sq = (A * A).sum(1)[:, None] + (B * B).sum(1)[None, :]
    D = sq - 2.0 * (A @ B.T)
    np.maximum(D, 0, out=D)
    D *= -gamma
    np.exp(D, out=D)
    return D.astype(np.float64)


class GramRBFSVC(ClassifierMixin, BaseEstimator):
    """SVC with an RBF kernel whose Gram matrix is computed once with BLAS.

    The same model as ``SVC(kernel="rbf", gamma="scale")``: libsvm solves the same problem, but
    receives the kernel matrix precomputed (``kernel="precomputed"``) instead of evaluating
    512-wide dot products one pair at a time. Measured on 12,420 x 512 embeddings this made the
    5-fold cross-validation about 8x faster at equal accuracy (see BENCHMARKS.md).

    Args:
        C: regularisation, as in SVC.
        gamma: "scale" (1 / (n_features * X.var()), as in SVC) or a positive float.
        random_state: passed to SVC.
    """

    def __init__(self, C: float = 1.0, gamma="scale", random_state=None):
        self.C = C
        self.gamma = gamma
        self.random_state = random_state

    def fit(self, X, y):
        X = np.asarray(X, np.float32)
        self.classes_ = unique_labels(y)
        if self.gamma == "scale":
            var = float(X.var())
            self.gamma_ = 1.0 / (X.shape[1] * var) if var > 0 else 1.0
        else:
            self.gamma_ = float(self.gamma)
        self.X_fit_ = X
        self.n_features_in_ = X.shape[1]
        self.svc_ = SVC(kernel="precomputed", C=self.C, random_state=self.random_state)
        self.svc_.fit(rbf_kernel32(X, X, self.gamma_), y)
        return self

    def _blocks(self, X, method):
        check_is_fitted(self, "svc_")
        X = np.asarray(X, np.float32)
        out = [getattr(self.svc_, method)(rbf_kernel32(X[i:i + 2048], self.X_fit_, self.gamma_))
               for i in range(0, len(X), 2048)]
        return np.concatenate(out) if out else np.empty((0,))

    def decision_function(self, X):
        return self._blocks(X, "decision_function")

    def predict(self, X):
        return self._blocks(X, "predict")


def make_heads(seed: int) -> dict:
    """Returns the registry of heads, each a fresh unfitted pipeline seeded by ``seed``."""
    return {
        "logreg": make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, random_state=seed)),
        "svm": make_pipeline(StandardScaler(), GramRBFSVC(C=1.0, random_state=seed)),
        "mlp": make_pipeline(StandardScaler(), MLPClassifier(
            hidden_layer_sizes=(128,), activation="relu", early_stopping=True,
            validation_fraction=0.1, n_iter_no_change=10, max_iter=200, random_state=seed)),
    }


HEAD_NAMES = tuple(make_heads(0))


def select_heads(spec: str, seed: int) -> dict:
    """Parses ``HEADS=logreg,svm`` into {name: pipeline}.

    Raises:
        ValueError: an unknown or missing name, listing the known ones.
    """
    names = [n.strip() for n in str(spec).split(",") if n.strip()]
    if not names:
        raise ValueError(f"HEADS is empty; choose from {', '.join(HEAD_NAMES)}")
    unknown = [n for n in names if n not in HEAD_NAMES]
    if unknown:
        raise ValueError(f"unknown head {unknown[0]!r} in HEADS={spec}; known heads: {', '.join(HEAD_NAMES)}")
    heads = make_heads(seed)
    return {n: heads[n] for n in dict.fromkeys(names)}


def scores(model, X) -> tuple[np.ndarray, np.ndarray]:
    """Predicts and returns (labels, score of the predicted class, per row).

    The score is the predicted class's probability for heads that have ``predict_proba``
    (logreg, mlp), and the SVM's decision value otherwise (a signed distance from the margin:
    larger is surer, not a probability).
    """
    if hasattr(model, "predict_proba"):
        proba = model.predict_proba(X)
        idx = proba.argmax(1)
        return model.classes_[idx], proba[np.arange(len(idx)), idx]
    dec = model.decision_function(X)
    if dec.ndim == 1:
        labels = model.classes_[(dec > 0).astype(int)]
        return labels, np.abs(dec)
    labels = model.predict(X)
    idx = np.searchsorted(model.classes_, labels)
    return labels, dec[np.arange(len(idx)), idx]


def positive_scores(model, X) -> np.ndarray:
    """A continuous score for the second class (for ROC curves of two-class problems)."""
    if hasattr(model, "predict_proba"):
        return model.predict_proba(X)[:, 1]
    return model.decision_function(X)
