"""Tuned heads (TUNE): nested inner CV, the validation folder used for selection, fixed settings."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from helpers import fake_cache, quiet, run_compare


def _three_splits(tmp_path, flip_test: bool = False):
    """train/valid/test folders of three classes with overlapping clouds (scores below 1, so the
    settings matter); ``flip_test`` relabels the test images, which must not change any choice."""
    rng = np.random.default_rng(3)
    classes = ["a", "b", "c"]
    centres = rng.normal(0, 1.2, (3, 12))
    labels, splits, X = [], [], []
    for split, n in (("train", 40), ("valid", 15), ("test", 15)):
        for k, c in enumerate(classes):
            for _ in range(n):
                labels.append(c if not (flip_test and split == "test") else classes[(k + 1) % 3])
                splits.append(split)
                X.append(centres[k] + rng.normal(0, 1, 12))
    fake_cache(tmp_path / "f", labels, splits=splits, X=np.array(X))
    return labels, splits


def test_the_validation_folder_selects_and_the_test_score_is_untouched(tmp_path):
    """Issue 13: valid/ images were embedded and then silently unused. Now each candidate of each
    head's grid is fitted on train and scored on valid; the best is kept; test is only evaluated."""
    labels, splits = _three_splits(tmp_path)
    logs = []
    table = run_compare(tmp_path / "f", tmp_path / "o", log=logs.append, tune="auto")
    out = tmp_path / "o"
    run = json.loads((out / "run.json").read_text())
    assert run["tuning"]["mode"] == "valid"
    assert "tuning" in run["split_use"]["valid"] and "untouched" in run["split_use"]["test"]
    assert any(m.startswith("splits: ") and "valid: tuning" in m for m in logs)
    roles = pd.read_csv(out / "split.csv", keep_default_na=False)
    assert (roles.loc[roles["path"].str.startswith("valid/"), "role"] == "tune").all()
    assert (roles["role"] == "tune").sum() == splits.count("valid")
    assert (roles.loc[roles["path"].str.startswith("test/"), "role"] == "eval").all()

    tuning = pd.read_csv(out / "tuning.csv", keep_default_na=False)
    assert set(tuning["fit"]) == {"candidate"}
    assert tuning.groupby("head").size().to_dict() == {"logreg": 4, "svm": 9, "mlp": 4}
    for head, group in tuning.groupby("head"):
        chosen = group[group["chosen"] == "yes"]
        assert len(chosen) == 1
        assert chosen["score"].item() == group["score"].max()  # the best validation score wins
        assert 0 <= group["score"].min() <= group["score"].max() <= 1
    by_head = table.set_index("head")
    assert by_head.loc["logreg", "params"] == tuning[(tuning["head"] == "logreg") & (tuning["chosen"] == "yes")]["params"].item()
    assert run["tuning"]["chosen"]["logreg"]["C"] in (0.01, 0.1, 1.0, 10.0)

    # the choice depends on train and valid only: relabelling every test image changes nothing
    _three_splits(tmp_path / "flipped", flip_test=True)
    flipped = run_compare(tmp_path / "flipped" / "f", tmp_path / "o2", tune="auto")
    assert list(flipped["params"]) == list(table["params"])
    assert (flipped["accuracy"] < table["accuracy"]).all()  # the test score did see the relabelling


