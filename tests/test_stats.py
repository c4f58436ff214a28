"""The intervals cover what they claim and the paired tests reject equal heads rarely."""

from __future__ import annotations

import numpy as np
import pytest

from classify import stats


def test_wilson_interval_covers_a_known_accuracy():
    rng = np.random.default_rng(0)
    for p, n in ((0.8, 100), (0.97, 60), (0.5, 30)):
        hits = 0
        for _ in range(200):
            low, high = stats.wilson_interval(int(rng.binomial(n, p)), n)
            hits += low <= p <= high
        assert hits >= 180, (p, n, hits)  # at least 90% of 200 draws
    assert stats.wilson_interval(30, 30)[1] == pytest.approx(1.0) and stats.wilson_interval(30, 30)[0] < 0.95
    assert np.isnan(stats.wilson_interval(0, 0)[0])


def _exact_coverage(p: float, n: int) -> float:
    """The probability that the Wilson interval of Binomial(n, p) successes holds p (exact sum)."""
    from scipy.stats import binom

    k = np.arange(n + 1)
    held = [low <= p <= high for low, high in (stats.wilson_interval(int(j), n) for j in k)]
    return float(binom.pmf(k, n, p) @ np.array(held, float))


@pytest.mark.parametrize("n", [30, 100])
def test_wilson_interval_coverage_is_95_percent_neither_less_nor_more(n):
    """Averaged over true accuracies from 0.05 to 0.95, Wilson's interval holds the truth 95%
    of the time (its coverage oscillates around the nominal level: Brown, Cai and DasGupta 2001,
    "Interval estimation for a binomial proportion", Statistical Science 16). A 93% interval
    averages about 0.93; one twice as wide about 0.999."""
    mean = np.mean([_exact_coverage(p, n) for p in np.linspace(0.05, 0.95, 91)])
    assert 0.94 <= mean <= 0.96, mean


def _lsq_score(X_train, y_train, X_test, y_test) -> float:
    """Accuracy of a least-squares linear classifier (fast enough for hundreds of simulations)."""
    A = np.c_[X_train, np.ones(len(X_train))]
    w = np.linalg.lstsq(A, 2.0 * y_train - 1, rcond=None)[0]
    return float(((np.c_[X_test, np.ones(len(X_test))] @ w > 0) == y_test).mean())


def _folds(rng, y, folds=5, repeats=2):
    from sklearn.model_selection import RepeatedStratifiedKFold

    cv = RepeatedStratifiedKFold(n_splits=folds, n_repeats=repeats, random_state=int(rng.integers(1e9)))
    return list(cv.split(np.zeros(len(y)), y))


def _two_equal_heads(rng, n=160):
    """Fold scores of two different heads that are equally good by construction.

    y depends on x1 + x2 + x3 symmetrically; head A sees (x1, x2), head B sees (x1, x3).
    """
    X = rng.normal(size=(n, 3))
    y = (X.sum(1) + rng.normal(scale=1.5, size=n) > 0).astype(int)
    a, b = [], []
    for tr, te in _folds(rng, y):
        a.append(_lsq_score(X[tr][:, [0, 1]], y[tr], X[te][:, [0, 1]], y[te]))
        b.append(_lsq_score(X[tr][:, [0, 2]], y[tr], X[te][:, [0, 2]], y[te]))
    return np.array(a), np.array(b)


def test_corrected_paired_t_rejects_equal_heads_about_five_percent():
    rng = np.random.default_rng(1)
    rejections = sum(stats.corrected_paired_t(*_two_equal_heads(rng), test_fraction=1 / 5, n_images=32) < 0.05
                     for _ in range(200))
    assert rejections <= 16, rejections  # about 5% of 200 (10), with room for chance


def test_corrected_paired_t_finds_a_clearly_better_head():
    """Power: y depends on x1 + x2 only; head A sees (x1, x2), head B (x1, x3). A is better by
    about 0.1 accuracy, and the test says so in most of 100 simulations."""
    rng = np.random.default_rng(4)
    found = 0
    for _ in range(100):
        X = rng.normal(size=(160, 3))
        y = (X[:, 0] + X[:, 1] + rng.normal(scale=0.5, size=160) > 0).astype(int)
        a, b = [], []
        for tr, te in _folds(rng, y):
            a.append(_lsq_score(X[tr][:, [0, 1]], y[tr], X[te][:, [0, 1]], y[te]))
            b.append(_lsq_score(X[tr][:, [0, 2]], y[tr], X[te][:, [0, 2]], y[te]))
        found += stats.corrected_paired_t(a, b, test_fraction=1 / 5, n_images=32) < 0.05
    assert found >= 80, found


