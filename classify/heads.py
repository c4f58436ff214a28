"""The classifier heads, as data: name -> scikit-learn pipeline behind a StandardScaler."""

from __future__ import annotations

from numbers import Integral, Real

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.kernel_approximation import Nystroem
from sklearn.linear_model import LogisticRegression
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC, LinearSVC
from sklearn.utils.multiclass import check_classification_targets, unique_labels
from sklearn.utils.validation import check_is_fitted, validate_data


BLOCK_ROWS = 2048  # rows of a kernel block computed at once (predict, Gram, Nystroem features)
BLOCK_ENTRIES = 16_000_000  # at most this many float32 temporaries per Gram block (64 MB)


def rbf_kernel32(A: np.ndarray, B: np.ndarray, gamma: float, out: np.ndarray | None = None,
                 dtype=np.float32) -> np.ndarray:
    """exp(-gamma * |a - b|^2) for all rows of A and B, via one matrix product in ``dtype``.

    Args:
        A, B: rows.
        gamma: the RBF width.
        out: optional (len(A), len(B)) array (e.g. float64 rows of a larger Gram matrix) to
            write into.
        dtype: precision of the product: float32 (twice as fast; the training Gram matrix) or
            float64 (prediction, so that a row's score does not depend on its batch).

    Returns:
        ``out``, or a new array of ``dtype``.
    """
    A = np.asarray(A, dtype)
    B = np.asarray(B, dtype)
    D = (A * A).sum(1)[:, None] + (B * B).sum(1)[None, :]
    D -= 2.0 * (A @ B.T)
    np.maximum(D, 0, out=D)
    D *= -gamma
    if out is None:
        return np.exp(D, out=D)
    np.exp(D, out=out)
    return out


