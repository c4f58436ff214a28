"""Review of issue #11 (stage 1's cache per input): reproductions of the problems found.

Each test states what should happen; a failing test is an open problem (see the review report).
Tiny images, random-init weights, 32 px.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import colour_image, write_class_folder
from extract import Settings, extract_features, files, load
from extract.cache import input_id

S32 = Settings(weights="none", size=32)


def _extract(in_dir, features, settings=S32, **kw):
    return extract_features(in_dir, features, settings, progress=False, log=lambda *_: None, **kw)


def _same_stamps_other_content(b: Path, c: Path, n: int = 3) -> None:
    """b and c: equal relative paths, sizes and mtimes (``cp -p``, ``rsync -a``), other pixels."""
    for cls in ("red", "blue"):
        (b / cls).mkdir(parents=True)
        (c / cls).mkdir(parents=True)
        for i in range(n):
            colour_image((200, 30, 30), 10 + i).save(b / cls / f"x{i}.bmp")
            colour_image((30, 30, 200), 90 + i).save(c / cls / f"x{i}.bmp")  # BMP: same size
            st = (b / cls / f"x{i}.bmp").stat()
            os.utime(c / cls / f"x{i}.bmp", ns=(st.st_atime_ns, st.st_mtime_ns))


def _wrong_rows(in_dir: Path, manifest) -> list[str]:
    return [p for p, h in zip(manifest["path"], manifest["sha256"])
            if hashlib.sha256((in_dir / p).read_bytes()).hexdigest() != h]


# ------------------------------------------------------------------ 1. DATASET and another folder

def test_dataset_shared_by_two_folders_never_serves_the_other_folders_vectors(tmp_path):
    """DATASET=x for IN=b, then DATASET=x for IN=c (same names, sizes, mtimes, other pixels).

    plan() trusts the previous manifest's (path, size, mtime) -> sha256 without checking that the
    manifest was made from this folder, so c's rows get b's hashes and vectors; once c has one
    new file the cache is rewritten with input=c and stage 2 accepts it. (While b exists, c is
    refused DATASET=x; once b is gone, c takes the name over.)
    """
    b, c, features = tmp_path / "b", tmp_path / "c", tmp_path / "features"
    _same_stamps_other_content(b, c)
    _extract(b, features, dataset="x")
    colour_image((40, 190, 60), 7).save(c / "red" / "extra.bmp")
    with pytest.raises(ValueError, match="DATASET=x already holds"):
        _extract(c, features, dataset="x")
    shutil.rmtree(b)
    _extract(c, features, dataset="x")
    from classify.data import load_features

    feats = load_features(features, S32, in_dir=str(c), dataset="x")
    assert _wrong_rows(c, feats.manifest) == []


def test_dataset_of_a_moved_folder_is_usable_by_stage_2(tmp_path):
    """`make features IN=a DATASET=faces; mv a a2; make features IN=a2 DATASET=faces; make compare ...`

    The second run is a no-op (fast path, same stamps) that keeps meta.json's input = a, so stage 2
    refuses a2 and every further `make features` is a no-op again: no way out with DATASET.
    """
    a, features = tmp_path / "a", tmp_path / "features"
    write_class_folder(a, 3)
    _extract(a, features, dataset="faces")
    moved = tmp_path / "a2"
    os.rename(a, moved)
    s = _extract(moved, features, dataset="faces")
    assert s.computed == 0
    from classify.data import load_features

    feats = load_features(features, S32, in_dir=str(moved), dataset="faces")  # DataError today
    assert feats.meta["input"] == os.path.abspath(moved)


def test_partial_work_under_a_dataset_is_not_served_to_another_folder(tmp_path, monkeypatch):
    """Shards record (path, size, mtime) -> sha256 but not the folder they were read from."""
    b, c, features = tmp_path / "b", tmp_path / "c", tmp_path / "features"
    _same_stamps_other_content(b, c)
    from conftest import model_dies_at_batch
    from extract import Interrupted

    with model_dies_at_batch(2), pytest.raises(Interrupted):
        _extract(b, features, dataset="x", batch=2, flush_seconds=0)
    s = _extract(c, features, dataset="x", batch=2)
    from extract.cache import open_cache

    _, manifest, _ = open_cache(Path(s.folder))
    assert _wrong_rows(c, manifest) == []


# ------------------------------------------------------------------ 2. names

def test_a_carriage_return_in_a_file_name_keeps_the_cache_readable(two_class, tmp_path):
    """csv.writer(lineterminator="\\n") does not quote a field holding "\\r"; pandas and csv then
    read it as two rows, so every run finds its own cache 'damaged' and recomputes everything,
    and stage 2 cannot read it at all."""
    colour_image((210, 40, 40), 5).save(two_class / "red" / "scan\r1.png", format="PNG")
    features = tmp_path / "features"
    first = _extract(two_class, features)
    second = _extract(two_class, features)
    assert (second.computed, second.reused) == (0, first.n)
    from classify.data import load_features

    assert "red/scan\r1.png" in load_features(features, S32, in_dir=str(two_class)).manifest["path"].tolist()


def test_fs_path_reverses_a_non_utf8_name_that_also_holds_a_literal_backslash_x(tmp_path):
    """stored_name escapes bad bytes as \\xNN but leaves a literal backslash as it is, so the
    escape is not reversible: b'lit\\\\x41\\xe9.png' is stored 'lit\\x41\\xe9.png' and fs_path
    turns it into 'litA\\udce9.png', a file that does not exist (audit and report thumbnails)."""
    folder = tmp_path / "in" / "red"
    folder.mkdir(parents=True)
    real = os.fsencode(folder) + b"/lit\\x41\xe9.png"
    colour_image((210, 40, 40), 3).save(os.fsdecode(real), format="PNG")
    listing = files.list_images(tmp_path / "in")
    (cand,) = listing.candidates
    assert files.fs_path(tmp_path / "in", cand.path) == os.fsdecode(real)


def test_dataset_with_a_trailing_newline_is_refused():
    """_DATASET_NAME uses `$`, which also matches before a final newline."""
    from extract.cache import input_id as iid

    with pytest.raises(ValueError, match="DATASET"):
        iid("in", dataset="faces\n")


# ------------------------------------------------------------------ 3. damaged values

def test_make_features_repairs_a_cache_that_stage_2_refuses_for_nan(two_class, tmp_path):
    """Stage 2 says 'run make features again' for NaN rows, but make features opens its own
    cache with check_values=False and takes the no-op path: the advice never works."""
    features = tmp_path / "features"
    s = _extract(two_class, features)
    emb = np.load(Path(s.folder) / "embeddings.npy", mmap_mode="r+")
    emb[3, 0] = np.nan
    emb.flush()
    del emb
    _extract(two_class, features)
    from classify.data import load_features

    load_features(features, S32, in_dir=str(two_class))  # DataError today


def test_nan_rows_of_another_inputs_cache_are_not_copied(two_class, tmp_path):
    """Vectors shared across inputs come from caches opened with check_values=False."""
    features = tmp_path / "features"
    s = _extract(two_class, features)
    emb = np.load(Path(s.folder) / "embeddings.npy", mmap_mode="r+")
    emb[:, 0] = np.nan
    emb.flush()
    del emb
    copy = tmp_path / "copy"
    shutil.copytree(two_class, copy)
    _extract(copy, features)
    from classify.data import load_features

    load_features(features, S32, in_dir=str(copy))  # DataError today: the NaN rows spread


# ------------------------------------------------------------------ 4. the no-op path

def test_a_remembered_content_failure_does_not_defeat_the_no_op_path(two_class, tmp_path, monkeypatch):
    """One broken file (common in real datasets) and every later run takes the slow path: the
    broken file is read and hashed again, the whole manifest is compared row by row and every
    other input's cache of the key is opened. Measured at 200,000 cached files: about 1.5x the
    time and 1.5x the peak memory of the no-op path, on every run."""
    (two_class / "red" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)
    features = tmp_path / "features"
    _extract(two_class, features)
    reads = []
    real = load.read_bytes
    monkeypatch.setattr(load, "read_bytes", lambda p: reads.append(str(p)) or real(p))
    s = _extract(two_class, features)
    assert (s.computed, s.rejected) == (0, 1)
    assert reads == []


def test_a_touched_but_identical_file_does_not_rewrite_the_vectors(two_class, tmp_path):
    """`touch` one file: it is re-read (right) and then the whole embeddings.npy is copied into a
    new folder (2 GB at a million images; 1.37 GB peak RSS at 200,000) although no vector changed."""
    features = tmp_path / "features"
    s = _extract(two_class, features)
    before = (Path(s.folder) / "embeddings.npy").stat().st_ino
    os.utime(two_class / "red" / "img_000.png")
    again = _extract(two_class, features)
    assert again.computed == 0
    assert (Path(again.folder) / "embeddings.npy").stat().st_ino == before


# ------------------------------------------------------------------ 5. partial work

def test_a_partial_shard_of_another_width_does_not_stop_every_run(two_class, tmp_path):
    """Without a previous cache Shards.load() does not check the width; VectorStore.dim() then
    takes the first loose vector's width and write_cache fails with a raw numpy ValueError, on
    every run, until someone deletes .partial by hand."""
    features = tmp_path / "features"
    part = features / input_id(two_class) / ".partial" / S32.key
    part.mkdir(parents=True)
    np.savez(part / "0-odd.npz", sha256=np.array(["a" * 64], "U64"), emb=np.zeros((1, 7), np.float32))
    s = _extract(two_class, features)
    assert s.n == 20


# ------------------------------------------------------------------ 6. a shared FEATURES root

def test_an_unreadable_cache_of_another_input_does_not_stop_the_run(two_class, tmp_path, monkeypatch):
    """A team FEATURES where another user's cache is not readable (mode 0600): plan() opens every
    cache of the key and catches FileNotFoundError and CacheError only, so PermissionError ends
    every run that has anything new with a raw traceback (main() does not catch it either).
    Simulated here (the tests run as root) by the error open() raises for such a file."""
    features = tmp_path / "features"
    other = tmp_path / "other"
    write_class_folder(other, 2, start=300)
    _extract(other, features)
    from extract import cache

    theirs = features / input_id(other)
    real = cache.open_cache

    def guarded(folder, *args, **kwargs):
        if Path(folder).parent == theirs:
            raise PermissionError(13, "Permission denied", str(Path(folder) / "embeddings.npy"))
        return real(folder, *args, **kwargs)

    monkeypatch.setattr(cache, "open_cache", guarded)
    s = _extract(two_class, features)
    assert s.computed == 20


# ------------------------------------------------------------------ 7. links

def test_a_link_to_an_ancestor_does_not_relabel_other_classes(two_class, tmp_path):
    """`red/up -> ..` (a link back to IN): walk_files only remembers the folders it has visited
    from this class folder, so it walks IN again and lists blue's images as red/up/blue/...,
    labelled red. README: 'links to ... folders (a folder loop is visited once)'."""
    os.symlink("..", two_class / "red" / "up")
    s = _extract(two_class, tmp_path / "features")
    from extract.cache import open_cache

    _, manifest, _ = open_cache(Path(s.folder))
    assert not [p for p in manifest["path"] if p.startswith("red/up/")]
