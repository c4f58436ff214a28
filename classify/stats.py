"""Intervals and paired tests that say when two heads are honestly tied.

- :func:`wilson_interval`: a 95% interval for an accuracy measured on n independent images
  (Wilson's score interval, which keeps its coverage near 0 and 1 where the normal one fails).
- :func:`corrected_t_interval` and :func:`corrected_paired_t`: the corrected resampled t of
  Nadeau and Bengio (2003, "Inference for the generalization error", Machine Learning 52): fold
  scores of (repeated) k-fold cross-validation share training images, so their plain variance
  understates the uncertainty; it is inflated by ``1/J + n_test/n_train`` instead of ``1/J``
  (J = folds x repeats). scikit-learn's example "Statistical comparison of models using grid
  search" applies the same correction.
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


def _corrected_sd(values: np.ndarray, test_fraction: float) -> float:
    """Standard deviation of the mean of ``values`` with Nadeau and Bengio's correction."""
    values = np.asarray(values, float)
    j = len(values)
    ratio = test_fraction / (1 - test_fraction)  # n_test / n_train of each fold
    return math.sqrt((1 / j + ratio) * values.var(ddof=1))


def corrected_t_interval(scores, test_fraction: float,
                         confidence: float = 0.95) -> tuple[float, float]:
    """An interval for the mean cross-validated score (corrected resampled t).

    Args:
        scores: one score per fold and repeat (J values).
        test_fraction: the share of the training part each fold holds out (1 / folds).

    Returns:
        ``(low, high)``, clipped to [0, 1]; ``(nan, nan)`` with fewer than 2 scores.
    """
    scores = np.asarray(scores, float)
    if len(scores) < 2:
        return float("nan"), float("nan")
    half = stats.t.ppf(0.5 + confidence / 2, len(scores) - 1) * _corrected_sd(scores, test_fraction)
    return max(0.0, scores.mean() - half), min(1.0, scores.mean() + half)


def corrected_paired_t(a, b, test_fraction: float) -> float:
    """Two-sided p-value that heads scoring ``a`` and ``b`` on the same folds are equally good.

    Args:
        a, b: per-fold scores of the two heads, fold for fold (the same splits).
        test_fraction: the share of the training part each fold holds out.

    Returns:
        The p-value; 1.0 when the scores never differ.
    """
    d = np.asarray(a, float) - np.asarray(b, float)
    if len(d) < 2 or not d.any():
        return 1.0  # nothing to test, or never a difference
    if np.all(d == d[0]):
        return 0.0  # the same non-zero difference on every fold: no spread to doubt it
    t = d.mean() / _corrected_sd(d, test_fraction)
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
