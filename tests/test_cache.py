"""Stage 1's cache across inputs: one cache per dataset, vectors shared by content, odd names,
passing failures retried, one read per file, exact recovery, no rewrite when nothing changed."""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import subprocess
import sys
import unicodedata
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT, colour_image, model_dies_at_batch, run_cli, write_class_folder
from extract import Settings, extract_features, read_cache
from extract import atomic, cache, files, load
from extract.atomic import CacheWriteError
from extract.cache import input_id

S64 = Settings(weights="none", size=64)


def _extract(in_dir, features, settings=S64, **kw):
    return extract_features(in_dir, features, settings, progress=False, log=lambda *_: None, **kw)


def _folder(features, in_dir, settings=S64, dataset=None) -> Path:
    return Path(features) / input_id(in_dir, dataset) / settings.key


def test_input_id_is_name_and_path_hash(tmp_path):
    a = tmp_path / "my photos"
    digest = hashlib.sha256(os.path.abspath(a).encode()).hexdigest()[:8]
    assert input_id(a) == f"my_photos-{digest}"
    assert input_id(a, dataset="faces") == "faces"
    assert input_id(tmp_path / "b") != input_id(tmp_path / "c")
    with pytest.raises(ValueError, match="DATASET"):
        input_id(a, dataset="../elsewhere")


def test_two_inputs_share_one_root_without_mixing(tmp_path):
    """IN=a then IN=b: each keeps its own cache; a shared image is embedded once in all."""
    a, b, features = tmp_path / "a", tmp_path / "b", tmp_path / "features"
    write_class_folder(a, 10)  # 20 images
    write_class_folder(b, 11, start=100)  # 22 new images
    shutil.copy(a / "red" / "img_000.png", b / "red" / "shared.png")
    shutil.copy(a / "blue" / "img_000.png", b / "blue" / "shared.png")  # b: 24 images
    assert _extract(a, features).computed == 20
    sb = _extract(b, features)
    assert (sb.computed, sb.reused, sb.n) == (22, 2, 24)
    again = _extract(a, features)
    assert (again.computed, again.reused, again.n) == (0, 20, 20)

    from classify.data import load_features

    fa = load_features(features, S64, in_dir=str(a))
    assert len(fa.manifest) == 20 and set(fa.manifest["path"]) == {
        f"{c}/img_{i:03d}.png" for c in ("red", "blue") for i in range(10)}
    assert fa.meta["input"] == os.path.abspath(a) and fa.meta["input_id"] == input_id(a)
    assert len(load_features(features, S64, in_dir=str(b)).manifest) == 24


def test_a_cache_of_another_folder_is_refused_naming_both(tmp_path):
    a, b, features = tmp_path / "a", tmp_path / "b", tmp_path / "features"
    write_class_folder(a, 3)
    write_class_folder(b, 3, start=50)
    _extract(a, features, dataset="shared")
    from classify.data import DataError, load_features

    with pytest.raises(DataError) as err:
        load_features(features, S64, in_dir=str(b), dataset="shared")
    assert str(a) in str(err.value) and str(b) in str(err.value)


def test_a_copied_dataset_costs_nothing(two_class, tmp_path):
    features = tmp_path / "features"
    _extract(two_class, features)
    copy = tmp_path / "in2"
    shutil.copytree(two_class, copy)
    s = _extract(copy, features)
    assert (s.computed, s.reused, s.n) == (0, 20, 20)
    assert Path(s.folder) == _folder(features, copy)


def test_same_size_and_mtime_under_another_input_is_hashed_again(tmp_path):
    """`cp -p`, `rsync -a`: equal path, size and mtime in another folder say nothing of content."""
    a, b, features = tmp_path / "a", tmp_path / "b", tmp_path / "features"
    write_class_folder(a, 3)
    write_class_folder(b, 3, start=200)
    pa, pb = a / "red" / "same.bmp", b / "red" / "same.bmp"
    colour_image((210, 40, 40), 1).save(pa)
    colour_image((210, 40, 40), 2).save(pb)  # BMP: same dimensions, same size, other pixels
    assert pa.stat().st_size == pb.stat().st_size and pa.read_bytes() != pb.read_bytes()
    os.utime(pb, ns=(pa.stat().st_atime_ns, pa.stat().st_mtime_ns))
    _extract(a, features)
    _extract(b, features)
    _, rows, _ = read_cache(_folder(features, b))
    got = {r["path"]: r["sha256"] for r in rows}["red/same.bmp"]
    assert got == hashlib.sha256(pb.read_bytes()).hexdigest()


