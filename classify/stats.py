"""Intervals and paired tests that say when two heads are honestly tied.

- :func:`wilson_interval`: a 95% interval for an accuracy measured on n independent images
  (Wilson's score interval, which keeps its coverage near 0 and 1 where the normal one fails).
- :func:`corrected_t_interval` and :func:`corrected_paired_t`: the corrected resampled t of
  Nadeau and Bengio (2003, "Inference for the generalization error", Machine Learning 52): fold
  scores of (repeated) k-fold cross-validation share training images, so their plain variance
  understates the uncertainty; it is inflated by ``1/J + n_test/n_train`` instead of ``1/J``
  (J = folds x repeats). scikit-learn's example "Statistical comparison of models using grid
  search" applies the same correction. The fold scores' variance has a floor (:func:`binomial_floor`),
  so that folds that happen to agree exactly (5 folds of a few images, all scored 1.0) cannot
  make a zero-width interval or a p-value of 0.
- :func:`mcnemar_exact`: McNemar's exact test on the images both heads were evaluated on: only
  the images one head got right and the other wrong count, and under "equally good" each such
  image is a fair coin.
- :func:`verdicts`: each head against the best one, with Holm's step-down adjustment over the
  comparisons, so three heads do not get two chances to look different.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats

ALPHA = 0.05


def wilson_interval(correct: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """The Wilson score interval for ``correct`` successes out of ``n``.

    Returns:
        ``(low, high)``; ``(nan, nan)`` when ``n`` is 0.
    """
    if n <= 0:
        return float("nan"), float("nan")
    z = stats.norm.ppf(0.5 + confidence / 2)
    p = correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def binomial_floor(values, n_images) -> float:
    """The least variance a fold's score (or difference of scores) can honestly have: the mean,
    over the folds, of the binomial variance of a proportion measured on that fold's images.

    A fold's score is a proportion over its ``n`` held-out images (accuracy exactly; balanced
    accuracy is a mean of per-class proportions, whose variance is at least this when the classes
    are balanced, and larger when not). Even a model that never changed would score a new fold of
    ``n`` images with binomial variance p(1 - p) / n, so the spread of the observed fold scores
    cannot honestly be smaller: when they happen to agree (5 folds of a few images, all 1.0),
    their sample variance is 0 and would make a zero-width interval and a p-value of 0. Here p
    is shrunk by Laplace's rule of succession, p~ = (n p + 1) / (n + 2), so that a score of
    exactly 0 or 1 still has a positive variance (one more image could have gone either way).

    For a paired difference d of two heads on the same n images, each image contributes -1, 0
    or +1 and the variance of the mean is (q - d^2) / n, with q the share of images the heads
    disagree on; q is at least |d|, so (|d| - d^2) / n, the binomial variance of the proportion
    |d|, is its floor: pass ``abs(d)`` as ``values``.

    Args:
        values: per-fold proportions in [0, 1].
        n_images: per fold, the images its proportion is measured on (or one number for all).

    Returns:
        The floor of one fold's variance.

    Raises:
        ValueError: ``n_images`` not positive, or not one per value.
    """
    values = np.asarray(values, float)
    n = np.broadcast_to(np.asarray(n_images, float), values.shape) if np.ndim(n_images) == 0 \
        else np.asarray(n_images, float)
    if n.shape != values.shape or not (n > 0).all():
        raise ValueError(f"n_images must be a positive count per fold score ({len(values)} of them); "
                         f"received {n_images!r}")
    shrunk = (n * np.clip(values, 0, 1) + 1) / (n + 2)
    return float(np.mean(shrunk * (1 - shrunk) / n))


def _corrected_sd(values: np.ndarray, test_fraction: float, floor: float) -> float:
    """Standard deviation of the mean of ``values`` with Nadeau and Bengio's correction; the
    variance of one value is at least ``floor`` (see :func:`binomial_floor`)."""
    values = np.asarray(values, float)
    j = len(values)
    ratio = test_fraction / (1 - test_fraction)  # n_test / n_train of each fold
    return math.sqrt((1 / j + ratio) * max(values.var(ddof=1), floor))


def corrected_t_interval(scores, test_fraction: float, n_images,
                         confidence: float = 0.95) -> tuple[float, float]:
    """An interval for the mean cross-validated score (corrected resampled t).

    Args:
        scores: one score per fold and repeat (J values).
        test_fraction: the share of the training part each fold holds out (1 / folds).
        n_images: the held-out images of each fold (one per score, or one number for all): the
            scores' variance is at least their binomial variance (:func:`binomial_floor`).
        confidence: the interval's coverage.

    Returns:
        ``(low, high)``, clipped to [0, 1]; ``(nan, nan)`` with fewer than 2 scores.
    """
    scores = np.asarray(scores, float)
    if len(scores) < 2:
        return float("nan"), float("nan")
    sd = _corrected_sd(scores, test_fraction, binomial_floor(scores, n_images))
    half = stats.t.ppf(0.5 + confidence / 2, len(scores) - 1) * sd
    return max(0.0, scores.mean() - half), min(1.0, scores.mean() + half)


def corrected_paired_t(a, b, test_fraction: float, n_images) -> float:
    """Two-sided p-value that heads scoring ``a`` and ``b`` on the same folds are equally good.

    Args:
        a, b: per-fold scores of the two heads, fold for fold (the same splits).
        test_fraction: the share of the training part each fold holds out.
        n_images: the held-out images of each fold (one per score, or one number for all): the
            differences' variance is at least the binomial floor of :func:`binomial_floor`, so
            the same difference on every fold of a few images is not taken for certainty.

    Returns:
        The p-value; 1.0 when the scores never differ.
    """
    d = np.asarray(a, float) - np.asarray(b, float)
    if len(d) < 2 or not d.any():
        return 1.0  # nothing to test, or never a difference
    t = d.mean() / _corrected_sd(d, test_fraction, binomial_floor(np.abs(d), n_images))
    return float(2 * stats.t.sf(abs(t), len(d) - 1))


def mcnemar_exact(right_a, right_b) -> float:
    """Two-sided exact McNemar p-value for two heads' right/wrong on the same images."""
    right_a = np.asarray(right_a, bool)
    right_b = np.asarray(right_b, bool)
    only_a = int((right_a & ~right_b).sum())
    only_b = int((~right_a & right_b).sum())
    if only_a + only_b == 0:
        return 1.0
    return float(stats.binomtest(only_a, only_a + only_b, 0.5).pvalue)


def holm(p_values: dict[str, float]) -> dict[str, float]:
    """Holm's step-down adjusted p-values (monotone, capped at 1)."""
    order = sorted(p_values, key=p_values.get)
    m, running, out = len(order), 0.0, {}
    for i, name in enumerate(order):
        running = max(running, min(1.0, (m - i) * p_values[name]))
        out[name] = running
    return out


def verdicts(best: str, p_vs_best: dict[str, float], alpha: float = ALPHA) -> dict[str, str]:
    """``best`` for the best head; ``worse`` where its Holm-adjusted p is below ``alpha``, else ``tied``."""
    adjusted = holm({h: p for h, p in p_vs_best.items() if h != best})
    out = {best: "best"}
    out.update({h: "worse" if p < alpha else "tied" for h, p in adjusted.items()})
    return out
