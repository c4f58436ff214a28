"""The deep-learning framework's side of stage 1: the compiled model call, the device, batching.

Besides model building (:mod:`extract.model`), this is the only module that runs the framework;
everything else hands it decoded images and gets float32 vectors back. Nothing here is imported
until the first image has to be embedded, so a run that finds everything cached never loads it.
"""

from __future__ import annotations

import itertools
import os
from typing import Callable, Iterable, Iterator

import numpy as np

from .model import Settings
from .pipeline import Read

NAN_REASON = "the model produced NaN or infinite values for this image"
NOTHING_RAN = "none needed (everything cached)"

_EMBEDDERS: dict = {}  # settings.key -> traced model call, so later runs in one process skip build


def _apply_precision(settings: Settings) -> None:
    """fp32 means fp32 on every device: GPUs would otherwise run convolutions in TF32.

    Applied before every use, not only when the model is built: the process-wide switch may
    have been turned on by a model of another precision since.
    """
    from ._tf import tensorflow

    tensorflow().config.experimental.enable_tensor_float_32_execution(settings.precision != "fp32")


def embedder(settings: Settings) -> Callable[[np.ndarray], np.ndarray]:
    """Returns the model call ``f(preprocessed float32 (b, s, s, 3)) -> float32 (b, D)``.

    Built once per setting and process (the last two are kept): repeated runs in one process
    (predict, the benchmark) do not pay the model build and tracing again. Not XLA-compiled:
    ``jit_compile=True`` measured slower than TensorFlow's oneDNN kernels on a 2-core Zen 4 CPU
    (fp32 0.25-0.8x, bf16 0.25-0.4x; see BENCHMARKS.md).
    """
    from ._tf import tensorflow
    from .model import build

    key = settings.key
    if key not in _EMBEDDERS:
        tf = tensorflow()
        model = build(settings)
        traced = tf.function(lambda x: tf.cast(model(x, training=False), tf.float32),
                             reduce_retracing=True)
        _EMBEDDERS[key] = lambda x: traced(x).numpy()
        while len(_EMBEDDERS) > 2:
            _EMBEDDERS.pop(next(iter(_EMBEDDERS)))
    _apply_precision(settings)
    return _EMBEDDERS[key]


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


class Device:
    """The name of the device the model ran on, known once the first batch ran."""

    def __init__(self):
        self.name = NOTHING_RAN


def embedded(reads: Iterable[Read], settings: Settings, batch: int, device: Device,
             log=print) -> Iterator[tuple[Read, np.ndarray | None]]:
    """Runs the backbone over the decoded images of ``reads`` in batches.

    Yields ``(read, vector)`` once per read: with its float32 vector when it was embedded, with
    None when it was not decoded (known content, or an error in ``read.error``; a NaN vector
    becomes such an error). The model is built at the first decoded image only.
    """
    from .model import preprocess_fn

    run = pre = None
    waiting: list[Read] = []
    for r in itertools.chain(reads, [None]):  # lazily: the read-ahead stays bounded
        if r is not None and r.image is None:
            yield r, None
            continue
        if r is not None:
            waiting.append(r)
        if not waiting or (r is not None and len(waiting) < batch):
            continue
        if run is None:
            run, pre, device.name = embedder(settings), preprocess_fn(settings.backbone), device_name()
            log(f"embedding new images with {settings.key} on {device.name}")
        emb = np.asarray(run(pre(np.stack([w.image for w in waiting]).astype(np.float32))), np.float32)
        for w, vec in zip(waiting, emb):
            w.image = None
            if np.isfinite(vec).all():
                yield w, vec
            else:
                w.error, w.lasting = NAN_REASON, True
                yield w, None
        waiting.clear()
