"""Review of TUNE and the in-place (memory at scale) changes: each test reproduces one problem."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from classify.heads import copy_aware_folds, fit_head, make_heads


def _conflicting_copies():
    """Three distinct vectors, each filed once as 'a' and once as 'b' (exact copies under two
    labels, which compare reports as label conflicts and keeps)."""
    R = np.random.default_rng(0).normal(size=(3, 4)).astype(np.float32)
    return R[[0, 1, 2, 0, 1, 2]], np.array(["b", "a", "a", "a", "b", "b"])


@pytest.mark.parametrize("name,tune", [("svm", False), ("svm", True), ("logreg", True), ("mlp", True)])
def test_label_conflicting_copies_do_not_crash_the_inner_folds(name, tune):
    """copy_aware_folds stratifies groups by their first label; when copies carry two labels no
    label may have ``kk`` groups, and StratifiedKFold raises instead of returning None."""
    X, y = _conflicting_copies()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model, _ = fit_head(make_heads(0, tune)[name], X.copy(), y)
    assert list(model.classes_) == ["a", "b"]


class _NoFolds:
    """A splitter that holds nothing out (as CopyAwareFolds does for some seeds on data with
    copies filed under two labels)."""

    def split(self, X, y=None, groups=None):
        return iter(())

    def get_n_splits(self, X=None, y=None, groups=None):
        return 0


@pytest.mark.parametrize("name", ["logreg", "mlp"])
def test_a_tuned_search_falls_back_whenever_its_own_folds_are_empty(name):
    """_fit_unwrapped checked copy_aware_folds with seed 0, while the search's own splitter uses
    SEED: when only the latter found no folds, GridSearchCV raised 'No fits were performed'."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 4)).astype(np.float32)
    y = np.repeat(["a", "b"], 30)
    search = make_heads(1, tune=True)[name].set_params(cv=_NoFolds())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model, _ = fit_head(search, X.copy(), y)
    assert list(model.classes_) == ["a", "b"]


def test_validation_folder_ties_keep_the_plainest_settings_as_nested_tuning_does():
    """On a tie (common on small valid/ folders) _select_on_validation keeps the first
    ParameterGrid candidate, the most regularised one (svm C=0.1, gamma x0.5; logreg C=0.01),
    while CalibratedSVC's documented rule keeps the candidate nearest the defaults."""
    from classify.compare import _select_on_validation

    rng = np.random.default_rng(0)
    X = np.vstack([rng.normal(0, 1, (60, 8)), rng.normal(6, 1, (60, 8))]).astype(np.float32)
    y = np.array(["a"] * 60 + ["b"] * 60)
    idx = rng.permutation(120)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        chosen, rows = _select_on_validation(make_heads(0), X, y, idx[:80], idx[80:], 1, lambda *_: None)
    assert {r[3] for r in rows if r[0] == "svm"} == {1.0}  # every candidate ties
    svm = chosen["svm"][-1]
    assert (svm.C, svm.gamma_factor) == (1.0, 1.0)


def test_memory_gb_inf_is_refused_with_a_clear_message():
    """MEMORY_GB=inf (or 1e400) passes parse_memory_gb and then crashes plan_fits with
    OverflowError: cannot convert float infinity to integer."""
    from classify.budget import parse_memory_gb, plan_fits

    try:
        gb = parse_memory_gb("inf")
    except ValueError:
        return
    plan_fits(1000, 16, gb, 2)


def test_a_validation_folder_holding_copies_of_test_images_is_warned_about(tmp_path):
    """Every test/ image here is an exact copy (same sha256) of a valid/ image: selecting on valid/
    then selects on the test images, yet the run says 'the test score is untouched by the choice'
    and warns about nothing (copies between train/ and test/ are warned about)."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from test_splits import fake_cache, run_compare

    labels, splits, shas = [], [], []
    for split, n in (("train", 10), ("valid", 4), ("test", 4)):
        for c in "ab":
            for _ in range(n):
                labels.append(c)
                splits.append(split)
                shas.append(f"{len(shas):064x}")
    valid = [i for i, s in enumerate(splits) if s == "valid"]
    test = [i for i, s in enumerate(splits) if s == "test"]
    for v, t in zip(valid, test):
        shas[t] = shas[v]
    fake_cache(tmp_path / "f", labels, shas, splits=splits)
    logs = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run_compare(tmp_path / "f", tmp_path / "o", heads="logreg", tune="auto", log=logs.append)
    assert any("warning" in m and "valid" in m for m in logs), "no warning about valid/ copies of test/ images"


def test_a_private_fit_leaves_no_in_place_scaler_behind_on_the_model_passed_in():
    """fit_head restores copy=True only on the model it returns: the search it was given (and any
    model whose fit raised) keeps StandardScaler(copy=False), so a later fit of it, or of a clone
    of it, standardises that caller's array in place."""
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


def test_the_audit_measures_what_it_holds_after_the_duplicate_search(tmp_path, monkeypatch):
    """budget.py counts 'what the process already holds when the fits start (... the duplicate
    search's results ...)'. compare plans after cached_duplicates; audit plans before it, so the
    duplicate search's memory is missing from the audit's plan."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from test_splits import fake_cache
    from conftest import only_cache
    from classify import budget, dups
    from classify.audit import audit
    from test_splits import S64

    order = []
    real_resident, real_dups = budget.resident_bytes, dups.cached_duplicates
    monkeypatch.setattr(budget, "resident_bytes", lambda X=None: order.append("plan") or real_resident(X))
    monkeypatch.setattr(dups, "cached_duplicates", lambda *a, **k: order.append("dups") or real_dups(*a, **k))
    fake_cache(tmp_path / "f", ["a"] * 20 + ["b"] * 20)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        audit(tmp_path / "f", S64, tmp_path / "o", heads="logreg", folds=3, jobs=1, log=lambda *a: None,
              **only_cache(tmp_path / "f"))
    assert order.index("dups") < order.index("plan"), order


def test_a_budget_above_the_machines_memory_is_flagged(monkeypatch):
    """MEMORY_GB=1000 on a 16 GiB machine plans an exact SVM of ~522 GiB per fit without a word;
    the run then swaps or is killed. plan_for should warn (or cap at the smallest limit)."""
    from classify import budget
    from classify.heads import make_heads as heads

    monkeypatch.setattr(budget, "memory_limits", lambda: {"physical": 16 * budget.GIB})
    logs = []
    plan = budget.plan_for(heads(0), np.zeros((10, 512), np.float32), 200_000, "1000", 16, logs.append)
    assert plan.method != "exact" or any("warning" in m for m in logs), (plan.reason, logs)
