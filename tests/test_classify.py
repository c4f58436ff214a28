"""Stage 2: heads, pairing of predictions with files, determinism, clear errors, no TensorFlow."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import ROOT, only_cache, write_class_folder
from extract import Settings, extract_features
from extract.cache import cache_folder, read_cache, write_cache

S64 = Settings(weights="none", size=64)


@pytest.fixture(scope="module")
def cached(tmp_path_factory):
    """Features of a red/blue folder (16 per class) and of a 3-class train/test folder."""
    base = tmp_path_factory.mktemp("classify")
    flat = base / "flat"
    write_class_folder(flat, 16)
    extract_features(flat, base / "features", S64, progress=False, log=lambda *_: None)
    split = base / "split"
    write_class_folder(split, 8, classes=("red", "blue", "green"), split="train")
    write_class_folder(split, 4, classes=("red", "blue", "green"), split="test", start=50)
    extract_features(split, base / "features-split", S64, progress=False, log=lambda *_: None)
    return base


def _compare(features, out, **kw):
    from classify import compare

    kw.setdefault("folds", 3)
    kw.setdefault("tune", "0")  # tuning and repeats have their own tests (test_tune, test_fair)
    kw.setdefault("repeats", 1)
    for name, value in only_cache(features).items():
        kw.setdefault(name, value)
    return compare(features, S64, out, log=lambda *_: None, **kw)


def test_compare_writes_every_output_and_heads_score_well(cached, tmp_path):
    out = tmp_path / "out"
    table = _compare(cached / "features", out)
    assert list(table["head"]) == ["logreg", "svm", "mlp"]
    comp = pd.read_csv(out / "comparison.csv")
    for col in ("head", "accuracy", "balanced_accuracy", "macro_f1", "cv_mean", "cv_std", "fit_seconds"):
        assert col in comp.columns
    assert (comp["accuracy"] >= 0.9).all(), comp
    for head in ("logreg", "svm", "mlp"):
        assert "precision" in (out / "reports" / f"{head}.txt").read_text()
        report = json.loads((out / "reports" / f"{head}.json").read_text())
        assert set(report) >= {"red", "blue", "accuracy", "macro avg"}
        assert (out / "models" / f"{head}.skops").stat().st_size > 0
    for fig in ("confusion_matrices.png", "roc.png", "mlp_history.png"):
        assert (out / "figures" / fig).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    run = json.loads((out / "run.json").read_text())
    assert run["features_key"] == S64.key and run["seed"] == 42 and run["folds"] == 3
    assert "scikit-learn" in run["versions"]
    pred = pd.read_csv(out / "predictions.csv", keep_default_na=False)
    assert list(pred.columns) == ["path", "label", "logreg", "logreg_score", "svm", "svm_score",
                                  "svm_decision", "mlp", "mlp_score"]
    labels = {r["path"]: r["label"] for r in read_cache(cache_folder(cached / "features", cached / "flat", S64.key))[1]}
    assert all(labels[p] == l for p, l in zip(pred["path"], pred["label"]))
    assert pred["path"].is_unique and len(pred) == int(comp["n_eval"].iloc[0])
    assert ((pred["logreg_score"] > 0.5) & (pred["logreg_score"] <= 1)).all()


def test_predictions_stay_paired_when_rows_are_shuffled(cached, tmp_path):
    """Shuffle the cache's rows (embedding and manifest together): every file keeps its prediction."""
    folder = cache_folder(cached / "features", cached / "flat", S64.key)
    emb, rows, meta = read_cache(folder)
    perm = np.random.default_rng(3).permutation(len(rows))
    shuffled = tmp_path / "shuffled"
    write_cache(shuffled / folder.parent.name, S64.key, emb[perm], [rows[i] for i in perm], meta, [])
    _compare(cached / "features", tmp_path / "a")
    _compare(shuffled, tmp_path / "b")
    a = pd.read_csv(tmp_path / "a" / "predictions.csv").set_index("path")
    b = pd.read_csv(tmp_path / "b" / "predictions.csv").set_index("path")
    assert sorted(a.index) == sorted(b.index)
    b = b.loc[a.index]
    manifest = {r["path"]: r["label"] for r in rows}
    assert all(manifest[p] == l for p, l in b["label"].items())
    for head in ("logreg", "svm", "mlp"):
        assert (a[head] == b[head]).all()
        # The labels the heads predict agree with the true labels as often as the table says.
        acc = (b[head] == b["label"]).mean()
        comp = pd.read_csv(tmp_path / "b" / "comparison.csv").set_index("head")
        assert acc == pytest.approx(comp.loc[head, "accuracy"])


