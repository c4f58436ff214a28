"""The MLP head stops early (a share of the training images held out) from EARLY_STOPPING_FROM
training images on, and trains to the end below that."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from sklearn.neural_network import MLPClassifier

from classify.heads import EARLY_STOPPING_FROM, fit_head, make_heads


def _mlp_of(model) -> MLPClassifier:
    return next(step for step in getattr(model, "steps", [("", model)])[::-1]
                if isinstance(step[1], MLPClassifier))[1]


@pytest.mark.parametrize("n, early", [(EARLY_STOPPING_FROM - 1, False), (EARLY_STOPPING_FROM, True)])
def test_the_mlp_stops_early_from_the_threshold_on(n, early):
    assert EARLY_STOPPING_FROM == 4000  # the documented threshold
    rng = np.random.default_rng(0)
    X = rng.normal(size=(n, 6)).astype(np.float32)
    y = np.where(X[:, 0] + 0.3 * rng.normal(size=n) > 0, "a", "b")
    model = make_heads(0)["mlp"].set_params(mlpclassifier__max_iter=15)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fitted, _ = fit_head(model, X, y)
    mlp = _mlp_of(fitted)
    assert mlp.early_stopping is early
    # early stopping scores a held-out share after every epoch; without it there is none
    assert (mlp.validation_scores_ is not None and len(mlp.validation_scores_) == mlp.n_iter_) is early
    assert (fitted.predict(X) == y).mean() > 0.85
