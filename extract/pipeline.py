"""Read, hash and decode image files in worker threads, ahead of the model, in order.

Each file is read once: the bytes read are hashed, and, when no vector of that content is known
yet, decoded from the same bytes. So a row's SHA-256 always names exactly the pixels that were
embedded, even when the file changes during the run. Files whose content is already cached are
hashed and never decoded. Framework-free (threads and numpy), so it feeds any Keras backend;
:mod:`extract.decoders` runs the same reads in a pool of processes, for GPU speeds.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import threading
from concurrent.futures import ThreadPoolExecutor
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
             known: Callable[[str], bool]) -> Read:
    """Reads ``path`` once, hashes the bytes and decodes them unless ``known(sha256)``.

    Never raises: every failure becomes ``error`` (I/O errors and running out of memory are
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
        return Read(index, sha, load.decode_image(data, size, max_pixels), "", False)
    except load.ImageError as err:
        return Read(index, sha, None, str(err), err.lasting)
    except MemoryError:
        return Read(index, sha, None, "cannot decode: MemoryError (out of memory)", False)
    except Exception as err:  # never let one file end the run
        return Read(index, sha, None, f"cannot decode: {type(err).__name__}: {err}", False)


def read_ahead(paths: list[str], size: int, max_pixels: int, known: Callable[[str], bool],
               workers: int, window: int) -> Iterator[Read]:
    """Yields :class:`Read` for every path, in order, with up to ``window`` files in flight.

    Memory stays bounded by ``window`` decoded images whatever the number of files; the caller
    runs the model between items while the workers read ahead. (:mod:`extract.decoders` does
    the same with a pool of processes.)
    """
    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="read") as pool:
        pending: collections.deque = collections.deque()
        upcoming = iter(enumerate(paths))

        def submit() -> None:
            item = next(upcoming, None)
            if item is not None:
                pending.append(pool.submit(read_one, item[0], item[1], size, max_pixels, known))

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
