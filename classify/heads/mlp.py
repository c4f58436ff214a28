"""The multi-layer perceptron head (``mlp``): one hidden layer on standardised vectors.

How it trains depends on how many rows it is fitted on (:func:`suit_to_size`):

- below :data:`LBFGS_BELOW` rows, with L-BFGS on the whole set (scikit-learn's user guide: "For
  small datasets, however, 'lbfgs' can converge faster and perform better"); off (0): measured
  on 130 rows of 512-d photo vectors with 128 hidden units, L-BFGS took 0.046-0.054 s per fit
  and Adam 0.054-0.057 s once its one batch is not shuffled: no gain worth another optimiser;
- from :data:`EARLY_STOPPING_FROM` rows, with Adam and early stopping on a validation share
  (measured: on fewer, holding 10% out cost 0.01-0.11 balanced accuracy; on more, training to the
  end cost 0.01 and 3x the time);
- in between, with Adam to the end.
"""

from __future__ import annotations

import contextlib

import numpy as np
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import Pipeline
from sklearn.utils import check_random_state
from sklearn.utils.validation import _num_samples

from .scaler import RowBlockScaler

HALVING_FROM = 1000  # fewer training rows: the grid is searched whole (halving needs rows per class)
EARLY_STOPPING_FROM = 4000  # Adam with early stopping (10% held out) from this many training rows
LBFGS_BELOW = 0  # L-BFGS below this many training rows: off (see the module's docstring)

# The grid TUNE searches (parameters of the head's pipeline), and TUNE=0's settings.
GRID = {"mlpclassifier__hidden_layer_sizes": [(128,), (256,)], "mlpclassifier__alpha": [1e-4, 1e-2]}
FIXED = {"mlpclassifier__hidden_layer_sizes": (128,), "mlpclassifier__alpha": 1e-4}


def small_grid(grid: dict) -> dict:
    """The grid searched below :data:`HALVING_FROM` rows: :data:`GRID` with alpha at its fixed
    value only.

    scikit-learn divides the L2 penalty by the number of rows, so on a few hundred rows alpha
    1e-2 and 1e-4 train nearly the same network. Measured in 25 nested searches (5 outer folds
    each of the 245 synthetic photos at 64 px, 400 of scikit-learn's digits, its breast-cancer
    and wine sets, and 400 synthetic 512-d embeddings): the best alpha=1e-2 candidate's inner
    score never exceeded the best alpha=1e-4 one's (the difference was 0.000 every time), while
    256 hidden units beat 128 by up to 0.18. Searching alpha=1e-4 only halves the search's fits
    and changes no choice.
    """
    out = dict(grid)
    key = "mlpclassifier__alpha"
    if key in out:
        out[key] = [FIXED[key]]
    return out


def make(seed: int) -> Pipeline:
    """The fixed head: 128 hidden units, alpha 1e-4 (:func:`suit_to_size` sets how it trains)."""
    return Pipeline([("rowblockscaler", RowBlockScaler()), ("mlpclassifier", GroupedMLPClassifier(
        hidden_layer_sizes=(128,), activation="relu", early_stopping=True,
        validation_fraction=0.1, n_iter_no_change=10, max_iter=200, random_state=seed))])


def tuned(seed: int, inner, candidates=None):
    """The tuned head: successive halving over :data:`GRID` on the ``inner`` folds
    (``HalvingGridSearchCV``: every candidate on a third of the rows, the best third of them on
    all; below :data:`HALVING_FROM` rows :func:`classify.heads.fitting.fit_head` searches the
    whole grid instead), by balanced accuracy."""
    from sklearn.experimental import enable_halving_search_cv  # noqa: F401  (still experimental)
    from sklearn.model_selection import HalvingGridSearchCV

    return HalvingGridSearchCV(make(seed), GRID, factor=3, cv=inner, scoring="balanced_accuracy",
                               random_state=seed, error_score=np.nan)


def suit_to_size(model, y, set_params) -> None:
    """Sets how the MLP inside ``model`` trains on the rows of ``y`` (see the module's docstring).

    Args:
        model: a head (pipeline or search) that may hold an MLP; others are left alone.
        y: the labels of the rows it is about to be fitted on.
        set_params: sets parameters on every MLP inside ``model``
            (:func:`classify.heads.fitting.set_inner`).
    """
    n = len(y)
    early = n >= EARLY_STOPPING_FROM
    set_params(early_stopping=early, solver="lbfgs" if n < LBFGS_BELOW else "adam")
    if not early:
        return
    # an early-stopping MLP needs at least one validation image per class (its split is stratified)
    classes, counts = np.unique(y, return_counts=True)
    if counts.min() < 2:  # no stratified validation split is possible: train to the end
        set_params(early_stopping=False)
    elif (len(classes) + 1) / max(n, 1) > 0.1:
        set_params(validation_fraction=min(0.5, (len(classes) + 1) / max(n, 1)))


def settings(est: MLPClassifier) -> dict:
    """What the ``params`` column shows of a fitted MLP: hidden units, alpha, solver and early
    stopping."""
    return {"hidden_layer_sizes": list(est.hidden_layer_sizes), "alpha": float(f"{est.alpha:.4g}"),
            "solver": est.solver, "early_stopping": bool(est.early_stopping)}


ONE_BATCH_ROWS = 200  # scikit-learn's batch_size="auto": min(200, rows), so one batch up to this


@contextlib.contextmanager
def _one_batch_unshuffled(mlp: MLPClassifier, X):
    """Turns off the per-epoch shuffle while an Adam or SGD fit has one batch per epoch.

    With ``batch_size="auto"`` a fit on at most :data:`ONE_BATCH_ROWS` rows takes one batch of
    every row each epoch, whose gradient is their mean, so shuffling changes only the order of a
    sum; the weights are those of a shuffled fit (measured: the same predicted probabilities on
    245 photos) and scikit-learn's copy of the rows each epoch (a fifth of the fit's time on 130
    rows) is saved. Larger fits, fixed batch sizes and L-BFGS are left as they are.
    """
    try:
        n_rows = _num_samples(X)
    except TypeError:  # not array-like: MLPClassifier.fit says so
        n_rows = None
    skip = (mlp.shuffle and mlp.solver in ("adam", "sgd") and mlp.batch_size == "auto"
            and not mlp.early_stopping and n_rows is not None and n_rows <= ONE_BATCH_ROWS)
    if skip:
        mlp.shuffle = False
    try:
        yield
    finally:
        if skip:
            mlp.shuffle = True


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
            with _one_batch_unshuffled(self, X):
                return super().fit(X, y, sample_weight=sample_weight)
        if sample_weight is not None:
            raise ValueError("GroupedMLPClassifier fits with groups or with sample_weight, not both")
        from ..data import balanced_holdout

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