def test_tune_0_keeps_the_fixed_settings_and_leaves_valid_unused(tmp_path):
    _three_splits(tmp_path)
    logs = []
    run_compare(tmp_path / "f", tmp_path / "o", heads="logreg", tune="1")  # a tuned run before
    assert set(pd.read_csv(tmp_path / "o" / "tuning.csv")["head"]) == {"logreg"}
    table = run_compare(tmp_path / "f", tmp_path / "o", log=logs.append, tune="0")
    run = json.loads((tmp_path / "o" / "run.json").read_text())
    assert run["tuning"]["mode"] == "off" and run["tuning"]["grids"] is None
    assert run["split_use"]["valid"] == "not used (TUNE=0)"
    assert not (tmp_path / "o" / "tuning.csv").exists()
    params = table.set_index("head")["params"]
    assert params["logreg"] == "C=1"
    assert params["svm"].startswith("C=1 gamma=")
    gamma = run["tuning"]["chosen"]["svm"]["gamma"]
    assert gamma == pytest.approx(1 / 12, rel=1e-3)  # "scale" on standardised 12-wide vectors
    assert params["mlp"] == "hidden_layer_sizes=128 alpha=0.0001 solver=adam early_stopping=False"  # 120 images
    roles = pd.read_csv(tmp_path / "o" / "split.csv", keep_default_na=False)
    assert (roles.loc[roles["path"].str.startswith("valid/"), "role"] == "unused").all()


def test_nested_tuning_records_each_folds_choice_and_the_final_one(tmp_path):
    rng = np.random.default_rng(0)
    labels = ["a"] * 45 + ["b"] * 45
    X = np.vstack([rng.normal(0, 1, (45, 10)), rng.normal(0.9, 1, (45, 10))])
    fake_cache(tmp_path / "f", labels, X=X)
    table = run_compare(tmp_path / "f", tmp_path / "o", tune="1", folds=3, repeats=2)
    out = tmp_path / "o"
    run = json.loads((out / "run.json").read_text())
    assert run["tuning"]["mode"] == "nested" and run["tuning"]["inner_folds"] == 3
    tuning = pd.read_csv(out / "tuning.csv", keep_default_na=False)
    for head, group in tuning.groupby("head"):
        assert len(group) == 3 * 2 + 1  # folds x repeats, and the final fit
        assert (group["chosen"] == "yes").sum() == 1 and group.iloc[-1]["fit"] == "final"
        folds = group[group["fit"] != "final"]
        scores = pd.read_csv(out / "cv_scores.csv")
        mine = scores[scores["head"] == head].sort_values(["repeat", "fold"])["score"].to_numpy()
        assert np.allclose(folds["score"].astype(float).to_numpy(), mine, atol=1e-6)  # nested: the same folds
    grids = run["tuning"]["grids"]
    assert run["tuning"]["chosen"]["logreg"]["C"] in grids["logreg"]["C"]
    assert run["tuning"]["chosen"]["svm"]["C"] in grids["svm"]["C"]
    assert run["tuning"]["chosen"]["mlp"]["alpha"] in grids["mlp"]["alpha"]
    # on these few rows the MLP's search keeps alpha at its fixed value: the grid says what was searched
    assert grids["mlp"]["alpha"] == [1e-4] and len(grids["mlp"]["hidden_layer_sizes"]) == 2
    assert table.set_index("head").loc["logreg", "params"] == f"C={run['tuning']['chosen']['logreg']['C']:g}"


def test_tune_auto_keeps_fixed_settings_on_large_training_parts_and_says_so():
    from classify.compare import TUNE_AUTO_UP_TO, choose_tuning

    assert choose_tuning("auto", TUNE_AUTO_UP_TO, None)[0] == "nested"
    assert choose_tuning("auto", TUNE_AUTO_UP_TO, "valid")[0] == "valid"
    mode, rule = choose_tuning("auto", TUNE_AUTO_UP_TO + 1, "valid")
    assert mode == "off" and "TUNE=1" in rule
    assert choose_tuning("1", 10 ** 6, None)[0] == "nested"
    with pytest.raises(ValueError, match="TUNE must be auto, 1 or 0; received 'yes'"):
        choose_tuning("yes", 10, None)


