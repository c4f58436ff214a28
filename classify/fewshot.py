"""Few-shot curves (``SHOTS``): every head fitted on k training images per class, scored on the
evaluated images.

This is the probe LAION's clip_benchmark calls ``fewshot_k`` (k labelled images per class): for
each k of ``SHOTS`` and each of ``SHOT_DRAWS`` draws, k training images of every class are drawn
(seeded; a draw's k images include its smaller k's, so one draw's curve is nested), every head
is fitted on them at its fixed settings (k images per class are too few to tune on), and scored
by balanced accuracy on the evaluated images of the classes drawn. A class with fewer than k
training images is named and left out of that k: neither trained on nor scored. The draws are
the same for every head, so the heads are compared on the same images.

Outputs: ``fewshot.csv`` (``head,shots,draw,score,accuracy,n_train,n_eval,n_classes,
classes_left_out,seconds``) and ``figures/fewshot.png`` (the mean over the draws, with the
lowest-to-highest band).
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path

import joblib
import numpy as np
import pandas as pd

COLUMNS = ["head", "shots", "draw", "score", "accuracy", "n_train", "n_eval", "n_classes",
           "classes_left_out", "seconds"]
DEFAULT_DRAWS = 5


def parse_shots(spec) -> list[int]:
    """``SHOTS``: comma-separated whole numbers of at least 1 (``1,2,4,8,16``), or empty (none).

    Returns:
        The distinct numbers, ascending.

    Raises:
        ValueError: anything else, naming what was received.
    """
    text = "" if spec is None else str(spec).strip()
    if not text:
        return []
    out = []
    for part in text.split(","):
        part = part.strip()
        if not part.isdigit() or int(part) < 1:
            raise ValueError(f"SHOTS must be comma-separated whole numbers of at least 1 (e.g. 1,2,4,8,16) "
                             f"or empty; received {spec!r}")
        out.append(int(part))
    return sorted(set(out))


def check_draws(draws) -> int:
    """``SHOT_DRAWS``: a whole number of at least 1.

    Raises:
        ValueError: anything else.
    """
    try:
        value = int(str(draws).strip())
    except ValueError:
        value = 0
    if value < 1 or str(draws).strip() != str(value):
        raise ValueError(f"SHOT_DRAWS must be a whole number of at least 1; received {draws!r}")
    return value


def draw_rows(y_train: np.ndarray, shots: list[int], draws: int, seed: int) -> dict:
    """The training rows of every (k, draw), and the classes left out of each k.

    Args:
        y_train: the labels of the training rows.
        shots: the k's.
        draws: draws per k.
        seed: the random state (SEED).

    Returns:
        {"rows": {(k, draw): positions into y_train}, "left_out": {k: [classes with fewer than k
        training images]}}.
    """
    y_train = np.asarray(y_train).astype(str)
    classes, counts = np.unique(y_train, return_counts=True)
    members = {c: np.flatnonzero(y_train == c) for c in classes}
    rows = {}
    for d in range(draws):
        rng = np.random.default_rng([seed, d])
        order = {c: rng.permutation(members[c]) for c in classes}  # one order per draw: nested k's
        for k in shots:
            rows[(k, d)] = np.sort(np.concatenate([order[c][:k] for c, n in zip(classes, counts) if n >= k]))
    left_out = {k: [str(c) for c, n in zip(classes, counts) if n < k] for k in shots}
    return {"rows": rows, "left_out": left_out}


def _fit_score(name: str, k: int, d: int, model, X, y, rows, eval_rows):
    """One task: fit ``model`` on ``rows``, score it on ``eval_rows`` -> a row of fewshot.csv
    (without the left-out classes)."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.metrics import accuracy_score

    from .fits import cv_score
    from .heads import fit_head

    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        warnings.simplefilter("ignore", UserWarning)
        fitted, _ = fit_head(model, X[rows], y[rows], private=True)
        pred = fitted.predict(X[eval_rows])
    return {"head": name, "shots": k, "draw": d, "score": round(cv_score(y[eval_rows], pred), 6),
            "accuracy": round(float(accuracy_score(y[eval_rows], pred)), 6), "n_train": len(rows),
            "n_eval": len(eval_rows), "n_classes": len(np.unique(y[rows])),
            "seconds": round(time.perf_counter() - t0, 3)}


