"""features/compare BACKBONES=...: every head on every backbone, and the report's matrix."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from conftest import colour_image, run_make, write_class_folder
from helpers import run_main
from extract import Settings, extract_features, input_id


def test_compare_backbones_writes_the_matrix_and_the_report_shows_it(tmp_path):
    src, features, out = tmp_path / "in", tmp_path / "features", tmp_path / "out"
    write_class_folder(src, 8)
    args = [f"IN={src}", f"FEATURES={features}", f"OUT={out}", "WEIGHTS=none", "SIZE=32",
            "BACKBONES=vgg16,resnet50v2"]
    # the extraction through the command's main in this process (TensorFlow is loaded here
    # already); make's passing of BACKBONES to it is the dry run's
    dry = run_make("-n", "features", *args, timeout=60)
    assert dry.returncode == 0 and "--backbones vgg16,resnet50v2" in dry.stdout, dry.stdout + dry.stderr
    r = run_main("extract", "--in", src, "--features", features, "--weights", "none", "--size", "32",
                 "--backbones", "vgg16,resnet50v2", "--quiet")
    assert r.returncode == 0, r.stderr
    assert {p.name for p in (features / input_id(src)).iterdir() if not p.name.startswith(".")} == {
        "vgg16-avg-32-none-np1", "resnet50v2-avg-32-none-np1"}

    r = run_make("compare", *args, "FOLDS=3", "TUNE=0", "REPEATS=1", "JOBS=1")
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
    test = run["backbone_test"]  # each backbone's best head against the best cell, same folds
    assert test["best"] == best and set(test["verdicts"]) == {"vgg16", "resnet50v2"} and test["verdict"]
    assert matrix.groupby("backbone")["backbone_verdict"].first().to_dict() == test["verdicts"]
    assert (out / "backbones.png").stat().st_size > 1000

    from classify.report.cli import main as report  # what make report runs, in this process

    assert report(["--in", str(src), "--features", str(features), "--weights", "none", "--size", "32",
                   "--out", str(out)]) == 0
    page = (out / "report.html").read_text(encoding="utf-8")
    section = page.split('<section id="backbones">', 1)[1].split("</section>", 1)[0]
    assert section.count("<tr>") == 1 + 6  # header and 2 x 3 cells
    assert "resnet50v2-avg-32-none-np1" in section and "data:image/png;base64," in section
    assert "Across backbones:" in section


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


def _cv_scores(folder, head_scores: dict, n_images: int = 20, repeats: int = 1):
    """Writes folder/cv_scores.csv: {head: [score per fold, repeat after repeat]}."""
    folder.mkdir(parents=True)
    rows = []
    for head, scores in head_scores.items():
        folds = len(scores) // repeats
        rows += [(head, k // folds, k % folds, s, n_images) for k, s in enumerate(scores)]
    pd.DataFrame(rows, columns=["head", "repeat", "fold", "score", "n_images"]).to_csv(folder / "cv_scores.csv", index=False)


def _matrix(cells: dict) -> pd.DataFrame:
    return pd.DataFrame([{"backbone": b, "head": h, "cv_mean": sum(s) / len(s)}
                         for (b, h), s in cells.items()])


def test_the_backbones_get_a_paired_test_and_one_overall_verdict(tmp_path):
    # backbones.csv had one "best" per backbone and no test across backbones
    from classify.matrix import backbone_test

    cells = {("vgg16", "logreg"): [0.70, 0.72, 0.69, 0.71, 0.70], ("vgg16", "svm"): [0.74, 0.75, 0.73, 0.76, 0.74],
             ("convnexttiny", "logreg"): [0.90, 0.91, 0.89, 0.92, 0.90], ("convnexttiny", "svm"): [0.88, 0.9, 0.87, 0.9, 0.88],
             ("resnet50v2", "logreg"): [0.91, 0.86, 0.92, 0.87, 0.89], ("resnet50v2", "svm"): [0.5, 0.5, 0.5, 0.5, 0.5]}
    for b in ("vgg16", "convnexttiny", "resnet50v2"):
        _cv_scores(tmp_path / b, {h: s for (bb, h), s in cells.items() if bb == b}, n_images=400)
    test = backbone_test(tmp_path, _matrix(cells), same_folds=True)
    assert test["best"] == "convnexttiny" and test["heads"] == {"vgg16": "svm", "convnexttiny": "logreg",
                                                                "resnet50v2": "logreg"}
    assert test["verdicts"] == {"convnexttiny": "best", "vgg16": "worse", "resnet50v2": "tied"}
    assert test["p_vs_best"]["vgg16"] < 0.05 < test["p_vs_best"]["resnet50v2"]
    assert test["verdict"].startswith("no backbone is clearly best: convnexttiny (logreg) has the highest cv_mean")
    assert "resnet50v2 (logreg, p=" in test["verdict"] and "vgg16 is worse" in test["verdict"]
    clear = backbone_test(tmp_path, _matrix({k: v for k, v in cells.items() if k[0] != "resnet50v2"}), True)
    assert clear["verdict"].startswith("convnexttiny (logreg) is the best backbone")
    apart = backbone_test(tmp_path, _matrix(cells), same_folds=False)
    assert apart["verdicts"] == {} and apart["verdict"].startswith("not tested: the backbones' folds differ")


def test_an_image_rejected_by_one_backbone_is_named_with_its_rejection_and_fix(tmp_path):
    # the message said "run make features ... again", which cannot help a file one backbone's
    # extraction rejected, and named neither rejected.csv nor the fix
    from classify import DataError
    from classify.matrix import check_same_images, settings_for

    src, features = tmp_path / "in", tmp_path / "features"
    write_class_folder(src, 3)
    quiet = dict(progress=False, log=lambda *_: None)
    extract_features(src, features, Settings("resnet50v2", "none", 32), **quiet)
    (src / "red" / "img_001.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"broken" * 10)  # broken since
    extract_features(src, features, Settings("vgg16", "none", 32), **quiet)
    both = settings_for(["vgg16", "resnet50v2"], "none", 32, "avg", "fp32", None)
    with pytest.raises(DataError) as err:
        check_same_images(features, both, in_dir=str(src))
    text = str(err.value)
    assert "(first difference: 'red/img_001.png')" in text
    assert "vgg16's extraction rejected it (" in text and "vgg16-avg-32-none-np1/rejected.csv" in text
    assert "fix or replace that file in IN (or delete it), then run make features BACKBONES=vgg16,resnet50v2" in text
