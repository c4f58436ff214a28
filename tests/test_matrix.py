"""make features/compare BACKBONES=...: every head on every backbone, and the report's matrix."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from conftest import colour_image, run_make, write_class_folder
from extract import Settings, extract_features, input_id


def test_compare_backbones_writes_the_matrix_and_the_report_shows_it(tmp_path):
    src, features, out = tmp_path / "in", tmp_path / "features", tmp_path / "out"
    write_class_folder(src, 8)
    args = [f"IN={src}", f"FEATURES={features}", f"OUT={out}", "WEIGHTS=none", "SIZE=32",
            "BACKBONES=vgg16,resnet50v2"]
    r = run_make("features", *args)
    assert r.returncode == 0, r.stderr
    assert {p.name for p in (features / input_id(src)).iterdir() if not p.name.startswith(".")} == {
        "vgg16-avg-32-none-np1", "resnet50v2-avg-32-none-np1"}

    r = run_make("compare", *args, "FOLDS=3")
    assert r.returncode == 0, r.stderr
    matrix = pd.read_csv(out / "backbones.csv")
    assert list(matrix.columns[:7]) == ["backbone", "head", "accuracy", "balanced_accuracy",
                                        "macro_f1", "cv_mean", "cv_std"]
    assert list(zip(matrix["backbone"], matrix["head"])) == [
        (b, h) for b in ("vgg16", "resnet50v2") for h in ("logreg", "svm", "mlp")]
    assert matrix.groupby("backbone")["dim"].first().to_dict() == {"vgg16": 512, "resnet50v2": 2048}
    for backbone in ("vgg16", "resnet50v2"):  # each cell is that backbone's own comparison
        own = pd.read_csv(out / backbone / "comparison.csv")
        rows = matrix[matrix["backbone"] == backbone].reset_index(drop=True)
        pd.testing.assert_series_equal(rows["cv_mean"], own["cv_mean"])
        assert json.loads((out / backbone / "run.json").read_text())["features_key"] == f"{backbone}-avg-32-none-np1"
    split = [pd.read_csv(out / b / "split.csv") for b in ("vgg16", "resnet50v2")]
    pd.testing.assert_frame_equal(split[0], split[1])  # the same images on the same side
    run = json.loads((out / "run.json").read_text())
    best = matrix.loc[matrix["cv_mean"].idxmax(), "backbone"]
    assert run["backbones"] == ["vgg16", "resnet50v2"] and run["best_backbone"] == best
    assert run["features_key"] == f"{best}-avg-32-none-np1"  # the top level is the best one's run
    assert (out / "backbones.png").stat().st_size > 1000

    r = run_make("report", *args)
    assert r.returncode == 0, r.stderr
    page = (out / "report.html").read_text(encoding="utf-8")
    section = page.split('<section id="backbones">', 1)[1].split("</section>", 1)[0]
    assert section.count("<tr>") == 1 + 6  # header and 2 x 3 cells
    assert "resnet50v2-avg-32-none-np1" in section and "data:image/png;base64," in section


def test_compare_backbones_refuses_caches_of_different_images(tmp_path):
    from classify import DataError
    from classify.matrix import compare_backbones, settings_for

    src, features = tmp_path / "in", tmp_path / "features"
    write_class_folder(src, 4)
    quiet = dict(progress=False, log=lambda *_: None)
    extract_features(src, features, Settings("resnet50v2", "none", 32), **quiet)
    colour_image((210, 40, 40), 99).save(src / "red" / "late.png")
    extract_features(src, features, Settings("vgg16", "none", 32), **quiet)
    both = settings_for(["vgg16", "resnet50v2"], "none", 32, "avg", "fp32", None)
    with pytest.raises(DataError, match=r"hold different images \(first difference: 'red/late.png'\)"
                                        r".*make features BACKBONES=vgg16,resnet50v2"):
        compare_backbones(features, both, tmp_path / "out", in_dir=str(src), log=lambda *_: None)
    assert not (tmp_path / "out" / "backbones.csv").exists()
    with pytest.raises(ValueError, match="LAYER must be"):
        settings_for(["vgg16", "resnet50v2"], "none", 32, "avg", "fp32", "block4_pool")
