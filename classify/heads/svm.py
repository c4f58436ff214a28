"""The RBF SVM head (``svm``): exact on a BLAS Gram matrix or Nystroem in bounded memory, tuned
and calibrated on the same held-out folds."""

from __future__ import annotations

from numbers import Integral, Real

import numpy as np
from sklearn import config_context
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.kernel_approximation import Nystroem
from sklearn.pipeline import make_pipeline
from sklearn.svm import SVC, LinearSVC
from sklearn.utils import check_random_state
from sklearn.utils.multiclass import check_classification_targets, unique_labels
from sklearn.utils.validation import check_is_fitted, validate_data

from .folds import INNER_FOLDS, copy_aware_folds
from .kernels import BLOCK_ROWS, KernelBuffers, rbf_gram64, variance
from .scaler import RowBlockScaler

# The grid TUNE searches (parameters of the head's pipeline), and TUNE=0's settings.
GRID = {"calibratedsvc__C": [0.1, 1.0, 10.0], "calibratedsvc__gamma_factor": [0.5, 1.0, 2.0]}
FIXED = {"calibratedsvc__C": 1.0, "calibratedsvc__gamma_factor": 1.0}


def settings(est: "CalibratedSVC") -> dict:
    """What the ``params`` column shows of a fitted SVM: C, gamma and the kernel method
    (``exact``, or ``nystroem`` with its ``n_components``: the memory budget chooses it, and it
    changes the model)."""
    out = {k: float(f"{v:.4g}") for k, v in est.best_params_.items()}
    out["method"] = est.svm_.method_
    if out["method"] == "nystroem":
        out["n_components"] = int(est.svm_.nystroem_.components_.shape[0])
    return out


def make(seed: int):
    """The fixed head: C=1, gamma "scale", calibrated on :data:`INNER_FOLDS` folds."""
    return make_pipeline(RowBlockScaler(), CalibratedSVC(C=1.0, folds=INNER_FOLDS, random_state=seed))


def tuned(seed: int, inner=None, candidates=None):
    """The tuned head: :class:`CalibratedSVC` searches :data:`GRID` on its own calibration folds,
    reusing their distances (it makes those folds itself and orders the grid plainest first, so
    ``inner`` and ``candidates`` are not used)."""
    grid = {k.split("__", 1)[1]: v for k, v in GRID.items()}
    return make_pipeline(RowBlockScaler(), CalibratedSVC(folds=INNER_FOLDS, random_state=seed, **grid))


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
        self.gamma_ = self._base_gamma(X)
        self._fit_rows(X, y)
        return self

    def _base_gamma(self, X) -> float:
        """``gamma``, with "scale" resolved on X."""
        if self.gamma != "scale":
            return float(self.gamma)
        var = variance(X)
        return 1.0 / (X.shape[1] * var) if var > 0 else 1.0

    def _fit_rows(self, X, y, K=None, rows=None) -> None:
        """Fits on checked float32 rows; ``K``: their kernel matrix when already computed;
        ``rows``: positions into X and y to fit on (Nystroem only; default all of them)."""
        if rows is not None and self.method == "exact":
            raise ValueError("GramRBFSVC fits a subset of rows by position with method='nystroem' only")
        if not hasattr(self, "classes_"):  # called by CalibratedSVC, which checked X and y
            self.n_features_in_ = X.shape[1]
            self.classes_ = unique_labels(y if rows is None else y[rows])
            self.gamma_ = self._base_gamma(X if rows is None or self.gamma != "scale" else X[rows])
        if self.method == "exact":
            self._fit_exact(X, y, K)
        else:
            self._fit_nystroem(X, y, rows)

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

    def _fit_exact(self, X, y, K=None) -> None:
        """libsvm on the Gram matrix (``K``, or computed here); keeps the support vectors only."""
        svc = SVC(kernel="precomputed", C=self.C, random_state=self.random_state)
        with config_context(assume_finite=True):  # X was checked; its kernel is finite
            svc.fit(rbf_gram64(X, X, self.gamma_) if K is None else K, y)
        self.support_vectors_ = X[svc.support_]
        # Renumber the support vectors 0..n_sv-1, so prediction passes the kernel against the
        # support vectors only (libsvm reads column support_[k] for support vector k).
        n_sv = len(svc.support_)
        svc.support_ = np.arange(n_sv, dtype=svc.support_.dtype)
        svc.shape_fit_ = (n_sv, n_sv)
        svc.n_features_in_ = n_sv
        self.svc_ = svc

    def _fit_nystroem(self, X, y, rows=None) -> None:
        """A Nystroem map drawn from the rows fitted on, then a linear SVM on their features.

        ``rows`` (positions into X and y; default all) are read block by block, never copied as
        a whole: at 800,000 x 512 a copy is 1.6 GB. The features are written in float64, the
        type liblinear reads, so ``LinearSVC`` makes no copy of them either.
        """
        n = len(X) if rows is None else len(rows)
        m = min(self.n_components, n)
        # the draw Nystroem.fit makes (a seeded permutation, its first m), taken from X in place
        basis = check_random_state(self.random_state).permutation(n)[:m]
        self.nystroem_ = Nystroem(kernel="rbf", gamma=self.gamma_, n_components=m,
                                  random_state=self.random_state).fit(X[basis if rows is None else rows[basis]])
        self.svc_ = LinearSVC(C=self.C, random_state=self.random_state).fit(
            self._features(X, rows, np.float64), y if rows is None else y[rows])

    def _features(self, X, rows=None, dtype=np.float32) -> np.ndarray:
        """Nystroem features of X (or of its ``rows``), BLOCK_ROWS rows at a time."""
        n = len(X) if rows is None else len(rows)
        F = np.empty((n, self.nystroem_.components_.shape[0]), dtype)
        for i in range(0, n, BLOCK_ROWS):
            F[i:i + BLOCK_ROWS] = self.nystroem_.transform(
                X[i:i + BLOCK_ROWS] if rows is None else X[rows[i:i + BLOCK_ROWS]])
        return F

    def _apply(self, X, method: str) -> np.ndarray:
        """``self.svc_.<method>`` on the kernel (or features) of X, block by block."""
        check_is_fitted(self, "svc_")
        X = validate_data(self, X, dtype=np.float32, order="C", reset=False)
        return self._apply_rows(X, method)

    def _apply_rows(self, X, method: str, rows=None) -> np.ndarray:
        """:meth:`_apply` on checked float32 X, or on its ``rows`` (positions), without copying them."""
        n = len(X) if rows is None else len(rows)
        out = []
        for i in range(0, n, BLOCK_ROWS):
            block = X[i:i + BLOCK_ROWS] if rows is None else X[rows[i:i + BLOCK_ROWS]]
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



