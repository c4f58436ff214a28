"""DATASET: one name, one input folder; a moved folder keeps its name; names are checked."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest

from conftest import colour_image, model_dies_at_batch, write_class_folder
from helpers import S32, extract_quietly


def _extract(in_dir, features, settings=S32, **kw):
    return extract_quietly(in_dir, features, settings, **kw)


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


def test_dataset_shared_by_two_folders_never_serves_the_other_folders_vectors(tmp_path):
    """DATASET=x for IN=b, then for IN=c (same names, sizes, mtimes, other pixels): while b
    exists c is refused the name; once b is gone c takes it over, and every row of c's cache
    holds c's own file's hash (not b's, which the stamps alone would have matched)."""
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
    """`make features IN=a DATASET=faces; mv a a2; make features IN=a2 DATASET=faces`: nothing
    is computed again, and the cache now records a2 as its input, so stage 2 accepts IN=a2."""
    a, features = tmp_path / "a", tmp_path / "features"
    write_class_folder(a, 3)
    _extract(a, features, dataset="faces")
    moved = tmp_path / "a2"
    os.rename(a, moved)
    s = _extract(moved, features, dataset="faces")
    assert s.computed == 0
    from classify.data import load_features

    feats = load_features(features, S32, in_dir=str(moved), dataset="faces")
    assert feats.meta["input"] == os.path.abspath(moved)


def test_partial_work_under_a_dataset_is_not_served_to_another_folder(tmp_path, monkeypatch):
    """Partial work of an interrupted run for IN=b under DATASET=x is not taken for IN=c's
    files that have the same stamps."""
    b, c, features = tmp_path / "b", tmp_path / "c", tmp_path / "features"
    _same_stamps_other_content(b, c)
    from extract import Interrupted

    with model_dies_at_batch(2), pytest.raises(Interrupted):
        _extract(b, features, dataset="x", batch=2, flush_seconds=0)
    s = _extract(c, features, dataset="x", batch=2)
    from extract.cache import open_cache

    _, manifest, _ = open_cache(Path(s.folder))
    assert _wrong_rows(c, manifest) == []


def test_dataset_with_a_trailing_newline_is_refused():
    """A DATASET name with a final newline is refused like any other bad name."""
    from extract.cache import input_id as iid

    with pytest.raises(ValueError, match="DATASET"):
        iid("in", dataset="faces\n")
