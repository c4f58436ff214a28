"""make bench: its pure pieces (no TensorFlow, no timing assertions)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bench import suite
from bench.__main__ import derive


def test_fake_embeddings_are_non_negative_and_as_hard_as_promised():
    X, y = suite.fake_embeddings(3000, seed=1)
    assert X.shape == (3000, 512) and X.dtype == np.float32
    assert (X >= 0).all() and 0.3 < (X > 0).mean() < 0.95  # ReLU-like: many zeros, not all
    assert np.bincount(y).tolist() == [1500, 1500]
    acc = suite.logreg_cv_accuracy(X, y, folds=3)
    # 12,420 rows score about 0.90; 3,000 rows a little less (more overfitting)
    assert 0.83 <= acc <= 0.95


def test_fake_cache_is_a_valid_cache_for_stage_2(tmp_path):
    from classify import load_features

    X, y = suite.fake_embeddings(60, dim=16)
    settings = suite.write_fake_cache(tmp_path, X, y)
    feats = load_features(tmp_path, settings, dataset=suite.FAKE_DATASET)
    assert feats.X.shape == (60, 16)
    assert feats.class_names == list(suite.CLASSES)
    # rows are sorted by path and each keeps its own vector and label
    i = feats.manifest["path"].tolist().index("square/img_00007.jpg")
    assert np.array_equal(feats.X[i], X[7]) and feats.manifest["label"][i] == "square"


def test_cached_input_is_found_whole_by_a_run(tmp_path):
    """The no-op benchmark's input: a run over it computes nothing and writes nothing."""
    from extract import extract_features

    settings = suite.write_cached_input(tmp_path / "in", tmp_path / "features", 50, dim=8, per_folder=10)
    folder = next((tmp_path / "features").glob(f"*/{settings.key}"))
    before = (folder / "manifest.csv").stat().st_mtime_ns
    s = extract_features(tmp_path / "in", tmp_path / "features", settings, progress=False,
                         log=lambda *_: None)
    assert (s.computed, s.reused, s.n) == (0, 50, 50)
    assert (folder / "manifest.csv").stat().st_mtime_ns == before


def test_the_auto_no_op_input_resolves_from_memory_without_calibrating(tmp_path, monkeypatch):
    """The PRECISION=auto no-op benchmark: the remembered fp32 is looked up, nothing is computed."""
    import dataclasses

    from extract import extract_features
    from extract import precision as P

    settings = suite.write_cached_input(tmp_path / "in", tmp_path / "features", 50, dim=8, per_folder=10)
    suite.remember_fp32(tmp_path / "features", settings)
    monkeypatch.setattr(P, "calibrate", lambda *a, **k: pytest.fail("calibrated"))
    s = extract_features(tmp_path / "in", tmp_path / "features",
                         dataclasses.replace(settings, precision="auto"), batch=32, progress=False,
                         log=lambda *_: None)
    assert (s.computed, s.reused, s.key) == (0, 50, settings.key)


