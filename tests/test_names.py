"""Odd file names and links in the input folder: kept readable, reversible, labelled right."""

from __future__ import annotations

import os
from pathlib import Path

from conftest import colour_image
from helpers import S32, extract_quietly
from extract import files


def _extract(in_dir, features, settings=S32, **kw):
    return extract_quietly(in_dir, features, settings, **kw)


def test_a_carriage_return_in_a_file_name_keeps_the_cache_readable(two_class, tmp_path):
    """A name holding "\\r" is one row of the manifest: the next run reuses every vector and
    stage 2 reads the name back as it is."""
    colour_image((210, 40, 40), 5).save(two_class / "red" / "scan\r1.png", format="PNG")
    features = tmp_path / "features"
    first = _extract(two_class, features)
    second = _extract(two_class, features)
    assert (second.computed, second.reused) == (0, first.n)
    from classify.data import load_features

    assert "red/scan\r1.png" in load_features(features, S32, in_dir=str(two_class)).manifest["path"].tolist()


def test_fs_path_reverses_a_non_utf8_name_that_also_holds_a_literal_backslash_x(tmp_path):
    """A name with a byte that is not UTF-8 and a literal backslash-x in it: the stored name
    leads back to the very file (audit and report thumbnails open it by that name)."""
    folder = tmp_path / "in" / "red"
    folder.mkdir(parents=True)
    real = os.fsencode(folder) + b"/lit\\x41\xe9.png"
    colour_image((210, 40, 40), 3).save(os.fsdecode(real), format="PNG")
    listing = files.list_images(tmp_path / "in")
    (cand,) = listing.candidates
    assert files.fs_path(tmp_path / "in", cand.path) == os.fsdecode(real)


def test_a_link_to_an_ancestor_does_not_relabel_other_classes(two_class, tmp_path):
    """`red/up -> ..` (a link back to IN): a folder loop is visited once, so blue's images are
    not listed again as red/up/blue/..., labelled red."""
    os.symlink("..", two_class / "red" / "up")
    s = _extract(two_class, tmp_path / "features")
    from extract.cache import open_cache

    _, manifest, _ = open_cache(Path(s.folder))
    assert not [p for p in manifest["path"] if p.startswith("red/up/")]