def fewshot_curves(models: dict, X, y, train_idx, eval_idx, shots: list[int], draws: int, seed: int,
                   n_jobs: int = 1, log=print) -> pd.DataFrame:
    """Every head's score at k training images per class, for every k of ``shots`` and draw.

    Args:
        models: {head: unfitted estimator} (fixed settings).
        X: the vectors as the heads see them (NORMALIZE applied).
        y: every row's label.
        train_idx: rows of the training part (the images are drawn from them).
        eval_idx: rows of the evaluated images (scored; those of a left-out class are not).
        shots: the k's (see :func:`parse_shots`).
        draws: draws per k (``SHOT_DRAWS``).
        seed: the random state (SEED).
        n_jobs: parallel fits.
        log: where messages go.

    Returns:
        One row per (head, k, draw) in the columns :data:`COLUMNS`; a k at which fewer than 2
        classes have k training images has no rows (it is said in ``log``).
    """
    from sklearn.base import clone

    y = np.asarray(y).astype(str)
    train_idx, eval_idx = np.asarray(train_idx), np.asarray(eval_idx)
    plan = draw_rows(y[train_idx], shots, draws, seed)
    tasks, left = [], {}
    for k in shots:
        gone = plan["left_out"][k]
        kept = sorted(set(y[train_idx]) - set(gone))
        if len(kept) < 2:
            log(f"few-shot: {k} shots: fewer than 2 classes have {k} training images; skipped")
            continue
        if gone:
            log(f"few-shot: {k} shots: left out {len(gone)} class(es) with fewer than {k} training images: "
                + ", ".join(map(repr, gone)))
        left[k] = " ".join(gone)
        eval_rows = eval_idx[np.isin(y[eval_idx], kept)]
        if not len(eval_rows):
            log(f"few-shot: {k} shots: no evaluated image of the classes drawn; skipped")
            continue
        for d in range(draws):
            rows = train_idx[plan["rows"][(k, d)]]
            tasks += [(name, k, d, clone(model), rows, eval_rows) for name, model in models.items()]
    results = joblib.Parallel(n_jobs=max(1, min(n_jobs, len(tasks) or 1)))(
        joblib.delayed(_fit_score)(name, k, d, model, X, y, rows, ev) for name, k, d, model, rows, ev in tasks)
    table = pd.DataFrame(results, columns=[c for c in COLUMNS if c != "classes_left_out"])
    table.insert(COLUMNS.index("classes_left_out"), "classes_left_out", table["shots"].map(left).fillna(""))
    return table.sort_values(["head", "shots", "draw"], key=lambda s: s.map(list(models).index)
                             if s.name == "head" else s, kind="stable").reset_index(drop=True)


def summary(table: pd.DataFrame) -> pd.DataFrame:
    """Per head and k: mean, lowest and highest score over the draws, and the draws."""
    if table is None or not len(table):
        return pd.DataFrame(columns=["head", "shots", "score_mean", "score_min", "score_max", "draws"])
    g = table.groupby(["head", "shots"], sort=False)["score"]
    out = g.agg(score_mean="mean", score_min="min", score_max="max", draws="count").reset_index()
    return out


def plot_fewshot(table: pd.DataFrame, path: Path) -> str:
    """Writes figures/fewshot.png: the mean score against k per head, with the lowest-to-highest
    band over the draws."""
    import matplotlib.pyplot as plt

    from .figures import _save

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, group in summary(table).groupby("head", sort=False):
        line, = ax.plot(group["shots"], group["score_mean"], marker="o", label=name)
        ax.fill_between(group["shots"], group["score_min"], group["score_max"], color=line.get_color(), alpha=0.2)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("training images per class (k)")
    ax.set_ylabel("balanced accuracy on the evaluated images")
    ax.set_title("Few-shot curves (band: lowest to highest of the draws)", fontsize=10)
    if ax.get_legend_handles_labels()[0]:
        ax.legend()
    return _save(fig, Path(path))
