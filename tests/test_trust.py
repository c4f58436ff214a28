"""Stage 2's outputs can be trusted: safe model files, comparable scores, one whole run in OUT,
the best head by balanced accuracy."""

from __future__ import annotations

import hashlib
import json
import os
import pickle

import numpy as np
import pandas as pd
import pytest

from helpers import fake_cache, run_compare


@pytest.fixture(scope="module")
def run3(tmp_path_factory):
    """Three classes, 14 images each, every head compared."""
    base = tmp_path_factory.mktemp("trust")
    fake_cache(base / "f", ["a"] * 14 + ["b"] * 14 + ["c"] * 14, seed=3)
    run_compare(base / "f", base / "out")
    return base


class _CreatesAFile:
    """Unpickling this object creates the file ``path``: what a malicious model file could do."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def _rewrite_sidecar(model_file):
    side = model_file.with_suffix(".json")
    info = json.loads(side.read_text())
    info["sha256"] = hashlib.sha256(model_file.read_bytes()).hexdigest()
    side.write_text(json.dumps(info))


def _copy_models(run3, tmp_path):
    import shutil

    out = tmp_path / "out"
    shutil.copytree(run3 / "out" / "models", out / "models")
    shutil.copy(run3 / "out" / "comparison.csv", out / "comparison.csv")
    return out


def test_models_are_skops_files_with_only_trusted_types(run3):
    import skops.io as sio

    from classify.compare import TRUSTED_TYPES, load_model

    models = run3 / "out" / "models"
    assert sorted(p.name for p in models.iterdir()) == [
        "logreg.json", "logreg.skops", "mlp.json", "mlp.skops", "svm.json", "svm.skops"]
    for head in ("logreg", "svm", "mlp"):
        untrusted = set(sio.get_untrusted_types(file=models / f"{head}.skops"))
        assert untrusted <= set(TRUSTED_TYPES), untrusted - set(TRUSTED_TYPES)
        bundle = load_model(models / f"{head}.skops")
        assert bundle["class_names"] == ["a", "b", "c"] == list(bundle["model"].classes_)


def test_a_pickle_with_a_rewritten_sidecar_runs_nothing(run3, tmp_path, capsys):
    from classify import predict as P

    out = _copy_models(run3, tmp_path)
    marker = tmp_path / "pwned"
    target = out / "models" / "logreg.skops"
    target.write_bytes(pickle.dumps(_CreatesAFile(marker)))
    _rewrite_sidecar(target)
    image = tmp_path / "x.png"
    image.write_bytes(b"")
    rc = P.main(["--features", str(run3 / "f"), "--out", str(out), "--head", "logreg", "--quiet",
                 "--", str(image)])
    err = capsys.readouterr().err
    assert rc == 2 and "not a skops model file" in err and "make compare" in err
    assert not marker.exists()


def test_make_predict_refuses_a_replaced_model(run3, tmp_path):
    from conftest import run_make

    out = _copy_models(run3, tmp_path)
    marker = tmp_path / "pwned"
    target = out / "models" / "mlp.skops"
    target.write_bytes(pickle.dumps(_CreatesAFile(marker)))
    _rewrite_sidecar(target)
    image = tmp_path / "x.png"
    image.write_bytes(b"")
    res = run_make("predict", f"IMAGES={image}", f"FEATURES={run3 / 'f'}", f"OUT={out}", "HEAD=mlp")
    assert res.returncode != 0 and "not a skops model file" in res.stderr, res.stdout + res.stderr
    assert not marker.exists()


def test_a_skops_file_with_an_untrusted_type_is_refused(run3, tmp_path):
    import skops.io as sio

    from classify import DataError
    from classify.compare import load_model

    out = _copy_models(run3, tmp_path)
    target = out / "models" / "logreg.skops"
    sio.dump({"model": _CreatesAFile(tmp_path / "pwned"), "head": "logreg"}, target)
    _rewrite_sidecar(target)
    with pytest.raises(DataError, match=r"untrusted type.*_CreatesAFile.*make compare"):
        load_model(target)
    assert not (tmp_path / "pwned").exists()


def test_old_pickle_models_are_not_opened(run3, tmp_path):
    from classify import DataError
    from classify import predict as P

    out = tmp_path / "out"
    (out / "models").mkdir(parents=True)
    (out / "models" / "logreg.joblib").write_bytes(b"old pickle")
    (out / "models" / "logreg.json").write_text("{}")
    with pytest.raises(DataError, match=r"\.joblib.*pickle.*make compare"):
        P.load_head(out)


@pytest.mark.parametrize("text", ["[1, 2]", "\"text\"", "not json"])
def test_a_sidecar_that_is_not_an_object_gives_a_clear_error(run3, tmp_path, text):
    from classify import DataError
    from classify.compare import load_model

    out = _copy_models(run3, tmp_path)
    (out / "models" / "svm.json").write_text(text)
    with pytest.raises(DataError, match=r"svm\.json.*JSON object.*make compare"):
        load_model(out / "models" / "svm.skops")


def test_every_score_is_a_probability_of_the_predicted_class(run3):
    from classify.compare import load_model

    pred = pd.read_csv(run3 / "out" / "predictions.csv")
    assert list(pred.columns) == ["path", "label", "logreg", "logreg_score", "svm", "svm_score",
                                  "svm_decision", "mlp", "mlp_score"]
    X = np.load(next((run3 / "f").glob("*/*/embeddings.npy")))
    for head in ("logreg", "svm", "mlp"):
        assert ((pred[f"{head}_score"] >= 1 / 3 - 1e-6) & (pred[f"{head}_score"] <= 1)).all(), head
        model = load_model(run3 / "out" / "models" / f"{head}.skops")["model"]
        proba = model.predict_proba(X)
        np.testing.assert_allclose(proba.sum(1), 1, atol=1e-6)
        assert (model.classes_[proba.argmax(1)] == model.predict(X)).all()


def test_svm_probabilities_are_calibrated_on_held_out_folds():
    from sklearn.datasets import make_classification

    from classify.heads import make_heads

    X, y = make_classification(600, 20, n_informative=5, flip_y=0.15, random_state=0)
    svm = make_heads(0)["svm"].fit(X[:400], y[:400])
    proba = svm.predict_proba(X[400:]).max(1)
    accuracy = (svm.predict(X[400:]) == y[400:]).mean()
    # calibrated: the mean confidence is close to the accuracy (a margin is not a probability)
    assert abs(proba.mean() - accuracy) < 0.08, (proba.mean(), accuracy)


@pytest.mark.parametrize("n_classes", [2, 3])
def test_svm_sigmoids_match_scikit_learns_calibration_on_the_same_folds(n_classes):
    """Our Platt sigmoids (fitted on the held-out decisions that tuning also uses) give the
    probabilities of scikit-learn's CalibratedClassifierCV(method="sigmoid", ensemble=False)."""
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.datasets import make_classification

    from classify.heads import CalibratedSVC, GramRBFSVC, copy_aware_folds

    X, y = make_classification(450, 12, n_informative=6, n_classes=n_classes, flip_y=0.1, random_state=1)
    X = X.astype(np.float32)
    ours = CalibratedSVC(random_state=0).fit(X[:300], y[:300])
    folds = copy_aware_folds(X[:300], y[:300], 3, 0)
    theirs = CalibratedClassifierCV(GramRBFSVC(gamma=ours.best_params_["gamma"], random_state=0),
                                    method="sigmoid", ensemble=False, cv=folds).fit(X[:300], y[:300])
    diff = np.abs(ours.predict_proba(X[300:]) - theirs.predict_proba(X[300:])).max()
    assert diff < 0.005, diff