def test_corrected_t_interval_covers_the_true_accuracy():
    """y = [x + noise > 0]: the best rule, sign(x), is right 3/4 of the time (1 - arccos(1/sqrt 2)/pi).

    Two-sided: the interval holds 0.75 in at least 90% of 200 simulations, and its half-width
    is at most 4.5 times the spread of the cross-validated mean over the simulations (a calibrated
    95% t interval of 10 scores is about 2.3 times it; this one, with Nadeau and Bengio's
    correction and the binomial floor, about 3.3; one twice as wide would be about 6.7).
    """
    rng = np.random.default_rng(2)
    hits, means, halves = 0, [], []
    for _ in range(200):
        X = rng.normal(size=(120, 1))
        y = (X[:, 0] + rng.normal(size=120) > 0).astype(int)
        scores = [_lsq_score(X[tr], y[tr], X[te], y[te]) for tr, te in _folds(rng, y)]
        low, high = stats.corrected_t_interval(scores, 1 / 5, n_images=24)
        hits += low <= 0.75 <= high
        means.append(np.mean(scores))
        halves.append((high - low) / 2)
    assert hits >= 180, hits
    ratio = np.mean(halves) / np.std(means)
    assert 1.96 <= ratio <= 4.5, ratio


def test_mcnemar_exact_is_rarely_significant_for_equal_heads():
    rng = np.random.default_rng(3)
    rejections = 0
    for _ in range(200):
        a = rng.random(150) < 0.85
        b = rng.random(150) < 0.85
        rejections += stats.mcnemar_exact(a, b) < 0.05
    assert rejections <= 16, rejections
    assert stats.mcnemar_exact([True] * 50, [True] * 50) == 1.0
    assert stats.mcnemar_exact([True] * 40 + [False] * 10, [False] * 40 + [True] * 10) < 1e-4


def test_verdicts_say_tied_unless_the_difference_survives_holm():
    assert stats.verdicts("svm", {"svm": 1.0, "logreg": 0.04, "mlp": 0.3}) == {
        "svm": "best", "logreg": "tied", "mlp": "tied"}  # 0.04 x 2 comparisons = 0.08
    assert stats.verdicts("svm", {"svm": 1.0, "logreg": 0.001, "mlp": 0.3})["logreg"] == "worse"
    assert stats.corrected_paired_t([1.0] * 5, [1.0] * 5, 0.2, n_images=20) == 1.0
    assert stats.holm({"a": 0.01, "b": 0.04}) == {"a": 0.02, "b": 0.04}


def test_folds_that_agree_exactly_keep_an_interval_and_a_p_value_above_zero():
    # 5 folds of 20 images each: every fold scored 1.0 by one head and 0.95 (one image wrong) by
    # the other. The fold scores have no spread, which made [1, 1] and p = 0 ("worse").
    low, high = stats.corrected_t_interval([1.0] * 5, 0.2, n_images=20)
    assert high == 1.0 and low < 0.95, (low, high)
    p = stats.corrected_paired_t([1.0] * 5, [0.95] * 5, 0.2, n_images=20)
    assert 0.05 < p < 1.0, p
    assert stats.verdicts("a", {"a": 1.0, "b": p})["b"] == "tied"
    assert stats.corrected_paired_t([0.0] * 5, [1.0] * 5, 0.2, n_images=20) < 0.01  # all or nothing
    # the same steady difference on folds of 2,000 images is a real one
    assert stats.corrected_paired_t([0.95] * 5, [0.90] * 5, 0.2, n_images=2000) < 0.001
    # per-fold counts, and the floor only where the folds' own spread is smaller
    spread = [0.9, 0.7, 0.95, 0.6, 0.85]
    assert stats.corrected_t_interval(spread, 0.2, n_images=[20, 21, 20, 21, 20]) == \
        stats.corrected_t_interval(spread, 0.2, n_images=10_000)
    with pytest.raises(ValueError, match="n_images"):
        stats.corrected_t_interval([0.9, 0.8], 0.2, n_images=[10])


def test_the_binomial_floor_is_the_variance_of_a_shrunk_proportion():
    assert stats.binomial_floor([1.0], 20) == pytest.approx((21 / 22) * (1 / 22) / 20)
    assert stats.binomial_floor([0.5, 0.5], [10, 10]) == pytest.approx((6 / 12) * (6 / 12) / 10)
