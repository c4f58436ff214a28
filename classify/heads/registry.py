"""The heads by name: each family's fixed and tuned head, its grid, and ``HEADS`` parsed."""

from __future__ import annotations

import numpy as np

from . import knn, linear, mlp, svm
from .folds import INNER_FOLDS, CopyAwareFolds

FAMILIES = {"logreg": linear, "svm": svm, "mlp": mlp, "knn": knn}  # HEADS' names, in the order heads are shown
HEAD_NAMES = tuple(FAMILIES)

# The grids TUNE searches, per head, as parameters of the head's pipeline (each family's module
# says why its grid is what it is), and TUNE=0's settings.
GRIDS = {name: family.GRID for name, family in FAMILIES.items()}
FIXED = {key: value for family in FAMILIES.values() for key, value in family.FIXED.items()}


def candidates(name: str) -> list[dict]:
    """Every point of ``GRIDS[name]``, nearest the fixed settings first (the sum of each
    parameter's |log(value / fixed value)|), so that a search keeping the first of tied scores
    keeps the plainest model, as :class:`~classify.heads.svm.CalibratedSVC` does."""
    from sklearn.model_selection import ParameterGrid

    def distance(point: dict) -> float:
        return sum(abs(np.log(np.prod(v) / np.prod(FIXED[k]))) for k, v in point.items())

    return sorted(ParameterGrid(GRIDS[name]), key=distance)


def searched_grid(name: str, n_rows: int | None = None) -> dict:
    """The grid a search of head ``name`` searches, as parameter names of the head's estimator:
    :data:`GRIDS`; in a nested search of a fit on ``n_rows`` rows, the MLP's alpha at its fixed
    value below :data:`~classify.heads.mlp.HALVING_FROM` rows (:func:`~classify.heads.mlp.small_grid`).
    ``n_rows=None``: the whole grid (the search on a validation folder tries every candidate)."""
    small = name == "mlp" and n_rows is not None and n_rows < mlp.HALVING_FROM
    grid = mlp.small_grid(GRIDS[name]) if small else GRIDS[name]
    return {k.split("__", 1)[1]: list(v) for k, v in grid.items()}


def make_heads(seed: int, tune: bool = False) -> dict:
    """Returns the registry of heads, each a fresh unfitted estimator seeded by ``seed``.

    ``tune=False``: the fixed settings (:data:`FIXED`). ``tune=True``: each head searches its
    :data:`GRIDS` on :data:`~classify.heads.folds.INNER_FOLDS` inner folds of whatever it is
    fitted on (so a cross-validated score is the score of the whole tune-then-fit procedure):
    logreg by ``GridSearchCV``, the MLP by successive halving from
    :data:`~classify.heads.mlp.HALVING_FROM` rows (a whole grid search below), the SVM inside
    :class:`~classify.heads.svm.CalibratedSVC`, which reuses its distances and calibration folds.
    """
    if not tune:
        return {name: family.make(seed) for name, family in FAMILIES.items()}
    inner = CopyAwareFolds(INNER_FOLDS, seed)
    return {name: family.tuned(seed, inner, candidates(name)) for name, family in FAMILIES.items()}


def select_heads(spec: str, seed: int, tune: bool = False) -> dict:
    """Parses ``HEADS=logreg,svm`` (spaces around the names are ignored) into {name: estimator}
    (see :func:`make_heads`).

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


def fixed_head(name: str, seed: int, settings: dict):
    """The head ``name`` with fixed ``settings`` (as :func:`~classify.heads.fitting.settings_of`
    gives them), unfitted."""
    model = make_heads(seed)[name]
    model[-1].set_params(**{k: tuple(v) if isinstance(v, list) else v for k, v in settings.items()})
    return model