def precomputed_decisions(svc: SVC, K: np.ndarray) -> np.ndarray:
    """``svc.decision_function(K)`` of an SVC fitted on a precomputed kernel, K holding every
    training column: for two classes one matrix-vector product (the dual coefficients placed at
    the support vectors' columns), 5x faster than libsvm's per-row loop on a 2,650 x 5,300
    held-out kernel and equal to it within 1e-12; for more classes libsvm's own."""
    if len(svc.classes_) != 2:
        return svc.decision_function(K)
    w = np.zeros(K.shape[1])
    w[svc.support_] = svc.dual_coef_[0]
    return K @ w + svc.intercept_[0]


def platt_sigmoid(f: np.ndarray, positive: np.ndarray) -> tuple[float, float]:
    """Platt's sigmoid P(positive | f) = 1 / (1 + exp(a f + b)), fitted by maximum likelihood.

    Uses Platt's smoothed targets ((N+ + 1) / (N+ + 2) and 1 / (N- + 2)) against over-confidence
    on separable data (J. Platt, "Probabilistic outputs for support vector machines", 1999).

    Returns:
        (a, b).
    """
    from scipy.optimize import minimize

    f = np.asarray(f, np.float64).ravel()
    positive = np.asarray(positive, bool).ravel()
    n_pos = int(positive.sum())
    n_neg = len(positive) - n_pos
    t = np.where(positive, (n_pos + 1.0) / (n_pos + 2.0), 1.0 / (n_neg + 2.0))

    def loss(ab):
        z = ab[0] * f + ab[1]
        value = float(np.sum(t * np.logaddexp(0, z) + (1 - t) * np.logaddexp(0, -z)))
        g = 1.0 / (1.0 + np.exp(-z)) - (1 - t)  # d loss / d z
        return value, np.array([float(g @ f), float(g.sum())])

    res = minimize(loss, np.array([0.0, np.log((n_neg + 1.0) / (n_pos + 1.0))]), jac=True, method="L-BFGS-B")
    return float(res.x[0]), float(res.x[1])