def test_odd_names_are_kept_or_rejected_by_name_never_a_crash(two_class, tmp_path):
    """A non-UTF-8 name and two Unicode spellings of one name (NFC, NFD): on a file system that
    keeps both spellings apart (Linux), they are two files and give two rows."""
    red = os.fsencode(two_class / "red")
    colour_image((210, 40, 40), 71).save(os.fsdecode(red + b"/caf\xe9.png"), format="PNG")
    nfc, nfd = unicodedata.normalize("NFC", "café.png"), unicodedata.normalize("NFD", "café.png")
    colour_image((210, 40, 40), 72).save(two_class / "red" / nfc)
    colour_image((210, 40, 40), 73).save(two_class / "red" / nfd)
    if not {nfc, nfd} <= set(os.listdir(two_class / "red")):
        pytest.skip("this file system stores the NFC and NFD spellings as one name")
    features = tmp_path / "features"
    s = _extract(two_class, features)
    emb, rows, meta = read_cache(Path(s.folder))
    paths = [r["path"] for r in rows]
    rejected = (Path(s.folder) / "rejected.csv").read_text(encoding="utf-8")
    assert f"red/{nfc}" in paths and f"red/{nfd}" in paths  # two files, two rows
    assert f"red/{nfc}" != f"red/{nfd}" and "caf" not in rejected
    assert len(set(paths)) == len(paths) == s.n == 23
    assert "red/caf\\xe9.png" in paths
    assert files.fs_path(two_class, "red/caf\\xe9.png") == os.fsdecode(red + b"/caf\xe9.png")
    assert Path(files.fs_path(two_class, "red/caf\\xe9.png")).is_file()

    from classify.compare import compare

    table = compare(features, S64, tmp_path / "out", heads="logreg", folds=2, in_dir=str(two_class),
                    log=lambda *_: None, tune="0", repeats=1)
    assert table.loc[0, "n_train"] + table.loc[0, "n_eval"] == s.n


def test_recovery_touches_its_own_key_only(two_class, tmp_path):
    features = tmp_path / "features"
    first = _extract(two_class, features)
    root = Path(first.folder).parent
    others = [root / f".tmp-{S64.key}-bf16-1234", root / f".tmp.{S64.key}-bf16.abcd",
              root / f".old.{S64.key}-bf16.abcd"]
    for folder in others:
        folder.mkdir()
        (folder / "embeddings.npy").write_bytes(b"someone else's")
    colour_image((210, 40, 40), 99).save(two_class / "red" / "new.png")
    s = _extract(two_class, features)
    assert s.computed == 1
    for folder in others:
        assert (folder / "embeddings.npy").read_bytes() == b"someone else's", folder


def test_own_leftovers_are_recovered_exactly(two_class, tmp_path):
    features = tmp_path / "features"
    first = _extract(two_class, features)
    folder = Path(first.folder)
    emb, _, _ = read_cache(folder)
    os.replace(folder, folder.parent / f".old.{S64.key}.deadbeef")
    (folder.parent / f".tmp.{S64.key}.abc123").mkdir()
    logs = []
    s = extract_features(two_class, features, S64, progress=False, log=logs.append)
    assert (s.computed, s.reused) == (0, 20)
    assert any("restored the previous cache" in m for m in logs)
    assert sorted(p.name for p in folder.parent.iterdir()) == [".locks", S64.key]
    np.testing.assert_array_equal(read_cache(folder)[0], emb)


def test_passing_failures_are_retried_content_failures_remembered(two_class, tmp_path, monkeypatch):
    features = tmp_path / "features"
    (two_class / "red" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)
    flaky = str(two_class / "blue" / "img_003.png")
    real_read, real_decode = load.read_bytes, load.decode_image

    def read(path):
        if str(path) == flaky:
            raise OSError(errno.EIO, "Input/output error")
        return real_read(path)

    def decode(data, *args, **kwargs):
        if hashlib.sha256(data).hexdigest() == hashlib.sha256(
                (two_class / "red" / "img_004.png").read_bytes()).hexdigest():
            raise MemoryError()
        return real_decode(data, *args, **kwargs)

    monkeypatch.setattr(load, "read_bytes", read)
    monkeypatch.setattr(load, "decode_image", decode)
    first = _extract(two_class, features)
    assert (first.computed, first.rejected) == (18, 3)
    reasons = dict(line.split(",", 1) for line in
                   (Path(first.folder) / "rejected.csv").read_text().splitlines()[1:])
    assert "Input/output error" in reasons["blue/img_003.png"]
    assert "MemoryError" in reasons["red/img_004.png"]
    monkeypatch.setattr(load, "read_bytes", real_read)
    monkeypatch.setattr(load, "decode_image", real_decode)
    second = _extract(two_class, features)
    assert (second.computed, second.reused, second.rejected) == (2, 18, 1)  # broken.png stays


