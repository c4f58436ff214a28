"""Stage 1 never keeps a stale row: a changed layout relabels, a file changed under a restored
stamp is hashed again, special files are never opened, identical contents are embedded once, a
DATASET name is not silently taken over, and each failure ends in one clear line."""

from __future__ import annotations

import errno
import hashlib
import os
import re
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT, colour_image, model_dies_at_batch, run_cli, write_class_folder
from extract import Interrupted, Settings, extract_features, read_cache
from extract.cache import input_id

S32 = Settings(weights="none", size=32)


def _extract(in_dir, features, settings=S32, **kw):
    return extract_features(in_dir, features, settings, progress=False, log=lambda *_: None, **kw)


def _rows(summary) -> dict:
    _, rows, meta = read_cache(Path(summary.folder))
    return {r["path"]: r for r in rows}, meta


def _rewrite_keeping_stamp(path: Path, seed: int) -> None:
    """Writes other pixels into ``path`` in place (a BMP: same size) and sets its times back."""
    st = path.stat()
    colour_image((120, 120, 40), seed).save(path, format="BMP")
    assert path.stat().st_size == st.st_size
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_mtime_ns == st.st_mtime_ns


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ------------------------------------------------------------------ layout

def test_a_layout_change_relabels_the_rows_in_both_directions(tmp_path):
    root, features = tmp_path / "in", tmp_path / "features"
    write_class_folder(root, 3, split="train")
    write_class_folder(root, 2, split="test")
    (root / "notes").mkdir()
    colour_image((40, 190, 60), 1).save(root / "notes" / "scan.png")
    first = _extract(root, features)  # a non-split top folder: the class layout
    rows, meta = _rows(first)
    assert meta["layout"] == "class" and rows["train/red/img_000.png"]["label"] == "train"

    (root / "notes" / "scan.png").unlink()
    (root / "notes").rmdir()
    second = _extract(root, features)
    rows, meta = _rows(second)
    assert meta["layout"] == "split/class"
    assert (rows["train/red/img_000.png"]["label"], rows["train/red/img_000.png"]["split"]) == ("red", "train")
    assert (rows["test/blue/img_001.png"]["label"], rows["test/blue/img_001.png"]["split"]) == ("blue", "test")
    assert second.computed == 0 and second.n == 10

    (root / "scratch").mkdir()  # an empty non-split folder flips it back
    third = _extract(root, features)
    rows, meta = _rows(third)
    assert meta["layout"] == "class"
    assert {r["label"] for r in rows.values()} == {"train", "test"}
    assert {r["split"] for r in rows.values()} == {""}


# ------------------------------------------------------------------ stamps

def test_a_file_changed_in_place_with_its_times_restored_is_hashed_again(tmp_path):
    root, features = tmp_path / "in", tmp_path / "features"
    write_class_folder(root, 3, fmt="bmp")
    _extract(root, features)
    changed = root / "red" / "img_001.bmp"
    _rewrite_keeping_stamp(changed, seed=77)
    again = _extract(root, features)
    rows, _ = _rows(again)
    assert again.computed == 1
    assert rows["red/img_001.bmp"]["sha256"] == _sha(changed)


def test_a_resumed_run_hashes_again_a_file_changed_under_a_restored_stamp(tmp_path):
    root, features = tmp_path / "in", tmp_path / "features"
    write_class_folder(root, 4, fmt="bmp")
    with model_dies_at_batch(2), pytest.raises(Interrupted):
        _extract(root, features, batch=2, flush_seconds=0)
    first = root / "blue" / "img_000.bmp"  # in the first batch, so in the finished shard
    _rewrite_keeping_stamp(first, seed=78)
    s = _extract(root, features, batch=2)
    rows, _ = _rows(s)
    assert rows["blue/img_000.bmp"]["sha256"] == _sha(first)
    emb, listed, _ = read_cache(Path(s.folder))
    fresh = _extract(root, tmp_path / "fresh")
    emb_fresh, _, _ = read_cache(Path(fresh.folder))
    i = [r["path"] for r in listed].index("blue/img_000.bmp")
    np.testing.assert_allclose(emb[i], emb_fresh[i], rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------ special files

@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes are a POSIX feature")
def test_a_named_pipe_in_the_input_is_reported_never_read(two_class, tmp_path):
    """Opening a named pipe to read it waits for a writer forever. The run goes on in a thread here:
    were it to open one, the test fails after its wait, and opening the pipes for writing then
    frees the stuck reader so that the test process can end."""
    import threading

    fifos = [two_class / "red" / "camera.png", two_class / "blue" / "stream"]
    for fifo in fifos:
        os.mkfifo(fifo)
    features, done = tmp_path / "features", {}

    def extract():
        try:
            done["s"] = _extract(two_class, features)
        except BaseException as err:  # raised again below, in the test
            done["error"] = err

    run = threading.Thread(target=extract, daemon=True)
    run.start()
    run.join(timeout=120)
    hung = run.is_alive()
    if hung:
        for fifo in fifos:
            try:
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))  # a waiting reader gets EOF
            except OSError:  # ENXIO: nobody reads this one
                pass
        run.join(timeout=60)
    assert not hung, "the run waited on a named pipe"
    if "error" in done:
        raise done["error"]
    assert done["s"].computed == 20
    folder = features / input_id(two_class) / S32.key
    rejected = (folder / "rejected.csv").read_text(encoding="utf-8")
    assert re.search(r"red/camera\.png,.*not a regular file.*named pipe", rejected), rejected
    assert re.search(r"blue/stream,.*not a regular file.*named pipe", rejected), rejected


# ------------------------------------------------------------------ duplicates