def test_a_crash_in_compare_leaves_the_previous_run_whole(run3, tmp_path, monkeypatch):
    import classify.figures

    out = tmp_path / "out"
    run_compare(run3 / "f", out, heads="logreg")
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    (out / "mine.txt").write_text("a file of the user's")

    def boom(*_a, **_kw):
        raise RuntimeError("crash in the middle")

    monkeypatch.setattr(classify.figures, "write_figures", boom)
    with pytest.raises(RuntimeError, match="crash in the middle"):
        run_compare(run3 / "f", out, heads="svm", seed=7)
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after.pop(type(next(iter(before)))("mine.txt")) == b"a file of the user's"
    assert after == before
    assert not [p for p in tmp_path.iterdir() if p.name != "out"]  # no temporary folder left
    monkeypatch.undo()
    run_compare(run3 / "f", out, heads="svm")
    assert (out / "mine.txt").read_bytes() == b"a file of the user's"
    from classify.compare import load_model

    assert load_model(out / "models" / "svm.skops")["head"] == "svm"
    assert not (out / "models" / "logreg.skops").exists()


def test_out_that_is_the_working_folder_is_refused(run3, tmp_path, monkeypatch):
    from classify import DataError

    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match="OUT"):
        run_compare(run3 / "f", ".", heads="logreg")


def test_cv_scores_are_balanced_accuracy_and_pick_the_best_head(tmp_path):
    """On a 30:6 data set a head that ignores the small class has a high accuracy, not a high
    balanced accuracy; cv_mean is the balanced accuracy of the folds."""
    from classify import predict as P
    from classify.compare import cv_score

    y = np.array(["a"] * 30 + ["b"] * 6)
    assert cv_score(y, np.array(["a"] * 36)) == pytest.approx(0.5)
    fake_cache(tmp_path / "f", list(y), seed=5)
    run_compare(tmp_path / "f", tmp_path / "o", heads="logreg,mlp")
    run = json.loads((tmp_path / "o" / "run.json").read_text())
    assert run["cv_metric"] == "balanced_accuracy"
    table = pd.read_csv(tmp_path / "o" / "comparison.csv")
    assert P.best_head(tmp_path / "o") == table.loc[table["cv_mean"].idxmax(), "head"]


def test_report_keeps_labels_as_written_and_shows_label_conflicts(tmp_path):
    from classify.report.dataset import section_data
    from classify.report.markup import table

    html = table(pd.DataFrame({"class": ["1.10", "2"], "train": ["3", "4"]}), cls="num")
    assert "1.10" in html and "1.1000" not in html
    run = {"label_conflicts": [{"sha256": "ab" * 32, "labels": ["x", "y"], "paths": ["x/1.png", "y/1.png"]}]}
    page = section_data(None, None, None, {}, run["label_conflicts"])
    assert "label conflict" in page.lower() and "x/1.png" in page and "y/1.png" in page


def test_compare_leaves_no_stray_files_beside_out(run3):
    parent = run3 / "out"
    assert not [p for p in run3.iterdir() if p.name.startswith(".")], os.listdir(run3)
    assert json.loads((parent / "run.json").read_text())["heads"]
