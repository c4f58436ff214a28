"""Nothing changed, nothing done: a re-run reads no image and rewrites no vector."""

from __future__ import annotations

import os
from pathlib import Path

from helpers import S32, extract_quietly
from extract import load


def _extract(in_dir, features, settings=S32, **kw):
    return extract_quietly(in_dir, features, settings, **kw)


def test_a_remembered_content_failure_does_not_defeat_the_no_op_path(two_class, tmp_path, monkeypatch):
    """One broken file (common in real datasets) is remembered as rejected: the next run reads
    no file at all, the broken one included."""
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
    """`touch` one file: it is read again, and as no vector changed embeddings.npy stays the
    same file (not copied into a new folder: 2 GB at a million images)."""
    features = tmp_path / "features"
    s = _extract(two_class, features)
    before = (Path(s.folder) / "embeddings.npy").stat().st_ino
    os.utime(two_class / "red" / "img_000.png")
    again = _extract(two_class, features)
    assert again.computed == 0
    assert (Path(again.folder) / "embeddings.npy").stat().st_ino == before
