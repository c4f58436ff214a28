"""Build the backbone: VGG16 from ``keras.applications``, without top, globally pooled."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import socket
from pathlib import Path

# Random-init weights (WEIGHTS=none) come from this seed, so every run of a key builds the same
# network and its cached rows stay comparable.
INIT_SEED = 0

BACKBONES = {
    # name: (keras.applications attribute, preprocessing module, no-top weights file in Keras' cache)
    "vgg16": ("VGG16", "vgg16", "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"),
}
POOLINGS = ("avg", "max")
PRECISIONS = {"fp32": "float32", "bf16": "mixed_bfloat16", "fp16": "mixed_float16"}


class WeightsUnavailable(RuntimeError):
    """The requested weights cannot be loaded; the message says how to get them."""


@dataclasses.dataclass(frozen=True)
class Settings:
    """Everything that decides what an embedding is; two runs share a cache only if equal."""

    backbone: str = "vgg16"
    weights: str = "imagenet"  # "imagenet", "none" or a path to a weights file
    size: int = 224
    pooling: str = "avg"
    precision: str = "fp32"

    def check(self) -> "Settings":
        """Returns self after checking every field.

        Raises:
            ValueError: naming the field, the rule and the value received.
        """
        if self.backbone not in BACKBONES:
            raise ValueError(f"BACKBONE must be one of {sorted(BACKBONES)}; received {self.backbone!r}")
        if self.pooling not in POOLINGS:
            raise ValueError(f"POOLING must be one of {list(POOLINGS)}; received {self.pooling!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(
                f"PRECISION must be one of {list(PRECISIONS)}; received {self.precision!r}"
            )
        if not isinstance(self.size, int) or not 32 <= self.size <= 2048:
            raise ValueError(f"SIZE must be a whole number from 32 to 2048 (VGG16's minimum is 32); received {self.size!r}")
        if self.weights not in ("imagenet", "none") and not Path(self.weights).is_file():
            raise WeightsUnavailable(
                f"WEIGHTS={self.weights!r} is neither 'imagenet', 'none' nor an existing weights "
                "file; pass WEIGHTS=imagenet, WEIGHTS=none or WEIGHTS=<path to a .h5 file>"
            )
        return self

    @property
    def weights_tag(self) -> str:
        """A short readable name of the weights: imagenet, none, or <file stem>-<8 hex of its hash>."""
        if self.weights in ("imagenet", "none"):
            return self.weights
        digest = hashlib.sha256(Path(self.weights).read_bytes()).hexdigest()[:8]
        stem = "".join(c if c.isalnum() else "_" for c in Path(self.weights).name.split(".")[0])
        return f"{stem[:24]}-{digest}"

    @property
    def key(self) -> str:
        """The cache folder name, e.g. ``vgg16-avg-224-imagenet`` or ``vgg16-avg-224-none-bf16``."""
        key = f"{self.backbone}-{self.pooling}-{self.size}-{self.weights_tag}"
        return key if self.precision == "fp32" else f"{key}-{self.precision}"


def keras_cache_file(backbone: str) -> Path:
    """Where Keras keeps the downloaded no-top weights of ``backbone``."""
    home = os.environ.get("KERAS_HOME", os.path.join(os.path.expanduser("~"), ".keras"))
    return Path(home) / "models" / BACKBONES[backbone][2]


def device_name() -> str:
    """Names the device TensorFlow will run the model on (first GPU, else CPU)."""
    from ._tf import tensorflow

    tf = tensorflow()
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        try:
            details = tf.config.experimental.get_device_details(gpus[0])
            return f"GPU:0 ({details.get('device_name', 'unknown')})"
        except Exception:
            return "GPU:0"
    return f"CPU ({os.cpu_count()} cores)"


def preprocess_fn(backbone: str):
    """Returns the backbone's ``keras.applications`` ``preprocess_input``."""
    from ._tf import tensorflow

    tensorflow()
    import keras

    return getattr(keras.applications, BACKBONES[backbone][1]).preprocess_input


def build(settings: Settings):
    """Builds the backbone for ``settings`` with the precision policy applied.

    Returns:
        A Keras model mapping preprocessed (b, size, size, 3) float32 batches to (b, dim).

    Raises:
        WeightsUnavailable: ImageNet weights are not in Keras' cache and cannot be downloaded,
            or a weights file does not fit the model.
    """
    from ._tf import tensorflow

    tf = tensorflow()
    import keras

    # fp32 means fp32 on every device: GPUs would otherwise run convolutions in TF32, and one
    # cache could hold rows of two precisions (the device is not part of the key).
    tf.config.experimental.enable_tensor_float_32_execution(settings.precision != "fp32")
    keras.mixed_precision.set_global_policy(PRECISIONS[settings.precision])
    factory = getattr(keras.applications, BACKBONES[settings.backbone][0])
    shape = (settings.size, settings.size, 3)
    kwargs = dict(include_top=False, pooling=settings.pooling, input_shape=shape)
    if settings.weights == "none":
        keras.utils.set_random_seed(INIT_SEED)
        return factory(weights=None, **kwargs)
    if settings.weights == "imagenet":
        cached = keras_cache_file(settings.backbone)
        previous = socket.getdefaulttimeout()
        socket.setdefaulttimeout(30)
        try:
            return factory(weights="imagenet", **kwargs)
        except Exception as err:
            raise WeightsUnavailable(
                f"ImageNet weights for {settings.backbone} are not in Keras' cache "
                f"({cached}) and could not be downloaded ({type(err).__name__}: {err}). "
                f"Fix: copy the file '{cached.name}' to {cached.parent}/ (or set KERAS_HOME), "
                "or pass WEIGHTS=<path to that .h5 file>, or WEIGHTS=none for random weights "
                "(numbers then say little about ImageNet features)."
            ) from None
        finally:
            socket.setdefaulttimeout(previous)
    try:
        return factory(weights=settings.weights, **kwargs)
    except Exception as err:
        raise WeightsUnavailable(
            f"cannot load weights file {settings.weights!r} into {settings.backbone} without top "
            f"({type(err).__name__}: {err}); it must be Keras' no-top weights file "
            f"'{BACKBONES[settings.backbone][2]}' or one saved from the same model"
        ) from None