def rbf_gram64(A: np.ndarray, B: np.ndarray, gamma: float, dtype=np.float32) -> np.ndarray:
    """The float64 kernel matrix libsvm needs, written block by block (8 bytes per entry).

    The temporaries are one block of at most ``BLOCK_ROWS`` rows and ``BLOCK_ENTRIES`` entries,
    so the peak is the float64 result plus 64 MB, not a float32 matrix and its float64 copy.
    ``dtype``: as in :func:`rbf_kernel32`.
    """
    K = np.empty((len(A), len(B)), np.float64)
    rows = max(1, min(BLOCK_ROWS, BLOCK_ENTRIES // max(len(B), 1)))
    for i in range(0, len(A), rows):
        rbf_kernel32(A[i:i + rows], B, gamma, out=K[i:i + rows], dtype=dtype)
    return K


class GramRBFSVC(ClassifierMixin, BaseEstimator):
    """An RBF-kernel SVM: exact with a BLAS-computed Gram matrix, or Nystroem + linear in bounded memory.

    ``method="exact"``: the same model as ``SVC(kernel="rbf", gamma="scale")``. libsvm solves
    the same problem, but receives the kernel matrix precomputed (``kernel="precomputed"``)
    instead of evaluating 512-wide dot products one pair at a time; measured on 12,420 x 512
    embeddings this made the 5-fold cross-validation about 8x faster at equal accuracy. The
    Gram matrix takes 8 bytes per entry (n x n float64). After the fit only the support vectors
    are kept, and prediction evaluates the kernel against them alone.

    ``method="nystroem"``: scikit-learn's ``Nystroem`` map of the same kernel (``n_components``
    training rows drawn with ``random_state``) followed by ``LinearSVC``; memory grows with
    n x n_components instead of n^2. :mod:`classify.budget` chooses between the two.

    Args:
        C: regularisation, as in SVC.
        gamma: "scale" (1 / (n_features * X.var()), as in SVC) or a positive float.
        method: "exact" or "nystroem".
        n_components: Nystroem components (``method="nystroem"`` only).
        random_state: passed to SVC, Nystroem and LinearSVC.
    """

    def __init__(self, C: float = 1.0, gamma="scale", method: str = "exact", n_components: int = 1024,
                 random_state=None):
        self.C = C
        self.gamma = gamma
        self.method = method
        self.n_components = n_components
        self.random_state = random_state

    def fit(self, X, y):
        """Fits the SVM.

        Args:
            X: (n_samples, n_features) dense array; sparse input is refused.
            y: class labels.

        Returns:
            self.

        Raises:
            ValueError: empty, 1-D, non-finite or sparse X, fewer than two classes, or bad params.
        """
        self._check_params()
        X, y = validate_data(self, X, y, dtype=np.float32, order="C")
        check_classification_targets(y)
        self.classes_ = unique_labels(y)
        if len(self.classes_) < 2:
            raise ValueError(f"GramRBFSVC needs at least 2 classes in y; received 1 class: {self.classes_[0]!r}")
        var = float(X.var())
        if self.gamma == "scale":
            self.gamma_ = 1.0 / (X.shape[1] * var) if var > 0 else 1.0
        else:
            self.gamma_ = float(self.gamma)
        if self.method == "exact":
            self._fit_exact(X, y)
        else:
            self._fit_nystroem(X, y)
        return self

    def _check_params(self) -> None:
        """Raises ValueError naming the first parameter out of its range."""
        rules = [
            ("C", isinstance(self.C, Real) and self.C > 0, "a positive number"),
            ("gamma", self.gamma == "scale" or (isinstance(self.gamma, Real) and self.gamma > 0),
             "'scale' or a positive number"),
            ("method", self.method in ("exact", "nystroem"), "'exact' or 'nystroem'"),
            ("n_components", isinstance(self.n_components, Integral) and self.n_components >= 1,
             "a positive integer"),
        ]
        for name, ok, want in rules:
            if not ok:
                raise ValueError(f"GramRBFSVC's {name} must be {want}; received {getattr(self, name)!r}")

    def _fit_exact(self, X, y) -> None:
        """libsvm on the Gram matrix; keeps the support vectors only."""
        svc = SVC(kernel="precomputed", C=self.C, random_state=self.random_state)
        svc.fit(rbf_gram64(X, X, self.gamma_), y)
        self.support_vectors_ = X[svc.support_]
        # Renumber the support vectors 0..n_sv-1, so prediction passes the kernel against the
        # support vectors only (libsvm reads column support_[k] for support vector k).
        n_sv = len(svc.support_)
        svc.support_ = np.arange(n_sv, dtype=svc.support_.dtype)
        svc.shape_fit_ = (n_sv, n_sv)
        svc.n_features_in_ = n_sv
        self.svc_ = svc

    def _fit_nystroem(self, X, y) -> None:
        """Nystroem features in float32 blocks, then a linear SVM on them."""
        m = min(self.n_components, len(X))
        self.nystroem_ = Nystroem(kernel="rbf", gamma=self.gamma_, n_components=m,
                                  random_state=self.random_state).fit(X)
        self.svc_ = LinearSVC(C=self.C, random_state=self.random_state).fit(self._features(X), y)

    def _features(self, X) -> np.ndarray:
        F = np.empty((len(X), self.nystroem_.components_.shape[0]), np.float32)
        for i in range(0, len(X), BLOCK_ROWS):
            F[i:i + BLOCK_ROWS] = self.nystroem_.transform(X[i:i + BLOCK_ROWS])
        return F

    def _apply(self, X, method: str) -> np.ndarray:
        """``self.svc_.<method>`` on the kernel (or features) of X, block by block."""
        check_is_fitted(self, "svc_")
        X = validate_data(self, X, dtype=np.float32, order="C", reset=False)
        out = []
        for i in range(0, len(X), BLOCK_ROWS):
            block = X[i:i + BLOCK_ROWS]
            inner = (rbf_gram64(block, self.support_vectors_, self.gamma_, np.float64) if self.method_ == "exact"
                     else self._features(block))
            out.append(getattr(self.svc_, method)(inner))
        return np.concatenate(out)

    @property
    def method_(self) -> str:
        """The method the fitted model used."""
        return "nystroem" if hasattr(self, "nystroem_") else "exact"

    def decision_function(self, X) -> np.ndarray:
        """Signed distances from the margin, as SVC's (n_samples,) or (n_samples, n_classes)."""
        return self._apply(X, "decision_function")

    def predict(self, X) -> np.ndarray:
        """Predicted class labels."""
        return self._apply(X, "predict")


class CalibratedSVC(ClassifierMixin, BaseEstimator):
    """:class:`GramRBFSVC` with probabilities calibrated on held-out folds (Platt's sigmoid).

    ``SVC(probability=True)`` is deprecated in scikit-learn; this does the same job with
    :class:`~sklearn.calibration.CalibratedClassifierCV` (``method="sigmoid"``,
    ``ensemble=False``): the SVM's decision values on ``folds`` held-out folds fit the sigmoid,
    and the SVM used for predictions is fitted on all the data. The folds are stratified and keep
    identical rows (exact copies of an image have identical embeddings) in one fold, and are
    lowered to what the smallest class allows. ``predict`` returns the most probable class, so
    a label and its score always agree.

    Args:
        C: regularisation of the SVM.
        gamma: "scale" or a positive float, as in :class:`GramRBFSVC`.
        folds: calibration folds (at most; fewer when a class is smaller).
        method, n_components: passed to :class:`GramRBFSVC` (:mod:`classify.budget` sets them).
        random_state: seeds the SVM and the calibration folds.
    """

    def __init__(self, C: float = 1.0, gamma="scale", folds: int = 3, method: str = "exact",
                 n_components: int = 1024, random_state=None):
        self.C = C
        self.gamma = gamma
        self.folds = folds
        self.method = method
        self.n_components = n_components
        self.random_state = random_state

    def fit(self, X, y):
        from sklearn.calibration import CalibratedClassifierCV

        X, y = validate_data(self, X, y, dtype=np.float32, order="C")
        check_classification_targets(y)
        self.classes_ = unique_labels(y)
        svm = GramRBFSVC(C=self.C, gamma=self.gamma, method=self.method,
                         n_components=self.n_components, random_state=self.random_state)
        self.method_ = self.method
        folds = self._calibration_folds(X, y)
        if folds is None:  # a class of one distinct image: nothing to hold out
            from sklearn.frozen import FrozenEstimator

            every = np.arange(len(y))
            self.calibrated_ = CalibratedClassifierCV(FrozenEstimator(svm.fit(X, y)), method="sigmoid",
                                                      cv=[(every, every)]).fit(X, y)
        else:
            self.calibrated_ = CalibratedClassifierCV(svm, method="sigmoid", ensemble=False,
                                                      cv=folds).fit(X, y)
        return self

    def _calibration_folds(self, X, y):
        """Stratified folds over groups of identical rows, as many as the smallest class allows.

        Returns None when a class has a single distinct row: the sigmoid is then fitted on the
        training rows' own decision values (in-sample, over-confident). This happens only in CV
        folds of tiny classes; the saved heads have at least 2 images per class (see
        :func:`classify.data.cv_folds`).

        Raises:
            ValueError: no folds give every class training rows.
        """
        from .data import stratified_group_folds

        rows = np.unique(np.asarray(X, np.float32), axis=0, return_inverse=True)[1].ravel()
        smallest = min(len(np.unique(rows[y == c])) for c in self.classes_)
        if smallest < 2:
            return None
        for k in range(min(self.folds, smallest), 1, -1):
            splits, _ = stratified_group_folds(y, rows, k, self.random_state or 0)
            if all(len(np.unique(y[tr])) == len(self.classes_) for tr, _ in splits):
                return splits
        raise ValueError("no calibration folds give every class training images; add images to "
                         "the smallest class")

    def predict_proba(self, X):
        check_is_fitted(self, "calibrated_")
        X = validate_data(self, X, dtype=np.float32, order="C", reset=False)
        return self.calibrated_.predict_proba(X)

    def predict(self, X):
        check_is_fitted(self, "calibrated_")
        return self.classes_[self.predict_proba(X).argmax(1)]

    def margins(self, X):
        """The SVM's raw decision values, as ``SVC.decision_function`` gives them.

        Not named ``decision_function``: scikit-learn expects that to agree with ``predict``,
        and ``predict`` here is the most probable class after calibration, which can differ
        from the largest margin on a few borderline images.
        """
        check_is_fitted(self, "calibrated_")
        X = validate_data(self, X, dtype=np.float32, order="C", reset=False)
        return self.calibrated_.calibrated_classifiers_[0].estimator.decision_function(X)


def make_heads(seed: int) -> dict:
    """Returns the registry of heads, each a fresh unfitted pipeline seeded by ``seed``."""
    return {
        "logreg": make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, random_state=seed)),
        "svm": make_pipeline(StandardScaler(), CalibratedSVC(C=1.0, random_state=seed)),
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
    """Predicts and returns (labels, calibrated probability of the predicted class, per row).

    Every head gives probabilities (logreg and mlp natively, the SVM through
    :class:`CalibratedSVC`), so a score means the same thing in every column.
    """
    proba = model.predict_proba(X)
    idx = proba.argmax(1)
    return model.classes_[idx], proba[np.arange(len(idx)), idx]


def decision_values(model, X, labels) -> np.ndarray | None:
    """The raw decision value behind each row's predicted label, or None for heads without one.

    Two classes: the signed value for the second class (positive means it). More classes: the
    one-vs-rest value of the predicted class. Larger is surer; it is not a probability.
    """
    head = model[-1] if hasattr(model, "steps") else model
    if not isinstance(head, CalibratedSVC):
        return None
    dec = np.asarray(head.margins(model[:-1].transform(X) if hasattr(model, "steps") else X))
    if dec.ndim == 1:
        return dec
    idx = np.searchsorted(model.classes_, labels)
    return dec[np.arange(len(idx)), idx]


def positive_scores(model, X) -> np.ndarray:
    """The probability of the second class (for ROC curves of two-class problems)."""
    return model.predict_proba(X)[:, 1]