def _grid_values(value, name: str) -> tuple[float, ...]:
    """A positive number, or a non-empty sequence of them, as a tuple (a parameter or its grid)."""
    values = tuple(value) if isinstance(value, (list, tuple, np.ndarray)) else (value,)
    if not values or not all(isinstance(v, Real) and not isinstance(v, bool) and v > 0 for v in values):
        raise ValueError(f"CalibratedSVC's {name} must be a positive number or a non-empty list of them; "
                         f"received {value!r}")
    return tuple(float(v) for v in values)


class CalibratedSVC(ClassifierMixin, BaseEstimator):
    """The RBF SVM head: tuned (optionally) and calibrated on the same held-out folds.

    ``C`` and ``gamma_factor`` are numbers or lists; lists form a grid. Each point is scored on
    ``folds`` stratified held-out folds that keep identical rows together (balanced accuracy of
    the sign or largest decision value); the best point (ties: the one nearest C=1 and factor 1)
    is fitted on all rows, and its held-out decision values fit Platt's sigmoid, one per class
    (one-vs-rest, normalised) or one for two classes, as scikit-learn's
    ``CalibratedClassifierCV(method="sigmoid", ensemble=False)`` does. So tuning costs nothing
    beyond the calibration folds it needs anyway, and with the exact kernel the squared distances
    are computed once per fit: each gamma costs one exponential, each C one libsvm solve.
    ``predict`` returns the most probable class, so a label and its score always agree.

    Args:
        C: regularisation, or a grid of it.
        gamma: "scale" (1 / (n_features * X.var()), as in SVC) or a positive float: the base
            width, multiplied by each ``gamma_factor``.
        gamma_factor: a multiplier of ``gamma``, or a grid of them.
        folds: held-out folds (at most; fewer when a class is smaller).
        method, n_components: as in :class:`GramRBFSVC` (:mod:`classify.budget` sets them).
        random_state: seeds the SVM and the folds.

    Attributes:
        best_params_: {"C", "gamma"} of the fitted SVM.
        tuning_: one dict per grid point: C, gamma_factor, gamma, score (held-out balanced accuracy).
    """

    def __init__(self, C=1.0, gamma="scale", gamma_factor=1.0, folds: int = 3, method: str = "exact",
                 n_components: int = 1024, random_state=None):
        self.C = C
        self.gamma = gamma
        self.gamma_factor = gamma_factor
        self.folds = folds
        self.method = method
        self.n_components = n_components
        self.random_state = random_state

    def fit(self, X, y, groups=None):
        """Tunes (over the grid), fits and calibrates.

        Args:
            X: (n_samples, n_features) rows.
            y: class labels.
            groups: optional group id per row (duplicate clusters): the held-out folds of the
                tuning and the calibration keep each group whole, as they keep identical rows.

        Returns:
            self.
        """
        Cs, factors = _grid_values(self.C, "C"), _grid_values(self.gamma_factor, "gamma_factor")
        X, y = validate_data(self, X, y, dtype=np.float32, order="C")
        check_classification_targets(y)
        self.classes_ = unique_labels(y)
        base = GramRBFSVC(gamma=self.gamma, method=self.method, n_components=self.n_components,
                          random_state=self.random_state)
        base._check_params()
        if len(self.classes_) < 2:
            raise ValueError(f"CalibratedSVC needs at least 2 classes in y; received 1 class: {self.classes_[0]!r}")
        self.method_ = self.method
        gamma0 = base._base_gamma(X)
        # grid order: nearest the defaults first, so that ties keep the plainest model
        grid = sorted(((c, f) for f in factors for c in Cs), key=lambda p: abs(np.log(p[0])) + abs(np.log(p[1])))
        folds = copy_aware_folds(X, y, self.folds, self.random_state, groups)
        if folds is not None and self.method == "exact":  # held-out fold order: each fold is one range
            order = np.concatenate([te for _, te in folds])  # (Nystroem reads the rows in place)
            X, y = X[order], y[order]
            edges = np.cumsum([0] + [len(te) for _, te in folds])
            folds = [(np.r_[0:a, b:len(y)], np.arange(a, b)) for a, b in zip(edges, edges[1:])]
        buffers = KernelBuffers.of(X) if self.method == "exact" else None
        if folds is None:  # a class of one distinct image: nothing to hold out
            (C, f), held_out, self.tuning_ = grid[0], None, []
        else:
            held = self._held_out_decisions(X, y, buffers, folds, grid, gamma0)
            self.tuning_ = [{"C": c, "gamma_factor": f, "gamma": gamma0 * f, "score": s}
                            for (c, f), (s, _) in zip(grid, held)]
            best = int(np.argmax([s for s, _ in held]))  # first of the best: nearest the defaults
            (C, f), held_out = grid[best], held[best][1]
        self.svm_ = GramRBFSVC(C=C, gamma=gamma0 * f, method=self.method, n_components=self.n_components,
                               random_state=self.random_state)
        self.svm_._fit_rows(X, y, None if buffers is None else buffers.kernel([(0, len(y))], [(0, len(y))], gamma0 * f))
        del buffers
        if held_out is None:
            held_out = self.svm_.decision_function(X)
        self.sigmoids_ = self._sigmoids(held_out, y)
        self.best_params_ = {"C": C, "gamma": gamma0 * f}
        return self

    def _held_out_decisions(self, X, y, buffers, folds, grid, gamma0) -> list:
        """[(balanced accuracy, held-out decision values)] per grid point."""
        from sklearn.metrics import balanced_accuracy_score

        shape = (len(y),) if len(self.classes_) == 2 else (len(y), len(self.classes_))
        out = {p: np.empty(shape) for p in grid}
        for f in dict.fromkeys(f for _, f in grid):
            for tr, te in folds:
                if buffers is not None:  # one exponential per gamma and fold, one solve per C
                    # te is one range of rows; the training rows are the ranges around it
                    ranges = [(a, b) for a, b in ((0, te[0]), (te[-1] + 1, len(y))) if b > a]
                    K_tr = buffers.kernel(ranges, ranges, gamma0 * f)
                    K_te = buffers.kernel([(te[0], te[-1] + 1)], ranges, gamma0 * f, side=True)
                    for c in (c for c, g in grid if g == f):
                        with config_context(assume_finite=True):  # the kernel is ours: skip the scans
                            svc = SVC(kernel="precomputed", C=c, random_state=self.random_state).fit(K_tr, y[tr])
                            out[(c, f)][te] = precomputed_decisions(svc, K_te)
                else:  # one Nystroem map per gamma and fold, one linear solve per C
                    for c in (c for c, g in grid if g == f):
                        svm = GramRBFSVC(C=c, gamma=gamma0 * f, method="nystroem", n_components=self.n_components,
                                         random_state=self.random_state)
                        svm._fit_rows(X, y, rows=tr)
                        out[(c, f)][te] = svm._apply_rows(X, "decision_function", te)
        scores = []
        for p in grid:
            dec = out[p]
            pred = self.classes_[(dec > 0).astype(int)] if dec.ndim == 1 else self.classes_[dec.argmax(1)]
            scores.append((float(balanced_accuracy_score(y, pred)), dec))
        return scores

    def _sigmoids(self, dec: np.ndarray, y) -> np.ndarray:
        """(a, b) per calibrated column: the second class for two classes, else every class."""
        if dec.ndim == 1:
            return np.array([platt_sigmoid(dec, y == self.classes_[1])])
        return np.array([platt_sigmoid(dec[:, k], y == c) for k, c in enumerate(self.classes_)])

    def predict_proba(self, X):
        return self.proba_of_margins(self.margins(X))

    def proba_of_margins(self, dec) -> np.ndarray:
        """The calibrated probabilities of rows whose :meth:`margins` are ``dec`` (the kernel,
        the costly part, is then evaluated once for both)."""
        check_is_fitted(self, "sigmoids_")
        dec = np.asarray(dec, np.float64)
        a, b = self.sigmoids_[:, 0], self.sigmoids_[:, 1]
        p = 1.0 / (1.0 + np.exp(np.clip((dec.reshape(len(dec), -1) * a + b), -700, 700)))
        if p.shape[1] == 1:
            return np.hstack([1 - p, p])
        total = p.sum(1, keepdims=True)
        return np.where(total > 0, p / np.where(total > 0, total, 1), 1.0 / p.shape[1])

    def predict(self, X):
        check_is_fitted(self, "sigmoids_")
        return self.classes_[self.predict_proba(X).argmax(1)]

    def margins(self, X):
        """The SVM's raw decision values, as ``SVC.decision_function`` gives them.

        Not named ``decision_function``: scikit-learn expects that to agree with ``predict``,
        and ``predict`` here is the most probable class after calibration, which can differ
        from the largest margin on a few borderline images.
        """
        check_is_fitted(self, "sigmoids_")
        X = validate_data(self, X, dtype=np.float32, order="C", reset=False)
        return self.svm_.decision_function(X)

