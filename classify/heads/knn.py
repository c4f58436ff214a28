"""The weighted k-nearest-neighbour head (``knn``), and the L2 normalisation of the vectors
(``NORMALIZE``).

The probe is the one the self-supervised literature reports beside the linear probe (Caron et
al., "Emerging Properties in Self-Supervised Vision Transformers" (DINO), 2021, section 4.1 and
its ``eval_knn.py``: k=20, cosine similarity on L2-normalised features, each of the k neighbours
voting for its class with weight exp(similarity / 0.07)). It trains nothing: fitting stores the
unit training rows; prediction finds each row's k most similar training rows and returns the
normalised votes as probabilities, so the head gets intervals, verdicts, a reliability diagram
and ``make predict`` like every other.

Neighbours are exact up to :data:`EXACT_MAX` training rows (faiss' brute-force ``knn``, over
blocks of query rows of at most :data:`BLOCK_ENTRIES` similarities: 64 MB of float32 at once,
whatever the sizes, well inside any ``MEMORY_GB``). Above, they come from the nearest-neighbour index the duplicate search uses
(:func:`classify.dups.hnsw_neighbours`' faiss ``IndexHNSWFlat`` on inner products of unit
rows), built once per fitted model when it first predicts and never saved with it.
"""

from __future__ import annotations

from numbers import Integral, Real

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.multiclass import check_classification_targets, unique_labels
from sklearn.utils.validation import check_is_fitted, validate_data

from ..dups import EXACT_SEARCH_MAX, HNSW_EF_BUILD, HNSW_EF_SEARCH, HNSW_LINKS

NORMALIZE_CHOICES = ("none", "l2")
EXACT_MAX = EXACT_SEARCH_MAX  # training rows searched exactly; above, the faiss HNSW index
BLOCK_ENTRIES = 16_000_000  # query rows x training rows of similarities computed at once (64 MB)
INDEX_BLOCK = 65_536  # rows added to or searched in the index at once


def check_normalize(how) -> str:
    """``NORMALIZE``: ``none`` or ``l2``.

    Raises:
        ValueError: anything else, naming what was received.
    """
    value = str(how).strip().lower()
    if value not in NORMALIZE_CHOICES:
        raise ValueError(f"NORMALIZE must be {' or '.join(NORMALIZE_CHOICES)}; received {how!r}")
    return value


def normalize_vectors(X, how: str = "none"):
    """The vectors as the heads see them under ``NORMALIZE=how``.

    Args:
        X: (N, D) vectors (a memory-mapped cache is read, never written).
        how: ``none`` (X itself, no copy) or ``l2`` (a float32 copy whose rows have length 1;
            an all-zero row stays zero).

    Returns:
        X, or its L2-normalised float32 copy.

    Raises:
        ValueError: an unknown ``how``, or X not 2-D.
    """
    how = check_normalize(how)
    if how == "none":
        return X
    return unit_rows(X)


def unit_rows(X) -> np.ndarray:
    """A float32 copy of X with every row scaled to length 1 (all-zero rows stay zero), made
    block by block so that no float64 temporary as large as X exists.

    Raises:
        ValueError: X is not 2-D.
    """
    X = np.asarray(X)
    if X.ndim != 2:
        raise ValueError(f"vectors must be a 2-D array (N, D); received shape {X.shape}")
    Z = np.empty(X.shape, np.float32)
    step = 8192
    for i in range(0, len(X), step):
        block = X[i:i + step].astype(np.float64)
        norms = np.sqrt(np.einsum("ij,ij->i", block, block))
        norms[norms == 0] = 1.0
        Z[i:i + step] = block / norms[:, None]
    return Z


