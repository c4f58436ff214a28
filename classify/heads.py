"""The classifier heads, as data: name -> scikit-learn pipeline behind a StandardScaler."""

from __future__ import annotations

from numbers import Integral, Real

import numpy as np
from sklearn import config_context
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.kernel_approximation import Nystroem
from sklearn.linear_model import LogisticRegression
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC, LinearSVC
from sklearn.utils import check_random_state
from sklearn.utils.multiclass import check_classification_targets, unique_labels
from sklearn.utils.validation import check_is_fitted, validate_data

from .knn import KNNClassifier


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


class RowBlockScaler(StandardScaler):
    """scikit-learn's ``StandardScaler``, fitted on blocks of rows.

    ``StandardScaler.fit`` makes a float64 temporary as large as X and a NaN mask (10 bytes per
    float32 entry: 3.7 GB at 800,000 x 512, the largest array of a fit at that size, measured).
    Fitting here goes through ``partial_fit`` on ``BLOCK_ROWS`` rows at a time, which combines the
    blocks' means and variances exactly in float64, so the statistics match ``fit`` to rounding.
    Sparse input and sample weights are left to ``StandardScaler.fit``.
    """

    def fit(self, X, y=None, sample_weight=None):
        if sample_weight is not None or not isinstance(X, np.ndarray) or X.ndim != 2 or len(X) <= BLOCK_ROWS:
            return super().fit(X, y, sample_weight)
        self._reset()
        for i in range(0, len(X), BLOCK_ROWS):
            self.partial_fit(X[i:i + BLOCK_ROWS], y)
        return self


def variance(X) -> float:
    """``X.var()`` over every entry, in float64, ``BLOCK_ROWS`` rows at a time (``X.var()`` makes
    a temporary as large as X: 1.6 GB at 800,000 x 512)."""
    mean = float(np.mean(X, dtype=np.float64))
    total, step = 0.0, 512
    for i in range(0, len(X), step):
        d = X[i:i + step].astype(np.float64)
        d -= mean
        total += float(np.einsum("ij,ij->", d, d))
    return total / X.size


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


