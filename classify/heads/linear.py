"""The logistic-regression head (``logreg``): a linear model on standardised vectors."""

from __future__ import annotations

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline

from .scaler import RowBlockScaler

# The grid TUNE searches (parameters of the head's pipeline), and TUNE=0's settings.
GRID = {"logisticregression__C": [0.01, 0.1, 1.0, 10.0]}
FIXED = {"logisticregression__C": 1.0}


def settings(est: LogisticRegression) -> dict:
    """What the ``params`` column shows of a fitted head: its C."""
    return {"C": float(f"{est.C:.4g}")}


def make(seed: int):
    """The fixed head: C=1."""
    return make_pipeline(RowBlockScaler(), LogisticRegression(max_iter=2000, random_state=seed))


def tuned(seed: int, inner, candidates: list[dict]):
    """The tuned head: ``GridSearchCV`` over ``candidates`` (the points of :data:`GRID`, plainest
    first, so a tie keeps the plainest) on the ``inner`` folds, by balanced accuracy."""
    from sklearn.model_selection import GridSearchCV

    return GridSearchCV(make(seed), [{k: [v] for k, v in point.items()} for point in candidates],
                        cv=inner, scoring="balanced_accuracy", error_score=np.nan)
