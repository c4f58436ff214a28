"""The standardisation in front of every head, fitted in blocks of rows."""

from __future__ import annotations

import numpy as np
from sklearn.preprocessing import StandardScaler

from .kernels import BLOCK_ROWS


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

