"""Read, hash and decode image files in worker threads, ahead of the model, in order.

Each file is read once: the bytes read are hashed, and, when no vector of that content is known
yet, decoded from the same bytes. So a row's SHA-256 always names exactly the pixels that were
embedded, even when the file changes during the run. Files whose content is already cached are
hashed and never decoded. Framework-free (threads, processes and numpy), so it feeds any Keras
backend.

Decoding can run in a pool of processes (``decoders``): the threads still read and hash (their
reads and SHA-256 release the GIL), and send the bytes of each new content to a process, which
returns the uint8 image. A 224 px JPEG takes about 0.8 ms to read, hash and decode on one core
(1,260 images/s), so a GPU embedding thousands of images a second needs several cores decoding;
see :func:`decode_processes` for when the pool is used.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import hashlib
import multiprocessing
import threading
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Callable, Iterator

import numpy as np

from . import load


@dataclasses.dataclass(slots=True)
class Read:
    """What reading one file gave."""

    index: int  # position in the list of paths
    sha256: str  # of the bytes read; "" when the file could not be read
    image: np.ndarray | None  # (size, size, 3) uint8; None when not decoded
    error: str  # "" or the reason, for a person
    lasting: bool  # the content itself is at fault: the same bytes fail again


class Claims:
    """Which contents a run still has to decode: each new content is claimed by its first read.

    Called from the reading threads with the SHA-256 of the bytes just read. True means: do not
    decode (the content is known already, or another read of the same content claimed it), so
    identical files in one run are decoded and embedded once; the copies take that vector.
    """

    def __init__(self, known: Callable[[str], bool]):
        self._known = known
        self._claimed: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, sha: str) -> bool:
        if self._known(sha):
            return True
        with self._lock:
            if sha in self._claimed:
                return True
            self._claimed.add(sha)
            return False


def read_one(index: int, path: str, size: int, max_pixels: int,
             known: Callable[[str], bool], decode=load.decode_image) -> Read:
    """Reads ``path`` once, hashes the bytes and decodes them unless ``known(sha256)``.

    ``decode(data, size, max_pixels)`` is :func:`extract.load.decode_image`, or a function that
    hands the bytes to a decoding process. Never raises: every failure becomes ``error`` (I/O errors and running out of memory are
    passing failures, retried by the next run; damaged or non-image content is lasting).
    """
    try:
        data = load.read_bytes(path)
    except OSError as err:
        return Read(index, "", None, f"cannot read: {err.strerror or err}", False)
    except MemoryError:
        return Read(index, "", None, "cannot read: MemoryError (out of memory)", False)
    sha = hashlib.sha256(data).hexdigest()
    if known(sha):
        return Read(index, sha, None, "", False)
    try:
        return Read(index, sha, decode(data, size, max_pixels), "", False)
    except load.ImageError as err:
        return Read(index, sha, None, str(err), err.lasting)
    except MemoryError:
        return Read(index, sha, None, "cannot decode: MemoryError (out of memory)", False)
    except Exception as err:  # never let one file end the run
        return Read(index, sha, None, f"cannot decode: {type(err).__name__}: {err}", False)


def decode_processes(setting: int | None, gpu: bool, cores: int | None = None) -> int:
    """How many decoding processes a run uses: ``setting`` when given (0: decode in threads).

    Otherwise (``DECODERS=auto``) one per core but two when an NVIDIA GPU is present (its
    driver's ``nvidia-smi`` lists one) and the machine has at least 4 cores: a GPU embeds faster
    than a few threads decode, and the cores are free; else none: on a CPU the model takes every
    core and decoding costs a few percent of its time (VGG16 at 224 px: 16 images/s, against
    several hundred 224 px JPEG files read, hashed and decoded per second on one core of a
    2-core Zen 4).
    """
    if setting is not None:
        if not isinstance(setting, int) or isinstance(setting, bool) or setting < 0:
            raise ValueError(f"DECODERS must be auto or a whole number >= 0; received {setting!r}")
        return setting
    if cores is None:
        from .machine import usable_cores

        cores = usable_cores()
    return cores - 2 if gpu and cores >= 4 else 0


def _ignore_ctrl_c() -> None:
    """Decoding processes leave Ctrl-C to the run, which stops them (no traceback from each)."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _decode_in(pool: ProcessPoolExecutor):
    """A ``decode`` for :func:`read_one` that runs :func:`extract.load.decode_image` in ``pool``.

    Should the pool break (a decoding process killed, by the kernel's out-of-memory killer say),
    the images are decoded in the reading threads instead: slower, but none is lost.
    """
    def decode(data: bytes, size: int, max_pixels: int):
        try:
            return pool.submit(load.decode_image, data, size, max_pixels).result()
        except BrokenProcessPool:
            return load.decode_image(data, size, max_pixels)
    return decode


@contextlib.contextmanager
def _decoder(processes: int):
    """``decode`` for :func:`read_one`: in this process (0), or in a pool of ``processes``.

    The pool's processes start from a fresh interpreter (``forkserver``, else ``spawn``), never
    by forking this one, whose framework threads a fork would copy in an unknown state.
    """
    if processes <= 0:
        yield load.decode_image
        return
    methods = multiprocessing.get_all_start_methods()
    ctx = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
    if ctx.get_start_method() == "forkserver":
        ctx.set_forkserver_preload(["extract.load"])
    with ProcessPoolExecutor(max_workers=processes, mp_context=ctx,
                             initializer=_ignore_ctrl_c) as pool:
        yield _decode_in(pool)


def read_ahead(paths: list[str], size: int, max_pixels: int, known: Callable[[str], bool],
               workers: int, window: int, decoders: int = 0) -> Iterator[Read]:
    """Yields :class:`Read` for every path, in order, with up to ``window`` files in flight.

    Memory stays bounded by ``window`` decoded images whatever the number of files; the caller
    runs the model between items while the workers read ahead. ``workers`` threads read and
    hash; with ``decoders`` > 0 the images are decoded in that many processes (and the threads
    are at least two more than those, so every process has work waiting).
    """
    threads = max(1, workers, decoders + 2 if decoders else 0)
    with _decoder(decoders) as decode, \
            ThreadPoolExecutor(max_workers=threads, thread_name_prefix="read") as pool:
        pending: collections.deque = collections.deque()
        upcoming = iter(enumerate(paths))

        def submit() -> None:
            item = next(upcoming, None)
            if item is not None:
                pending.append(pool.submit(read_one, item[0], item[1], size, max_pixels, known,
                                           decode))

        for _ in range(max(1, window)):
            submit()
        try:
            while pending:
                result = pending.popleft().result()
                submit()
                yield result
        finally:
            for future in pending:
                future.cancel()