class KNNClassifier(ClassifierMixin, BaseEstimator):
    """Weighted k-nearest neighbours by cosine similarity, with probabilities from the votes.

    Each query row votes with its ``n_neighbors`` most similar training rows (cosine of the
    L2-normalised vectors); neighbour j adds exp(s_j / temperature) to its class, and the
    probabilities are the votes divided by their sum. ``n_neighbors`` is bounded by the number
    of training rows.

    With ``search`` (a list of k's), ``fit`` chooses k the way the other heads are tuned: on
    ``folds`` inner folds of its training rows (:class:`classify.heads.CopyAwareFolds`: stratified,
    exact copies and ``groups`` kept whole), by balanced accuracy, the first of tied k's in the
    order given (the fixed k first). One neighbour search per inner fold, for the largest k,
    scores every k (a grid search would search once per k and fold: 3 times the work).

    Args:
        n_neighbors: k, a positive whole number (``n_neighbors_`` is the k used: at most the
            training rows).
        temperature: the votes' temperature, a positive number (0.07 as in DINO).
        exact_max: most training rows searched exactly; above, a faiss HNSW index.
        search: k's to choose from on inner folds, or None: ``n_neighbors``.
        folds: inner folds of the search.
        random_state: shuffles the inner folds.

    Attributes:
        best_params_: {"n_neighbors": the k chosen, or ``n_neighbors``}.
    """

    def __init__(self, n_neighbors: int = 20, temperature: float = 0.07, exact_max: int = EXACT_MAX,
                 search=None, folds: int = 3, random_state=None):
        self.n_neighbors = n_neighbors
        self.temperature = temperature
        self.exact_max = exact_max
        self.search = search
        self.folds = folds
        self.random_state = random_state

    def _check_params(self) -> None:
        rules = [
            ("n_neighbors", isinstance(self.n_neighbors, Integral) and not isinstance(self.n_neighbors, bool)
             and self.n_neighbors >= 1, "a whole number of at least 1"),
            ("temperature", isinstance(self.temperature, Real) and self.temperature > 0, "a positive number"),
            ("exact_max", isinstance(self.exact_max, Integral) and self.exact_max >= 0,
             "a whole number of at least 0"),
            ("search", self.search is None or (len(self.search) > 0 and all(
                isinstance(k, Integral) and not isinstance(k, bool) and k >= 1 for k in self.search)),
             "None or a list of whole numbers of at least 1"),
            ("folds", isinstance(self.folds, Integral) and self.folds >= 2, "a whole number of at least 2"),
        ]
        for name, ok, want in rules:
            if not ok:
                raise ValueError(f"KNNClassifier's {name} must be {want}; received {getattr(self, name)!r}")

    def fit(self, X, y, groups=None):
        """Stores the unit training rows and their classes (choosing k first, with ``search``).

        Args:
            X: (n_samples, n_features) dense vectors.
            y: class labels.
            groups: optional group ids per row, kept whole by the inner folds of ``search``.

        Returns:
            self.

        Raises:
            ValueError: bad parameters, empty, non-finite or sparse X, or fewer than 2 classes.
        """
        self._check_params()
        X, y = validate_data(self, X, y, dtype=np.float32)
        check_classification_targets(y)
        self.classes_ = unique_labels(y)
        if len(self.classes_) < 2:
            raise ValueError(f"KNNClassifier needs at least 2 classes in y; received 1 class: {self.classes_[0]!r}")
        k = self.n_neighbors if self.search is None else self._choose_k(X, y, groups)
        self._store(X, y, k)
        self.best_params_ = {"n_neighbors": int(k)}
        return self

    def _store(self, X, y, k: int) -> None:
        self.train_ = unit_rows(X)
        self.train_codes_ = np.searchsorted(self.classes_, y).astype(np.int32)
        self.n_neighbors_ = int(min(k, len(X)))
        self.method_ = "exact" if len(X) <= self.exact_max else "hnsw"
        self._index = None

    def _choose_k(self, X, y, groups=None) -> int:
        """The k of ``search`` with the best mean balanced accuracy over the inner folds (the
        first of ties); ``n_neighbors`` when no inner folds can be made."""
        from sklearn.base import clone
        from sklearn.metrics import balanced_accuracy_score

        from .folds import CopyAwareFolds

        ks = [int(k) for k in self.search]
        splits = list(CopyAwareFolds(self.folds, self.random_state).split(X, y, groups))
        if not splits:
            return self.n_neighbors
        scores = np.zeros(len(ks))
        for train, test in splits:
            inner = clone(self).set_params(search=None)
            inner.classes_, inner.n_features_in_ = self.classes_, X.shape[1]
            inner._store(X[train], y[train], max(ks))
            sims, nbrs = inner.kneighbors(X[test])
            for i, k in enumerate(ks):
                k = min(k, len(train))
                pred = self.classes_[inner._votes(sims[:, :k], nbrs[:, :k]).argmax(axis=1)]
                scores[i] += balanced_accuracy_score(y[test], pred)
        self.search_scores_ = dict(zip(ks, (scores / len(splits)).round(6).tolist()))
        return ks[int(np.argmax(scores))]  # argmax keeps the first of ties

    def __getstate__(self):
        """The state without the faiss index (rebuilt from ``train_`` when needed), so that the
        model pickles for joblib's workers and saves as a skops file."""
        state = dict(super().__getstate__())
        state.pop("_index", None)
        return state

    def kneighbors(self, X) -> tuple[np.ndarray, np.ndarray]:
        """The ``n_neighbors_`` most similar training rows of every row of X.

        Returns:
            (cosine similarities float32 (n, k), training row numbers int64 (n, k)), most similar
            first; with the HNSW index, -1 where the graph returned fewer neighbours.
        """
        check_is_fitted(self, "train_")
        X = validate_data(self, X, dtype=np.float32, reset=False)
        Q = unit_rows(X)
        if self.method_ == "exact":
            return self._exact(Q)
        return self._approximate(Q)

    def _exact(self, Q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Exact neighbours: faiss' brute-force search (``faiss.knn``: BLAS inner products and a
        heap per query row, no index), over blocks of query rows of at most ``BLOCK_ENTRIES``
        similarities. Measured at 2,484 x 9,936 x 512 it took about the time of the matrix
        product alone, where numpy's ``argpartition`` on the similarities took 1.3-3x more."""
        import faiss

        n, k = len(self.train_), self.n_neighbors_
        rows = max(1, BLOCK_ENTRIES // max(n, 1))
        sims = np.empty((len(Q), k), np.float32)
        nbrs = np.empty((len(Q), k), np.int64)
        for i in range(0, len(Q), rows):
            S, I = faiss.knn(np.ascontiguousarray(Q[i:i + rows]), self.train_, k,
                             metric=faiss.METRIC_INNER_PRODUCT)
            sims[i:i + rows], nbrs[i:i + rows] = S, I
        return sims, nbrs

    def _approximate(self, Q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Neighbours from a faiss HNSW graph of the training rows (inner product of unit rows)."""
        import faiss

        if getattr(self, "_index", None) is None:
            index = faiss.IndexHNSWFlat(self.train_.shape[1], HNSW_LINKS, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = HNSW_EF_BUILD
            for b0 in range(0, len(self.train_), INDEX_BLOCK):
                index.add(np.ascontiguousarray(self.train_[b0:b0 + INDEX_BLOCK]))
            self._index = index
        self._index.hnsw.efSearch = max(HNSW_EF_SEARCH, self.n_neighbors_)
        sims, nbrs = [], []
        for b0 in range(0, len(Q), INDEX_BLOCK):
            S, I = self._index.search(np.ascontiguousarray(Q[b0:b0 + INDEX_BLOCK]), self.n_neighbors_)
            sims.append(S.astype(np.float32))
            nbrs.append(I.astype(np.int64))
        return np.concatenate(sims), np.concatenate(nbrs)

    def predict_proba(self, X) -> np.ndarray:
        """The normalised temperature-weighted votes, one column per class of ``classes_``."""
        return self._votes(*self.kneighbors(X))

    def _votes(self, sims: np.ndarray, nbrs: np.ndarray) -> np.ndarray:
        """Probabilities from neighbours (similarities, training rows; -1: none)."""
        found = nbrs >= 0
        # exp((s - max s) / T): the same ratios as exp(s / T), without overflow
        top = np.where(found, sims, -np.inf).max(axis=1, keepdims=True)
        weights = np.where(found, np.exp((sims.astype(np.float64) - top) / self.temperature), 0.0)
        codes = self.train_codes_[np.where(found, nbrs, 0)]
        proba = np.zeros((len(sims), len(self.classes_)), np.float64)
        np.add.at(proba, (np.repeat(np.arange(len(sims)), sims.shape[1]), codes.ravel()), weights.ravel())
        proba /= proba.sum(axis=1, keepdims=True)
        return proba

    def predict(self, X) -> np.ndarray:
        """The class with the most votes of each row."""
        proba = self.predict_proba(X)  # first: an unfitted model raises NotFittedError
        return self.classes_[proba.argmax(axis=1)]


# The grid TUNE searches (k, bounded by the training rows when fitted), and TUNE=0's settings.
GRID = {"knnclassifier__n_neighbors": [10, 20, 50]}
FIXED = {"knnclassifier__n_neighbors": 20}


def settings(est: KNNClassifier) -> dict:
    """What the ``params`` column shows of a fitted head: k as used (searched inside its fit
    when tuned)."""
    return dict(est.best_params_)


def make(seed: int):
    """The fixed head: k=20, no scaler in front (it normalises the rows itself)."""
    from sklearn.pipeline import make_pipeline

    return make_pipeline(KNNClassifier(n_neighbors=20))


def tuned(seed: int, inner, candidates: list[dict]):
    """The tuned head: k searched inside its fit over ``candidates`` (plainest first) on the same
    inner folds and by the same rule as the other heads' searches."""
    from sklearn.pipeline import make_pipeline

    from .folds import INNER_FOLDS

    return make_pipeline(KNNClassifier(n_neighbors=20, folds=INNER_FOLDS, random_state=seed,
                                       search=[point["knnclassifier__n_neighbors"] for point in candidates]))
