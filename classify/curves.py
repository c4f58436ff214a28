"""Learning curves and reliability diagrams: would more images help, and can the scores be trusted.

- :func:`learning_curves`: every head's cross-validated balanced accuracy against the number of
  training images (on the cached vectors, with the comparison's own folds, so copies never
  straddle a fold, and each fold's own tuned settings, so its held-out images never chose
  them), written to ``learning_curve.csv`` and
  ``figures/learning_curve.png``. Above :data:`MAX_ROWS` training images a seeded sample of
  that many is used, so the curves stay a few seconds' work.
- :func:`more_data_would_help`: the sentence the report shows.
- :func:`reliability_diagram`: for two classes, how often the positive class is right against the
  probability the heads gave it (scikit-learn's ``CalibrationDisplay``), ``figures/reliability.png``.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from .heads import WORKSPACE

SIZES = (0.25, 0.5, 0.75, 1.0)  # shares of each fold's training part
MAX_ROWS = 4000
MAX_FOLDS = 3  # the first folds of the comparison: enough for a mean and a spread
MIN_PER_CLASS = 10  # smaller training sizes than 10 images per class are not drawn


def learning_curves(models: dict, X, y, folds: list, n_jobs: int, seed: int, rows=None,
                    groups=None, settings: str = "") -> pd.DataFrame:
    """Cross-validated balanced accuracy of each head at growing training sizes.

    Each fold's training part is shuffled once (seeded); a size takes its first rows, as
    scikit-learn's ``learning_curve(shuffle=True)`` does. Every (head, fold, size) fit is one task
    of a single joblib pool, so the heads share the workers (one ``learning_curve`` call per head
    cost about 0.5 s of start-up each on 2 cores).

    Args:
        models: {head: unfitted estimator, or a list of them, one per fold}: with tuning nested in
            the comparison, each fold's settings were chosen on that fold's training rows alone,
            so its held-out rows never helped choose them.
        X, y: the vectors and labels (of the training part, or of every image with ``rows``).
        folds: (train, test) positions into the training part, as the comparison used them.
        n_jobs: parallel fits.
        seed: picks the sample above :data:`MAX_ROWS` rows and shuffles each fold's rows.
        rows: the training part's positions in X (default: all of X); only the sample is read.
        groups: optional group id per row of X (duplicate clusters): the splits inside each fit
            (the SVM's calibration, the MLP's early stopping) keep them whole.
        settings: how the heads' settings were chosen, in words (the ``settings`` column).

    Returns:
        Columns ``head, train_size, score_mean, score_std, n_folds, settings``; a size at which a
        head could not be fitted (too few images per class for its own inner split) scores NaN
        in that fold, and ``n_folds`` says how many folds were scored.
    """
    import joblib

    n = len(y)
    rows = np.arange(n) if rows is None else np.asarray(rows)
    g = None if groups is None else np.asarray(groups)[rows]
    X, y, folds, g = _sample(X, y, rows, list(folds)[:MAX_FOLDS], seed, g)
    per_fold = {name: m if isinstance(m, (list, tuple)) else [m] * len(folds) for name, m in models.items()}
    smallest_train = min(len(tr) for tr, _ in folds)
    floor = MIN_PER_CLASS * len(np.unique(y))  # fewer images than this: a head cannot fit them
    columns = ["head", "train_size", "score_mean", "score_std", "n_folds", "settings"]
    if smallest_train < floor:  # too few images for a curve: say nothing rather than noise
        return pd.DataFrame(columns=columns)
    sizes = sorted({int(s * smallest_train) for s in SIZES if s * smallest_train >= floor})
    rng = np.random.default_rng(seed)
    orders = [(rng.permutation(tr), te) for tr, te in folds]
    tasks = [(name, size, k) for name in models for size in sizes for k in range(len(orders))]
    scores = joblib.Parallel(n_jobs=min(n_jobs, len(tasks)))(
        joblib.delayed(_curve_point)(per_fold[name][k], X, y, orders[k][0][:size], orders[k][1], g, name)
        for name, size, k in tasks)
    WORKSPACE.release()
    rows = []
    for name in models:
        for size in sizes:
            got = np.array([s for (h, z, _), s in zip(tasks, scores) if h == name and z == size])
            scored = got[np.isfinite(got)]
            rows.append({"head": name, "train_size": int(size),
                         "score_mean": float(scored.mean()) if scored.size else float("nan"),
                         "score_std": float(scored.std()) if scored.size else float("nan"),
                         "n_folds": int(scored.size), "settings": settings})
    return pd.DataFrame(rows, columns=columns)


def _curve_point(model, X, y, train, test, groups=None, head: str = "") -> float:
    """Balanced accuracy on ``test`` of ``model`` (the head named ``head``) fitted on ``train``
    (NaN when it cannot fit)."""
    from sklearn.base import clone
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.metrics import balanced_accuracy_score

    from .heads import groups_params

    with warnings.catch_warnings(), WORKSPACE.reused_by(head):
        warnings.simplefilter("ignore", ConvergenceWarning)
        warnings.simplefilter("ignore", UserWarning)
        try:
            fitted = clone(model).fit(X[train], y[train],
                                      **groups_params(model, None if groups is None else groups[train]))
        except ValueError:  # e.g. a class with too few images for the head's own inner split
            return float("nan")
        return float(balanced_accuracy_score(y[test], fitted.predict(X[test])))


def _sample(X, y, rows, folds, seed, groups=None):
    """At most MAX_ROWS of ``rows``, copied out of X, keeping the folds (positions re-mapped
    into the sample); ``groups`` (per row of ``rows``) follow the sample."""
    n = len(rows)
    if n <= MAX_ROWS:
        return X[rows], y[rows], folds, groups
    keep = np.sort(np.random.default_rng(seed).choice(n, MAX_ROWS, replace=False))
    where = np.full(n, -1)
    where[keep] = np.arange(len(keep))
    sampled = [(where[tr][where[tr] >= 0], where[te][where[te] >= 0]) for tr, te in folds]
    return X[rows[keep]], y[rows[keep]], sampled, None if groups is None else groups[keep]


def more_data_would_help(curves: pd.DataFrame, best: str | None = None) -> str:
    """A sentence: does the best head's curve still rise at the full training size?

    Rising means the last step (75% -> 100% of the training part) gained more than the folds'
    own spread at full size: more labelled images would likely help it further.

    Args:
        curves: :func:`learning_curves`' table.
        best: the head to speak of: the comparison's best (:mod:`classify.answer`), so that the
            sentence names the head the rest of the results name; default the head with the
            highest curve at full size.
    """
    if curves is None or curves.dropna(subset=["score_mean"]).empty:
        return ("Too few training images for a learning curve (at least "
                f"{MIN_PER_CLASS} per class in each fold's training part).")
    curves = curves.dropna(subset=["score_mean"])
    if best is None or best not in set(curves["head"]):
        last = curves[curves["train_size"] == curves["train_size"].max()]
        best = last.loc[last["score_mean"].idxmax(), "head"]
    mine = curves[curves["head"] == best].sort_values("train_size")
    if len(mine) < 2:
        return ""
    gain = mine["score_mean"].iloc[-1] - mine["score_mean"].iloc[-2]
    spread = mine["score_std"].iloc[-1]
    if gain > max(spread, 0.005):
        return (f"{best}'s score still rises at the full training size (+{gain:.3f} over the last "
                f"step, more than the folds' spread of {spread:.3f}): more labelled images would "
                "likely help.")
    return (f"{best}'s score has levelled off ({gain:+.3f} over the last step, within the folds' "
            f"spread of {spread:.3f}): more images of the same kind would likely help little; "
            "other features or labels might.")


def plot_learning_curves(curves: pd.DataFrame, path: Path) -> str:
    """Writes figures/learning_curve.png: score against training images, one line per head."""
    import matplotlib.pyplot as plt

    from .figures import _save

    fig, ax = plt.subplots(figsize=(6, 4))
    if curves.dropna(subset=["score_mean"]).empty:
        ax.text(0.5, 0.5, more_data_would_help(curves), ha="center", va="center", wrap=True,
                transform=ax.transAxes)
    for name, group in curves.groupby("head", sort=False):
        group = group.sort_values("train_size")
        ax.errorbar(group["train_size"], group["score_mean"], yerr=group["score_std"], marker="o",
                    capsize=3, label=name)
    ax.set_xlabel("training images")
    ax.set_ylabel("cross-validated balanced accuracy")
    settings = next(iter(curves["settings"].dropna()), "") if "settings" in curves else ""
    ax.set_title("Learning curves (error bars: spread over the folds)"
                 + (f"\nsettings: {settings}" if settings else ""), fontsize=10)
    if ax.get_legend_handles_labels()[0]:
        ax.legend()
    caption = ("Each head's cross-validated balanced accuracy against the number of training images "
               "it was fitted on (the comparison's own folds; error bars: the spread over them)"
               + (f"; the heads' settings: {settings}." if settings else "."))
    return _save(fig, Path(path), caption)


def reliability_diagram(probas: dict, y_eval, class_names: list[str], path: Path) -> str | None:
    """Writes figures/reliability.png for two classes (both evaluated); None otherwise.

    ``probas``: {head: its probabilities on the evaluated images, columns in the order of
    ``class_names``}.
    """
    if len(class_names) != 2 or len(set(np.asarray(y_eval))) != 2:
        return None
    import matplotlib.pyplot as plt
    from sklearn.calibration import CalibrationDisplay

    from .figures import _save

    positive = str(class_names[1])
    fig, ax = plt.subplots(figsize=(5, 5))
    y_true = np.asarray(y_eval).astype(str)
    bins = int(np.clip(len(y_true) // 10, 3, 10))
    for name, proba in probas.items():
        CalibrationDisplay.from_predictions(y_true, proba[:, 1], n_bins=bins, name=name, ax=ax,
                                            pos_label=positive)
    ax.set_title(f"Reliability on the evaluated images, positive class {positive!r}")
    caption = (f"How often an evaluated image is {positive!r} against the probability each head gave "
               f"it ({bins} bins); on the dotted diagonal a head's probabilities mean what they say.")
    return _save(fig, Path(path), caption)


def plot_intervals(comparison: pd.DataFrame, path: Path) -> str:
    """Writes figures/intervals.png: each head's hold-out accuracy and CV score with 95% intervals,
    the verdict beside its name; the legend sits below the plot, where it covers no interval."""
    import matplotlib.pyplot as plt

    from .figures import _save

    heads = comparison["head"].tolist()
    labels = [f"{h} ({v})" for h, v in zip(heads, comparison["verdict"])]
    fig, ax = plt.subplots(figsize=(6.5, 0.6 * len(heads) + 2.0), layout="constrained")
    pos = np.arange(len(heads))
    for offset, (col, low, high, name) in enumerate((
            ("accuracy", "accuracy_ci_low", "accuracy_ci_high", "accuracy on the evaluated images (Wilson)"),
            ("cv_mean", "cv_ci_low", "cv_ci_high", "CV balanced accuracy (corrected t)"))):
        mid = comparison[col].astype(float).to_numpy()
        err = np.vstack([mid - comparison[low].astype(float), comparison[high].astype(float) - mid])
        ax.errorbar(mid, pos + (offset - 0.5) * 0.3, xerr=np.clip(err, 0, None), fmt="o", capsize=4,
                    label=name)
    ax.set_yticks(pos, labels)
    ax.invert_yaxis()
    ax.set_xlabel("score, with 95% intervals")
    ax.set_title("Heads compared: overlapping intervals and 'tied' mean no honest winner", fontsize=10)
    fig.legend(loc="outside lower center", ncol=2, fontsize=8, frameon=False)
    caption = ("Each head's accuracy on the evaluated images and its cross-validated balanced "
               "accuracy, each with its 95% interval; the verdict is beside each name.")
    return _save(fig, Path(path), caption)
