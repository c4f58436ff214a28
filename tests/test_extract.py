"""Stage 1: the cache contract, row alignment, incremental runs, layouts, resume, weights offline."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import colour_image, run_cli, write_class_folder
from extract import Settings, WeightsUnavailable, cache_folder, extract_features, read_cache
from extract.shards import Shards
from extract.files import list_images
from extract.model import build

S64 = Settings(weights="none", size=64)


def _extract(in_dir, features, settings=S64, **kw):
    return extract_features(in_dir, features, settings, progress=False, log=lambda *_: None, **kw)


def _manifest(folder):
    emb, rows, meta = read_cache(folder)
    return emb, rows, meta


def test_cache_contract_and_incremental_runs(two_class, tmp_path):
    features = tmp_path / "features"
    first = _extract(two_class, features)
    inputs = [p for p in features.iterdir() if not p.name.startswith(".")]
    assert [p.name for p in inputs] == [f"in-{hashlib.sha256(str(two_class).encode()).hexdigest()[:8]}"]
    folders = [p for p in inputs[0].iterdir() if not p.name.startswith(".")]
    assert [p.name for p in folders] == ["vgg16-avg-64-none-np1"]
    folder = folders[0]
    assert Path(first.folder) == folder
    assert sorted(p.name for p in folder.iterdir()) == [
        "embeddings.npy", "manifest.csv", "meta.json", "rejected.csv"]
    emb, rows, meta = _manifest(folder)
    assert emb.shape == (20, 512) and emb.dtype == np.float32
    assert [r["path"] for r in rows] == sorted(r["path"] for r in rows)
    assert {r["path"]: r["label"] for r in rows} == {
        f"{c}/img_{i:03d}.png": c for c in ("red", "blue") for i in range(10)}
    assert all(r["split"] == "" for r in rows)
    for key in ("backbone", "weights", "image_size", "pooling", "precision", "dim", "n",
                "class_names", "computed", "reused", "rejected", "seconds"):
        assert key in meta
    assert (meta["computed"], meta["reused"], meta["n"], meta["dim"]) == (20, 0, 20, 512)
    assert meta["input"] == str(two_class) and meta["input_id"] == folder.parent.name
    assert meta["class_names"] == ["blue", "red"]
    assert first.computed == 20

    again = _extract(two_class, features)
    assert (again.computed, again.reused) == (0, 20)
    emb2, _, meta2 = _manifest(folder)
    np.testing.assert_array_equal(emb, emb2)
    assert meta2 == meta  # nothing new: the cache is not rewritten; meta counts the run that wrote it

    write_class_folder(two_class, per_class=2, classes=("red",), start=50)
    colour_image((40, 40, 210), seed=999).save(two_class / "blue" / "new.png")
    third = _extract(two_class, features)
    assert (third.computed, third.reused, third.n) == (3, 20, 23)
    emb3, rows3, _ = _manifest(folder)
    assert emb3.shape == (23, 512)
    # Row alignment: each old path keeps exactly its old vector.
    old = {r["path"]: emb[i] for i, r in enumerate(rows)}
    for i, r in enumerate(rows3):
        if r["path"] in old:
            np.testing.assert_array_equal(emb3[i], old[r["path"]])


def test_changed_deleted_and_renamed_images(two_class, tmp_path):
    features = tmp_path / "features"
    folder = Path(_extract(two_class, features).folder)
    emb, rows, _ = _manifest(folder)
    vec = {r["path"]: emb[i] for i, r in enumerate(rows)}

    os.rename(two_class / "red" / "img_000.png", two_class / "red" / "renamed.png")
    (two_class / "blue" / "img_009.png").unlink()
    colour_image((200, 40, 40), seed=4242).save(two_class / "red" / "img_001.png")  # changed content
    s = _extract(two_class, features)
    assert (s.computed, s.reused, s.n) == (1, 18, 19)
    emb2, rows2, _ = _manifest(folder)
    paths2 = [r["path"] for r in rows2]
    assert "blue/img_009.png" not in paths2
    i = paths2.index("red/renamed.png")
    np.testing.assert_array_equal(emb2[i], vec["red/img_000.png"])
    assert not np.allclose(emb2[paths2.index("red/img_001.png")], vec["red/img_001.png"])


def test_split_layout_fills_split_column(tmp_path):
    root = tmp_path / "in"
    write_class_folder(root, 3, split="train")
    write_class_folder(root, 2, split="Test")
    listing = list_images(root)
    assert listing.layout == "split/class"
    assert {(c.split, c.label) for c in listing.candidates} == {
        ("train", "red"), ("train", "blue"), ("test", "red"), ("test", "blue")}
    s = _extract(root, tmp_path / "f")
    _, rows, meta = _manifest(Path(s.folder))
    assert {r["split"] for r in rows} == {"train", "test"}
    assert sum(r["split"] == "test" for r in rows) == 4
    assert meta["splits"] == ["test", "train"]


def test_class_layout_with_subfolders_and_non_split_names(tmp_path):
    root = tmp_path / "in"
    write_class_folder(root, 2, classes=("red",))
    nested = root / "blue" / "deep" / "er"
    nested.mkdir(parents=True)
    colour_image((40, 40, 210), 1).save(nested / "x.png")
    (root / "train").mkdir()  # a class that happens to be called train, beside a non-split
    colour_image((40, 190, 60), 2).save(root / "train" / "y.png")
    listing = list_images(root)
    assert listing.layout == "class"
    assert {c.path: c.label for c in listing.candidates}["blue/deep/er/x.png"] == "blue"
    assert {c.label for c in listing.candidates} == {"red", "blue", "train"}


def test_key_changes_with_every_setting():
    keys = {Settings(weights="none", size=64).key, Settings(weights="none", size=96).key,
            Settings(weights="none", size=64, pooling="max").key,
            Settings(weights="none", size=64, precision="bf16").key,
            Settings(weights="imagenet", size=64).key}
    assert len(keys) == 5
    assert Settings().key == "vgg16-avg-224-imagenet"
    assert Settings(precision="bf16").key == "vgg16-avg-224-imagenet-bf16"


def test_bad_settings_are_refused_with_the_rule():
    with pytest.raises(ValueError, match="POOLING must be one of"):
        Settings(pooling="mean").check()
    with pytest.raises(ValueError, match="PRECISION"):
        Settings(precision="int8").check()
    with pytest.raises(ValueError, match="SIZE must be"):
        Settings(size=8).check()
    with pytest.raises(WeightsUnavailable, match="WEIGHTS=none"):
        Settings(weights="/nonexistent/weights.h5").check()


def test_resume_uses_finished_batches(two_class, tmp_path):
    """Finished batches of an interrupted run are reused, and give the same vectors."""
    features = tmp_path / "features"
    _extract(two_class, tmp_path / "reference")
    ref, ref_rows, _ = _manifest(cache_folder(tmp_path / "reference", two_class, S64.key))
    by_sha = {r["sha256"]: ref[i] for i, r in enumerate(ref_rows)}
    # Simulate a run that died after its first batch: a shard with 7 finished images.
    folder = cache_folder(features, two_class, S64.key)
    shards = Shards(folder.parent, S64.key)
    done = sorted(by_sha)[:7]
    shards.save(done, np.stack([by_sha[s] for s in done]), [])
    # And a damaged shard, as a kill -9 during a write could leave without the atomic rename.
    (shards.folder / "junk.npz").write_bytes(b"PK\x03\x04 truncated")
    logs = []
    s = extract_features(two_class, features, S64, progress=False, log=logs.append)
    assert (s.computed, s.reused) == (13, 7)
    assert any("unusable partial file junk.npz" in m for m in logs)
    emb, rows, _ = _manifest(folder)
    for i, r in enumerate(rows):
        np.testing.assert_allclose(emb[i], by_sha[r["sha256"]], rtol=1e-4, atol=1e-5)
    assert not shards.folder.exists()


def test_damaged_cache_is_recomputed_not_trusted(two_class, tmp_path):
    features = tmp_path / "features"
    folder = Path(_extract(two_class, features).folder)
    npy = folder / "embeddings.npy"
    npy.write_bytes(npy.read_bytes()[:1000])  # truncated
    logs = []
    s = extract_features(two_class, features, S64, progress=False, log=logs.append)
    assert s.computed == 20
    assert any("damaged cache" in m for m in logs)
    emb, _, _ = _manifest(folder)
    assert emb.shape == (20, 512)


def test_weights_offline_error_names_cache_file_and_alternatives(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras-home"))
    from keras.src.utils import file_utils

    def offline(*args, **kwargs):
        raise Exception("URL fetch failure: [Errno -2] Name or service not known")

    monkeypatch.setattr(file_utils, "get_file", offline)
    with pytest.raises(WeightsUnavailable) as err:
        build(Settings(weights="imagenet", size=32))
    text = str(err.value)
    assert "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5" in text
    assert str(tmp_path / "keras-home" / "models") in text
    assert "WEIGHTS=<path" in text and "WEIGHTS=none" in text
    lines = text.splitlines()  # the fix comes first, one option per line; the error text last
    assert lines[1].startswith("Fix") and lines[-1].startswith("Download error: Exception: URL fetch")
    assert text.index("WEIGHTS=none") < text.index("Download error") and max(map(len, lines)) <= 160


def test_weights_offline_cli_exits_nonzero(two_class, tmp_path):
    env = {"KERAS_HOME": str(tmp_path / "empty-keras-home"), "HTTPS_PROXY": "http://127.0.0.1:9",
           "HTTP_PROXY": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9"}
    r = run_cli("extract", "--in", two_class, "--features", tmp_path / "f", "--size", "32",
                "--quiet", env=env)
    assert r.returncode == 2, r.stderr
    assert "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5" in r.stderr
    assert "WEIGHTS=none" in r.stderr
    assert not cache_folder(tmp_path / "f", two_class, "vgg16-avg-32-imagenet").exists()


def test_weights_file_is_loaded_and_keyed_by_hash(two_class, tmp_path):
    model = build(Settings(weights="none", size=32))
    path = tmp_path / "my weights.weights.h5"
    model.save_weights(path)
    s = Settings(weights=str(path), size=32)
    assert s.key.startswith("vgg16-avg-32-my_weights-") and len(s.key.split("-")[-1]) == 8
    summary = _extract(two_class, tmp_path / "f", settings=s)
    emb_file, _, meta = _manifest(Path(summary.folder))
    none = _extract(two_class, tmp_path / "g", settings=Settings(weights="none", size=32))
    emb_none, _, _ = _manifest(Path(none.folder))
    np.testing.assert_allclose(emb_file, emb_none, rtol=1e-4, atol=1e-5)
    assert meta["weights"] == str(path)


def test_cli_closing_line_same_files_as_in_process_and_empty_input(two_class, tmp_path):
    """The command's closing line; its cache equals the one made in this process (a new process
    builds the same model from the same seed); an empty or missing input exits with 2."""
    a, b = tmp_path / "a", tmp_path / "b"
    _extract(two_class, a)
    r = run_cli("extract", "--in", two_class, "--features", b, "--weights", "none", "--size", "64",
                "--quiet")
    assert r.returncode == 0, r.stderr
    line = r.stdout.strip().splitlines()[-1]
    for word in ("computed 20", "reused 0", "rejected 0", "images/s", "device "):
        assert word in line
    assert "device none needed" not in line  # the device the model ran on, named
    fa, fb = cache_folder(a, two_class, S64.key), cache_folder(b, two_class, S64.key)
    ea, ra, _ = _manifest(fa)
    eb, rb, _ = _manifest(fb)
    np.testing.assert_allclose(ea, eb, rtol=1e-5, atol=1e-6)
    assert [r["path"] for r in ra] == [r["path"] for r in rb]
    assert (fa / "manifest.csv").read_bytes() == (fb / "manifest.csv").read_bytes()
    empty = tmp_path / "empty"
    empty.mkdir()
    r = run_cli("extract", "--in", empty, "--features", tmp_path / "f", "--weights", "none",
                "--size", "32", "--quiet")
    assert r.returncode == 2 and "no image could be embedded" in r.stderr
    r = run_cli("extract", "--in", tmp_path / "missing", "--features", tmp_path / "f",
                "--weights", "none", "--quiet")
    assert r.returncode == 2 and "does not exist" in r.stderr


def test_precision_bf16_stores_float32_close_to_fp32(two_class, tmp_path):
    a = _extract(two_class, tmp_path / "f", settings=Settings(weights="none", size=32))
    b = _extract(two_class, tmp_path / "f", settings=Settings(weights="none", size=32, precision="bf16"))
    ea, _, _ = _manifest(Path(a.folder))
    eb, _, mb = _manifest(Path(b.folder))
    assert eb.dtype == np.float32 and mb["precision"] == "bf16"
    cos = (ea * eb).sum(1) / np.linalg.norm(ea, axis=1) / np.linalg.norm(eb, axis=1)
    assert cos.min() > 0.98
    shutil.rmtree(tmp_path / "f")


def test_rejected_content_does_not_restart_the_model(two_class, tmp_path):
    """A bad file stays rejected by its hash: a re-run with nothing new computes nothing."""
    (two_class / "red" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)
    features = tmp_path / "features"
    first = _extract(two_class, features)
    assert (first.computed, first.rejected) == (20, 1)
    again = _extract(two_class, features)
    assert (again.computed, again.reused, again.rejected) == (0, 20, 1)
    assert again.device.startswith("none needed")
    _, _, meta = _manifest(Path(again.folder))
    assert list(meta["rejected_sha256"].values())[0].startswith("cannot decode PNG")


def test_stray_files_in_split_folders_are_counted_not_lost(tmp_path):
    root = tmp_path / "in"
    write_class_folder(root, 2, split="train")
    write_class_folder(root, 1, split="test")
    colour_image((200, 40, 40), 3).save(root / "train" / "stray.png")
    listing = list_images(root)
    assert "train/stray.png" in listing.skipped
    assert "train/stray.png" not in [c.path for c in listing.candidates]
