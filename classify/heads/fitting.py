"""Fitting a head (tuned or fixed) and reading it: its settings, probabilities, labels, margins."""

from __future__ import annotations

import numpy as np
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression
from sklearn.neural_network import MLPClassifier
from sklearn.preprocessing import StandardScaler

from . import knn, linear, mlp, svm
from .svm import CalibratedSVC


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
    early-stopping share all keep a group whole, as the outer folds do. The MLP's training suits
    the number of rows it is fitted on (:func:`classify.heads.mlp.suit_to_size`).

    ``private=True``: X is the caller's own copy (e.g. rows gathered from the cache), so the
    scaler may standardise it in place while fitting instead of making a second copy (1.6 GB at
    800,000 x 512). The returned model copies again, so prediction never changes its input.
    """
    y = np.asarray(y)
    mlp.suit_to_size(model, y, lambda **params: set_inner(model, MLPClassifier, **params))
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
            if len(y) < mlp.HALVING_FROM and hasattr(model, "factor"):  # successive halving saves nothing
                from sklearn.model_selection import GridSearchCV

                model = GridSearchCV(model.estimator, mlp.small_grid(model.param_grid), cv=model.cv,
                                     scoring=model.scoring, error_score=model.error_score)
            # groups: the inner folds' (the search's ``groups``), and each candidate's own splits
            # (fit parameters, which the search cuts to each inner fold's rows)
            model.fit(X, y, groups=groups, **groups_params(model.estimator, groups))
            return model.best_estimator_, settings_of(model.best_estimator_)
    model.fit(X, y, **groups_params(model, groups))
    return model, settings_of(model)


def settings_of(model) -> dict:
    """The settings that matter of a fitted head, as its family states them (the ``params``
    column): C for logreg; C, gamma and the kernel method for the SVM; for the MLP see
    :func:`classify.heads.mlp.settings`."""
    est = model[-1] if hasattr(model, "steps") else model
    for kind, family in ((CalibratedSVC, svm), (LogisticRegression, linear), (MLPClassifier, mlp),
                         (knn.KNNClassifier, knn)):
        if isinstance(est, kind):
            return family.settings(est)
    return {}


def format_settings(settings: dict) -> str:
    """{"C": 1.0, "gamma": 0.002} -> "C=1 gamma=0.002" (the ``params`` column)."""
    def show(v):
        if isinstance(v, list):
            return "x".join(map(str, v))
        return f"{v:g}" if isinstance(v, float) else str(v)

    return " ".join(f"{k}={show(v)}" for k, v in settings.items())


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
