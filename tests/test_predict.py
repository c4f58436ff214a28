"""make predict: classify new images with a saved head, reusing the cache by content hash."""

from __future__ import annotations

import csv
import dataclasses
import json
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from helpers import quiet
from conftest import COLOURS, ROOT, colour_image, run_make, write_class_folder

import classify
import extract
from classify import predict as P
from classify.compare import load_model, save_model
from classify.data import DataError

SETTINGS = extract.Settings(weights="none", size=64)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Red vs blue, 10 each: features at 64 px with random weights, every head compared."""
    root = tmp_path_factory.mktemp("predict")
    write_class_folder(root / "in", 10)
    extract.extract_features(root / "in", root / "features", SETTINGS, progress=False, log=quiet)
    classify.compare(root / "features", SETTINGS, root / "out", folds=3, jobs=1, log=quiet,
                     in_dir=root / "in", tune="0", repeats=1)
    new = root / "new"
    new.mkdir()
    colour_image(COLOURS["red"], seed=5001).save(new / "red.png")
    colour_image(COLOURS["blue"], seed=5002).save(new / "blue.jpg")
    (new / "corrupt.png").write_bytes(b"this is not an image at all")
    return root


def _copy_out(trained, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(trained / "out" / "models", out / "models")
    shutil.copy(trained / "out" / "comparison.csv", out / "comparison.csv")
    return out


def test_make_predict_end_to_end(trained, tmp_path):
    out = _copy_out(trained, tmp_path)
    new = trained / "new"
    res = run_make("predict", f"IMAGES={new / 'red.png'} {new / 'blue.jpg'} {new / 'corrupt.png'}",
                   f"FEATURES={trained / 'features'}", f"OUT={out}")
    assert res.returncode == 0, res.stdout + res.stderr
    with open(out / "new_predictions.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["path", "head", "label", "score", "error"]
    by_name = {r["path"].rsplit("/", 1)[-1]: r for r in rows}
    assert len(rows) == 3
    assert by_name["red.png"]["label"] == "red" and by_name["red.png"]["error"] == ""
    assert by_name["blue.jpg"]["label"] == "blue" and by_name["blue.jpg"]["error"] == ""
    assert 0.5 < float(by_name["red.png"]["score"]) <= 1.0
    bad = by_name["corrupt.png"]
    assert bad["label"] == "" and bad["score"] == "" and bad["error"].startswith("not an image")
    assert {r["head"] for r in rows} == {P.best_head(out)}
    assert "2 embedded" in res.stdout and "1 error)" in res.stdout and "1 errors" not in res.stdout
    assert f"-> {out / 'new_predictions.csv'}" in res.stdout
    assert not (out / "predict.csv").exists() and not (out / "predictions.csv").exists()
    # the classes and the random-weights banner come first, as in every command
    assert "classes (2): blue, red" in res.stdout and "RANDOM WEIGHTS" in res.stdout
    assert res.stdout.index("RANDOM WEIGHTS") < res.stdout.index("\npredicted 2 of 3 files")


def test_default_head_is_best_cv_mean(trained, tmp_path):
    out = _copy_out(trained, tmp_path)
    table = pd.read_csv(out / "comparison.csv")
    assert P.best_head(out) == table.loc[table["cv_mean"].idxmax(), "head"]
    # Make the SVM the clear winner: the default must follow comparison.csv.
    table["cv_mean"] = [0.5 if h != "svm" else 0.9 for h in table["head"]]
    table["verdict"] = ["worse" if h != "svm" else "best" for h in table["head"]]
    table.to_csv(out / "comparison.csv", index=False)
    assert P.best_head(out) == "svm"
    df = P.predict_images([trained / "in" / "red"], trained / "features", out, write=False, log=quiet)
    assert set(df["head"]) == {"svm"} and set(df["label"]) == {"red"}
    # An explicit HEAD wins over the default.
    df = P.predict_images([trained / "in" / "red"], trained / "features", out, head="mlp",
                          write=False, log=quiet)
    assert set(df["head"]) == {"mlp"}
    # Without comparison.csv, the cv_mean in the sidecars decides (ties: first by name).
    (out / "comparison.csv").unlink()
    side = {h: json.loads((out / "models" / f"{h}.json").read_text())["cv_mean"]
            for h in ("logreg", "mlp", "svm")}
    assert P.best_head(out) == max(sorted(side), key=side.get)


def test_cached_images_are_found_by_content(trained, tmp_path):
    copy = tmp_path / "renamed.png"  # same bytes, other name: still a cache hit
    shutil.copy(trained / "in" / "blue" / "img_003.png", copy)
    df = P.predict_images([trained / "in", copy], trained / "features", trained / "out",
                          head="logreg", write=False, log=quiet)
    assert df.attrs["cached"] == 21 and df.attrs["embedded"] == 0
    assert len(df) == 21 and (df["error"] == "").all()
    assert list(df["path"][:20]) == sorted(df["path"][:20])
    truth = df["path"].str.extract(r"/(red|blue)/")[0].fillna("blue")
    assert (df["label"] == truth).all()


def test_cached_images_do_not_start_tensorflow(trained, tmp_path):
    code = ("import sys; from classify import predict_images; "
            f"df = predict_images([{str(trained / 'in' / 'red')!r}], {str(trained / 'features')!r}, "
            f"{str(trained / 'out')!r}, write=False); "
            "print('labels', sorted(set(df.label)), 'embedded', df.attrs['embedded'], "
            "'tf', 'tensorflow' in sys.modules)")
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr
    assert "labels ['red'] embedded 0 tf False" in res.stdout


def test_folders_are_expanded_sorted_without_hidden_files(tmp_path):
    png = colour_image(COLOURS["red"], seed=1)
    (tmp_path / "d" / "b" / ".hidden").mkdir(parents=True)
    for rel in ("d/b/z.png", "d/a.png", "d/b/.hidden/x.png", "d/.h.png", "d/b/photo"):
        png.save(tmp_path / rel, format="PNG")  # "photo": an image by content, without suffix
    (tmp_path / "d" / "notes.txt").write_text("not an image")
    (tmp_path / "d" / "b" / "loop").symlink_to("..")
    got = P.expand_inputs([tmp_path / "d", tmp_path / "missing.png"], log=quiet)
    root = (tmp_path / "d").as_posix()
    assert got == [(f"{root}/a.png", ""), (f"{root}/b/photo", ""), (f"{root}/b/z.png", ""),
                   (str(tmp_path / "missing.png"), "no such file or folder")]


def test_embed_files_matches_the_cache(trained, tmp_path):
    emb_cache, rows, _ = extract.read_cache(extract.cache_folder(trained / "features", trained / "in",
                                                                 SETTINGS.key))
    picks = [0, len(rows) - 1]
    paths = [str(trained / "in" / rows[i]["path"]) for i in picks]
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes((trained / "new" / "red.png").read_bytes()[:200])
    emb, errors = extract.embed_files(paths + [str(trained / "new" / "corrupt.png"), str(truncated)],
                                      SETTINGS, batch=2, log=quiet)
    assert emb.dtype == np.float32 and emb.shape == (4, emb_cache.shape[1])
    np.testing.assert_allclose(emb[:2], emb_cache[picks], rtol=1e-4, atol=1e-4)
    assert errors[:2] == ["", ""]
    assert errors[2].startswith("not an image") and "PNG" in errors[3]
    assert not emb[2:].any()


def test_unreadable_files_get_their_own_rows(trained, tmp_path):
    out = _copy_out(trained, tmp_path)
    new = trained / "new"
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes((new / "blue.jpg").read_bytes()[:10] + b"\0" * 5)
    truncated.rename(tmp_path / "truncated.jpg")
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    images = [new / "red.png", new / "corrupt.png", tmp_path / "missing.png", empty,
              tmp_path / "truncated.jpg"]
    df = P.predict_images(images, trained / "features", out, head="logreg", log=quiet)
    assert list(df.columns) == ["path", "head", "label", "score", "error"]
    assert list(df["path"]) == [str(p) for p in images]
    assert df.loc[0, "label"] == "red" and df.loc[0, "error"] == ""
    assert df.loc[1, "error"].startswith("not an image")
    assert df.loc[2, "error"] == "no such file or folder"
    assert df.loc[3, "error"] == "empty file (0 bytes)"
    assert "JPEG" in df.loc[4, "error"]
    assert (df.loc[1:, "label"] == "").all() and df.loc[1:, "score"].isna().all()
    written = pd.read_csv(out / "new_predictions.csv", keep_default_na=False)
    assert list(written["error"]) == list(df["error"])
    assert list(written["label"]) == list(df["label"])


def _save_variant(trained, tmp_path, **settings):
    """A copy of the logreg head whose recorded extraction settings are changed."""
    bundle = load_model(trained / "out" / "models" / "logreg.skops")
    bundle["settings"] = dict(bundle["settings"], **settings)
    bundle["features_key"] = bundle["settings"]["key"]
    out = tmp_path / "out"
    (out / "models").mkdir(parents=True)
    save_model(out / "models" / "logreg.skops", bundle)
    return out


def test_settings_mismatch_is_refused(trained, tmp_path, capsys):
    new = trained / "new" / "red.png"
    weights = tmp_path / "mine.weights.h5"
    weights.write_bytes(b"first version")
    tag = dataclasses.replace(SETTINGS, weights=str(weights)).weights_tag
    key = f"vgg16-avg-64-{tag}"

    gone = _save_variant(trained, tmp_path / "a", weights=str(tmp_path / "gone.h5"), weights_tag="gone-12345678",
                         key="vgg16-avg-64-gone-12345678")
    with pytest.raises(P.SettingsMismatch, match=r"WEIGHTS=\S*gone.h5 SIZE=64 POOLING=avg PRECISION=fp32") as err:
        P.predict_images([new], trained / "features", gone, log=quiet)
    assert "no longer exists" in str(err.value)

    changed = _save_variant(trained, tmp_path / "b", weights=str(weights), weights_tag=tag, key=key)
    weights.write_bytes(b"second version")
    with pytest.raises(P.SettingsMismatch, match="different SHA-256"):
        P.predict_images([new], trained / "features", changed, log=quiet)

    unknown = _save_variant(trained, tmp_path / "c", backbone="resnet50", key="resnet50-avg-64-none")
    assert P.main(["--features", str(trained / "features"), "--out", str(unknown), "--", str(new)]) == 2
    msg = capsys.readouterr().err
    assert "'resnet50' is unknown" in msg and "BACKBONE=resnet50 WEIGHTS=none SIZE=64" in msg
    assert not (unknown / "new_predictions.csv").exists()


def test_unavailable_weights_message_comes_through(trained, tmp_path, capsys):
    weights = tmp_path / "broken.h5"
    weights.write_bytes(b"not an HDF5 file")
    tag = dataclasses.replace(SETTINGS, weights=str(weights)).weights_tag
    out = _save_variant(trained, tmp_path, weights=str(weights), weights_tag=tag,
                        key=f"vgg16-avg-64-{tag}")
    rc = P.main(["--features", str(trained / "features"), "--out", str(out), "--quiet", "--",
                 str(trained / "new" / "blue.jpg")])
    err = capsys.readouterr().err
    assert rc == 1
    assert f"cannot load weights file {str(weights)!r}" in err
    written = pd.read_csv(out / "new_predictions.csv", keep_default_na=False)
    assert written.loc[0, "error"].startswith("not in the cache, and the backbone cannot be built")


def test_usage_errors(trained, tmp_path, capsys):
    assert P.main(["--out", str(trained / "out")]) == 2
    assert "no images given" in capsys.readouterr().err
    with pytest.raises(DataError, match="make compare"):
        P.predict_images([trained / "new" / "red.png"], trained / "features", tmp_path / "empty", log=quiet)
    with pytest.raises(DataError, match="saved heads: logreg, mlp, svm"):
        P.predict_images([trained / "new" / "red.png"], trained / "features", trained / "out",
                         head="knn", log=quiet)


def test_fold_logreg_matches_predict_proba():
    from sklearn.datasets import make_classification

    from classify.heads import make_heads

    for n_classes in (2, 3):
        X, y = make_classification(60, 12, n_informative=6, n_classes=n_classes, random_state=0)
        pipe = make_heads(0)["logreg"].fit(X * 7 + 3, y)
        W, b = P.fold_logreg(pipe)
        z = (X * 7 + 3) @ W.T + b
        proba = np.exp(z - z.max(1, keepdims=True))
        proba /= proba.sum(1, keepdims=True)
        assert W.shape == (n_classes, 12)
        np.testing.assert_allclose(proba, pipe.predict_proba(X * 7 + 3), atol=1e-10)


def test_export_logreg_to_keras(trained, tmp_path):
    out = _copy_out(trained, tmp_path)
    info = P.export_keras(out, tmp_path / "logreg.keras", head="logreg", log=quiet)
    assert info["max_abs_diff"] < 1e-4 and info["classes"] == ["blue", "red"]
    import keras

    model = keras.models.load_model(tmp_path / "logreg.keras")
    new = trained / "new"
    imgs = np.stack([extract.load_image(str(new / n), 64) for n in ("red.png", "blue.jpg")])
    proba = model.predict(imgs.astype(np.float32), verbose=0)
    df = P.predict_images([new / "red.png", new / "blue.jpg"], trained / "features", out,
                          head="logreg", write=False, log=quiet)
    assert list(np.array(info["classes"])[proba.argmax(1)]) == list(df["label"]) == ["red", "blue"]
    np.testing.assert_allclose(proba.max(1), df["score"].to_numpy(), atol=1e-4)
    with pytest.raises(DataError, match="only the logreg head"):
        P.export_keras(out, tmp_path / "mlp.keras", head="mlp", log=quiet)


def test_the_default_head_is_the_answers_best(trained, tmp_path):
    """make predict's default head must be the one compare and the report call best (the answer),
    and, when that one has no saved model, the next of the answer's ranking."""
    from classify.answer import read_answer

    out = _copy_out(trained, tmp_path)
    table = pd.read_csv(out / "comparison.csv")
    # the verdicts decide, not the row with the highest cv_mean: mlp best, svm tied, logreg worse
    table["cv_mean"] = [{"logreg": 0.70, "svm": 0.80, "mlp": 0.79}[h] for h in table["head"]]
    table["verdict"] = [{"logreg": "worse", "svm": "tied", "mlp": "best"}[h] for h in table["head"]]
    table.to_csv(out / "comparison.csv", index=False)
    assert read_answer(out).best.head == "mlp"
    assert P.best_head(out) == "mlp"
    for ext in (".skops", ".json"):
        (out / "models" / f"mlp{ext}").unlink()
    assert P.best_head(out) == "svm"  # tied with the best, the next of the ranking


