"""The probes used to judge frozen features: the k-NN head, few-shot curves, NORMALIZE, top-5."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import only_cache, write_class_folder
from extract import Settings, extract_features

S32 = Settings(weights="none", size=32)
IMPORTED = Settings(backbone="imported")
QUIET = dict(log=lambda *_: None)


def _import(tmp_path: Path, X: np.ndarray, labels, dataset: str = "vec") -> Path:
    """Imports vectors with their labels as a cache (no backbone); returns the FEATURES root."""
    from classify.importer import import_embeddings

    emb, lab = tmp_path / f"{dataset}.npy", tmp_path / f"{dataset}.csv"
    np.save(emb, X.astype(np.float32))
    with open(lab, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "label"])
        w.writerows((f"v{i:05d}", str(c)) for i, c in enumerate(labels))
    import_embeddings(emb, lab, dataset, tmp_path / "features", **QUIET)
    return tmp_path / "features"


def _blobs(n: int, classes: int, dim: int = 16, spread: float = 1.6, seed: int = 0):
    """Overlapping Gaussian clusters, one per class, away from the origin (cosine separates them
    partly, so accuracy is well below 1)."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % classes
    centres = rng.normal(size=(classes, dim)) + 2.0
    return centres[y] + spread * rng.normal(size=(n, dim)), y


def _compare(features, settings, out, **kw):
    from classify import compare

    kw.setdefault("folds", 3)
    kw.setdefault("repeats", 1)
    kw.setdefault("tune", "0")
    for name, value in only_cache(features).items():
        kw.setdefault(name, value)
    return compare(features, settings, out, **{**QUIET, **kw})


def _reference_knn(X_train, y_train, X_query, k: int, temperature: float = 0.07) -> np.ndarray:
    """Brute force, written out: cosine similarity to every training row, the k most similar vote
    with exp(similarity / temperature), the class with the largest vote sum wins."""
    unit = lambda A: A / np.linalg.norm(A, axis=1, keepdims=True)
    S = unit(X_query.astype(np.float64)) @ unit(X_train.astype(np.float64)).T
    classes = np.unique(y_train)
    labels = []
    for row in S:
        nearest = np.argsort(-row, kind="stable")[:k]
        votes = {c: 0.0 for c in classes}
        for j in nearest:
            votes[y_train[j]] += np.exp(row[j] / temperature)
        labels.append(max(classes, key=lambda c: votes[c]))
    return np.array(labels)


def test_knn_head_agrees_with_a_brute_force_reference(tmp_path):
    X, y = _blobs(600, 4)
    features = _import(tmp_path, X, y)
    table = _compare(features, IMPORTED, tmp_path / "out", heads="knn")
    split = pd.read_csv(tmp_path / "out" / "split.csv", dtype=str)
    paths = [f"v{i:05d}" for i in range(len(y))]
    role = dict(zip(split["path"], split["role"]))
    train = np.array([role[p] == "train" for p in paths])
    evald = np.array([role[p] == "eval" for p in paths])
    ref = _reference_knn(X[train], y[train].astype(str), X[evald], k=20)
    ref_accuracy = float(np.mean(ref == y[evald].astype(str)))
    assert 0.4 < ref_accuracy < 0.95  # a test that can tell a wrong vote from a right one
    got = table.set_index("head").loc["knn"]
    assert got["params"] == "n_neighbors=20"
    assert abs(float(got["accuracy"]) - ref_accuracy) <= 0.02, (got["accuracy"], ref_accuracy)
    pred = pd.read_csv(tmp_path / "out" / "predictions.csv", dtype=str).set_index("path")
    mine = pred.loc[[p for p, e in zip(paths, evald) if e], "knn"].to_numpy()
    assert np.mean(mine == ref) >= 0.98
    scores = pred["knn_score"].astype(float)
    assert ((scores > 0) & (scores <= 1)).all()  # a probability of the predicted class, like every head's
    assert (tmp_path / "out" / "models" / "knn.skops").stat().st_size > 0


def test_knn_index_above_the_exact_size_agrees_with_the_reference():
    from classify.heads.knn import KNNClassifier

    X, y = _blobs(1000, 3, seed=1)
    exact = KNNClassifier(n_neighbors=10).fit(X[:800], y[:800])
    graph = KNNClassifier(n_neighbors=10, exact_max=100).fit(X[:800], y[:800])
    assert exact.method_ == "exact" and graph.method_ == "hnsw"
    ref = _reference_knn(X[:800], y[:800], X[800:], k=10)
    assert np.mean(exact.predict(X[800:]) == ref) >= 0.98
    assert abs(np.mean(graph.predict(X[800:]) == y[800:]) - np.mean(ref == y[800:])) <= 0.02
    proba = graph.predict_proba(X[800:])
    np.testing.assert_allclose(proba.sum(1), 1.0)
    import pickle  # joblib's workers send fitted models back pickled; the index is not part of it

    again = pickle.loads(pickle.dumps(graph))
    np.testing.assert_array_equal(again.predict(X[800:]), graph.predict(X[800:]))


