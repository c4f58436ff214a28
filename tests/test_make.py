"""End to end through the Makefile, as a user runs it: help, features -> compare, the demo."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd

from conftest import run_make, write_class_folder
from extract import cache_folder, read_cache

KEY = "vgg16-avg-64-none-np1"


def test_help_lists_every_target_and_variable():
    r = run_make("help")
    assert r.returncode == 0
    makefile = (run_make.__globals__["ROOT"] / "Makefile").read_text()
    targets = re.findall(r"^([a-z-]+):.*## ", makefile, re.M)
    variables = re.findall(r"^([A-Z_]+) \?=", makefile, re.M)
    assert {"features", "compare", "audit", "report", "predict", "demo", "test", "bench",
            "setup"} <= set(targets)
    for name in targets:
        assert f"make {name}" in r.stdout, name
    documented = set(re.findall(r"^  ([A-Z_]+)=", r.stdout, re.M))
    assert documented == set(variables)
    contract = ("IN FEATURES OUT BACKBONE WEIGHTS SIZE POOLING BATCH PRECISION STRICT HEADS SEED "
                "TEST_SIZE FOLDS MAX_PIXELS JOBS GROUPS DUP_THRESHOLD IMAGES HEAD DEMO DATASET")
    assert set(contract.split()) <= documented


def test_features_then_compare(tmp_path):
    src, features, out = tmp_path / "in", tmp_path / "features", tmp_path / "out"
    write_class_folder(src, 10)
    args = [f"IN={src}", f"FEATURES={features}", f"OUT={out}", "WEIGHTS=none", "SIZE=64"]

    r = run_make("features", *args)
    assert r.returncode == 0, r.stderr
    folder = cache_folder(features, src, KEY)
    emb, rows, meta = read_cache(folder)
    assert emb.shape == (20, 512) and emb.dtype == np.float32
    assert {row["path"].split("/")[0] for row in rows} == {"red", "blue"}
    assert all(row["path"].startswith(row["label"] + "/") for row in rows)
    assert meta["computed"] == 20

    # a second run finds everything cached (which images are embedded again when some are new or
    # changed: test_extract and test_cache, in this process)
    r = run_make("features", *args)
    assert r.returncode == 0 and "computed 0, reused 20" in r.stdout

    r = run_make("compare", *args, "FOLDS=3", "TUNE=0", "REPEATS=1", "JOBS=1")
    assert r.returncode == 0, r.stderr
    comp = pd.read_csv(out / "comparison.csv")
    assert list(comp["head"]) == ["logreg", "svm", "mlp"]
    assert (comp["accuracy"] >= 0.9).all(), comp
    assert "Best head:" in r.stdout and "CV bal. acc." in r.stdout  # the answer and its table are printed
    pred = pd.read_csv(out / "predictions.csv")
    labels = {row["path"]: row["label"] for row in read_cache(folder)[1]}
    assert all(labels[p] == label for p, label in zip(pred["path"], pred["label"]))
    for name in ("logreg", "svm", "mlp"):
        assert (out / "models" / f"{name}.json").read_text().count(name) >= 1
        report = (out / "reports" / f"{name}.txt").read_text()
        assert "precision" in report and "red" in report and "blue" in report

    r = run_make("compare", *args, "HEADS=logreg,tree")
    assert r.returncode != 0 and "known heads: logreg, svm, mlp" in r.stderr


def test_compare_without_features_says_how_to_make_them(tmp_path):
    r = run_make("compare", f"FEATURES={tmp_path / 'none'}", f"OUT={tmp_path / 'out'}", "SIZE=64")
    assert r.returncode != 0
    assert "make features" in r.stderr and "SIZE=64" in r.stderr


def test_demo_runs_offline_to_the_end(tmp_path):
    """The whole demo pipeline (input, features, compare with its default tuning, report) on the
    first 100 digits (DEMO_IMAGES): the full 1,797 are written by the demo's first step below."""
    demo = tmp_path / "demo"
    offline = {"KERAS_HOME": str(tmp_path / "empty-keras-home"), "HTTPS_PROXY": "http://127.0.0.1:9",
               "https_proxy": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9"}
    r = run_make("demo", f"DEMO={demo}", "DEMO_IMAGES=100", timeout=1500, env=offline)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert len(list((demo / "in").rglob("*.png"))) == 100
    assert "the first 100 of scikit-learn's digits" in r.stdout
    comp = pd.read_csv(demo / "out" / "comparison.csv")
    assert set(comp["head"]) == {"logreg", "svm", "mlp"}
    assert comp["accuracy"].max() > 0.8
    run = json.loads((demo / "out" / "run.json").read_text())
    meta = json.loads((Path(run["features_folder"]) / "meta.json").read_text())
    assert Path(run["features_folder"]).parent.parent == (demo / "features").resolve()
    assert meta["n"] == 100 and len(meta["class_names"]) == 10
    assert meta["weights"] == "none"  # offline: the demo fell back, and says so
    assert "RANDOM" in r.stderr and meta["weights_fallback"]
    assert "head" in r.stdout and "accuracy" in r.stdout
    report = demo / "out" / "report.html"
    assert report.is_file() and str(report) in r.stdout  # the demo ends by printing its path
    assert "http://" not in report.read_text() and "https://" not in report.read_text()


def test_the_full_demo_input_is_every_digit_and_the_same_commands(tmp_path):
    """Without DEMO_IMAGES the demo writes all 1,797 digits (a second run writes none) and runs
    the same commands as the subset above, on them."""
    from classify.demo import main

    assert main([str(tmp_path / "in")]) == 0
    assert len(list((tmp_path / "in").rglob("*.png"))) == 1797
    assert {p.name for p in (tmp_path / "in").iterdir()} == {str(d) for d in range(10)}
    full = run_make("-n", "demo", f"DEMO={tmp_path}", timeout=60)
    part = run_make("-n", "demo", f"DEMO={tmp_path}", "DEMO_IMAGES=100", timeout=60)
    assert full.returncode == 0 and part.returncode == 0
    assert f'classify.demo "{tmp_path}/in" \n' in full.stdout
    assert full.stdout.replace(f'"{tmp_path}/in" \n', f'"{tmp_path}/in" 100\n', 1) == part.stdout
