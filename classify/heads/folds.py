"""The folds inside one fit (tuning, the SVM's calibration): stratified, copies kept together."""

from __future__ import annotations

import numpy as np

INNER_FOLDS = 3  # held-out folds inside one fit: tuning, and the SVM's calibration


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
    from ..data import stratified_group_folds, unit_ids

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

