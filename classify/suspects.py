"""Label suspects: images whose label the cross-validated predictions of a head contradict.

Each image is predicted by a model that never saw it (out-of-fold probabilities, folds that keep
duplicate clusters whole); cleanlab ranks the images whose label those probabilities contradict.
:func:`suspects_in_words` says what that count means next to the head's own error rate: a head
right 70% of the time contradicts about 30% of the labels even when every label is right.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd

from extract.notices import plural

PROBA_HEADS = ("logreg", "mlp")  # heads with predict_proba, usable for label suspects


def _oof_fold(model, X, y, train, test, groups=None):
    """One fold of the out-of-fold pass: the MLP's early stopping and validation share sized on
    this fold's labels (:func:`classify.heads.fit_head`), the splits inside the fit keeping each
    duplicate cluster (``groups``, per row of X) whole. ``train``, ``test``: rows of X."""
    from sklearn.exceptions import ConvergenceWarning

    from .heads import fit_head

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model, _ = fit_head(model, X[train], y[train], private=True,  # a fresh copy
                            groups=None if groups is None else groups[train])
    return test, model.predict_proba(X[test])


def out_of_fold_probabilities(model, X, y, groups, folds: int, seed: int, jobs: int, rows=None):
    """Cross-validated class probabilities: each row predicted by a model that never saw it.

    The folds are stratified and group-aware (a duplicate cluster is never split), so a
    mislabelled image cannot be vouched for by its own copy in the training folds (nor in the
    splits inside each fit: the SVM's calibration, the MLP's early stopping). Their number
    follows :func:`classify.data.cv_folds`, and each fold sizes the MLP's validation share on
    its own training part.

    Args:
        model: the unfitted head.
        X, y, groups: every image's vector, label and duplicate cluster.
        rows: the images to predict (default all); the others are neither fitted nor predicted,
            and X is read by position, never copied as a whole.

    Returns:
        (pred_probs (len(rows), K), the classes in column order, the folds used).
    """
    import joblib
    from sklearn.base import clone

    from .data import cv_folds

    rows = np.arange(len(y)) if rows is None else np.asarray(rows)
    splits, _ = cv_folds(y[rows], groups[rows], folds, seed, log=lambda *_: None)
    classes = np.unique(y[rows])
    probs = np.zeros((len(rows), len(classes)))
    results = joblib.Parallel(n_jobs=min(jobs, len(splits)))(
        joblib.delayed(_oof_fold)(clone(model), X, y, rows[tr], rows[te], groups) for tr, te in splits)
    for (_, te), (_, p) in zip(splits, results):
        probs[te] = p
    return probs, classes, len(splits)


def label_suspects(man: pd.DataFrame, rows: np.ndarray, role: np.ndarray, probs: np.ndarray,
                   classes: np.ndarray) -> pd.DataFrame:
    """Ranks likely label errors with cleanlab on out-of-fold probabilities.

    Listed: every image that ``cleanlab.filter.find_label_issues`` (confident learning,
    ``prune_by_noise_rate``) flags (``cleanlab_issue=1``), and every image whose out-of-fold
    prediction is another class (confident learning is conservative: an image predicted as the
    other class with a probability below that class's average confidence is not flagged). They
    are ranked by ``cleanlab.rank.get_label_quality_scores`` (``self_confidence``: the
    out-of-fold probability of the image's own label; low is suspicious), then by path.
    """
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    labels = np.searchsorted(classes, man["label"].to_numpy()[rows])
    issues = np.asarray(find_label_issues(labels, probs, filter_by="prune_by_noise_rate", n_jobs=1), bool)
    quality = get_label_quality_scores(labels, probs, method="self_confidence")
    suggested = probs.argmax(1)
    sel = np.flatnonzero(issues | (suggested != labels))
    # a stable order: cleanlab's score, then the path
    sel = np.asarray(sorted(sel, key=lambda k: (round(float(quality[k]), 9), man["path"].iat[rows[k]])), int)
    g = rows[sel]
    return pd.DataFrame({
        "rank": np.arange(1, len(sel) + 1),
        "path": man["path"].to_numpy()[g],
        "label": man["label"].to_numpy()[g],
        "suggested_label": classes[suggested[sel]],
        "label_quality": np.round(quality[sel].astype(float), 6),
        "p_label": np.round(probs[sel, labels[sel]].astype(float), 6),
        "p_suggested": np.round(probs[sel, suggested[sel]].astype(float), 6),
        "cleanlab_issue": issues[sel].astype(int),
        "split": man["split"].to_numpy()[g],
        "role": role[g],
    })


def expected_by_chance(n: int, accuracy: float) -> tuple[int, int]:
    """(about how many of ``n`` images a head right with probability ``accuracy`` gets wrong even
    when every label is right, one binomial standard deviation of that count)."""
    miss = min(max(1.0 - float(accuracy), 0.0), 1.0)
    return round(n * miss), round(math.sqrt(n * miss * (1.0 - miss)))


def suspects_in_words(count: int, n: int, head: str, accuracy: float, issues: int) -> str:
    """What the number of label suspects means, in plain words.

    Args:
        count: the label suspects.
        n: the images checked.
        head: the head whose out-of-fold probabilities were used.
        accuracy: its cross-validated balanced accuracy (NaN when unknown).
        issues: how many of them cleanlab's confident learning flags.
    """
    text = (f"Label suspects: {plural(count, 'image')} of {n:,} whose label the cross-validated "
            f"predictions of {head} contradict ({head}, fitted without the image, gives another "
            "class more probability, or cleanlab flags it).")
    if math.isfinite(accuracy):
        expected, sd = expected_by_chance(n, accuracy)
        verdict = ("about what its own errors give: most suspects are the head's mistakes, not "
                   "wrong labels" if count <= expected + 2 * sd else
                   "more than its own errors give: some labels are likely wrong")
        text += (f" Its cross-validated balanced accuracy is {accuracy:.2f}, so it contradicts about "
                 f"{expected:,} (± {sd:,}) of {n:,} labels even when every label is right; {count:,} "
                 f"is {verdict}.")
    text += (f" cleanlab's confident learning, which allows for the head's errors, flags "
             f"{plural(issues, 'image')} as likely mislabelled. Look at the first ranked in "
             "label_suspects.csv and label_suspects.png.")
    return text