def squared_distances(X: np.ndarray) -> np.ndarray:
    """|a - b|^2 between all rows of X, as an (n, n) float32 matrix.

    The products X X^T come from one symmetric rank-k update (BLAS ``ssyrk``: half the
    multiply-adds of a general product), which fills one triangle; the other is copied over
    block by block.
    """
    from scipy.linalg.blas import ssyrk

    X = np.asarray(X, np.float32)
    norms = (X * X).sum(1)
    # X.T is Fortran-ordered (d, n): trans=1 gives X X^T without copying X; the Fortran-ordered
    # upper triangle is, read in C order, the lower one
    D = ssyrk(1.0, X.T, trans=1).T
    rows = 256
    for i in range(0, len(X), rows):
        diagonal = D[i:i + rows, i:i + rows]
        diagonal[...] = np.tril(diagonal) + np.tril(diagonal, -1).T
        D[i:i + rows, i + rows:] = D[i + rows:, i:i + rows].T
    rows = max(1, min(BLOCK_ROWS, BLOCK_ENTRIES // max(len(X), 1)))
    for i in range(0, len(X), rows):
        block = D[i:i + rows]
        block *= -2.0
        block += norms[i:i + rows, None]
        block += norms[None, :]
        np.maximum(block, 0, out=block)
    return D


class KernelBuffers:
    """Kernel matrices exp(-gamma * D) over ranges of rows and columns of squared distances, in
    reused memory.

    The rows are ordered by held-out fold, so a fold's training rows are one or two ranges and
    every kernel is a few strided copies, never a gather. libsvm reads a float64 kernel; the
    entries are computed in float32 blocks (one exponential each) and written into one float64
    buffer of n x n entries, whose leading part holds a fold's smaller matrix. Reusing memory
    matters: on the machines measured, first writes to fresh pages cost up to 1-2 s per GB when
    memory was busy, more than computing the kernel itself.
    """

    def __init__(self, D: np.ndarray):
        self.D = D
        n = len(D)
        self.square = np.empty(n * n, np.float64)  # a fold's training kernel, or the final one
        self.side = np.empty(0, np.float64)  # held-out rows against training rows
        self.block_rows = max(1, min(BLOCK_ROWS, BLOCK_ENTRIES // max(n, 1)))
        self.block32 = np.empty(self.block_rows * n, np.float32)

    def kernel(self, rows: list, cols: list, gamma: float, side: bool = False) -> np.ndarray:
        """The kernel of the row ranges against the column ranges (lists of (start, stop)), as
        a C-contiguous float64 view of a buffer; ``side=True`` uses the second buffer, so that a
        fold's training kernel stays intact."""
        n_rows, n_cols = sum(b - a for a, b in rows), sum(b - a for a, b in cols)
        if side:
            if self.side.size < n_rows * n_cols:
                self.side = np.empty(n_rows * n_cols, np.float64)
            K = self.side[:n_rows * n_cols].reshape(n_rows, n_cols)
        else:
            K = self.square[:n_rows * n_cols].reshape(n_rows, n_cols)
        at = 0
        for a, b in rows:
            for i in range(a, b, self.block_rows):
                r = min(self.block_rows, b - i)
                col = 0
                for c, d in cols:
                    block = self.block32[:r * (d - c)].reshape(r, d - c)
                    np.multiply(self.D[i:i + r, c:d], np.float32(-gamma), out=block)
                    K[at:at + r, col:col + d - c] = np.exp(block, out=block)
                    col += d - c
                at += r
        return K


def identical_rows(X: np.ndarray) -> np.ndarray:
    """An id per row, equal for identical rows (exact copies of an image have identical embeddings).

    A row's id comes from a 64-bit hash of its bytes (a seeded random linear function of its
    32-bit words, modulo 2^64), computed ``BLOCK_ROWS`` rows at a time, so X is never copied
    (sorting whole rows did: 1.6 GB at 800,000 x 512). Two different rows share a hash with a
    probability of about 2^-64 per pair (2^-32 at worst); they would then only share a fold.
    """
    X = np.asarray(X)
    if X.ndim != 2 or not len(X):
        return np.zeros(len(X), np.int64)
    words = 4 if X.dtype.itemsize % 4 == 0 else 1
    weights = np.random.default_rng(0).integers(1, 2 ** 63, X.shape[1] * X.dtype.itemsize // words,
                                                dtype=np.uint64) | np.uint64(1)
    keys, step = np.empty(len(X), np.uint64), 512
    for i in range(0, len(X), step):
        block = np.ascontiguousarray(X[i:i + step]).view(np.uint32 if words == 4 else np.uint8)
        keys[i:i + step] = block.astype(np.uint64) @ weights  # integer arithmetic wraps modulo 2^64
    return np.unique(keys, return_inverse=True)[1].ravel()


def copy_aware_folds(X, y, k: int, seed, groups=None) -> list | None:
    """Stratified folds over groups of identical rows, as many as the smallest class allows (up to k).

    Args:
        X, y: the rows and their labels.
        k: the folds wanted.
        seed: shuffles the folds.
        groups: optional group ids per row (e.g. duplicate clusters, ``GROUPS=dups``), joined
            with the identical rows: a fold never splits either.

    Returns:
        [(train, test) positions], or None when a class has a single distinct row (or group) or
        no folds give every class training rows: nothing can then be held out.
    """
    from .data import stratified_group_folds, unit_ids

    y = np.asarray(y)
    rows = identical_rows(np.asarray(X))
    if groups is not None:
        groups = np.asarray(groups)
        if len(groups) != len(y):
            raise ValueError(f"groups must have one id per row ({len(y)}); received {len(groups)}")
        rows = unit_ids(rows, groups)
    classes = np.unique(y)
    # groups are stratified by their first row's label: copies filed under two labels count once
    first_labels = y[np.unique(rows, return_index=True)[1]]
    smallest = min(int((first_labels == c).sum()) for c in classes)
    for kk in range(min(k, smallest), 1, -1):
        splits, _ = stratified_group_folds(y, rows, kk, seed or 0)
        if all(len(np.unique(y[tr])) == len(classes) for tr, _ in splits):
            return splits
    return None


class CopyAwareFolds:
    """A scikit-learn CV splitter for inner (tuning) folds: stratified, exact copies kept together.

    The outer folds of ``make compare`` keep copies in one fold; the folds inside a fit (tuning,
    calibration) see only vectors, so they group identical rows, and the ``groups`` passed to
    ``split`` too (``GROUPS=dups``: the duplicate clusters). Fewer than ``n_splits`` folds are
    made when the smallest class has fewer distinct rows; none when it has one (see
    :func:`copy_aware_folds`).
    """

    def __init__(self, n_splits: int = 3, random_state=0):
        self.n_splits = n_splits
        self.random_state = random_state

    def split(self, X, y, groups=None):
        yield from copy_aware_folds(X, y, self.n_splits, self.random_state, groups) or []

    def get_n_splits(self, X=None, y=None, groups=None) -> int:
        if X is None or y is None:
            return self.n_splits
        return len(copy_aware_folds(X, y, self.n_splits, self.random_state, groups) or [])

    def __repr__(self) -> str:
        return f"CopyAwareFolds(n_splits={self.n_splits}, random_state={self.random_state})"


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
        buffers = KernelBuffers(squared_distances(X)) if self.method == "exact" else None
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
        if buffers is not None:
            buffers.side = np.empty(0)  # the final fit holds the distances and one n x n kernel only
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
                            out[(c, f)][te] = svc.decision_function(K_te)
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


class GroupedMLPClassifier(MLPClassifier):
    """scikit-learn's ``MLPClassifier`` whose early-stopping validation share can keep groups whole.

    ``MLPClassifier`` holds its validation share out by a stratified random split of the rows, so
    a near-duplicate of a training row can be in it: the validation score then rewards memorising
    and stops late. Given ``groups`` (duplicate clusters, ``GROUPS=dups``), :meth:`fit` holds out
    whole groups instead (:func:`classify.data.balanced_holdout`, the hold-out's own rule, with
    ``validation_fraction``), and trains epoch by epoch with ``partial_fit`` under the same
    stopping rule as scikit-learn's (stop when the validation accuracy has not improved by
    ``tol`` for more than ``n_iter_no_change`` epochs; keep the best epoch's weights). Without
    groups, or without early stopping, it is ``MLPClassifier`` itself.
    """

    def fit(self, X, y, sample_weight=None, groups=None):
        """Fits the network (see the class docstring).

        Args:
            X: (n_samples, n_features) rows.
            y: class labels.
            sample_weight: as ``MLPClassifier.fit`` (not together with ``groups``).
            groups: optional group id per row; the early-stopping validation share holds whole
                groups. When no class can give a whole group to it, the network trains to the
                end without early stopping.

        Returns:
            self.

        Raises:
            ValueError: ``groups`` with ``sample_weight``, or not one id per row.
        """
        if groups is None or not self.early_stopping:
            return super().fit(X, y, sample_weight=sample_weight)
        if sample_weight is not None:
            raise ValueError("GroupedMLPClassifier fits with groups or with sample_weight, not both")
        from .data import balanced_holdout

        y = np.asarray(y)
        groups = np.asarray(groups)
        if len(groups) != len(y):
            raise ValueError(f"groups must have one id per row ({len(y)}); received {len(groups)}")
        held = balanced_holdout(y.astype(str), groups, groups.astype(str), self.validation_fraction,
                                0 if self.random_state is None else self.random_state) == "eval"
        if held.sum() < 2 or len(np.unique(y[~held])) < len(np.unique(y)):
            self.set_params(early_stopping=False)
            try:
                return super().fit(X, y)
            finally:
                self.set_params(early_stopping=True)
        return self._fit_held_out(X, y, held)

    def _fit_held_out(self, X, y, held: np.ndarray):
        """Early stopping on the rows ``held`` (one ``partial_fit`` per epoch on the others)."""
        import warnings

        from sklearn.exceptions import ConvergenceWarning

        keep = {"early_stopping": True, "random_state": self.random_state}
        # one generator for the whole fit: each epoch shuffles anew, as in MLPClassifier.fit
        self.set_params(early_stopping=False, random_state=check_random_state(self.random_state))
        for name in ("coefs_", "_optimizer"):  # start afresh, as fit does
            if hasattr(self, name):
                delattr(self, name)
        X_fit, y_fit, X_val, y_val = X[~held], y[~held], X[held], y[held]
        classes = np.unique(y)
        scores, best, best_score, stale = [], None, -np.inf, 0
        try:
            for _ in range(self.max_iter):
                super().partial_fit(X_fit, y_fit, classes=classes)
                scores.append(float(np.mean(self.predict(X_val) == y_val)))
                stale = stale + 1 if scores[-1] < best_score + self.tol else 0
                if scores[-1] > best_score:
                    best_score = scores[-1]
                    best = ([c.copy() for c in self.coefs_], [b.copy() for b in self.intercepts_])
                if stale > self.n_iter_no_change:
                    break
            else:
                warnings.warn(f"Stochastic Optimizer: Maximum iterations ({self.max_iter}) reached and "
                              "the optimization hasn't converged yet.", ConvergenceWarning)
        finally:
            self.set_params(**keep)
        self.coefs_, self.intercepts_ = best
        self.validation_scores_, self.best_validation_score_ = scores, best_score
        self.n_iter_ = len(scores)
        return self


INNER_FOLDS = 3  # held-out folds inside one fit: tuning, and the SVM's calibration
HALVING_FROM = 1000  # fewer training rows: the MLP's grid is searched whole (halving needs rows per class)
EARLY_STOPPING_FROM = 4000  # the MLP stops early (10% held out) from this many training images

# The grids TUNE searches, per head, as parameters of the head's pipeline. Chosen from
# measurements (BENCHMARKS.md): on 1,000-10,000 synthetic and digits vectors the MLP's alpha
# moved balanced accuracy by under 0.005, and 512 hidden units instead of 128 by under 0.015 at
# 2.5x the time, which put the 12,420-image comparison over its 60 s budget; 256 is the middle.
GRIDS = {
    "logreg": {"logisticregression__C": [0.01, 0.1, 1.0, 10.0]},
    "svm": {"calibratedsvc__C": [0.1, 1.0, 10.0], "calibratedsvc__gamma_factor": [0.5, 1.0, 2.0]},
    "mlp": {"mlpclassifier__hidden_layer_sizes": [(128,), (256,)], "mlpclassifier__alpha": [1e-4, 1e-2]},
    "knn": {"knnclassifier__n_neighbors": [10, 20, 50]},  # bounded by the training rows (KNNClassifier)
}
FIXED = {"logisticregression__C": 1.0, "calibratedsvc__C": 1.0, "calibratedsvc__gamma_factor": 1.0,
         "mlpclassifier__hidden_layer_sizes": (128,), "mlpclassifier__alpha": 1e-4, "knnclassifier__n_neighbors": 20}  # TUNE=0's settings


def candidates(name: str) -> list[dict]:
    """Every point of ``GRIDS[name]``, nearest the fixed settings first (the sum of each
    parameter's |log(value / fixed value)|), so that a search keeping the first of tied scores
    keeps the plainest model, as :class:`CalibratedSVC` does."""
    from sklearn.model_selection import ParameterGrid

    def distance(point: dict) -> float:
        return sum(abs(np.log(np.prod(v) / np.prod(FIXED[k]))) for k, v in point.items())

    return sorted(ParameterGrid(GRIDS[name]), key=distance)


def make_heads(seed: int, tune: bool = False) -> dict:
    """Returns the registry of heads, each a fresh unfitted estimator seeded by ``seed``.

    ``tune=False``: the fixed settings (logreg C=1; svm C=1, gamma "scale"; mlp 128 hidden units,
    alpha 1e-4). ``tune=True``: each head searches its :data:`GRIDS` on :data:`INNER_FOLDS`
    inner folds of whatever it is fitted on (so a cross-validated score is the score of the whole
    tune-then-fit procedure): logreg by ``GridSearchCV``, the MLP by successive halving
    (``HalvingGridSearchCV``: all 4 candidates on a third of the rows, the best 2 on all), the SVM
    inside :class:`CalibratedSVC`, which reuses its distances and calibration folds.
    """
    heads = {
        "logreg": make_pipeline(RowBlockScaler(), LogisticRegression(max_iter=2000, random_state=seed)),
        "svm": make_pipeline(RowBlockScaler(), CalibratedSVC(C=1.0, folds=INNER_FOLDS, random_state=seed)),
        "mlp": Pipeline([("rowblockscaler", RowBlockScaler()), ("mlpclassifier", GroupedMLPClassifier(
            hidden_layer_sizes=(128,), activation="relu", early_stopping=True,
            validation_fraction=0.1, n_iter_no_change=10, max_iter=200, random_state=seed))]),
        "knn": make_pipeline(KNNClassifier(n_neighbors=20)),
    }
    if not tune:
        return heads
    from sklearn.experimental import enable_halving_search_cv  # noqa: F401  (still experimental)
    from sklearn.model_selection import GridSearchCV, HalvingGridSearchCV

    inner = CopyAwareFolds(INNER_FOLDS, seed)
    svm_grid = {k.split("__", 1)[1]: v for k, v in GRIDS["svm"].items()}
    return {
        "logreg": GridSearchCV(heads["logreg"], [{k: [v] for k, v in point.items()} for point in candidates("logreg")],
                               cv=inner, scoring="balanced_accuracy",
                               error_score=np.nan),
        "svm": make_pipeline(RowBlockScaler(), CalibratedSVC(folds=INNER_FOLDS, random_state=seed, **svm_grid)),
        "mlp": HalvingGridSearchCV(heads["mlp"], GRIDS["mlp"], factor=3, cv=inner, scoring="balanced_accuracy",
                                   random_state=seed, error_score=np.nan),
        "knn": make_pipeline(KNNClassifier(n_neighbors=20, folds=INNER_FOLDS, random_state=seed, search=[
            point["knnclassifier__n_neighbors"] for point in candidates("knn")])),
    }


HEAD_NAMES = tuple(make_heads(0))


def select_heads(spec: str, seed: int, tune: bool = False) -> dict:
    """Parses ``HEADS=logreg,svm`` into {name: estimator} (see :func:`make_heads`).

    Raises:
        ValueError: an unknown or missing name, listing the known ones.
    """
    names = [n.strip() for n in str(spec).split(",") if n.strip()]
    if not names:
        raise ValueError(f"HEADS is empty; choose from {', '.join(HEAD_NAMES)}")
    unknown = [n for n in names if n not in HEAD_NAMES]
    if unknown:
        raise ValueError(f"unknown head {unknown[0]!r} in HEADS={spec}; known heads: {', '.join(HEAD_NAMES)}")
    heads = make_heads(seed, tune)
    return {n: heads[n] for n in dict.fromkeys(names)}


def set_inner(model, types, **params) -> None:
    """Sets ``params`` on ``model`` and every estimator of ``types`` inside it (pipelines, searches)."""
    if isinstance(model, types):
        model.set_params(**params)
    for key, value in list(model.get_params(deep=True).items()):
        if isinstance(value, types):
            model.set_params(**{f"{key}__{k}": v for k, v in params.items()})


def fit_head(model, X, y, private: bool = False, groups=None):
    """Fits one head, tuned or fixed, and returns (the fitted model that predicts, its settings).

    A search is unwrapped to its refitted best pipeline. When the inner folds cannot be made (a
    class with a single distinct image), the search's fixed pipeline is fitted instead.
    ``groups`` (one id per row: the duplicate clusters of ``GROUPS=dups``) reach every split made
    inside the fit: the search's inner folds, the SVM's calibration folds and the MLP's
    early-stopping share all keep a group whole, as the outer folds do. The MLP
    stops early from :data:`EARLY_STOPPING_FROM` training images (measured: on fewer, holding 10%
    out cost 0.01-0.11 balanced accuracy; on more, training to the end cost 0.01 and 3x the time).

    ``private=True``: X is the caller's own copy (e.g. rows gathered from the cache), so the
    scaler may standardise it in place while fitting instead of making a second copy (1.6 GB at
    800,000 x 512). The returned model copies again, so prediction never changes its input.
    """
    y = np.asarray(y)
    early = len(y) >= EARLY_STOPPING_FROM
    set_inner(model, MLPClassifier, early_stopping=early)
    if early:
        _widen_validation(model, y)
    set_inner(model, StandardScaler, copy=not private)
    try:
        fitted, settings = _fit_unwrapped(model, X, y, groups)
    finally:  # the model passed in (and what was fitted from it) copies again, fitted or not
        set_inner(model, StandardScaler, copy=True)
    set_inner(fitted, StandardScaler, copy=True)
    return fitted, settings


def groups_params(model, groups) -> dict:
    """The fit parameters that hand ``groups`` to every step of ``model`` whose ``fit`` takes them
    (``{"calibratedsvc__groups": groups}`` for the SVM's pipeline); {} without groups."""
    import inspect

    if groups is None:
        return {}
    steps = model.steps if hasattr(model, "steps") else [(None, model)]
    return {(f"{name}__groups" if name else "groups"): groups for name, step in steps
            if "groups" in inspect.signature(step.fit).parameters}


def _fit_unwrapped(model, X, y, groups=None):
    """:func:`fit_head`'s fit: a search's refitted best pipeline, or the model itself."""
    from sklearn.model_selection import check_cv
    from sklearn.model_selection._search import BaseSearchCV

    if isinstance(model, BaseSearchCV):
        if not check_cv(model.cv, y, classifier=True).get_n_splits(X, y, groups):  # its inner folds hold nothing out
            model = clone(model.estimator)
        else:
            if len(y) < HALVING_FROM and hasattr(model, "factor"):  # successive halving saves nothing
                from sklearn.model_selection import GridSearchCV

                model = GridSearchCV(model.estimator, model.param_grid, cv=model.cv, scoring=model.scoring,
                                     error_score=model.error_score)
            # groups: the inner folds' (the search's ``groups``), and each candidate's own splits
            # (fit parameters, which the search cuts to each inner fold's rows)
            model.fit(X, y, groups=groups, **groups_params(model.estimator, groups))
            return model.best_estimator_, settings_of(model.best_estimator_)
    model.fit(X, y, **groups_params(model, groups))
    return model, settings_of(model)


def _widen_validation(model, y) -> None:
    """Gives an early-stopping MLP at least one validation image per class (its split is stratified)."""
    classes, counts = np.unique(y, return_counts=True)
    if counts.min() < 2:  # no stratified validation split is possible: train to the end
        set_inner(model, MLPClassifier, early_stopping=False)
    else:
        need = (len(classes) + 1) / max(len(y), 1)
        if need > 0.1:
            set_inner(model, MLPClassifier, validation_fraction=min(0.5, need))


SETTINGS = {LogisticRegression: ("C",), MLPClassifier: ("hidden_layer_sizes", "alpha", "early_stopping")}


def settings_of(model) -> dict:
    """The settings that matter of a fitted head: {"C": 1.0} for logreg; C, gamma and the kernel
    method for the SVM (``exact``, or ``nystroem`` with its ``n_components``: the memory budget
    chooses it, and it changes the model); hidden units, alpha and early stopping for the MLP."""
    est = model[-1] if hasattr(model, "steps") else model
    if isinstance(est, CalibratedSVC):
        out = {k: float(f"{v:.4g}") for k, v in est.best_params_.items()}
        out["method"] = est.svm_.method_
        if out["method"] == "nystroem":
            out["n_components"] = int(est.svm_.nystroem_.components_.shape[0])
        return out
    if isinstance(est, KNNClassifier):  # k as chosen (searched inside its fit when tuned)
        return dict(est.best_params_)
    names = next((v for t, v in SETTINGS.items() if isinstance(est, t)), ())
    out = {}
    for name in names:
        value = getattr(est, name)
        out[name] = list(value) if isinstance(value, tuple) else (float(f"{value:.4g}") if isinstance(value, float) else value)
    return out


def format_settings(settings: dict) -> str:
    """{"C": 1.0, "gamma": 0.002} -> "C=1 gamma=0.002" (the ``params`` column)."""
    def show(v):
        if isinstance(v, list):
            return "x".join(map(str, v))
        return f"{v:g}" if isinstance(v, float) else str(v)

    return " ".join(f"{k}={show(v)}" for k, v in settings.items())


def fixed_head(name: str, seed: int, settings: dict):
    """The head ``name`` with fixed ``settings`` (as :func:`settings_of` gives them), unfitted."""
    model = make_heads(seed)[name]
    model[-1].set_params(**{k: tuple(v) if isinstance(v, list) else v for k, v in settings.items()})
    return model


def outputs(model, X) -> tuple[np.ndarray, np.ndarray | None]:
    """(probabilities, raw margins or None) of every row of X, from one pass over the model.

    Every head gives probabilities (logreg and mlp natively, the SVM through
    :class:`CalibratedSVC`, whose probabilities are its calibrated margins: its kernel is
    evaluated once for both). Heads without margins give None.
    """
    head = model[-1] if hasattr(model, "steps") else model
    if not isinstance(head, CalibratedSVC):
        return model.predict_proba(X), None
    dec = np.asarray(head.margins(model[:-1].transform(X) if hasattr(model, "steps") else X))
    return head.proba_of_margins(dec), dec


def labels_of(model, proba: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(labels, probability of the predicted class) per row: the most probable class, so that a
    label and its score always agree and a score means the same thing in every head."""
    idx = proba.argmax(1)
    return model.classes_[idx], proba[np.arange(len(idx)), idx]


def scores(model, X) -> tuple[np.ndarray, np.ndarray]:
    """Predicts and returns (labels, calibrated probability of the predicted class, per row)."""
    return labels_of(model, outputs(model, X)[0])


def decision_values(model, margins: np.ndarray | None, labels) -> np.ndarray | None:
    """The raw decision value behind each row's predicted label (None for heads without margins).

    Two classes: the signed value for the second class (positive means it). More classes: the
    one-vs-rest value of the predicted class. Larger is surer; it is not a probability.
    """
    if margins is None or margins.ndim == 1:
        return margins
    idx = np.searchsorted(model.classes_, labels)
    return margins[np.arange(len(idx)), idx]
