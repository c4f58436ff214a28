"""Stage 2 at a million rows: the fits read the cached rows in place instead of copying them.

Measured before the change: at 1,000,000 x 512 `make compare` peaked at 10.6 GiB with a plan of
5.7 GiB for its one fit. Besides the 2 GB of memory-mapped vectors, the SVM fit held the
gathered training rows, the scaler's copy, the rows again in calibration-fold order, each
calibration fold's training rows, a sorted copy for finding identical rows, and the float32
features beside LinearSVC's float64 copy: 1.6 GB for each copy of the rows.
"""

from __future__ import annotations

import tracemalloc

import numpy as np
from sklearn.datasets import make_classification

from classify.heads import CalibratedSVC, GramRBFSVC, fit_head, identical_rows, make_heads


def _data(n=600, dim=16, classes=3, seed=0):
    X, y = make_classification(n, dim, n_informative=min(dim, 8), n_classes=classes, random_state=seed)
    return (X * 3 + 5).astype(np.float32), y


def _traced_peak(fn) -> int:
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_nystroem_fit_by_position_equals_a_fit_on_copied_rows():
    X, y = _data()
    rows = np.random.default_rng(1).permutation(len(X))[:400]
    held = np.setdiff1d(np.arange(len(X)), rows)
    by_position = GramRBFSVC(gamma=0.05, method="nystroem", n_components=32, random_state=0)
    by_position._fit_rows(X, y, rows=rows)
    copied = GramRBFSVC(gamma=0.05, method="nystroem", n_components=32, random_state=0).fit(X[rows], y[rows])
    np.testing.assert_allclose(by_position._apply_rows(X, "decision_function", held),
                               copied.decision_function(X[held]), atol=1e-6)
    np.testing.assert_array_equal(by_position.nystroem_.components_, copied.nystroem_.components_)


def test_the_calibrated_nystroem_svm_keeps_no_copy_of_its_rows():
    X, y = _data(20_000, 256)  # 20 MB of rows
    svm = CalibratedSVC(method="nystroem", n_components=16, random_state=0)
    peak = _traced_peak(lambda: svm.fit(X, y))
    assert peak < 0.5 * X.nbytes, f"{peak / 1e6:.1f} MB allocated while fitting on {X.nbytes / 1e6:.1f} MB of rows"
    assert svm.score(X, y) > 0.6  # and it learned something


def test_identical_rows_groups_copies_without_copying_the_rows():
    X, _ = _data(30_000, 128)
    X[7] = X[29_000]
    X[100:110] = X[5]
    ids = identical_rows(X)
    assert ids[7] == ids[29_000] and (ids[100:110] == ids[5]).all()
    assert len(np.unique(ids)) == len(X) - 1 - 10
    assert _traced_peak(lambda: identical_rows(X)) < 0.25 * X.nbytes
    as64 = X[:50].astype(np.float64)  # other dtypes hash alike
    as64[3] = as64[4]
    ids64 = identical_rows(as64)
    assert ids64[3] == ids64[4] and len(np.unique(ids64)) == 49


def test_a_private_fit_scales_in_place_and_predicts_like_a_copying_fit():
    X, y = _data(300, 12)
    for name, model in make_heads(0).items():
        own = X.copy()
        private, _ = fit_head(model, own, y, private=True)
        copying, _ = fit_head(make_heads(0)[name], X.copy(), y)
        if "rowblockscaler" in model.get_params():  # (the knn head has no scaler: nothing to standardise)
            assert not np.array_equal(own, X)  # standardised where it lay
        query = X.copy()
        np.testing.assert_array_equal(private.predict(query), copying.predict(X))
        np.testing.assert_array_equal(query, X)  # prediction never changes its input
    kept = X.copy()
    fit_head(make_heads(0)["logreg"], kept, y)
    np.testing.assert_array_equal(kept, X)  # nor does a fit that is not told its rows are private


