"""A damaged or partial cache is repaired by the next run, and other inputs' damage stays theirs."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from conftest import write_class_folder
from helpers import S32, extract_quietly
from extract.cache import input_id


def _extract(in_dir, features, settings=S32, **kw):
    return extract_quietly(in_dir, features, settings, **kw)


def test_make_features_repairs_a_cache_that_stage_2_refuses_for_nan(two_class, tmp_path):
    """Stage 2 refuses NaN rows and says 'run make features again'; that run recomputes the
    damaged row, after which stage 2 reads every row finite."""
    features = tmp_path / "features"
    s = _extract(two_class, features)
    emb = np.load(Path(s.folder) / "embeddings.npy", mmap_mode="r+")
    emb[3, 0] = np.nan
    emb.flush()
    del emb
    again = _extract(two_class, features)
    assert again.computed >= 1
    from classify.data import load_features

    feats = load_features(features, S32, in_dir=str(two_class))
    assert np.isfinite(feats.X).all() and len(feats.X) == 20


def test_nan_rows_of_another_inputs_cache_are_not_copied(two_class, tmp_path):
    """Vectors are shared across inputs by content, but never a NaN row: those are computed."""
    features = tmp_path / "features"
    s = _extract(two_class, features)
    emb = np.load(Path(s.folder) / "embeddings.npy", mmap_mode="r+")
    emb[:, 0] = np.nan
    emb.flush()
    del emb
    copy = tmp_path / "copy"
    shutil.copytree(two_class, copy)
    s = _extract(copy, features)
    assert s.computed == 20
    from classify.data import load_features

    assert np.isfinite(load_features(features, S32, in_dir=str(copy)).X).all()


def test_a_partial_shard_of_another_width_does_not_stop_every_run(two_class, tmp_path):
    """Partial work of another vector width (left by another model) is ignored, not an error
    on every run until someone deletes .partial by hand."""
    features = tmp_path / "features"
    part = features / input_id(two_class) / ".partial" / S32.key
    part.mkdir(parents=True)
    np.savez(part / "0-odd.npz", sha256=np.array(["a" * 64], "U64"), emb=np.zeros((1, 7), np.float32))
    s = _extract(two_class, features)
    assert s.n == 20 and s.computed == 20


def test_an_unreadable_cache_of_another_input_does_not_stop_the_run(two_class, tmp_path, monkeypatch):
    """A team FEATURES where another user's cache is not readable (mode 0600): that cache is
    passed over and this input's images are computed. Simulated (the tests may run as root) by
    the error open() raises for such a file."""
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