def test_make_predict_takes_the_cache_from_the_run_and_refuses_conflicts(trained, tmp_path, capsys):
    """Every command needed every setting again: with OUT alone, make predict finds the run's
    FEATURES (the images already cached are not embedded again); a setting that conflicts with
    the run or with the head is refused, naming both values."""
    out = tmp_path / "out"
    shutil.copytree(trained / "out", out)
    image = trained / "in" / "red" / "img_000.png"
    res = run_make("predict", f"OUT={out}", f"IMAGES={image}")
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"FEATURES={trained / 'features'}" in res.stdout
    assert "1 from the cache, 0 embedded" in res.stdout
    assert "classes (2): blue 10, red 10" in res.stdout and "RANDOM WEIGHTS" in res.stdout

    before = (out / "new_predictions.csv").read_bytes()
    res = run_make("predict", f"OUT={out}", f"IMAGES={image}", "SIZE=128")
    assert res.returncode != 0
    assert "SIZE=128 was given" in res.stderr and "SIZE=64" in res.stderr, res.stderr
    assert (out / "new_predictions.csv").read_bytes() == before  # nothing written

    (out / "run.json").unlink()  # no run to compare with: the head's own settings still hold
    rc = P.main(["--out", str(out), "--features", str(trained / "features"), "--size", "128", "--quiet",
                 "--", str(image)])
    err = capsys.readouterr().err
    assert rc == 2
    assert "SIZE=128 was given, but head" in err and "trained on SIZE=64" in err, err
