"""ENGINE=ray against ENGINE=local: the same cache on each Keras backend, through a running
cluster (RAY_ADDRESS) as well as a Ray started by the run, the same comparison, a resume after
kill -9, one clear line for an unusable RAY_ADDRESS.

Every test that starts Ray is here, in one module: a parallel run (`make test`, pytest-xdist
with ``--dist loadfile``) keeps a module on one worker, so no two Ray instances start at once and
RAY_ADDRESS=auto finds none."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import write_class_folder
from extract import Settings, extract_features, read_cache


def _quiet(*_a, **_k):
    pass


# ------------------------------------------------------------------------------------ ENGINE=ray

ray = pytest.importorskip("ray", reason="ENGINE=ray is optional: `make setup-ray` installs it "
                                        "(make test does)")


def test_an_unusable_ray_address_ends_in_one_clear_line(two_class, tmp_path):
    """RAY_ADDRESS=auto with no Ray running. Here, before the tests below start Ray: "auto"
    connects to any Ray running on this machine (Ray's legacy rule), so this test shares the
    module, and with it the worker of a parallel run, of every test that starts Ray."""
    from conftest import run_cli

    r = run_cli("extract", "--in", two_class, "--features", tmp_path / "f", "--weights", "none",
                "--size", "32", "--quiet", "--engine", "ray", env={"RAY_ADDRESS": "auto"}, timeout=300)
    assert r.returncode == 2, r.stderr[-2000:]
    assert "Traceback" not in r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "RAY_ADDRESS" in last and "auto" in last


@pytest.fixture(scope="module", autouse=True)
def _ray_stops_after_this_module():
    """Tests here may start Ray in this process; it must not linger for the rest of the suite."""
    yield
    if ray.is_initialized():
        ray.shutdown()


@pytest.fixture(scope="module")
def ray_here():
    """Ray started in this process as a run starts it on this machine (``ENGINE=ray`` without
    RAY_ADDRESS); its address, for commands that use it as a cluster (RAY_ADDRESS=<address>).
    The tests below share it: a Ray start costs seconds and a dozen processes."""
    from extract.engine_ray import start

    said = []
    ray_module = start(log=said.append)
    assert said and said[0].startswith("Ray: started on this machine"), said
    return ray_module.get_runtime_context().gcs_address


@pytest.fixture(scope="module")
def two_hundred(tmp_path_factory):
    """200 images (red/blue/green) and their cache made by the local engine."""
    root = tmp_path_factory.mktemp("engines")
    write_class_folder(root / "in", 67, classes=("red", "blue", "green"))
    (root / "in" / "green" / "img_066.png").unlink()  # 200 images
    (root / "in" / "blue" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"junk" * 10)
    local = extract_features(root / "in", root / "local", Settings(weights="none", size=32),
                             progress=False, log=_quiet)
    assert local.n == 200 and local.rejected == 1
    return root, local


def test_make_features_on_a_ray_cluster_runs_the_chosen_backend_in_its_model_actors(
        two_hundred, ray_here, tmp_path):
    """`make features ENGINE=ray BACKEND=jax RAY_ADDRESS=<a running cluster>`: the project's code
    travels to the cluster, BACKEND travels with the settings to the actors, and JAX on Ray gives
    the vectors, manifest and rejections of TensorFlow on this machine. On a small folder (JAX's
    convolutions on a CPU are slow); the run over 200 images on Ray is the resume test's."""
    import importlib.util
    import shutil

    from conftest import run_make

    root, _ = two_hundred
    src = tmp_path / "in"
    for name in ("red", "blue"):
        (src / name).mkdir(parents=True)
        for path in sorted((root / "in" / name).glob("img_00*.png")):
            shutil.copy(path, src / name / path.name)
    shutil.copy(root / "in" / "blue" / "broken.png", src / "blue" / "broken.png")
    local = extract_features(src, tmp_path / "local", Settings(weights="none", size=32),
                             progress=False, log=_quiet)
    assert (local.n, local.rejected) == (20, 1)
    if importlib.util.find_spec("jax") is None:
        pytest.skip("jax is not installed; JAX is optional: `make test` installs it (requirements-jax.txt)")
    backend = "jax"
    r = run_make("features", f"IN={src}", f"FEATURES={tmp_path / 'features'}", "WEIGHTS=none",
                 "SIZE=32", "ENGINE=ray", f"BACKEND={backend}", timeout=600,
                 env={"JAX_PLATFORMS": "cpu", "RAY_ADDRESS": ray_here})
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "computed 20, reused 0, rejected 1" in r.stdout and f"Ray: cluster {ray_here}" in r.stdout
    folder = Path(r.stdout.strip().splitlines()[-1].split(" -> ")[1])
    emb, rows, meta = read_cache(folder)
    ref_emb, ref_rows, _ = read_cache(Path(local.folder))
    assert meta["backend"] == backend and meta["computed"] == 20 and rows == ref_rows
    assert meta["device"] and not meta["device"].startswith("none needed")
    assert np.abs(emb - ref_emb).max() <= 1e-4 * max(1.0, float(np.abs(ref_emb).max()))
    for name in ("manifest.csv", "rejected.csv"):
        assert (folder / name).read_bytes() == (Path(local.folder) / name).read_bytes()


def test_ray_engine_killed_part_way_resumes(two_hundred, ray_here, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    from conftest import ROOT, vectors_in

    root, local = two_hundred
    features = tmp_path / "features"
    cmd = [sys.executable, "-m", "extract", "--in", str(root / "in"), "--features", str(features),
           "--weights", "none", "--size", "32", "--batch", "4", "--engine", "ray", "--quiet",
           "--flush-seconds", "0"]
    # Each model actor waits at its 11th batch of 4 (of about 50 in all), so the run cannot end
    # first. Ray hands an actor's results back per read block of about 16 files (4-5 batches),
    # so by then at least two blocks are done and saved. The run uses the Ray of this process as
    # its cluster; its actors end with their driver.
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True, env=dict(os.environ, EMBEDCMP_TEST_PAUSE_AT_BATCH="11",
                                                             RAY_ADDRESS=ray_here))
    partial = Path(local.folder.replace(str(root / "local"), str(features))).parent / ".partial"
    end = time.time() + 300
    while time.time() < end and proc.poll() is None and vectors_in(partial) < 8:
        time.sleep(0.1)
    assert proc.poll() is None, proc.communicate()
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    again = extract_features(root / "in", features, Settings(weights="none", size=32),
                             engine="ray", progress=False, log=_quiet)
    assert 0 < again.computed < 200 and again.computed + again.reused == 200
    emb, rows, meta = read_cache(Path(again.folder))
    ref_emb, ref_rows, _ = read_cache(Path(local.folder))
    assert rows == ref_rows and meta["device"] and not meta["device"].startswith("none needed")
    np.testing.assert_allclose(emb, ref_emb, rtol=0, atol=1e-5)
    for name in ("manifest.csv", "rejected.csv"):
        assert (Path(again.folder) / name).read_bytes() == (Path(local.folder) / name).read_bytes()


def test_ray_engine_compare_matches_local(two_hundred, ray_here, tmp_path, capsys):
    """`compare --engine ray` gives the comparison of the local engine. In this process, on the
    Ray started here; make passes ENGINE on."""
    import json

    import pandas as pd

    from classify.__main__ import main
    from conftest import run_make

    dry = run_make("-n", "compare", "ENGINE=ray", timeout=60)
    assert dry.returncode == 0 and "--engine ray" in dry.stdout, dry.stdout + dry.stderr
    root, _ = two_hundred
    # the folds' fits go through joblib whether or not they tune: fixed settings, one round
    args = ["compare", "--in", str(root / "in"), "--features", str(root / "local"), "--weights", "none",
            "--size", "32", "--folds", "3", "--heads", "logreg,svm", "--tune", "0", "--repeats", "1"]
    outs = {}
    for engine, jobs in (("local", "1"), ("ray", "0")):  # one job here; on Ray, every core's
        out = tmp_path / engine
        assert main([*args, "--out", str(out), "--engine", engine, "--jobs", jobs]) == 0
        printed = capsys.readouterr().out
        assert "Best head" in printed
        assert json.loads((out / "run.json").read_text())["engine"] == engine
        outs[engine] = pd.read_csv(out / "comparison.csv").drop(columns=["fit_seconds", "cv_seconds"])
    pd.testing.assert_frame_equal(outs["local"], outs["ray"])
