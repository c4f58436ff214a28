"""The deep-learning framework's side of stage 1: the compiled model call, the device, batching.

Besides model building (:mod:`extract.model`) and the compiled calls (:mod:`extract.calls`),
this is the only module that runs the framework (the Keras backend of ``settings.backend``);
everything else hands it decoded uint8 images and gets float32 vectors back. Nothing here is
imported until the first image has to be embedded, so a run that finds everything cached never
loads a framework.
"""

from __future__ import annotations

import itertools
import os
import time
from typing import Callable, Iterable, Iterator

import numpy as np

from .model import Settings
from .pipeline import Read

NAN_REASON = "the model produced NaN or infinite values for this image"
NOTHING_RAN = "none needed (everything cached)"

_EMBEDDERS: dict = {}  # (backend, key) -> compiled model call, so later runs in one process skip build

PAUSE_AT_BATCH = "EMBEDCMP_TEST_PAUSE_AT_BATCH"


def pause_for_tests(batch_number: int) -> None:
    """For the interruption tests only: with ``EMBEDCMP_TEST_PAUSE_AT_BATCH=n`` in the
    environment, the model's ``n``-th batch (counted per process from 1) waits forever instead of
    starting, so that a test kills or interrupts the run at a known point, with the batches
    before it done, whatever the speed of the machine. Unset (as always outside the tests), it
    does nothing.
    """
    at = os.environ.get(PAUSE_AT_BATCH)
    if at and batch_number == int(at):
        while True:  # until a signal ends the process (SIGKILL) or raises KeyboardInterrupt (SIGINT)
            time.sleep(0.05)


def _apply_precision(settings: Settings) -> None:
    """fp32 means fp32 on every device: GPUs would otherwise run convolutions in TF32.

    Applied before every use, not only when the model is built: the process-wide switch may
    have been turned on by a model of another precision since.
    """
    from .framework import allow_tf32

    allow_tf32(settings.backend, settings.precision != "fp32")


def embedder(settings: Settings) -> Callable[[np.ndarray], np.ndarray]:
    """Returns the model call ``f(uint8 RGB images (b, s, s, 3)) -> float32 (b, D)``.

    The backbone's preprocessing runs inside it (float32 RGB 0..255 input works as well). The
    call is compiled for ``settings.backend`` (see :mod:`extract.calls`) and built once per
    setting and process (the last two are kept): repeated runs in one process (predict, the
    benchmark) do not pay the model build and tracing again.

    Raises:
        WeightsUnavailable: the weights cannot be loaded.
        ValueError, BackendUnavailable: the backend cannot run in this process.
    """
    from .calls import CALLS
    from .model import build, preprocess_fn

    key = (settings.backend, settings.key)
    if key not in _EMBEDDERS:
        model = build(settings)
        _EMBEDDERS[key] = CALLS[settings.backend](model, preprocess_fn(settings.backbone, settings.backend))
        while len(_EMBEDDERS) > 2:
            _EMBEDDERS.pop(next(iter(_EMBEDDERS)))
    _apply_precision(settings)
    return _EMBEDDERS[key]


def device_name(backend: str | None = None) -> str:
    """Names the device ``backend`` runs the model on (its first GPU, else the CPU), with the
    GPU's memory or the CPU's model (see :mod:`extract.devices`)."""
    from .devices import describe
    from .framework import default_backend, running

    return describe(backend or running() or default_backend())


class Device:
    """The name of the device the model ran on, known once the first batch ran."""

    def __init__(self):
        self.name = NOTHING_RAN


def _vectors(batch: list[Read], emb: np.ndarray) -> Iterator[tuple[Read, np.ndarray | None]]:
    """Pairs each read of a batch with its vector; a NaN or infinite vector becomes an error."""
    for w, vec in zip(batch, emb):
        w.image = None
        if np.isfinite(vec).all():
            yield w, vec
        else:
            w.error, w.lasting = NAN_REASON, True
            yield w, None


def embedded(reads: Iterable[Read], settings: Settings, batch: int, device: Device,
             log=print) -> Iterator[tuple[Read, np.ndarray | None]]:
    """Runs the backbone over the decoded images of ``reads`` in batches.

    Yields ``(read, vector)`` once per read: with its float32 vector when it was embedded, with
    None when it was not decoded (known content, or an error in ``read.error``; a NaN vector
    becomes such an error). The model is built at the first decoded image only. Where the model
    call can be launched ahead (:class:`extract.calls.Call`), one batch runs on the device while
    the next one is gathered.
    """
    model = _Batches(settings, device, log)
    waiting: list[Read] = []
    for r in itertools.chain(reads, [None]):  # lazily: the read-ahead stays bounded
        if r is not None and r.image is None:
            yield r, None
            continue
        if r is not None:
            waiting.append(r)
        if waiting and (r is None or len(waiting) >= batch):
            yield from model.run(waiting)
            waiting = []
    yield from model.finish()


class _Batches:
    """The model side of :func:`embedded`: builds the call at the first batch, keeps one in flight."""

    def __init__(self, settings: Settings, device: Device, log):
        self.settings, self.device, self.log = settings, device, log
        self.call = None
        self.flight = None  # (reads, launched output) of the batch running on the device
        self.started = 0  # batches started, for pause_for_tests

    def run(self, reads: list[Read]) -> Iterator[tuple[Read, np.ndarray | None]]:
        """Starts ``reads`` on the device; yields the results of the batch that ran before."""
        self.started += 1
        pause_for_tests(self.started)
        if self.call is None:
            s = self.settings
            self.call, self.device.name = embedder(s), device_name(s.backend)
            self.log(f"embedding new images with {s.key} on {self.device.name} ({s.backend})")
        x = np.stack([w.image for w in reads])
        if not hasattr(self.call, "launch"):  # a plain function: one batch at a time
            yield from _vectors(reads, np.asarray(self.call(x), np.float32))
            return
        previous, self.flight = self.flight, (reads, self.call.launch(x))
        if previous is not None:  # fetched after the next batch is queued behind it
            yield from _vectors(previous[0], np.asarray(self.call.fetch(previous[1]), np.float32))

    def finish(self) -> Iterator[tuple[Read, np.ndarray | None]]:
        """Yields the results of the batch in flight, if any."""
        if self.flight is not None:
            (reads, launched), self.flight = self.flight, None
            yield from _vectors(reads, np.asarray(self.call.fetch(launched), np.float32))