def test_knn_k_is_bounded_by_the_training_rows_and_checked():
    from classify.heads.knn import KNNClassifier

    X, y = _blobs(12, 2)
    model = KNNClassifier(n_neighbors=50).fit(X, y)
    assert model.n_neighbors_ == 12
    assert model.predict_proba(X[:3]).shape == (3, 2)
    with pytest.raises(ValueError, match="n_neighbors must be a whole number of at least 1; received 0"):
        KNNClassifier(n_neighbors=0).fit(X, y)


def test_tuned_knn_chooses_k_as_a_grid_search_on_the_same_inner_folds_would():
    from sklearn.model_selection import GridSearchCV

    from classify.heads import INNER_FOLDS, CopyAwareFolds, candidates, fit_head, make_heads

    X, y = _blobs(240, 3, spread=2.2, seed=3)
    X = X.astype(np.float32)  # as the cache gives them (the inner folds group identical rows by their bytes)
    tuned, settings = fit_head(make_heads(7, tune=True)["knn"], X, y)
    grid = GridSearchCV(make_heads(7)["knn"], [{k: [v] for k, v in p.items()} for p in candidates("knn")],
                        cv=CopyAwareFolds(INNER_FOLDS, 7), scoring="balanced_accuracy").fit(X, y)
    assert settings == {"n_neighbors": grid.best_params_["knnclassifier__n_neighbors"]}
    searched = tuned[-1].search_scores_
    for params, score in zip(grid.cv_results_["params"], grid.cv_results_["mean_test_score"]):
        assert searched[params["knnclassifier__n_neighbors"]] == pytest.approx(score, abs=1e-6)


@pytest.fixture(scope="module")
def colours(tmp_path_factory):
    """Features of a red/blue/green folder, 20 images each, random weights at 32 px."""
    base = tmp_path_factory.mktemp("probes")
    write_class_folder(base / "in", 20, classes=("red", "blue", "green"))
    extract_features(base / "in", base / "features", S32, progress=False, **QUIET)
    return base


