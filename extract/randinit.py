"""``WEIGHTS=none``: random weights drawn by NumPy, so every backend builds the same network.

Keras' random initialisers draw from each backend's own generator, so TensorFlow, JAX and
PyTorch give three different networks for ``weights=None`` even with one seed. Instead, every
variable of the model is set here, in the order of ``model.weights`` (the same on every backend),
from one ``numpy.random.default_rng(INIT_SEED)``:

- a variable its layer draws with a variance-scaling initialiser (Glorot uniform, Keras'
  default for convolution and dense kernels; EfficientNetV2's He-like fan-out truncated normal)
  gets a NumPy draw of that same distribution, its fans counted as Keras counts them
  (receptive field x channels);
- every other variable must hold one constant (zeros for biases, beta and moving means; ones
  for gamma and moving variances; ConvNeXt's layer scale of 1e-6), which is the same on every
  backend, and keeps it. Any other random initialiser is refused, so a new backbone cannot
  quietly differ between backends.

:data:`INIT_RULE` names this rule in the cache key (``WEIGHTS=none`` gives the weights tag
``none-np1``): vectors of another rule, such as the backend-drawn ones of earlier versions
(tag ``none``), sit under another key and are never mixed with these.
"""

from __future__ import annotations

import numpy as np

INIT_SEED = 0
INIT_RULE = "np1"  # part of the key: give it a new name whenever the rule changes
_TRUNCATED_STD = 0.87962566103423978  # std of a unit normal truncated at +-2, as Keras divides by


def fans(shape: tuple) -> tuple[int, int]:
    """(fan_in, fan_out) of a weight shape, as Keras' variance-scaling initialisers count them."""
    if len(shape) == 0:
        return 1, 1
    if len(shape) == 1:
        return shape[0], shape[0]
    field = int(np.prod(shape[:-2])) if len(shape) > 2 else 1
    return shape[-2] * field, shape[-1] * field


def draw(init, shape: tuple, rng: np.random.Generator) -> np.ndarray:
    """A float32 array of ``shape`` from the distribution of variance-scaling ``init``.

    Raises:
        ValueError: an initialiser with its own axes or an unknown distribution.
    """
    if getattr(init, "input_axes", None) is not None or getattr(init, "output_axes", None) is not None:
        raise ValueError(f"cannot draw {type(init).__name__} with its own fan axes in NumPy")
    fan_in, fan_out = fans(tuple(shape))
    n = {"fan_in": fan_in, "fan_out": fan_out, "fan_avg": (fan_in + fan_out) / 2}[init.mode]
    scale = init.scale / max(1.0, n)
    if init.distribution == "uniform":
        limit = np.sqrt(3.0 * scale)
        return rng.uniform(-limit, limit, shape).astype(np.float32)
    if init.distribution == "untruncated_normal":
        return (rng.standard_normal(shape) * np.sqrt(scale)).astype(np.float32)
    if init.distribution == "truncated_normal":
        z = rng.standard_normal(shape)
        while (outside := np.abs(z) > 2).any():
            z[outside] = rng.standard_normal(int(outside.sum()))
        return (z * (np.sqrt(scale) / _TRUNCATED_STD)).astype(np.float32)
    raise ValueError(f"cannot draw the {init.distribution!r} distribution of {type(init).__name__}")


def initializer_of(layer, variable):
    """The initialiser ``layer`` created ``variable`` with, found by Keras' attribute names
    (``kernel_initializer``, ``depthwise_initializer``, ...), or None."""
    name = variable.name.rsplit("/", 1)[-1]
    attrs = [f"{name}_initializer"]
    if name.endswith("_kernel"):
        attrs.append(f"{name[:-len('_kernel')]}_initializer")
    if name == "kernel":
        attrs.append("depthwise_initializer")  # DepthwiseConv2D names its kernel "kernel"
    for attr in attrs:
        if getattr(layer, attr, None) is not None:
            return getattr(layer, attr)
    return None


def set_numpy_weights(model, seed: int = INIT_SEED) -> None:
    """Sets every variable of ``model`` by the rule of this module.

    Raises:
        ValueError: a variable is drawn by a random initialiser other than variance scaling.
    """
    import keras

    owner: dict = {}

    def walk(layer) -> None:  # the innermost layer that holds a variable owns it
        for inner in getattr(layer, "layers", None) or []:
            walk(inner)
        for v in layer.weights:
            owner.setdefault(id(v), layer)

    walk(model)
    rng = np.random.default_rng(seed)
    for v in model.weights:
        layer = owner.get(id(v))
        init = initializer_of(layer, v) if layer is not None else None
        if isinstance(init, keras.initializers.VarianceScaling):
            v.assign(draw(init, tuple(v.shape), rng))
            continue
        value = keras.ops.convert_to_numpy(v.value)
        if value.size and not (value == value.flat[0]).all():
            raise ValueError(
                f"WEIGHTS=none: {v.path} of {model.name} is drawn by {type(init).__name__}, which "
                "this rule cannot draw in NumPy; only variance-scaling and constant "
                "initialisers are known")
