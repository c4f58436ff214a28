"""make predict pairs each label with its own file when some images are cached and some new."""

from __future__ import annotations

import pytest

from helpers import quiet
from conftest import COLOURS, colour_image, write_class_folder

import classify
import extract
from classify import predict as P

SETTINGS = extract.Settings(weights="none", size=32)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Red vs blue, 8 each, cached at 32 px; logistic regression with fixed settings."""
    root = tmp_path_factory.mktemp("predict-order")
    write_class_folder(root / "in", 8)
    extract.extract_features(root / "in", root / "features", SETTINGS, progress=False, log=quiet)
    classify.compare(root / "features", SETTINGS, root / "out", heads="logreg", folds=3, jobs=1,
                     log=quiet, in_dir=root / "in", tune="0", repeats=1)
    return root


def test_cached_and_new_images_interleaved_keep_their_own_labels(trained, tmp_path):
    """New red, cached blue, new blue, cached red, in that order: each row's label is its own
    image's colour (the cached vectors are looked up first, the new ones embedded after)."""
    new_red, new_blue = tmp_path / "new_red.png", tmp_path / "new_blue.png"
    colour_image(COLOURS["red"], seed=7001).save(new_red)
    colour_image(COLOURS["blue"], seed=7002).save(new_blue)
    images = [new_red, trained / "in" / "blue" / "img_002.png", new_blue,
              trained / "in" / "red" / "img_005.png"]
    df = P.predict_images(images, trained / "features", trained / "out", write=False, log=quiet)
    assert df.attrs["cached"] == 2 and df.attrs["embedded"] == 2
    assert list(df["path"]) == [str(p) for p in images]
    assert list(df["label"]) == ["red", "blue", "blue", "red"]