def test_the_svm_keeps_the_grid_point_with_the_best_held_out_score():
    """Two rings: a wide kernel cannot separate them, so the grid's choice matters and must be
    the point whose held-out balanced accuracy is the highest."""
    from sklearn.datasets import make_circles

    from classify.heads import CalibratedSVC

    X, y = make_circles(300, noise=0.08, factor=0.5, random_state=0)
    X = X.astype(np.float32)
    svm = CalibratedSVC(C=[0.1, 1.0, 10.0], gamma=0.02, gamma_factor=[1.0, 30.0], random_state=0).fit(X, y)
    scores = {(t["C"], t["gamma_factor"]): t["score"] for t in svm.tuning_}
    assert len(scores) == 6
    best = max(scores.values())
    assert scores[(svm.best_params_["C"], svm.best_params_["gamma"] / 0.02)] == pytest.approx(best)
    assert svm.best_params_["gamma"] == pytest.approx(0.6)  # the narrow kernel
    assert best > scores[(1.0, 1.0)] + 0.2
    assert (svm.predict(X) == y).mean() > 0.9


def test_inner_folds_keep_identical_rows_together_and_every_class_in_training():
    from classify.heads import CopyAwareFolds, identical_rows

    rng = np.random.default_rng(1)
    X = rng.normal(size=(60, 5)).astype(np.float32)
    X[30:45] = X[0]  # 16 copies of one vector
    y = np.array(["a"] * 30 + ["a"] * 15 + ["b"] * 15)
    splitter = CopyAwareFolds(3, 0)
    folds = list(splitter.split(X, y))
    assert len(folds) == splitter.get_n_splits(X, y) == 3
    rows = identical_rows(X)
    for train, test in folds:
        assert not set(rows[train]) & set(rows[test])
        assert set(y[train]) == {"a", "b"}
    # a class with one distinct vector: no inner folds, and fit_head falls back to the fixed head
    from classify.heads import fit_head, make_heads

    X2 = np.vstack([X[:20], np.repeat(X[50:51], 5, axis=0)])
    y2 = np.array(["a"] * 20 + ["b"] * 5)
    assert splitter.get_n_splits(X2, y2) == 0
    model, settings = fit_head(make_heads(0, tune=True)["logreg"], X2, y2)
    assert settings == {"C": 1.0} and list(model.classes_) == ["a", "b"]


@pytest.mark.parametrize("n", [1, 2, 255, 257, 700])
def test_squared_distances_match_the_definition(n):
    from classify.heads import squared_distances

    X = np.random.default_rng(n).normal(size=(n, 24)).astype(np.float32)
    ref = ((X[:, None, :].astype(np.float64) - X[None, :, :]) ** 2).sum(-1)
    D = squared_distances(X)
    assert D.dtype == np.float32 and D.flags["C_CONTIGUOUS"]
    assert np.abs(D - ref).max() < 1e-3 * max(1.0, ref.max())
    # written into a given buffer (larger than needed, and dirty), with the same values
    buf = np.full(n * n + 7, np.nan, np.float32)
    into = squared_distances(X, out=buf)
    assert np.shares_memory(into, buf) and np.array_equal(into, D)


def _clustered_noise(sources=40, copies=4, dim=16, seed=0):
    """Labels that carry no signal, each given to a cluster of near-copies: a split that puts a
    copy on each side scores far above chance, a split that keeps clusters whole scores chance."""
    rng = np.random.default_rng(seed)
    X = np.repeat(rng.normal(size=(sources, dim)), copies, 0) + rng.normal(scale=0.05, size=(sources * copies, dim))
    y = np.repeat(np.array(["a", "b"])[rng.permutation(sources) % 2], copies)
    return X.astype(np.float32), y, np.repeat(np.arange(sources), copies)


def test_inner_folds_keep_groups_whole_when_given():
    from classify.heads import CopyAwareFolds

    X, y, groups = _clustered_noise()
    splitter = CopyAwareFolds(3, 0)
    folds = list(splitter.split(X, y, groups))
    assert len(folds) == splitter.get_n_splits(X, y, groups) == 3
    for train, test in folds:
        assert not set(groups[train]) & set(groups[test])
    assert any(set(groups[tr]) & set(groups[te]) for tr, te in splitter.split(X, y))  # without: split


