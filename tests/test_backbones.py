"""The backbone registry: every entry builds, embeds at its minimum size and names real layers."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import write_class_folder
from extract import Settings, cache_folder, extract_features, read_cache
from extract.backbones import BACKBONES, get, parse_list
from extract.model import build, keras_cache_file, preprocess_fn


@pytest.fixture(scope="module")
def tiny_in(tmp_path_factory):
    """Two classes of one small image each: enough for a cache, cheap for ten backbones."""
    root = tmp_path_factory.mktemp("tiny") / "in"
    write_class_folder(root, per_class=1)
    return root


@pytest.mark.parametrize("name", list(BACKBONES))
def test_every_backbone_makes_a_cache_of_its_dimension_under_its_own_key(name, tiny_in, tmp_path,
                                                                          monkeypatch):
    from extract import model as model_module

    spec = BACKBONES[name]
    settings = Settings(name, "none", spec.min_size).check()
    model = build(settings)  # built once: the extraction embeds with this very model
    monkeypatch.setattr(model_module, "build", lambda s: model if s == settings else build(s))
    summary = extract_features(tiny_in, tmp_path / "f", settings, progress=False, log=lambda *_: None)
    emb, rows, meta = read_cache(cache_folder(tmp_path / "f", tiny_in, settings.key))
    assert summary.key == settings.key == f"{name}-avg-{spec.min_size}-none-np1"
    assert emb.shape == (2, spec.dim) and settings.dim == spec.dim and meta["dim"] == spec.dim
    assert np.isfinite(emb).all() and not np.array_equal(emb[0], emb[1])  # one row per image
    # every layer LAYER may name exists in the built model with the documented channels
    for layer, channels in spec.layers.items():
        assert model.get_layer(layer).output.shape[-1] == channels, layer
    if spec.last_layer:
        assert model.get_layer(spec.last_layer).output.shape[-1] == spec.dim
    # models that carry their preprocessing inside get raw 0..255 pixels
    x = np.full((1, 4, 4, 3), 200.0, np.float32)
    assert np.array_equal(np.asarray(preprocess_fn(name)(x.copy())), x) == spec.preprocessing_inside


def test_layer_pools_an_intermediate_block_under_its_own_key(tiny_in, tmp_path):
    last = Settings(weights="none", size=32).check()
    block4 = Settings(weights="none", size=32, layer="block4_pool").check()
    block3 = Settings(weights="none", size=32, layer="block3_pool").check()
    assert block4.key == "vgg16-avg-32-none-np1-block4_pool" != last.key
    assert Settings(weights="none", size=32, layer="block5_pool").key == last.key  # the last block
    got = {}
    for settings in (last, block4, block3):
        extract_features(tiny_in, tmp_path / "f", settings, progress=False, log=lambda *_: None)
        emb, _, meta = read_cache(cache_folder(tmp_path / "f", tiny_in, settings.key))
        assert meta["layer"] == settings.layer
        got[settings.layer] = emb
    assert got["block4_pool"].shape == (2, 512) and got["block3_pool"].shape == (2, 256)
    assert not np.allclose(got["block4_pool"], got[None])  # another block, other features


def test_settings_default_to_the_backbones_own_size_and_check_its_minimum():
    assert Settings().key == "vgg16-avg-224-imagenet"
    assert Settings("inceptionv3").size == 299 and Settings("efficientnetv2s").size == 384
    assert Settings("inceptionv3", size=224).size == 224
    with pytest.raises(ValueError, match=r"from 75 \(inceptionv3's minimum\).*received 64.*default of 299"):
        Settings("inceptionv3", size=64).check()
    with pytest.raises(ValueError, match=r"LAYER must be .*block4_pool.*received 'mixed7'"):
        Settings("vgg16", layer="mixed7").check()
    with pytest.raises(ValueError, match=r"BACKBONE must be one of vgg16, vgg19, .*received 'vgg17'"):
        Settings("vgg17").check()
    assert parse_list(" vgg16, convnexttiny,vgg16 ") == ["vgg16", "convnexttiny"]
    for bad in ("", ",", "vgg16,resnet"):
        with pytest.raises(ValueError, match="BACKBONE"):
            parse_list(bad)
    assert get("xception").min_size == 71


def test_weights_listing_says_which_files_are_present_and_where_they_go(tmp_path, monkeypatch):
    from extract.weights import format_status, weights_status

    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "convnext_tiny_notop.h5").write_bytes(b"weights")
    rows = {r["backbone"]: r for r in weights_status()}
    assert set(rows) == set(BACKBONES)
    assert [n for n, r in rows.items() if r["present"]] == ["convnexttiny"]
    assert rows["resnet50v2"]["path"] == str(keras_cache_file("resnet50v2"))
    assert rows["resnet50v2"]["path"] == str(tmp_path / "models" / "resnet50v2_weights_tf_dim_ordering_tf_kernels_notop.h5")
    text = format_status(list(rows.values()))
    assert f"into {tmp_path / 'models'}/ under the same name" in text
    assert "resnet50v2" in text.splitlines()[2] and "MISSING" in text.splitlines()[2]
    assert ("https://storage.googleapis.com/tensorflow/keras-applications/efficientnet_v2/"
            "efficientnetv2-s_notop.h5") in text
    assert "convnext_tiny_notop.h5" in text and "/convnext/convnext_tiny_notop.h5" not in text


@pytest.mark.filterwarnings("ignore:`input_shape` is undefined")  # MobileNetV3 at 32 px
def test_offline_error_names_the_backbones_own_weights_file(tmp_path, monkeypatch):
    from keras.src.utils import file_utils

    from extract import WeightsUnavailable

    monkeypatch.setenv("KERAS_HOME", str(tmp_path))

    def offline(*args, **kwargs):
        raise Exception("URL fetch failure: [Errno -2] Name or service not known")

    monkeypatch.setattr(file_utils, "get_file", offline)
    with pytest.raises(WeightsUnavailable) as err:
        build(Settings("mobilenetv3large", "imagenet", 32))
    text = str(err.value)
    assert "weights_mobilenet_v3_large_224_1.0_float_no_top_v2.h5" in text
    assert str(tmp_path / "models") in text and "make weights" in text


def test_flop_count_of_vgg16_matches_the_analytic_figure():
    from bench import suite
    from bench.backbones import gflop_per_image

    model = build(Settings(weights="none", size=32))
    assert gflop_per_image(model) == pytest.approx(suite.vgg16_gflop_per_image(32), rel=1e-9)