def test_shots_write_fewshot_curves_of_every_head(colours, tmp_path):
    out = tmp_path / "out"
    lines = []
    _compare(colours / "features", S32, out, shots="1,4", test_size=0.5, log=lines.append)
    shots = pd.read_csv(out / "fewshot.csv", keep_default_na=False)
    assert list(shots.columns[:4]) == ["head", "shots", "draw", "score"]
    assert len(shots) == 3 * 2 * 5
    assert shots.groupby(["head", "shots"]).size().to_dict() == {
        (h, k): 5 for h in ("logreg", "svm", "mlp") for k in (1, 4)}
    assert set(shots["draw"]) == set(range(5))
    assert (shots.loc[shots["shots"] == 4, "n_train"] == 12).all()
    assert (shots.loc[shots["shots"] == 1, "n_train"] == 3).all()
    means = shots.groupby(["head", "shots"])["score"].mean()
    for head in ("logreg", "svm", "mlp"):
        assert means[(head, 4)] >= means[(head, 1)], means
    assert (out / "figures" / "fewshot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    run = json.loads((out / "run.json").read_text())
    assert run["fewshot"]["shots"] == [1, 4] and run["fewshot"]["draws"] == 5
    assert "fewshot.png" in run["figures"]
    assert any(line.startswith("few-shot") for line in lines)

    from classify.report import build_report

    html = build_report(colours / "in", colours / "features", out, **QUIET).read_text()
    assert 'id="fewshot"' in html and "Few-shot" in html


def test_fewshot_names_and_leaves_out_a_class_with_too_few_training_images():
    from classify.fewshot import fewshot_curves
    from classify.heads import select_heads

    X, y = _blobs(90, 3, seed=2)
    y = np.array(["a", "b", "c"])[y]
    train = np.flatnonzero(np.isin(np.arange(90), np.arange(60)) & ((y != "c") | (np.arange(90) < 9)))
    evald = np.arange(60, 90)
    assert (y[train] == "c").sum() == 3
    lines = []
    table = fewshot_curves(select_heads("logreg,knn", 0), X, y, train, evald, [1, 4], 2, 0, log=lines.append)
    four, one = table[table["shots"] == 4], table[table["shots"] == 1]
    assert (four["classes_left_out"] == "c").all() and (four["n_classes"] == 2).all()
    assert (four["n_train"] == 8).all() and (four["n_eval"] == 20).all()  # c neither trained on nor scored
    assert (one["classes_left_out"] == "").all() and (one["n_classes"] == 3).all() and (one["n_eval"] == 30).all()
    assert any("4 shots" in line and "'c'" in line for line in lines)
    assert len(table) == 2 * 2 * 2


@pytest.mark.parametrize("bad, message", [
    (dict(normalize="l1"), "NORMALIZE must be none or l2; received 'l1'"),
    (dict(shots="1,x"), "SHOTS must be comma-separated whole numbers of at least 1"),
    (dict(shots="2", shot_draws="0"), "SHOT_DRAWS must be a whole number of at least 1; received '0'"),
])
def test_bad_probe_settings_are_refused_before_anything_runs(colours, tmp_path, bad, message):
    with pytest.raises(ValueError, match=message):
        _compare(colours / "features", S32, tmp_path / "out", **bad)
    assert not (tmp_path / "out").exists()


def _tree(folder: Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _norms_seen(monkeypatch) -> list:
    """Records the row norms of every matrix a head is fitted on or predicts from (jobs=1 keeps
    the fits in this process)."""
    import importlib

    from classify import heads

    C = importlib.import_module("classify.compare")
    F = importlib.import_module("classify.fits")

    seen = []

    def recording(fn):
        def wrapper(model, X, *a, **k):
            seen.append(np.linalg.norm(np.asarray(X, np.float64), axis=1))
            return fn(model, X, *a, **k)
        return wrapper

    monkeypatch.setattr(F, "fit_head", recording(heads.fit_head))  # compare's fits
    monkeypatch.setattr(heads, "fit_head", recording(heads.fit_head))  # the curves' fits
    monkeypatch.setattr(C, "outputs", recording(heads.outputs))
    return seen


@pytest.mark.parametrize("normalize", ["l2", "none"])
def test_normalize_changes_what_heads_see_not_the_cache(colours, tmp_path, monkeypatch, normalize):
    before = _tree(colours / "features")
    seen = _norms_seen(monkeypatch)
    out = tmp_path / "out"
    _compare(colours / "features", S32, out, heads="logreg,svm,mlp,knn", normalize=normalize, jobs=1,
             shots="2")
    assert _tree(colours / "features") == before  # stage 1: the same files, the same bytes
    run = json.loads((out / "run.json").read_text())
    assert run["features_key"] == S32.key == "vgg16-avg-32-none-np1"
    assert run["normalize"] == normalize
    assert len(seen) >= 4 * (3 + 1) + 4 * 5  # every head: 3 folds, the final fit, 5 few-shot draws
    norms = np.concatenate(seen)
    if normalize == "l2":
        np.testing.assert_allclose(norms, 1.0, rtol=1e-5)
    else:
        assert not np.allclose(norms, 1.0, rtol=1e-2)
    for head in ("logreg", "knn"):
        assert json.loads((out / "models" / f"{head}.json").read_text())["normalize"] == normalize

    from classify.predict import predict_images  # new images get the run's normalisation too

    pred = pd.read_csv(out / "predictions.csv", dtype=str).set_index("path")
    for head in ("logreg", "knn"):
        got = predict_images([colours / "in"], colours / "features", out, head=head, write=False, **QUIET)
        got["path"] = [Path(p).relative_to(colours / "in").as_posix() for p in got["path"]]
        both = got.set_index("path").loc[pred.index]
        assert (both["label"] == pred[head]).all()
        np.testing.assert_allclose(both["score"].astype(float), pred[f"{head}_score"].astype(float), atol=1e-5)

    from classify.report import build_report

    html = build_report(colours / "in", colours / "features", out, **QUIET).read_text()
    assert f"<th>normalize</th><td>{normalize}</td>" in html


@pytest.mark.parametrize("classes", [6, 3])
def test_top5_accuracy_from_six_classes(tmp_path, classes):
    from classify.compare import format_table

    X, y = _blobs(40 * classes, classes, spread=2.5)
    features = _import(tmp_path, X, y)
    table = _compare(features, IMPORTED, tmp_path / "out", heads="logreg,knn")
    comp = pd.read_csv(tmp_path / "out" / "comparison.csv")
    if classes < 6:
        assert "top5_accuracy" not in comp and "top5_accuracy" not in format_table(table)
        return
    assert "top5_accuracy" in format_table(table)
    top5, top1 = comp["top5_accuracy"], comp["accuracy"]
    assert (top5 >= top1).all() and (top5 <= 1).all() and (top5 > top1).any()
    from classify.report import build_report

    html = build_report(tmp_path / "no-images", features, tmp_path / "out", **QUIET).read_text()
    assert "top5_<wbr>accuracy" in html


def test_make_and_the_cli_pass_the_probe_settings(tmp_path):
    from conftest import run_make
    from helpers import run_main

    dry = run_make("-n", "compare", "NORMALIZE=l2", "SHOTS=1,4", "SHOT_DRAWS=3")
    assert dry.returncode == 0, dry.stderr
    assert '--normalize l2 --shots "1,4" --shot-draws 3' in dry.stdout
    X, y = _blobs(60, 3)
    features = _import(tmp_path, X, y, dataset="cli")
    r = run_main("classify", "compare", "--features", features, "--dataset", "cli", "--backbone", "imported",
                 "--out", tmp_path / "out", "--heads", "logreg,knn", "--tune", "0", "--repeats", "1",
                 "--folds", "3", "--jobs", "1", "--normalize", "l2", "--shots", "2", "--shot-draws", "2")
    assert r.returncode == 0, r.stderr
    assert "fewshot.csv" in r.stdout and "NORMALIZE=l2" in r.stdout
    assert json.loads((tmp_path / "out" / "run.json").read_text())["normalize"] == "l2"
    assert len(pd.read_csv(tmp_path / "out" / "fewshot.csv")) == 2 * 1 * 2