def test_the_svm_tunes_and_calibrates_on_folds_that_keep_groups_whole():
    # Tuning and calibration folds that split clusters score near-copies of training rows: the
    # held-out accuracy looks near 1 on labels without signal, and the sigmoid is far too steep
    from classify.heads import CalibratedSVC

    X, y, groups = _clustered_noise()
    leaky = CalibratedSVC(C=[0.1, 1.0, 10.0], gamma_factor=[0.5, 1.0, 2.0], random_state=0).fit(X, y)
    whole = CalibratedSVC(C=[0.1, 1.0, 10.0], gamma_factor=[0.5, 1.0, 2.0], random_state=0).fit(X, y, groups=groups)
    assert max(t["score"] for t in leaky.tuning_) > 0.9
    assert max(t["score"] for t in whole.tuning_) < 0.75
    proba = whole.predict_proba(X)
    assert np.abs(proba - 0.5).max() < np.abs(leaky.predict_proba(X) - 0.5).max()


def test_the_mlp_stops_early_on_a_validation_share_of_whole_groups():
    from classify.heads import fit_head, make_heads

    X, y, groups = _clustered_noise(sources=40, copies=8)
    # the head stops early (make_heads' setting; fit_head keeps it from 4,000 images on)
    model = make_heads(0)["mlp"].set_params(mlpclassifier__validation_fraction=0.25)
    leaky = make_heads(0)["mlp"].set_params(mlpclassifier__validation_fraction=0.25).fit(X, y)
    whole = model.fit(X, y, mlpclassifier__groups=groups)
    assert leaky[-1].best_validation_score_ > 0.9  # copies of training rows in its validation share
    assert whole[-1].best_validation_score_ < 0.65  # chance, on clusters it never saw
    assert whole[-1].n_iter_ == len(whole[-1].validation_scores_) < 200
    from sklearn.neural_network import MLPClassifier

    assert isinstance(whole[-1], MLPClassifier) and list(whole.classes_) == ["a", "b"]
    fitted, settings = fit_head(make_heads(0)["mlp"], X, y, groups=groups)  # small: no early stopping
    assert settings["early_stopping"] is False and list(fitted.classes_) == ["a", "b"]


def test_fit_head_hands_groups_to_the_search_and_to_each_candidate():
    from classify.heads import CopyAwareFolds, fit_head, make_heads

    seen = []

    class Spy(CopyAwareFolds):
        def split(self, X, y, groups=None):
            seen.append(None if groups is None else len(groups))
            yield from super().split(X, y, groups)

    X, y, groups = _clustered_noise()
    search = make_heads(0, tune=True)["logreg"]
    search.set_params(cv=Spy(3, 0))
    fit_head(search, X, y, groups=groups)
    assert seen and all(n == len(y) for n in seen)
    fitted, _ = fit_head(make_heads(0, tune=True)["svm"], X, y, groups=groups)  # the pipeline's SVM
    assert max(t["score"] for t in fitted[-1].tuning_) < 0.75


def test_split_use_says_why_tuning_is_off(tmp_path, monkeypatch):
    # "not used (TUNE=0)" was said when TUNE=auto had turned tuning off above its size
    import importlib

    monkeypatch.setattr(importlib.import_module("classify.compare"), "TUNE_AUTO_UP_TO", 50)
    _three_splits(tmp_path)
    run_compare(tmp_path / "f", tmp_path / "o", heads="logreg", tune="auto")
    run = json.loads((tmp_path / "o" / "run.json").read_text())
    assert run["tuning"]["mode"] == "off"
    assert run["split_use"]["valid"] == "not used (tuning off: TUNE=auto tunes up to 50 training images)"


