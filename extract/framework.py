"""Which Keras 3 backend runs stage 1's model (``BACKEND``), and the few things that differ.

Keras runs the same ``keras.applications`` models on TensorFlow, JAX and PyTorch; it picks its
backend once per process, when it is first imported, from ``KERAS_BACKEND``. So one process
embeds with one backend, and this module sets ``KERAS_BACKEND`` itself before that import (a
``backend`` entry in ``~/.keras/keras.json`` is never what decides).

The backend is not part of the cache key: fp32 vectors of every backend agree with TensorFlow's
within 1e-4 (``tests/test_backends.py`` holds JAX and PyTorch to it on the CPU). Nothing here is
imported until an image has to be embedded; :func:`check` only looks the packages up, so a run
that finds everything cached never loads a framework.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys

BACKENDS = ("tensorflow", "jax", "torch")
DEFAULT_BACKEND = "tensorflow"

# How to install each backend, for the message when it is missing.
INSTALL = {
    "tensorflow": "pip install -r requirements.txt (TensorFlow for the CPU; for an NVIDIA GPU "
                  "on Linux: pip install 'tensorflow[and-cuda]==2.21.*')",
    "jax": "pip install -r requirements-jax.txt (JAX for the CPU; for an NVIDIA GPU: "
           "pip install -U 'jax[cuda12]')",
    "torch": "pip install torch (the CPU or CUDA build that fits the machine, as "
             "https://pytorch.org/get-started/locally/ lists them)",
}


class BackendUnavailable(ValueError):
    """The chosen backend (or Keras) is not installed; the message names the install command."""


def default_backend() -> str:
    """``KERAS_BACKEND`` when it is set (Keras' own variable), else TensorFlow."""
    return os.environ.get("KERAS_BACKEND") or DEFAULT_BACKEND


def running() -> str | None:
    """The backend Keras already runs on in this process, or None when Keras is not imported."""
    keras = sys.modules.get("keras")
    config = getattr(keras, "config", None)
    return config.backend() if config is not None else None


def check(name: str) -> str:
    """Returns ``name`` when this process can embed with that backend; imports nothing.

    Raises:
        ValueError: an unknown name, or Keras already runs another backend in this process.
        BackendUnavailable: the backend's package or Keras is not installed (the message says
            which command installs it).
    """
    if name not in BACKENDS:
        raise ValueError(f"BACKEND must be one of {', '.join(BACKENDS)}; received {name!r}")
    missing = [m for m in (name, "keras") if importlib.util.find_spec(m) is None]
    if missing:
        what = " and ".join(missing)
        fix = INSTALL[name] if name in missing else "pip install -r requirements.txt"
        raise BackendUnavailable(
            f"BACKEND={name} needs {what}, which is not installed for {sys.executable}: run "
            f"`{fix}`, or choose another BACKEND ({', '.join(BACKENDS)})")
    now = running()
    if now is not None and now != name:
        raise ValueError(
            f"BACKEND={name}: Keras already runs on {now} in this process, and a process runs "
            f"one Keras backend; embed with BACKEND={name} in a new process (or use BACKEND={now})")
    return name


def keras_for(name: str):
    """Returns the ``keras`` module running on backend ``name`` (imported on first use).

    Raises:
        ValueError, BackendUnavailable: see :func:`check`.
    """
    check(name)
    os.environ["KERAS_BACKEND"] = name
    if name == "tensorflow":
        from ._tf import tensorflow

        tensorflow()  # quietly: its start-up lines would otherwise reach the terminal
    import keras

    if keras.config.backend() != name:  # imported under another name between check and here
        raise ValueError(f"BACKEND={name}: Keras runs on {keras.config.backend()} in this process; "
                         f"embed with BACKEND={name} in a new process")
    return keras


def allow_tf32(name: str, allowed: bool) -> None:
    """Lets GPUs run float32 matrix products and convolutions in TF32 (or forbids it).

    fp32 means fp32 on every device: with TF32, one cache could hold rows of two precisions
    (the device is not part of the key). Process-wide in every framework, so it is set before
    every use of a model, not only when one is built.
    """
    if name == "tensorflow":
        from ._tf import tensorflow

        tensorflow().config.experimental.enable_tensor_float_32_execution(allowed)
    elif name == "torch":
        import torch

        torch.backends.cuda.matmul.allow_tf32 = allowed
        torch.backends.cudnn.allow_tf32 = allowed
    elif name == "jax":
        import jax

        jax.config.update("jax_default_matmul_precision", None if allowed else "highest")


def building(name: str):
    """The context in which a model is built: on JAX, one fixed matmul precision.

    JAX keeps the compiled programs of Keras' initialisers per process, keyed by, among others,
    its matmul precision, which :func:`allow_tf32` switches per model precision. Built under the
    precision of the moment, a bf16 model after an fp32 one compiled every initialiser again
    (VGG16 on a CPU: 4.4 s, against 0.28 s when built under one precision). The initialisers do
    no matrix products, so their values do not depend on it.
    """
    if name == "jax":
        import jax

        return jax.default_matmul_precision("highest")
    return contextlib.nullcontext()


def versions(name: str) -> dict:
    """``{framework: version, "keras": version}`` of the modules imported in this process."""
    out = {}
    for module in (name, "keras"):
        mod = sys.modules.get(module)
        if mod is not None:
            out[module] = getattr(mod, "__version__", "?")
    return out