def test_same_seed_same_numbers(cached, tmp_path):
    _compare(cached / "features", tmp_path / "a")
    _compare(cached / "features", tmp_path / "b")
    drop = ["fit_seconds", "cv_seconds"]
    a = pd.read_csv(tmp_path / "a" / "comparison.csv").drop(columns=drop)
    b = pd.read_csv(tmp_path / "b" / "comparison.csv").drop(columns=drop)
    pd.testing.assert_frame_equal(a, b)
    assert (tmp_path / "a" / "predictions.csv").read_bytes() == (tmp_path / "b" / "predictions.csv").read_bytes()
    assert (tmp_path / "a" / "split.csv").read_bytes() == (tmp_path / "b" / "split.csv").read_bytes()


def test_split_folders_train_on_train_and_evaluate_on_test(cached, tmp_path):
    out = tmp_path / "out"
    table = _compare(cached / "features-split", out, heads="logreg")
    assert list(table["head"]) == ["logreg"]
    pred = pd.read_csv(out / "predictions.csv")
    assert len(pred) == 12 and all(p.startswith("test/") for p in pred["path"])
    roles = pd.read_csv(out / "split.csv")
    assert set(roles.loc[roles["role"] == "train", "path"].str.split("/").str[0]) == {"train"}
    assert not (out / "figures" / "roc.png").exists()  # three classes: no ROC figure
    assert (out / "figures" / "confusion_matrices.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_holdout_is_stratified_seeded_and_stable_when_images_are_added():
    from classify.data import assign_split

    man = pd.DataFrame({"path": [f"{c}/{i}" for c in "ab" for i in range(20)],
                        "label": [c for c in "ab" for _ in range(20)], "split": "",
                        "sha256": [f"{c}{i:04d}" for c in "ab" for i in range(20)]})
    role, _ = assign_split(man, 0.25, seed=42)
    assert (role[man["label"] == "a"] == "eval").sum() == 5 == (role[man["label"] == "b"] == "eval").sum()
    assert not role.equals(assign_split(man, 0.25, seed=7)[0])
    bigger = pd.concat([man, pd.DataFrame({"path": ["a/new"], "label": ["a"], "split": [""],
                                           "sha256": ["zzz"]})], ignore_index=True)
    role2, _ = assign_split(bigger, 0.25, seed=42)
    moved = (role2.iloc[:40] != role).sum()
    assert moved <= 1


def test_unknown_head_lists_known_ones(cached, tmp_path):
    with pytest.raises(ValueError, match="known heads: logreg, svm, mlp"):
        _compare(cached / "features", tmp_path / "o", heads="logreg,forest")


def test_missing_features_name_the_make_command(tmp_path):
    from classify import DataError

    with pytest.raises(DataError, match="make features .*WEIGHTS=none SIZE=64"):
        _compare(tmp_path / "nothing", tmp_path / "o")


def _fake_cache(folder: Path, labels: list[str], dim: int = 8, seed: int = 0):
    rng = np.random.default_rng(seed)
    emb = rng.normal(size=(len(labels), dim)).astype(np.float32)
    rows = [{"path": f"{l}/{i}.png", "label": l, "split": "", "sha256": f"{i:064x}", "size": 1,
             "mtime_ns": 1} for i, l in enumerate(labels)]
    write_cache(folder / "fake", S64.key, emb, rows, {"dim": dim}, [])
    return emb, rows


def test_one_class_is_refused(tmp_path):
    from classify import DataError

    _fake_cache(tmp_path / "f", ["cat"] * 10)
    with pytest.raises(DataError, match="one class only"):
        _compare(tmp_path / "f", tmp_path / "o")


def test_small_class_lowers_folds_with_a_warning(tmp_path):
    from classify import compare

    _fake_cache(tmp_path / "f", ["a"] * 20 + ["b"] * 4)
    logs = []
    compare(tmp_path / "f", S64, tmp_path / "o", heads="logreg", folds=5, log=logs.append,
            dataset="fake", tune="0", repeats=1)
    assert any("fewer than FOLDS=5; using 3-fold" in m for m in logs)
    assert json.loads((tmp_path / "o" / "run.json").read_text())["folds"] == 3


def test_damaged_caches_are_refused(tmp_path):
    from classify import DataError

    emb, rows = _fake_cache(tmp_path / "f", ["a"] * 6 + ["b"] * 6)
    folder = tmp_path / "f" / "fake" / S64.key
    manifest = (folder / "manifest.csv").read_text().splitlines()
    (folder / "manifest.csv").write_text("\n".join(manifest[:-2]) + "\n")
    with pytest.raises(DataError, match="12 rows but manifest.csv has 10"):
        _compare(tmp_path / "f", tmp_path / "o")

    emb[3, 2] = np.nan
    write_cache(tmp_path / "f" / "fake", S64.key, emb, rows, {"dim": 8}, [])
    with pytest.raises(DataError, match="NaN"):
        _compare(tmp_path / "f", tmp_path / "o")

    npy = folder / "embeddings.npy"
    write_cache(tmp_path / "f" / "fake", S64.key, np.nan_to_num(emb), rows, {"dim": 8}, [])
    npy.write_bytes(npy.read_bytes()[:200])
    with pytest.raises(DataError, match="cannot be read"):
        _compare(tmp_path / "f", tmp_path / "o")

    np.save(npy, np.zeros((12, 8), np.float64))
    with pytest.raises(DataError, match="float32"):
        _compare(tmp_path / "f", tmp_path / "o")


def test_models_load_only_when_written_by_this_tool(cached, tmp_path):
    from classify import DataError, load_model

    out = tmp_path / "out"
    _compare(cached / "features", out, heads="logreg")
    bundle = load_model(out / "models" / "logreg.skops")
    assert bundle["class_names"] == ["blue", "red"] and bundle["features_key"] == S64.key
    emb, rows, _ = read_cache(cache_folder(cached / "features", cached / "flat", S64.key))
    assert set(bundle["model"].predict(emb)) <= {"blue", "red"}
    # the loaded model is the one that made predictions.csv: same label, same score, per image
    pred = pd.read_csv(out / "predictions.csv", keep_default_na=False)
    row_of = {r["path"]: i for i, r in enumerate(rows)}
    X = emb[[row_of[p] for p in pred["path"]]]
    assert list(bundle["model"].predict(X)) == list(pred["logreg"])
    np.testing.assert_allclose(bundle["model"].predict_proba(X).max(1), pred["logreg_score"], atol=1e-5)
    with open(out / "models" / "logreg.skops", "ab") as fh:
        fh.write(b"tampered")
    with pytest.raises(DataError, match="refusing to load"):
        load_model(out / "models" / "logreg.skops")


def test_gram_svc_matches_sklearn_svc():
    from sklearn.datasets import make_classification
    from sklearn.svm import SVC

    from classify.heads import GramRBFSVC

    X, y = make_classification(300, 20, n_informative=6, random_state=0)
    X = X.astype(np.float32)
    ours = GramRBFSVC(C=1.0).fit(X[:200], y[:200])
    ref = SVC(kernel="rbf", gamma="scale", C=1.0).fit(X[:200], y[:200])
    assert (ours.predict(X[200:]) == ref.predict(X[200:])).mean() >= 0.99
    np.testing.assert_allclose(ours.decision_function(X[200:]), ref.decision_function(X[200:]),
                               atol=1e-3)


@pytest.mark.parametrize("n_classes", [2, 3])
def test_one_pass_outputs_agree_with_each_heads_own_methods(n_classes):
    """compare scores, draws and reports from one pass per head (the SVM's kernel once): the
    labels, probabilities and margins must be what predict, predict_proba and margins give."""
    from sklearn.datasets import make_classification

    from classify.heads import decision_values, labels_of, outputs, select_heads

    X, y = make_classification(240, 16, n_informative=6, n_classes=n_classes, random_state=1)
    X, y = X.astype(np.float32), np.array(["a", "b", "c"])[y]
    for name, model in select_heads("logreg,svm,mlp", 0).items():
        model.fit(X[:180], y[:180])
        proba, margins = outputs(model, X[180:])
        np.testing.assert_allclose(proba, model.predict_proba(X[180:]), rtol=1e-6, atol=1e-9)
        labels, score = labels_of(model, proba)
        assert (labels == model.predict(X[180:])).all(), name
        np.testing.assert_allclose(score, proba.max(1))
        if name != "svm":
            assert margins is None and decision_values(model, margins, labels) is None
            continue
        raw = model[-1].margins(model[:-1].transform(X[180:]))
        np.testing.assert_allclose(margins, raw)
        chosen = decision_values(model, margins, labels)
        expected = raw if n_classes == 2 else raw[np.arange(len(labels)), np.searchsorted(model.classes_, labels)]
        np.testing.assert_allclose(chosen, expected)


def test_compare_never_imports_tensorflow(cached, tmp_path):
    code = (
        "import sys; sys.path.insert(0, %r)\n"
        "from classify.__main__ import main\n"
        "rc = main(['compare', '--in', %r, '--features', %r, '--out', %r, '--weights', 'none',"
        " '--size', '64', '--folds', '3', '--heads', 'logreg', '--tune', '0', '--jobs', '1',"
        " '--repeats', '1'])\n"
        "assert rc == 0, rc\n"
        "print('tensorflow' in sys.modules, 'keras' in sys.modules)\n"
    ) % (str(ROOT), str(cached / "flat"), str(cached / "features"), str(tmp_path / "o"))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "False False"
    assert "accuracy" in r.stdout  # the printed table


def test_two_training_images_in_a_class_still_compare_every_head(tmp_path):
    """The MLP's early-stopping split needs two images per class; it trains without one instead."""
    from classify import compare

    _fake_cache(tmp_path / "f", ["a"] * 12 + ["b"] * 3)
    logs = []
    table = compare(tmp_path / "f", S64, tmp_path / "o", folds=5, log=logs.append, dataset="fake")
    assert list(table["head"]) == ["logreg", "svm", "mlp"]
    assert any("using 2-fold" in m for m in logs)


def test_copies_of_a_file_land_on_one_side_of_the_holdout():
    from classify.data import assign_split

    for seed in range(40):
        shas = [f"{i:04d}" for i in range(10)] + ["0003", "0007"]
        man = pd.DataFrame({"path": [f"a/{i}" for i in range(12)], "label": "a", "split": "",
                            "sha256": shas})
        role, _ = assign_split(man, 0.3, seed=seed)
        for sha in ("0003", "0007"):
            assert role[man["sha256"] == sha].nunique() == 1, seed
        assert 2 <= (role == "eval").sum() <= 5


def test_stale_outputs_of_other_heads_are_removed(cached, tmp_path):
    out = tmp_path / "out"
    _compare(cached / "features", out)
    assert (out / "models" / "mlp.skops").stat().st_size > 0
    assert (out / "figures" / "mlp_history.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    _compare(cached / "features", out, heads="logreg")
    assert sorted(p.name for p in (out / "models").iterdir()) == ["logreg.json", "logreg.skops"]
    assert not (out / "figures" / "mlp_history.png").exists()
    assert sorted(p.name for p in (out / "reports").iterdir()) == ["logreg.json", "logreg.txt"]


def test_compare_stops_when_in_has_changed_since_the_features(tmp_path, capsys):
    # Deleting an image from IN after `make features` left it in split.csv (trained on), and an
    # image added afterwards was ignored: stage 2 silently used other images than IN's.
    from classify.__main__ import main
    from classify.data import DataError

    in_dir, features = tmp_path / "in", tmp_path / "features"
    write_class_folder(in_dir, 6)
    settings = Settings(weights="none", size=32)
    extract_features(in_dir, features, settings, progress=False, log=lambda *_: None)
    (in_dir / "red" / "img_002.png").unlink()
    write_class_folder(in_dir, 1, classes=("blue",), start=40)  # blue/img_040.png, never embedded
    args = dict(in_dir=str(in_dir), heads="logreg", folds=2, log=lambda *_: None, tune="0", repeats=1)
    from classify import compare

    with pytest.raises(DataError) as err:
        compare(features, settings, tmp_path / "out", **args)
    text = str(err.value)
    assert "1 image added (e.g. blue/img_040.png)" in text and "1 removed (e.g. red/img_002.png)" in text
    assert f"make features IN={in_dir} FEATURES={features}" in text and "STALE=ok" in text
    assert not (tmp_path / "out").exists()

    logs = []
    compare(features, settings, tmp_path / "out", stale="ok", **{**args, "log": logs.append})
    assert any("STALE=ok: the cache is used as it is (12 images)" in m for m in logs)
    assert "red/img_002.png" in set(pd.read_csv(tmp_path / "out" / "split.csv")["path"])

    cli = ["compare", "--in", str(in_dir), "--features", str(features), "--out", str(tmp_path / "cli"),
           "--weights", "none", "--size", "32", "--heads", "logreg", "--folds", "2", "--tune", "0",
           "--repeats", "1"]
    assert main(cli) == 2 and "1 image added" in capsys.readouterr().err
    assert main(cli + ["--stale", "ok"]) == 0

    extract_features(in_dir, features, settings, progress=False, log=lambda *_: None)  # up to date
    logs = []
    compare(features, settings, tmp_path / "out2", **{**args, "log": logs.append})
    assert not any("has changed" in m for m in logs)
    split = set(pd.read_csv(tmp_path / "out2" / "split.csv")["path"])
    assert "blue/img_040.png" in split and "red/img_002.png" not in split

    moved = tmp_path / "elsewhere"
    in_dir.rename(moved)  # the images moved away after extraction: said once, the cache is used
    logs = []
    compare(features, settings, tmp_path / "out3", **{**args, "log": logs.append})
    assert sum("is not there" in m and "used as it is" in m for m in logs) == 1


def test_a_file_rejected_by_the_extraction_does_not_count_as_added(tmp_path):
    from classify import compare

    in_dir, features = tmp_path / "in", tmp_path / "features"
    write_class_folder(in_dir, 4)
    (in_dir / "red" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot an image")
    settings = Settings(weights="none", size=32)
    extract_features(in_dir, features, settings, progress=False, log=lambda *_: None)
    logs = []
    compare(features, settings, tmp_path / "out", in_dir=str(in_dir), heads="logreg", folds=2, log=logs.append,
            tune="0", repeats=1)
    assert not any("has changed" in m for m in logs)
