"""The backbone registry: every entry builds, embeds at its minimum size and names real layers."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import write_class_folder
from extract import Settings, extract_features, read_cache
from extract.backbones import BACKBONES, get, parse_list
from extract.model import build, keras_cache_file, preprocess_fn


@pytest.fixture(scope="module")
def tiny_in(tmp_path_factory):
    """Two classes of one small image each: enough for a cache, cheap for ten backbones."""
    root = tmp_path_factory.mktemp("tiny") / "in"
    write_class_folder(root, per_class=1)
    return root


@pytest.mark.parametrize("name", list(BACKBONES))
def test_every_backbone_makes_a_cache_of_its_dimension_under_its_own_key(name, tiny_in, tmp_path):
    spec = BACKBONES[name]
    settings = Settings(name, "none", spec.min_size).check()
    summary = extract_features(tiny_in, tmp_path / "f", settings, progress=False, log=lambda *_: None)
    emb, rows, meta = read_cache(tmp_path / "f" / settings.key)
    assert summary.key == settings.key == f"{name}-avg-{spec.min_size}-none"
    assert emb.shape == (2, spec.dim) and settings.dim == spec.dim and meta["dim"] == spec.dim
    assert np.isfinite(emb).all() and not np.array_equal(emb[0], emb[1])  # one row per image
    # every layer LAYER may name exists in the built model with the documented channels
    model = build(settings)
    for layer, channels in spec.layers.items():
        assert model.get_layer(layer).output.shape[-1] == channels, layer
    if spec.last_layer:
        assert model.get_layer(spec.last_layer).output.shape[-1] == spec.dim
    # models that carry their preprocessing inside get raw 0..255 pixels
    x = np.full((1, 4, 4, 3), 200.0, np.float32)
    assert np.array_equal(np.asarray(preprocess_fn(name)(x.copy())), x) == spec.preprocessing_inside