def test_the_svm_method_is_in_params_and_the_model_sidecar(tmp_path):
    from classify.heads import fixed_head, format_settings, settings_of

    _three_splits(tmp_path)
    table = run_compare(tmp_path / "f", tmp_path / "o", heads="svm", tune="0").set_index("head")
    assert table.loc["svm", "params"].endswith(" method=exact")
    side = json.loads((tmp_path / "o" / "models" / "svm.json").read_text())
    assert side["params"]["method"] == "exact"
    X, y, _ = _clustered_noise()
    model = fixed_head("svm", 0, {"C": 1.0}).set_params(calibratedsvc__method="nystroem",
                                                        calibratedsvc__n_components=16).fit(X, y)
    settings = settings_of(model)
    assert settings["method"] == "nystroem" and settings["n_components"] == 16
    assert format_settings(settings).endswith("method=nystroem n_components=16")
    again = fixed_head("svm", 0, settings).fit(X, y)
    assert settings_of(again) == settings


# --- small inner folds and ties ---------------------------------------------------------------

def _conflicting_copies():
    """Three distinct vectors, each filed once as 'a' and once as 'b' (exact copies under two
    labels, which compare reports as label conflicts and keeps)."""
    R = np.random.default_rng(0).normal(size=(3, 4)).astype(np.float32)
    return R[[0, 1, 2, 0, 1, 2]], np.array(["b", "a", "a", "a", "b", "b"])


@pytest.mark.parametrize("name,tune", [("svm", False), ("svm", True), ("logreg", True), ("mlp", True)])
def test_label_conflicting_copies_do_not_crash_the_inner_folds(name, tune):
    """When copies carry two labels no label may have enough groups for stratified inner folds;
    the fit still succeeds (with fewer or no inner folds)."""
    import warnings

    from classify.heads import fit_head, make_heads

    X, y = _conflicting_copies()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model, _ = fit_head(make_heads(0, tune)[name], X.copy(), y)
    assert list(model.classes_) == ["a", "b"]
    assert list(model.predict(X[:3])) and set(model.predict(X)) <= {"a", "b"}


class _NoFolds:
    """A splitter that holds nothing out (as CopyAwareFolds does for some seeds on data with
    copies filed under two labels)."""

    def split(self, X, y=None, groups=None):
        return iter(())

    def get_n_splits(self, X=None, y=None, groups=None):
        return 0


@pytest.mark.parametrize("name", ["logreg", "mlp"])
def test_a_tuned_search_falls_back_whenever_its_own_folds_are_empty(name):
    """A search whose own splitter finds no folds (whatever seed found some before) fits the
    head with its fixed settings instead of raising 'No fits were performed'."""
    import warnings

    from classify.heads import fit_head, make_heads

    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 4)).astype(np.float32)
    y = np.repeat(["a", "b"], 30)
    search = make_heads(1, tune=True)[name].set_params(cv=_NoFolds())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model, _ = fit_head(search, X.copy(), y)
    assert list(model.classes_) == ["a", "b"]
    assert (model.predict(X) == y).mean() > 0.5


def test_validation_folder_ties_keep_the_settings_nearest_the_defaults():
    """On a tie (common on small valid/ folders) selection on the validation folder keeps the
    candidate nearest the defaults (svm C=1, gamma x1), as the calibrated SVM's own rule does."""
    import warnings

    from classify.compare import _select_on_validation
    from classify.heads import make_heads

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


def test_a_validation_folder_holding_copies_of_test_images_is_warned_about(tmp_path):
    """Every test/ image here is an exact copy (same sha256) of a valid/ image: selecting on
    valid/ then selects on the test images; the run says so, naming the count and what to do."""
    import warnings

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
    warned = [m for m in logs if m.startswith("warning: 8 evaluated images are exact copies of valid/ images")]
    assert len(warned) == 1, logs
    assert "choose each head's settings" in warned[0] and "delete the copies" in warned[0]