def test_each_new_file_is_read_once(two_class, tmp_path, monkeypatch):
    reads: dict[str, int] = {}
    real = load.read_bytes

    def counting(path):
        reads[str(path)] = reads.get(str(path), 0) + 1
        return real(path)

    monkeypatch.setattr(load, "read_bytes", counting)
    monkeypatch.setattr(files, "sha256_file", lambda *a, **k: pytest.fail("hashed in a second read"))
    s = _extract(two_class, tmp_path / "features")
    assert s.computed == 20 and len(reads) == 20 and set(reads.values()) == {1}
    _, rows, _ = read_cache(Path(s.folder))
    for r in rows:
        assert r["sha256"] == hashlib.sha256((two_class / r["path"]).read_bytes()).hexdigest()


def test_a_resumed_run_does_not_hash_finished_files_again(two_class, tmp_path, monkeypatch):
    features = tmp_path / "features"
    from extract import Interrupted

    with model_dies_at_batch(2), pytest.raises(Interrupted):
        _extract(two_class, features, batch=8, flush_seconds=0)
    reads: list[str] = []
    real = load.read_bytes
    monkeypatch.setattr(load, "read_bytes", lambda p: reads.append(str(p)) or real(p))
    s = _extract(two_class, features, batch=8)
    assert (s.computed, s.reused) == (12, 8)
    assert len(reads) == 12


def test_unreadable_folder_is_rejected_and_counts_for_strict(two_class, tmp_path, monkeypatch):
    (two_class / "red" / "locked").mkdir()
    colour_image((210, 40, 40), 5).save(two_class / "red" / "locked" / "x.png")
    real = files._scandir

    def scandir(path):
        if os.fspath(path).endswith("locked"):
            raise PermissionError(errno.EACCES, "Permission denied", os.fspath(path))
        return real(path)

    monkeypatch.setattr(files, "_scandir", scandir)
    s = _extract(two_class, tmp_path / "features")
    assert s.rejected == 1 and s.n == 20
    text = (Path(s.folder) / "rejected.csv").read_text()
    assert "red/locked/" in text and "Permission denied" in text


def test_nothing_new_rewrites_nothing(two_class, tmp_path):
    features = tmp_path / "features"
    s = _extract(two_class, features)
    folder = Path(s.folder)
    before = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in folder.iterdir()}
    again = _extract(two_class, features)
    assert (again.computed, again.reused) == (0, 20)
    assert {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in folder.iterdir()} == before


def test_full_disk_keeps_the_previous_cache_and_says_so(two_class, tmp_path, monkeypatch):
    features = tmp_path / "features"
    s = _extract(two_class, features)
    emb, rows, _ = read_cache(Path(s.folder))
    colour_image((210, 40, 40), 77).save(two_class / "red" / "new.png")

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(atomic, "atomic_write", full)
    with pytest.raises(CacheWriteError) as err:
        _extract(two_class, features)
    assert str(Path(s.folder).parent) in str(err.value) and "No space left" in str(err.value)
    monkeypatch.undo()
    emb2, rows2, _ = read_cache(Path(s.folder))
    np.testing.assert_array_equal(emb, emb2)
    assert rows == rows2


def test_unwritable_features_is_a_clear_cli_error(two_class, tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where FEATURES should be")
    r = run_cli("extract", "--in", two_class, "--features", blocker, "--weights", "none",
                "--size", "32", "--quiet")
    assert r.returncode == 2, r.stderr
    assert "cannot write" in r.stderr and str(blocker) in r.stderr and "Traceback" not in r.stderr


def test_import_extract_leaves_pillow_limit_alone():
    code = "import PIL.Image as I; d = I.MAX_IMAGE_PIXELS; import extract; print(d == I.MAX_IMAGE_PIXELS)"
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert r.stdout.strip() == "True", r.stderr


def test_fp32_after_bf16_in_one_process_turns_tf32_off():
    from extract._tf import tensorflow
    from extract.backend import embedder

    tf = tensorflow()
    embedder(Settings(weights="none", size=32, precision="fp32"))
    embedder(Settings(weights="none", size=32, precision="bf16"))
    embedder(Settings(weights="none", size=32, precision="fp32"))  # served from the process cache
    assert not tf.config.experimental.tensor_float_32_execution_enabled()


def test_mmap_read_belongs_to_the_version_checked(two_class, tmp_path, monkeypatch):
    """A writer swapping the folder while a reader checks it must not mix two versions."""
    features = tmp_path / "features"
    s = _extract(two_class, features)
    folder = Path(s.folder)
    emb, rows, meta = read_cache(folder)
    real = cache._read_manifest

    def swap_then_read(fh):
        out = real(fh)
        cache.write_cache(folder.parent, folder.name, np.zeros((3, 512), np.float32),
                          rows[:3], dict(meta, n=3), [])
        return out

    monkeypatch.setattr(cache, "_read_manifest", swap_then_read)
    emb_m, rows_m, _ = read_cache(folder, mmap=True)
    assert len(rows_m) == emb_m.shape[0] == 20
    np.testing.assert_array_equal(np.asarray(emb_m), emb)