def test_identical_contents_in_one_run_are_embedded_once(tmp_path):
    from conftest import counting_model_rows

    root = tmp_path / "in"
    paths = write_class_folder(root, 5)  # 10 distinct images
    paths[-1].unlink()  # 9 distinct contents
    for i, src in enumerate(paths[:7]):  # and 7 copies of them: 16 files
        (src.parent / f"copy_{i}.png").write_bytes(src.read_bytes())
    with counting_model_rows() as rows_seen:
        s = _extract(root, tmp_path / "features", batch=4)
    assert s.n == 16 and s.computed == 9 and s.reused == 7
    assert sum(rows_seen) == 9
    emb, rows, _ = read_cache(Path(s.folder))
    by_sha: dict = {}
    for vec, r in zip(emb, rows):
        assert r["sha256"] == _sha(root / r["path"])
        by_sha.setdefault(r["sha256"], []).append(vec)
    assert len(by_sha) == 9
    for vecs in by_sha.values():
        for v in vecs[1:]:
            np.testing.assert_array_equal(v, vecs[0])


def test_the_first_batch_is_embedded_before_every_file_is_read(tmp_path, monkeypatch):
    """The read-ahead is bounded: decoded images wait for the model a window at a time."""
    from extract import backend, load

    root = tmp_path / "in"
    write_class_folder(root, 30)  # 60 images
    reads: list[str] = []
    real_read, real_embedder = load.read_bytes, backend.embedder
    monkeypatch.setattr(load, "read_bytes", lambda p: reads.append(str(p)) or real_read(p))
    read_at_first_batch: list[int] = []

    def watching(settings):
        f = real_embedder(settings)

        def call(x):
            if not read_at_first_batch:
                read_at_first_batch.append(len(reads))
            return f(x)
        return call

    monkeypatch.setattr(backend, "embedder", watching)
    s = _extract(root, tmp_path / "features", batch=4)
    assert s.computed == 60
    assert read_at_first_batch[0] < 30, f"{read_at_first_batch[0]} of 60 files read before the first batch"


def test_a_broken_file_and_its_copy_are_both_rejected_for_their_content(two_class, tmp_path):
    broken = b"\x89PNG\r\n\x1a\n" + b"garbage" * 20
    (two_class / "red" / "broken.png").write_bytes(broken)
    (two_class / "blue" / "broken copy.png").write_bytes(broken)
    s = _extract(two_class, tmp_path / "features")
    assert (s.computed, s.rejected) == (20, 2)
    text = (Path(s.folder) / "rejected.csv").read_text(encoding="utf-8")
    assert text.count("cannot decode PNG") == 2, text


# ------------------------------------------------------------------ DATASET

def test_a_dataset_name_given_to_a_second_input_is_refused_naming_both(tmp_path):
    a, b, features = tmp_path / "a", tmp_path / "b", tmp_path / "features"
    write_class_folder(a, 3)
    write_class_folder(b, 3, start=50)
    first = _extract(a, features, dataset="faces")
    before = (Path(first.folder) / "embeddings.npy").read_bytes()
    with pytest.raises(ValueError) as err:
        _extract(b, features, dataset="faces")
    text = str(err.value)
    assert os.path.abspath(a) in text and os.path.abspath(b) in text
    assert "DATASET" in text and str(features / "faces") in text
    assert (Path(first.folder) / "embeddings.npy").read_bytes() == before
    r = run_cli("extract", "--in", b, "--features", features, "--dataset", "faces",
                "--weights", "none", "--size", "32", "--quiet")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().startswith("error: ") and len(r.stderr.strip().splitlines()) == 1


# ------------------------------------------------------------------ weights file

def test_a_weights_file_is_read_once_per_run(two_class, tmp_path):
    from extract.model import build

    path = tmp_path / "mine.weights.h5"
    build(S32).save_weights(path)
    opened = []
    watching = {"on": False}

    def hook(event, args):
        if watching["on"] and event == "open" and isinstance(args[0], (str, os.PathLike)) \
                and os.fspath(args[0]) == str(path):
            opened.append(event)

    sys.addaudithook(hook)  # Python-level opens (the hash); h5py's own C open raises no event
    watching["on"] = True
    try:
        _extract(two_class, tmp_path / "features", settings=Settings(weights=str(path), size=32))
    finally:
        watching["on"] = False
    assert len(opened) == 1, f"the weights file was read {len(opened)} times"


# ------------------------------------------------------------------ clear failures

def test_a_full_disk_names_the_bytes_needed(two_class, tmp_path, monkeypatch):
    features = tmp_path / "features"
    s = _extract(two_class, features)
    emb, rows, _ = read_cache(Path(s.folder))
    colour_image((210, 40, 40), 77).save(two_class / "red" / "new.png")

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    from extract import CacheWriteError

    with pytest.raises(CacheWriteError) as err:
        _extract(two_class, features)
    monkeypatch.undo()
    text = str(err.value)
    assert "No space left" in text
    need = re.search(r"needs about ([\d.]+) (bytes|KB|MB|GB)", text)
    assert need, text
    scale = {"bytes": 1, "KB": 1e3, "MB": 1e6, "GB": 1e9}[need.group(2)]
    assert float(need.group(1)) * scale >= 21 * 512 * 4  # at least the new vectors
    emb2, rows2, _ = read_cache(Path(s.folder))
    np.testing.assert_array_equal(emb, emb2)
    assert rows == rows2


def test_importing_stage_1_imports_no_framework():
    """Importing the package imports no deep-learning framework."""
    import subprocess

    code = ("import sys, extract, extract.run; print(*[m in sys.modules for m in "
            "('tensorflow', 'keras', 'jax', 'torch')])")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert r.stdout.strip() == "False False False False", r.stderr
