"""Build a backbone from ``keras.applications`` without top, globally pooled (see ``backbones``)."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import socket
import threading
from pathlib import Path

from .backbones import BACKBONES, Backbone
from .framework import default_backend
from .randinit import INIT_RULE, INIT_SEED

__all__ = ["INIT_RULE", "INIT_SEED", "PRECISIONS", "Settings", "WeightsUnavailable", "build",
           "file_sha256", "keras_cache_file", "preprocess_fn"]

POOLINGS = ("avg", "max")
PRECISIONS = {"fp32": "float32", "bf16": "mixed_bfloat16", "fp16": "mixed_float16"}
MAX_SIZE = 2048


class WeightsUnavailable(RuntimeError):
    """The requested weights cannot be loaded; the message says how to get them."""


@dataclasses.dataclass(frozen=True)
class Settings:
    """Everything that decides what an embedding is; two runs share a cache only if equal.

    ``size`` None means the backbone's own default input size, and ``layer`` None (or the name
    of the last block) means the last block; both are resolved when the settings are made, so
    ``Settings("inceptionv3").size`` is 299 and equal settings always have equal keys.

    ``backend`` is the Keras backend that computes the vectors (``tensorflow``, ``jax`` or
    ``torch``; default ``KERAS_BACKEND``, else ``tensorflow``). It is not part of the key nor of
    equality: fp32 vectors of every backend agree with TensorFlow's within 1e-4.
    """

    backbone: str = "vgg16"
    weights: str = "imagenet"  # "imagenet", "none" or a path to a weights file
    size: int | None = None  # None: the backbone's default input size
    pooling: str = "avg"
    precision: str = "fp32"
    layer: str | None = None  # None: the last block; else a name in BACKBONES[backbone].layers
    backend: str = dataclasses.field(default_factory=default_backend, compare=False)

    def __post_init__(self):
        spec = BACKBONES.get(self.backbone)
        if spec is None:
            return  # check() names the unknown backbone
        if self.size is None:
            object.__setattr__(self, "size", spec.default_size)
        if self.layer in ("", spec.last_layer):
            object.__setattr__(self, "layer", None)

    @property
    def spec(self) -> Backbone:
        """The registry entry of the backbone (see :mod:`extract.backbones`)."""
        return BACKBONES[self.backbone]

    @property
    def dim(self) -> int:
        """The embedding dimension: channels of ``layer``, or of the last block."""
        return self.spec.layers[self.layer] if self.layer else self.spec.dim

    def check(self) -> "Settings":
        """Returns self after checking every field.

        Raises:
            ValueError: naming the field, the rule and the value received.
        """
        if self.backbone not in BACKBONES:
            raise ValueError(f"BACKBONE must be one of {', '.join(BACKBONES)}; received {self.backbone!r}")
        if self.pooling not in POOLINGS:
            raise ValueError(f"POOLING must be one of {list(POOLINGS)}; received {self.pooling!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(
                f"PRECISION must be one of {list(PRECISIONS)}; received {self.precision!r}"
            )
        self._check_size()
        if self.layer is not None and self.layer not in self.spec.layers:
            raise ValueError(
                f"LAYER must be empty (the last block) or one of {self.backbone}'s layers "
                f"{', '.join(self.spec.layers)}; received {self.layer!r}"
            )
        if self.weights not in ("imagenet", "none") and not Path(self.weights).is_file():
            raise WeightsUnavailable(
                f"WEIGHTS={self.weights!r} is neither 'imagenet', 'none' nor an existing weights "
                "file; pass WEIGHTS=imagenet, WEIGHTS=none or WEIGHTS=<path to a .h5 file>"
            )
        return self

    def _check_size(self) -> None:
        """Raises ValueError unless ``size`` is a whole number the backbone accepts."""
        spec = self.spec
        if (not isinstance(self.size, int) or isinstance(self.size, bool)
                or not spec.min_size <= self.size <= MAX_SIZE):
            raise ValueError(
                f"SIZE must be a whole number from {spec.min_size} ({self.backbone}'s minimum) "
                f"to {MAX_SIZE}; received {self.size!r}. Leave SIZE empty for {self.backbone}'s "
                f"default of {spec.default_size}"
            )

    @property
    def weights_tag(self) -> str:
        """A short readable name of the weights: imagenet, ``none-np1`` (random weights drawn by
        NumPy rule ``np1``, see :mod:`extract.randinit`), or <file stem>-<8 hex of its hash>.

        A weights file is hashed once per process while its stamp stays the same (see
        :func:`file_sha256`), however often the key is asked for.
        """
        if self.weights == "none":
            return f"none-{INIT_RULE}"
        if self.weights == "imagenet":
            return self.weights
        digest = file_sha256(self.weights)[:8]
        stem = "".join(c if c.isalnum() else "_" for c in Path(self.weights).name.split(".")[0])
        return f"{stem[:24]}-{digest}"

    @property
    def key(self) -> str:
        """The cache folder name, e.g. ``vgg16-avg-224-imagenet``, ``vgg16-avg-224-none-np1-bf16`` or
        ``vgg16-avg-224-imagenet-block4_pool`` (the layer only when it is not the last block)."""
        key = f"{self.backbone}-{self.pooling}-{self.size}-{self.weights_tag}"
        if self.layer:
            key = f"{key}-{self.layer}"
        return key if self.precision == "fp32" else f"{key}-{self.precision}"


_DIGESTS: dict[tuple, str] = {}
_DIGESTS_LOCK = threading.Lock()


def file_sha256(path) -> str:
    """The SHA-256 of a file, remembered per process by its path and stamp.

    The stamp (size, modification and change time, inode) changes with every write, so a file
    changed since is hashed again.

    Raises:
        OSError: the file cannot be read.
    """
    st = os.stat(path)
    stamp = (os.path.abspath(path), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)
    with _DIGESTS_LOCK:
        if stamp not in _DIGESTS:
            digest = hashlib.sha256()
            with open(path, "rb") as fh:
                while block := fh.read(1 << 20):
                    digest.update(block)
            _DIGESTS[stamp] = digest.hexdigest()
        return _DIGESTS[stamp]


def keras_cache_file(backbone: str) -> Path:
    """Where Keras keeps the downloaded no-top weights of ``backbone``."""
    home = os.environ.get("KERAS_HOME", os.path.join(os.path.expanduser("~"), ".keras"))
    return Path(home) / "models" / BACKBONES[backbone].weights_file


def preprocess_fn(backbone: str, backend: str | None = None):
    """Returns the backbone's ``keras.applications`` ``preprocess_input``.

    It maps float32 RGB 0..255 batches (b, s, s, 3) to the model's input, NumPy arrays in
    NumPy and tensors of the backend with its operations (so it can run inside a compiled
    call); for the backbones that carry their preprocessing inside (EfficientNetV2, ConvNeXt,
    MobileNetV3) it returns its input.

    Args:
        backbone: a name of :data:`BACKBONES`.
        backend: the Keras backend; default the one Keras already runs, else the default one.
    """
    from .framework import keras_for, running

    keras = keras_for(backend or running() or default_backend())
    return getattr(keras.applications, BACKBONES[backbone].module).preprocess_input


def build(settings: Settings):
    """Builds the backbone for ``settings`` with the precision policy applied.

    Returns:
        A Keras model mapping preprocessed (b, size, size, 3) float32 batches to (b, dim):
        the global ``pooling`` of the last block, or of ``settings.layer``.

    Raises:
        WeightsUnavailable: ImageNet weights are not in Keras' cache and cannot be downloaded,
            or a weights file does not fit the model.
        ValueError, BackendUnavailable: the backend cannot run here (see
            :func:`extract.framework.check`).
    """
    from .framework import allow_tf32, building, keras_for

    keras = keras_for(settings.backend)
    allow_tf32(settings.backend, settings.precision != "fp32")
    keras.mixed_precision.set_global_policy(PRECISIONS[settings.precision])
    with building(settings.backend):
        if settings.layer is None:
            return _with_weights(settings, pooling=settings.pooling)
        return _pooled_layer(_with_weights(settings, pooling=None), settings.layer, settings.pooling)


def _pooled_layer(model, layer: str, pooling: str):
    """A model from ``model``'s input to the global ``pooling`` of ``layer``'s output."""
    import keras

    pool = keras.layers.GlobalAveragePooling2D if pooling == "avg" else keras.layers.GlobalMaxPooling2D
    out = pool(name=f"{pooling}_pool_{layer}")(model.get_layer(layer).output)
    return keras.Model(model.inputs, out, name=f"{model.name}_{layer}")


def _with_weights(settings: Settings, pooling: str | None):
    """The ``keras.applications`` model of ``settings`` without top, with its weights loaded.

    Raises:
        WeightsUnavailable: see :func:`build`.
    """
    import keras

    factory = getattr(keras.applications, settings.spec.constructor)
    shape = (settings.size, settings.size, 3)
    kwargs = dict(include_top=False, pooling=pooling, input_shape=shape)
    if settings.weights == "none":
        from .randinit import set_numpy_weights

        model = factory(weights=None, **kwargs)
        set_numpy_weights(model, INIT_SEED)
        return model
    if settings.weights == "imagenet":
        cached = keras_cache_file(settings.backbone)
        previous = socket.getdefaulttimeout()
        socket.setdefaulttimeout(30)
        try:
            return factory(weights="imagenet", **kwargs)
        except Exception as err:
            raise WeightsUnavailable(offline_message(settings, cached, err)) from None
        finally:
            socket.setdefaulttimeout(previous)
    try:
        return factory(weights=settings.weights, **kwargs)
    except Exception as err:
        raise WeightsUnavailable(
            f"cannot load weights file {settings.weights!r} into {settings.backbone} without top "
            f"({type(err).__name__}: {err}); it must be Keras' no-top weights file "
            f"'{settings.spec.weights_file}' or one saved from the same model"
        ) from None


def offline_message(settings: Settings, cached: Path, err: BaseException) -> str:
    """What to do when ImageNet weights are neither cached nor downloadable: the fix first, one
    option per line, then the download error cut short (Keras' own text can run to a paragraph).
    """
    reason = " ".join(f"{type(err).__name__}: {err}".split())
    if len(reason) > 160:
        reason = reason[:157] + "..."
    return "\n".join([
        f"ImageNet weights for {settings.backbone} are not on this machine and cannot be downloaded.",
        "Fix it with one of:",
        f"  - copy {cached.name} into {cached.parent}/",
        f"    (download it elsewhere from {settings.spec.weights_url};",
        "    KERAS_HOME moves that folder; `make weights` lists every backbone's file)",
        f"  - WEIGHTS=<path to {cached.name}>",
        "  - WEIGHTS=none: random weights, to try the tool (the scores then say little)",
        f"Download error: {reason}",
    ])
