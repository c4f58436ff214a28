"""The compiled model call of each backend: uint8 RGB images in, float32 vectors out.

The backbone's preprocessing runs inside the call, on the model's device: the host sends uint8
pixels (a quarter of float32's bytes) and does no float work per image. NumPy's cast and
``preprocess_input`` take about 0.18 ms per 224 px image on one core, which alone would cap a
GPU at about 5,500 images/s.

Each call is split in two, so the caller can keep one batch in flight: :meth:`Call.launch`
queues a batch on the device and returns at once where the framework runs asynchronously (GPUs),
:meth:`Call.fetch` waits for its vectors. ``call(x)`` does both.

- TensorFlow: ``tf.function``, not XLA: ``jit_compile=True`` ran 0.25-0.8x (fp32) and
  0.25-0.4x (bf16) of TensorFlow's oneDNN kernels on a 2-core Zen 4 CPU (BENCHMARKS.md).
- JAX: ``jax.jit`` of ``model.stateless_call`` with the weights passed as arguments (not baked
  into the program as constants); every batch is padded to the largest size seen, so a partial
  last batch does not compile again.
- PyTorch: eager, in ``torch.inference_mode``. Keras already hands each convolution NHWC data
  as a channels-last tensor, the layout cuDNN's tensor cores prefer. ``EMBEDCMP_TORCH_COMPILE=1``
  wraps preprocessing and model in ``torch.compile`` (under ``torch.no_grad``: its guards fail on
  tensors made in inference mode); ``python -m bench.gpu`` measures both.
"""

from __future__ import annotations

import os

import numpy as np

TORCH_COMPILE_ENV = "EMBEDCMP_TORCH_COMPILE"


class Call:
    """A compiled model call: ``call(images) -> float32 (b, D)``, or ``fetch(launch(images))``."""

    def __init__(self, launch, fetch):
        self.launch = launch
        self.fetch = fetch

    def __call__(self, images: np.ndarray) -> np.ndarray:
        return self.fetch(self.launch(images))


def tensorflow_call(model, pre) -> Call:
    """``tf.function`` of preprocessing and model (traced once per input shape, shapes relaxed)."""
    import tensorflow as tf

    def f(x):
        return tf.cast(model(pre(tf.cast(x, tf.float32)), training=False), tf.float32)

    traced = tf.function(f, reduce_retracing=True)
    return Call(traced, lambda y: y.numpy())


def jax_call(model, pre) -> Call:
    """``jax.jit`` of preprocessing and ``model.stateless_call``; batches padded to one size."""
    import jax
    import jax.numpy as jnp

    state = ([v.value for v in model.trainable_variables],
             [v.value for v in model.non_trainable_variables])

    @jax.jit
    def f(trainable, non_trainable, x):
        y, _ = model.stateless_call(trainable, non_trainable, pre(x.astype(jnp.float32)),
                                    training=False)
        return y.astype(jnp.float32)

    padded = {"size": 0}

    def launch(x):
        n = len(x)
        padded["size"] = size = max(padded["size"], n)
        if n < size:
            x = np.concatenate([x, np.zeros((size - n, *x.shape[1:]), x.dtype)])
        return f(*state, x), n

    return Call(launch, lambda out: np.asarray(out[0])[:out[1]])


def torch_call(model, pre) -> Call:
    """Eager PyTorch in inference mode (``torch.compile`` with ``EMBEDCMP_TORCH_COMPILE=1``)."""
    import keras
    import torch

    ops = keras.ops

    def f(x):
        return ops.cast(model(pre(ops.cast(x, "float32")), training=False), "float32")

    compiled = os.environ.get(TORCH_COMPILE_ENV) == "1"
    run = torch.compile(f) if compiled else f
    # torch.compile's guards fail on tensors made in inference mode (PyTorch 2.13): no_grad there.
    mode = torch.no_grad if compiled else torch.inference_mode

    def launch(x):
        with mode():
            return run(ops.convert_to_tensor(x))

    return Call(launch, lambda y: y.detach().cpu().numpy())


CALLS = {"tensorflow": tensorflow_call, "jax": jax_call, "torch": torch_call}