def test_child_peak_is_the_childs_own_memory():
    """The peak of a small child is not inflated by this (larger) test process."""
    import sys

    ballast = np.ones(400 * 2**20 // 8)  # 400 MiB in the parent
    code = "import numpy as np; a = np.ones(100 * 2**20 // 8); a += 1"
    mib, _, rc = suite.child_peak_rss([sys.executable, "-m", "bench.peak_probe_cmd", code])
    assert rc == 0 and 100 <= mib < 350, mib
    assert ballast.sum() > 0


def test_fake_cache_keeps_rows_aligned_past_99999(tmp_path, monkeypatch):
    from extract.cache import read_cache

    X = np.arange(2 * 100_003, dtype=np.float32).reshape(-1, 2)  # row i holds 2i, 2i+1
    settings = suite.write_fake_cache(tmp_path, X, np.arange(len(X)) % 2)
    emb, rows, _ = read_cache(tmp_path / suite.FAKE_DATASET / settings.key)
    number = np.array([int(r["path"].rsplit("_", 1)[1].split(".")[0]) for r in rows])
    assert len(np.unique(emb[:, 0])) == len(X)  # no row written twice
    np.testing.assert_array_equal(emb[:, 0], 2 * number)


def test_generated_images_are_jpeg_files_of_both_classes(tmp_path):
    from PIL import Image

    paths = suite.write_images(tmp_path, 4, shape=(48, 64))
    assert [p.parent.name for p in paths] == ["disc", "square", "disc", "square"]
    with Image.open(paths[0]) as img:
        assert img.format == "JPEG" and img.size == (64, 48)
    assert not np.array_equal(suite.make_image(0, 1, (48, 64)), suite.make_image(0, 2, (48, 64)))


def test_vgg16_flop_count_matches_the_published_figure():
    assert suite.vgg16_gflop_per_image(224) == pytest.approx(30.7, abs=0.1)  # 15.35 G multiply-adds


def fake_raw(**over):
    raw = {
        "rounds": [{"fp32": {"model_only": 7.0, "e2e": 6.6}, "bf16": {"model_only": 14.0, "e2e": 13.0}},
                   {"fp32": {"model_only": 7.2, "e2e": 7.0}, "bf16": {"model_only": 13.0, "e2e": 12.5}},
                   {"fp32": {"model_only": 6.0, "e2e": 5.9}, "bf16": {"model_only": 12.0, "e2e": 11.0}}],
        "incremental_full_seconds": 80.0, "incremental_seconds": 1.6,
        "compare_seconds": 14.0, "compare_tuned_seconds": 55.0, "compare_n": 12420, "compare_n_train": 9936,
        "rss_1x_mib": 900.0, "rss_4x_mib": 945.0, "gflop_per_image": 30.7,
        "bf16_min_cosine": 0.9999, "bf16_logreg_accuracy_change": 0.0,
        "noop_seconds_200k": 4.0, "noop_peak_rss_mib_200k": 240.0, "noop_seconds_200k_auto": 4.1,
        "auto_vs_best": 1.0,
        "compare_seconds_200k": 250.0, "compare_peak_rss_mib_200k": 3000.0,
        "audit_seconds_200k": 600.0, "audit_peak_rss_mib_200k": 3500.0,
    }
    raw.update(over)
    return raw



def _main_results() -> dict:
    """What the main bench writes, from fake measurements: for the tests of the shared file."""
    main = derive(fake_raw())
    main.update({"created": "x", "mode": "quick", "command": "c", "total_seconds": 1.0, "notes": [],
                 "machine": {"cpu": "CPU", "cores": 2, "simd": [], "ram_gib": 1.0, "os": "Linux",
                             "load_average_at_start": [0, 0, 0], "load_average_at_end": [0, 0, 0]},
                 "versions": {"python": "3"},
                 "settings": {"size": 224, "batch": 32, "rounds": 3, "precision": "fp32",
                              "image_shape": [240, 320], "e2e_images": 128}})
    return main

def test_derive_gives_every_required_key_as_medians_of_per_round_ratios():
    out = derive(fake_raw())
    assert set(suite.REQUIRED_KEYS) <= set(out)
    assert out["extract_model_only_ips"] == 7.0
    assert out["extract_efficiency"] == pytest.approx(7.0 / 7.2)  # median of 0.943, 0.972, 0.983
    assert out["bf16_speedup"] == pytest.approx(11.0 / 5.9)  # median of 1.97, 1.79, 1.86
    assert out["incremental_cost_ratio"] == pytest.approx(0.02)
    assert out["seed_style_seconds_12k"] == pytest.approx(10 * 9936 / 7.0)
    assert out["seed_style_over_compare"] == pytest.approx(10 * 9936 / 7.0 / 14.0)
    assert out["compare_tuned_seconds_12k"] == 55.0
    assert out["rss_growth"] == pytest.approx(1.05)
    assert derive(fake_raw(), headline="bf16")["extract_model_only_ips"] == 13.0


def test_results_and_table_are_written(tmp_path):
    results = derive(fake_raw())
    results.update({
        "created": "2026-01-01T00:00:00+00:00", "mode": "quick", "command": "python -m bench --quick",
        "total_seconds": 1.0, "notes": ["a note"],
        "machine": {"cpu": "CPU", "cores": 2, "simd": ["avx2"], "ram_gib": 1.0, "os": "Linux",
                    "load_average_at_start": [0, 0, 0], "load_average_at_end": [0, 0, 0]},
        "versions": {"python": "3"},
        "settings": {"size": 224, "batch": 32, "rounds": 3, "precision": "fp32",
                     "image_shape": [240, 320], "e2e_images": 128},
    })
    suite.write_results(results, tmp_path / "r.json", tmp_path / "B.md")
    data = json.loads((tmp_path / "r.json").read_text())
    assert set(suite.REQUIRED_KEYS) <= set(data)
    md = (tmp_path / "B.md").read_text()
    for key in suite.REQUIRED_KEYS:
        assert f"`{key}`" in md
    assert "| `rss_growth` | 1.05 | <= 1.2 | met |" in md
    assert "a note" in md


def test_backbones_section_is_replaced_in_place_and_kept_by_the_main_bench(tmp_path):
    from bench.backbones import BEGIN, END, markdown, replace_section

    rows = [{"backbone": "vgg16", "size": 224, "dim": 512, "gflop_per_image": 30.7,
             "images_per_second": 7.0, "gflops": 214.9, "first_call_seconds": 2.0, "timed_calls": 3}]
    results = {"created": "2026-01-01T00:00:00+00:00", "mode": "full", "total_seconds": 60.0,
               "settings": {"size": 224, "batch": 8, "batches": 3, "max_seconds": 20.0},
               "machine": {"cpu": "CPU", "cores": 2, "load_average_at_start": [0, 0, 0]},
               "backbones": rows}
    md = tmp_path / "B.md"
    md.write_text("# Benchmarks\n\nold table\n", encoding="utf-8")
    replace_section(md, markdown(results))
    first = md.read_text(encoding="utf-8")
    assert first.startswith("# Benchmarks\n\nold table\n\n" + BEGIN)
    assert "| `vgg16` | 224 | 512 | 30.70 | 7.00 | 215 | 2.0 |" in first
    rows[0]["images_per_second"] = 8.0
    replace_section(md, markdown(results))
    second = md.read_text(encoding="utf-8")
    assert second.count(BEGIN) == 1 and second.count(END) == 1 and "| 8.00 |" in second

    main = _main_results()  # the main bench rewrites the file and keeps the section
    suite.write_results(main, tmp_path / "r.json", md)
    third = md.read_text(encoding="utf-8")
    assert "old table" not in third and "`rss_growth`" in third and "| 8.00 |" in third


def test_scale_measure_sees_the_peak_memory_of_a_child_and_its_children(tmp_path):
    import sys

    from bench.scale import measure

    grandchild = "import numpy as np; a = np.ones(300 * 2**20 // 8); import time; time.sleep(1.0)"
    code = f"import subprocess, sys; subprocess.run([sys.executable, '-c', {grandchild!r}])"
    res = measure([sys.executable, "-c", code])
    assert res["rc"] == 0 and res["peak_rss_mib"] >= 300  # the grandchild's 300 MiB array
    assert res["tree_rss_mib"] >= res["peak_rss_mib"] - 1


def test_scale_section_lists_one_off_runs(tmp_path):
    from bench.scale import keys, scale_section

    run = {"n": 1000, "dim": 512, "prlimit_as": 12_000_000_000, "memory_gb": "auto",
           "compare": {"seconds": 12.5, "rc": 0, "peak_rss_mib": 800.0, "tree_rss_mib": 900.0,
                       "memory_plan": {"method": "nystroem", "components": 256, "n_jobs": 1}},
           "audit": {"seconds": 30.0, "rc": 0, "peak_rss_mib": 850.0, "tree_rss_mib": 950.0,
                     "memory_plan": {"method": "nystroem", "components": 256, "n_jobs": 1},
                     "dup_search": "exact"}}
    (tmp_path / "scale-1k.json").write_text(json.dumps(run))
    text = "\n".join(scale_section(tmp_path))
    assert "| 1,000 x 512 | compare | prlimit --as=12,000,000,000 | 12.5 (rc 0) | 800.0 | 900.0 | nystroem (256 components) | 1 |  |  |" in text
    assert keys(run, "1k") == {"compare_seconds_1k": 12.5, "compare_peak_rss_mib_1k": 800.0,
                               "audit_seconds_1k": 30.0, "audit_peak_rss_mib_1k": 850.0}


def test_time_backbone_measures_a_small_backbone():
    # The embedder returns NumPy arrays since the engines work; `make bench` then
    # stopped in bench.backbones calling .numpy() on one.
    from bench.backbones import QUICK, time_backbone

    row = time_backbone("vgg16", dict(QUICK, size=32))
    assert row["backbone"] == "vgg16" and row["dim"] == 512 and row["timed_calls"] == 1
    assert row["images_per_second"] > 0 and row["gflop_per_image"] > 0


def _gpu_results(bf16_ips: float) -> dict:
    def run(mo, e2e):
        return {"model_only_ips": mo, "end_to_end_ips": e2e, "efficiency": round(e2e / mo, 3),
                "first_call_seconds": 3.0, "computed": 100, "rejected": 0, "gpu_memory_mib": 900.0}
    backends = {"torch": {"backend": "torch", "device": "GPU:0 (H100, 80 GiB)", "fp32": run(1500.0, 1400.0),
                          "bf16": run(bf16_ips, 0.9 * bf16_ips), "bf16_min_cosine": 0.9995},
                "jax": {"backend": "jax", "device": "GPU:0 (H100, 80 GiB)", "fp32": run(1400.0, 1300.0),
                        "bf16": run(4000.0, 3000.0), "bf16_min_cosine": 0.9985}}
    return {"created": "2026-01-01T00:00:00+00:00", "total_seconds": 300.0, "json_name": "bench/gpu.json",
            "settings": {"size": 224, "batch": 256, "images": 16384, "calls": 10, "repeats": 3},
            "machine": {"cpu": "CPU"}, "gpus": "NVIDIA H100, 81559 MiB",
            "decode": {"cores": 16, "per_core_ips": 900.0, "threads": 8, "threads_ips": 4000.0,
                       "pool_processes": 14, "pool_ips": 9000.0},
            "backends": backends}


def test_gpu_summary_holds_the_best_backend_to_the_targets():
    from bench.gpu import summarize

    head = summarize(_gpu_results(6000.0))
    assert head["best_backend"] == "torch" and head["best_bf16_model_only_ips"] == 6000.0
    assert head["best_bf16_efficiency"] == 0.9 and head["worst_bf16_min_cosine"] == 0.9985
    assert head["verdicts"] == {"best_bf16_model_only_ips": "met", "best_bf16_efficiency": "met",
                                "worst_bf16_min_cosine": "MISSED"}
    assert summarize({"backends": {"jax": {"backend": "jax", "error": "exit 1: no GPU"}}}) == {}


def test_gpu_section_is_kept_by_the_main_bench(tmp_path):
    from bench.gpu import BEGIN, END, markdown, summarize
    from bench.backbones import replace_section

    results = _gpu_results(6000.0)
    results["summary"] = summarize(results)
    md = tmp_path / "B.md"
    replace_section(md, markdown(results), BEGIN, END)
    text = md.read_text()
    assert "| torch | GPU:0 (H100, 80 GiB) | bf16 | 6,000.0 | 5,400.0 | 0.900 | 900.0 | 3.0 |" in text
    assert "| `worst_bf16_min_cosine` | 0.9985 | >= 0.999 | MISSED |" in text
    main = _main_results()
    suite.write_results(main, tmp_path / "r.json", md)
    again = md.read_text()
    assert again.count(BEGIN) == 1 and "| torch | GPU:0 (H100, 80 GiB) | bf16 | 6,000.0 |" in again
