"""The backbone as built: the precision policy it runs in and the weights it is given."""

from __future__ import annotations

import numpy as np
import pytest

from extract import Settings
from extract.backend import embedder
from extract.model import INIT_SEED, build
from extract.randinit import set_numpy_weights


def _images(n=4, size=32, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


@pytest.fixture
def float32_afterwards():
    """Mixed precision is a process-wide Keras setting: put float32 back after the test."""
    yield
    import keras

    keras.mixed_precision.set_global_policy("float32")


@pytest.mark.parametrize("precision, dtype", [("bf16", "bfloat16"), ("fp16", "float16")])
def test_precision_runs_the_convolutions_in_that_type_and_stores_float32(precision, dtype,
                                                                      float32_afterwards):
    """PRECISION reaches the model: its layers compute in the reduced type, the vectors come
    back float32, close to fp32's but not bit-identical (they would be if it were ignored)."""
    model = build(Settings(weights="none", size=32, precision=precision))
    convs = [layer for layer in model.layers if "conv" in layer.name]
    assert convs and {layer.compute_dtype for layer in convs} == {dtype}
    x = _images()
    low = np.asarray(embedder(Settings(weights="none", size=32, precision=precision))(x))
    full = np.asarray(embedder(Settings(weights="none", size=32))(x))
    assert low.dtype == np.float32 and np.isfinite(low).all() and low.shape == full.shape
    cos = (low * full).sum(1) / np.linalg.norm(low, axis=1) / np.linalg.norm(full, axis=1)
    assert cos.min() > 0.98, cos
    assert not np.array_equal(low, full)


def test_a_weights_file_is_what_the_model_holds(tmp_path, float32_afterwards):
    """A weights file that differs from the seeded random init (drawn with another seed) is
    loaded as it is: every variable equals the file's, and the vectors differ from WEIGHTS=none."""
    other = build(Settings(weights="none", size=32))
    set_numpy_weights(other, INIT_SEED + 1)
    path = tmp_path / "other.weights.h5"
    other.save_weights(path)
    loaded = build(Settings(weights=str(path), size=32))
    seeded = build(Settings(weights="none", size=32))
    for mine, theirs, init in zip(loaded.get_weights(), other.get_weights(), seeded.get_weights()):
        np.testing.assert_array_equal(mine, theirs)
        if init.size > 1 and init.std() > 0:  # kernels (biases start at zero either way)
            assert not np.array_equal(mine, init)
    x = _images()
    from_file = np.asarray(embedder(Settings(weights=str(path), size=32))(x))
    none = np.asarray(embedder(Settings(weights="none", size=32))(x))
    np.testing.assert_allclose(from_file, np.asarray(loaded(_pre(x)), np.float32), rtol=1e-4, atol=1e-5)
    assert not np.allclose(from_file, none, rtol=1e-3, atol=1e-4)


def _pre(x):
    from extract.model import preprocess_fn

    return preprocess_fn("vgg16")(x.astype(np.float32))