def test_tuned_heads_fit_privately_alike():
    X, y = _data(240, 12)
    for name, model in make_heads(0, tune=True).items():
        private, p_settings = fit_head(model, X.copy(), y, private=True)
        copying, c_settings = fit_head(make_heads(0, tune=True)[name], X.copy(), y)
        assert p_settings == c_settings
        query = X.copy()
        np.testing.assert_array_equal(private.predict(query), copying.predict(X))
        np.testing.assert_array_equal(query, X)


def test_out_of_fold_probabilities_read_their_rows_in_place():
    from classify.audit import out_of_fold_probabilities

    X, y = _data(400, 12)
    groups = np.arange(len(y))
    rows = np.flatnonzero(np.random.default_rng(2).random(len(y)) < 0.7)
    model = make_heads(0)["logreg"]
    by_position, classes, k = out_of_fold_probabilities(model, X, y, groups, 3, 0, 1, rows=rows)
    subset, classes2, k2 = out_of_fold_probabilities(model, X[rows], y[rows], groups[rows], 3, 0, 1)
    assert by_position.shape == (len(rows), 3) and (k, list(classes)) == (k2, list(classes2))
    np.testing.assert_allclose(by_position, subset)


def test_learning_curves_sample_their_rows_in_place(monkeypatch):
    from classify import curves
    from classify.data import stratified_group_folds

    monkeypatch.setattr(curves, "MAX_ROWS", 300)
    X, y = _data(900, 12)
    rows = np.arange(100, 900)
    folds, _ = stratified_group_folds(y[rows], np.arange(len(rows)), 3, 0)
    heads = {"logreg": make_heads(0)["logreg"]}
    by_position = curves.learning_curves(heads, X, y, folds, 1, 0, rows=rows)
    subset = curves.learning_curves(heads, X[rows], y[rows], folds, 1, 0)
    assert len(by_position) and by_position.equals(subset)


def test_the_scaler_fits_in_blocks_to_the_same_statistics():
    # Measured at 200,000 x 512 (a row trace of `make compare`): StandardScaler.fit made a
    # float64 temporary as large as the rows and a NaN mask, 1 GiB above the rows themselves,
    # the largest array of every fit of every head.
    from sklearn.preprocessing import StandardScaler

    from classify.heads import BLOCK_ROWS, RowBlockScaler

    X, _ = _data(20 * BLOCK_ROWS + 17, 64)
    X[:, 3] += 1e4  # a large offset: the variance must not lose it
    mine, theirs = RowBlockScaler().fit(X), StandardScaler().fit(X)
    np.testing.assert_allclose(mine.mean_, theirs.mean_, rtol=1e-12)
    np.testing.assert_allclose(mine.var_, theirs.var_, rtol=1e-9)
    assert mine.n_samples_seen_ == theirs.n_samples_seen_ == len(X)
    np.testing.assert_allclose(mine.transform(X), theirs.transform(X), rtol=1e-6, atol=1e-6)
    assert _traced_peak(lambda: RowBlockScaler().fit(X)) < 0.25 * X.nbytes
    assert _traced_peak(lambda: StandardScaler().fit(X)) > 2 * X.nbytes  # what it replaces


def test_a_private_fit_leaves_no_in_place_scaler_behind_on_the_model_passed_in():
    """fit_head(private=True) may standardise the caller's rows in place inside the fit, but the
    model it was given (a search, or a model whose fit raised) keeps StandardScaler(copy=True),
    so a later fit of it, or of a clone, leaves that caller's array alone."""
    import warnings

    import pytest
    from sklearn.base import clone
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(0)
    X = rng.normal(3, 2, size=(90, 5)).astype(np.float32)
    y = np.repeat([0, 1, 2], 30)
    search = make_heads(0, tune=True)["logreg"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit_head(search, X.copy(), y, private=True)
    failing = make_heads(0)["logreg"]
    with pytest.raises(ValueError):
        fit_head(failing, X.copy(), np.zeros(len(y)), private=True)
    for model in (search, failing):
        mine = X.copy()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            clone(model).fit(mine, y)
        left = [v.copy for v in model.get_params(deep=True).values() if isinstance(v, StandardScaler)]
        assert left == [True] and np.array_equal(mine, X)
