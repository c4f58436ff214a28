"""A comparison that says when heads are tied: repeats, intervals, paired tests, verdicts."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from conftest import write_class_folder
from extract import Settings, extract_features

S64 = Settings(weights="none", size=64)


@pytest.fixture(scope="module")
def colours(tmp_path_factory):
    """Two colour classes, 30 images each, random weights, 64 px."""
    root = tmp_path_factory.mktemp("fair")
    write_class_folder(root / "in", 30)
    extract_features(root / "in", root / "features", S64, progress=False, log=lambda *_: None)
    return root


def _compare(root, out, **kw):
    from classify import compare

    kw.setdefault("tune", "0")  # tuning has its own tests (test_tune); repeats are set per test
    return compare(root / "features", S64, out, in_dir=root / "in", log=lambda *_: None, **kw)


def test_comparison_has_intervals_tests_and_verdicts(colours, tmp_path):
    table = _compare(colours, tmp_path / "out", folds=3, repeats=2)
    for col in ("accuracy_ci_low", "accuracy_ci_high", "cv_ci_low", "cv_ci_high", "p_vs_best",
                "p_mcnemar", "verdict"):
        assert col in table.columns
    written = pd.read_csv(tmp_path / "out" / "comparison.csv")
    assert list(written.columns) == list(table.columns)
    assert (table["accuracy_ci_low"] <= table["accuracy"]).all()
    assert (table["accuracy"] <= table["accuracy_ci_high"]).all()
    assert (table["cv_ci_low"] <= table["cv_mean"]).all() and (table["cv_mean"] <= table["cv_ci_high"]).all()
    assert (table["verdict"] == "best").sum() == 1
    best = table.loc[table["verdict"] == "best", "head"].item()
    assert best == table.loc[table["cv_mean"].idxmax(), "head"]
    assert set(table["verdict"]) <= {"best", "tied", "worse"}

    scores = pd.read_csv(tmp_path / "out" / "cv_scores.csv")
    assert list(scores.columns) == ["head", "repeat", "fold", "score", "n_images"]
    assert len(scores) == 3 * 2 * 3  # heads x repeats x folds
    for head, group in scores.groupby("head"):
        assert group["score"].mean() == pytest.approx(table.set_index("head").loc[head, "cv_mean"])


def test_learning_curves_and_reliability_are_written(colours, tmp_path):
    import json

    out = tmp_path / "out"
    _compare(colours, out, folds=3, repeats=1)
    curve = pd.read_csv(out / "learning_curve.csv")
    assert list(curve.columns) == ["head", "train_size", "score_mean", "score_std", "n_folds", "settings"]
    assert set(curve["head"]) == {"logreg", "svm", "mlp"}
    for _, group in curve.groupby("head"):
        assert group["train_size"].is_monotonic_increasing and group["train_size"].nunique() >= 2
        assert group["train_size"].max() <= 40  # 2 of 3 folds of the 48 training images
    assert curve["score_mean"].between(0, 1).all()
    for name in ("learning_curve.png", "reliability.png", "intervals.png"):
        assert (out / "figures" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    sentence = json.loads((out / "run.json").read_text())["more_data"]
    assert "more" in sentence and ("rises" in sentence or "levelled off" in sentence)


def test_the_learning_curves_use_each_folds_own_tuned_settings(tmp_path):
    # The curves fitted every fold with the settings chosen on all the training rows, the
    # curve's held-out rows included: slightly optimistic. With nested tuning each fold now uses
    # what its own fit chose, so at the fold's full size a curve point is the CV fold score.
    import json

    from helpers import fake_cache, run_compare

    rng = np.random.default_rng(4)
    labels = ["a"] * 30 + ["b"] * 30 + ["a"] * 5 + ["b"] * 5
    X = np.vstack([rng.normal(0, 1, (30, 40)), rng.normal(0.35, 1, (30, 40)), rng.normal(0, 1, (5, 40)),
                   rng.normal(0.35, 1, (5, 40))])
    fake_cache(tmp_path / "f", labels, splits=["train"] * 60 + ["test"] * 10, X=X)
    run_compare(tmp_path / "f", tmp_path / "o", heads="logreg", tune="1", folds=3, repeats=1)
    out = tmp_path / "o"
    tuning = pd.read_csv(out / "tuning.csv", keep_default_na=False)
    assert tuning["params"].nunique() > 1  # the folds chose differently from the final fit
    scores = pd.read_csv(out / "cv_scores.csv")
    curve = pd.read_csv(out / "learning_curve.csv")
    full = curve[curve["train_size"] == 40]  # 3 folds of 60: each fold trains on 40
    assert full["score_mean"].item() == pytest.approx(scores["score"].mean(), abs=1e-9)
    assert (curve["settings"] == "chosen in each fold on its training rows (nested tuning)").all()
    run = json.loads((out / "run.json").read_text())
    assert run["learning_curve"]["settings"].startswith("chosen in each fold")


def test_more_data_sentence_follows_the_curve():
    from classify.curves import more_data_would_help

    rising = pd.DataFrame({"head": ["a"] * 3, "train_size": [10, 20, 40],
                           "score_mean": [0.6, 0.7, 0.8], "score_std": [0.02] * 3, "n_folds": [3] * 3})
    flat = rising.assign(score_mean=[0.8, 0.85, 0.852])
    assert "would likely help." in more_data_would_help(rising)
    assert "levelled off" in more_data_would_help(flat)


def test_every_head_perfect_means_no_head_is_worse(colours, tmp_path):
    table = _compare(colours, tmp_path / "out", folds=3, repeats=1, tune="0")
    # the premise: red and blue far apart, every head right on every image and every fold
    assert (table["accuracy"] == 1.0).all() and (table["cv_mean"] == 1.0).all(), table
    assert set(table["verdict"]) <= {"best", "tied"} and (table["verdict"] == "best").sum() == 1
    assert (table["p_vs_best"] == 1.0).all() and (table["p_mcnemar"] == 1.0).all()


@pytest.mark.parametrize("seed", [1, 2, 42])
def test_every_head_scores_well_on_two_colour_classes(colours, tmp_path, seed):
    table = _compare(colours, tmp_path / "out", folds=3, seed=seed, repeats=1)
    assert (table["accuracy"] >= 0.9).all(), table[["head", "accuracy"]]


def test_repeats_are_checked():
    from classify.compare import choose_repeats

    assert choose_repeats("auto", 100) == 3 and choose_repeats("auto", 50_000) == 1
    assert choose_repeats("2", 10) == 2
    for bad in ("0", "two", "1.5", -1):
        with pytest.raises(ValueError, match="REPEATS"):
            choose_repeats(bad, 10)
