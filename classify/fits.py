"""Stage 2's fits: every head on every CV fold and on the whole training part, in parallel, with
a progress bar over the fits; the selection on a validation folder; the cross-validation score."""

from __future__ import annotations

import sys
import threading
import time
import warnings

import joblib
import numpy as np
from sklearn.base import clone
from sklearn.exceptions import ConvergenceWarning, FitFailedWarning
from sklearn.metrics import balanced_accuracy_score

from .heads import INNER_FOLDS, WORKSPACE, candidates, fit_head, format_settings

CV_METRIC = "balanced_accuracy"


def cv_score(y_true, y_pred) -> float:
    """The cross-validation score (and ``balanced_accuracy``): the mean recall of the classes.

    It equals accuracy on balanced data and does not reward ignoring a small class; ``cv_mean``
    picks the best head (predict's default, the report's mark).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # a class predicted but absent from the fold
        return float(balanced_accuracy_score(y_true, y_pred))


def _fit(name: str, fold: int, model, X, y, train_idx, test_idx, groups=None):
    """One unit of parallel work: fit (tuning included) on train_idx; score on test_idx (a CV
    fold, or the validation folder) or return the model. ``groups``: every row's duplicate
    cluster (``GROUPS=dups``), kept whole by the splits inside the fit.

    Returns:
        (name, fold, the model or the score, seconds, the head's chosen settings).
    """
    t0 = time.perf_counter()
    with warnings.catch_warnings(), WORKSPACE.reused_by(name):  # a worker's next fit of this head reuses its memory
        warnings.simplefilter("ignore", ConvergenceWarning)
        warnings.simplefilter("ignore", FitFailedWarning)  # a candidate that cannot fit a small inner fold
        warnings.simplefilter("ignore", UserWarning)  # a class missing from an inner fold's predictions
        model, chosen = fit_head(model, X[train_idx], y[train_idx], private=True,  # a fresh copy
                                 groups=None if groups is None else groups[train_idx])
    seconds = time.perf_counter() - t0
    if test_idx is None:
        return name, fold, model, seconds, chosen
    return name, fold, cv_score(y[test_idx], model.predict(X[test_idx])), seconds, chosen


SLOW_AFTER_SECONDS = 5.0  # fits still running after this long: the slow note is logged


class _SlowNote:
    """Logs ``note`` once: when the fits are still running after :data:`SLOW_AFTER_SECONDS`, or
    at the end when they took that long (a timer thread; the log is called under a lock)."""

    def __init__(self, note: str | None, log):
        self.note, self.log, self.lock, self.done = note, log, threading.Lock(), False
        self.t0 = time.perf_counter()
        self.timer = None
        if note and log:
            self.timer = threading.Timer(SLOW_AFTER_SECONDS, self.say)
            self.timer.daemon = True
            self.timer.start()

    def say(self) -> None:
        with self.lock:
            if not self.done:
                self.done = True
                self.log(self.note)

    def finish(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            if time.perf_counter() - self.t0 >= SLOW_AFTER_SECONDS:
                self.say()


def run_fits(tasks: list, X, y, n_jobs: int, groups=None, desc: str = "fits", slow_note: str | None = None,
             log=None) -> list:
    """Runs :func:`_fit` on every ``(name, index, model, train_idx, test_idx)`` of ``tasks``,
    ``n_jobs`` at a time, with a progress bar on stderr (shown on a terminal; its estimate is
    tqdm's, from the fits done so far). ``slow_note`` goes to ``log`` once the fits have run
    :data:`SLOW_AFTER_SECONDS` (a quick run says nothing about its speed).

    Returns:
        :func:`_fit`'s results, in the order of ``tasks``.
    """
    from tqdm import tqdm

    jobs = max(1, min(n_jobs, len(tasks)))
    calls = (joblib.delayed(_fit)(name, k, model, X, y, tr, te, groups) for name, k, model, tr, te in tasks)
    if jobs == 1:  # no worker processes to start for work done here anyway
        results = (_fit(name, k, model, X, y, tr, te, groups) for name, k, model, tr, te in tasks)
    else:
        try:
            results = joblib.Parallel(n_jobs=jobs, return_as="generator_unordered")(calls)
        except ValueError as err:  # raised when made: Ray's joblib backend returns only lists
            if "return_as" not in str(err):
                raise
            results = joblib.Parallel(n_jobs=jobs)(calls)  # the bar then moves once, at the end
    done, slow = [], _SlowNote(slow_note, log)
    try:
        with tqdm(total=len(tasks), desc=desc, unit="fit", file=sys.stderr, disable=None, delay=1.0,
                  leave=False) as bar:
            for result in results:
                done.append(result)
                bar.update(1)
    finally:
        slow.finish()
    WORKSPACE.release()  # what fits in this process kept (workers drop theirs when they turn to another head)
    order = {(name, k): i for i, (name, k, *_rest) in enumerate(tasks)}
    return sorted(done, key=lambda r: order[(r[0], r[1])])


def fit_all(models: dict, X, y, train_idx, fold_list, n_jobs: int, groups=None, slow_note: str | None = None,
            log=None):
    """Fits every head on every CV fold and on the whole training part, in parallel; ``groups``
    (one id per row of X, or None) go to the splits inside each fit; ``slow_note``, ``log``: as
    in :func:`run_fits`.

    Returns:
        ({head: fitted model}, {head: [fold scores]}, {head: fit seconds}, {head: CV seconds},
        {head: {"final": its chosen settings, "folds": [each fold's]}}).
    """
    tasks = []
    for name, model in models.items():
        for k, (tr, te) in enumerate(fold_list):
            tasks.append((name, k, clone(model), train_idx[tr], train_idx[te]))
        tasks.append((name, -1, clone(model), train_idx, None))
    # The SVM's tasks are the longest: start them first so the workers finish together.
    tasks.sort(key=lambda t: (t[0] != "svm", t[0], t[1]))
    results = run_fits(tasks, X, y, n_jobs, groups, desc="fitting and cross-validating", slow_note=slow_note, log=log)
    fitted, fit_seconds, chosen = {}, {}, {n: {"folds": {}} for n in models}
    cv_scores, cv_seconds = {n: {} for n in models}, dict.fromkeys(models, 0.0)
    for name, k, value, seconds, settings in results:
        if k < 0:
            fitted[name], fit_seconds[name], chosen[name]["final"] = value, seconds, settings
        else:
            cv_scores[name][k], chosen[name]["folds"][k] = value, settings
            cv_seconds[name] += seconds
    fitted = {name: fitted[name] for name in models}
    cv_scores = {name: np.array([v for _, v in sorted(cv_scores[name].items())]) for name in models}
    for c in chosen.values():
        c["folds"] = [s for _, s in sorted(c["folds"].items())]
    return fitted, cv_scores, fit_seconds, cv_seconds, chosen


def model_fits(name: str, tuned: bool) -> int:
    """How many models one fit of head ``name`` trains: the final model, the SVM's calibration
    models on :data:`~classify.heads.INNER_FOLDS` folds, and with ``tuned`` every candidate of its
    grid on every inner fold (an upper bound for the MLP's successive halving)."""
    per_candidate = INNER_FOLDS if tuned else 0
    grid = len(candidates(name)) if tuned else 1
    calibration = INNER_FOLDS if name == "svm" and not tuned else 0  # tuned: the grid's folds calibrate
    return 1 + calibration + grid * per_candidate


def tuning_note(heads, mode: str, n_fits: int) -> str | None:
    """A line saying that tuning is the slow part and how to skip it, when the searches inside
    the fits (nested tuning) train more models than the fits themselves would; else None.
    :func:`run_fits` logs it when the fits take long.

    Args:
        heads: the head names.
        mode: the tuning mode (:func:`classify.compare.choose_tuning`).
        n_fits: the fits of each head (CV folds times repeats, and the final fit).
    """
    if mode != "nested":
        return None
    tuned = sum(model_fits(h, True) for h in heads) * n_fits
    fixed = sum(model_fits(h, False) for h in heads) * n_fits
    if tuned <= 2 * fixed:
        return None
    return (f"tuning is the slow part: the grid searches train {tuned:,} models where fixed settings "
            f"train {fixed:,} ({tuned / fixed:.0f}x); to skip it, run with TUNE=0 (fixed settings, "
            "recorded in run.json)")


def select_on_validation(models: dict, X, y, train_idx, valid_idx, n_jobs: int, log, groups=None):
    """Fits every candidate of every head's grid on train, scores it on the validation folder
    (``groups``: as in :func:`fit_all`).

    Returns:
        ({head: the unfitted head with its best settings}, rows of tuning.csv).
    """
    tasks = [(name, i, clone(model).set_params(**params), train_idx, valid_idx)
             for name, model in models.items() for i, params in enumerate(candidates(name))]
    results = run_fits(tasks, X, y, n_jobs, groups, desc="tuning on the validation folder")
    best = {}
    for name, i, score, _, settings in results:  # candidates come nearest the fixed settings first:
        if name not in best or score > best[name][1]:  # a tie keeps the plainest
            best[name] = (i, score)
    rows, chosen = [], {}
    for name, i, score, _, settings in results:
        rows.append((name, "candidate", format_settings(settings), round(float(score), 6),
                     "yes" if best[name][0] == i else ""))
    for name, model in models.items():
        params = candidates(name)[best[name][0]]
        chosen[name] = clone(model).set_params(**params)
        log(f"tuning {name}: {format_settings({k.split('__', 1)[1]: v for k, v in params.items()})} "
            f"scored best on the validation folder ({best[name][1]:.4f})")
    return chosen, rows
