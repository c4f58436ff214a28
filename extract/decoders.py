"""Read, hash and decode image files in a pool of processes, ahead of the model, in order.

Reading, hashing and decoding a 224 px JPEG file takes 0.7-0.8 ms on one core (1,200-1,500
files a second on a 2-core Zen 4), and about a fifth of it holds Python's GIL (two threads ran
1.65x one), so the threads of one process cannot feed a GPU that embeds thousands of images a
second. Here each process takes a chunk of files and does all of it, exactly as
:func:`extract.pipeline.read_one` does in a thread: one read per file, the SHA-256 of those bytes,
and a decode unless the content is known. Chunks keep the pool's own cost per file small (handing
each file over separately cost the run's process 0.45 ms of CPU per file, as much as decoding).

The contents known before the run (cached, or remembered as failures) reach the processes as a
sorted array of raw digests in a temporary file they memory-map, so a million of them cost no
copy per process. A content first met in this run may be decoded by two processes at once (two
copies of one new image): the run keeps the first and drops the other's pixels, so each content
is still embedded once. The processes start from a fresh interpreter (``forkserver``, else
``spawn``), never by forking the run's process and its framework threads; they leave Ctrl-C to
the run. Should the pool break (a process killed by the out-of-memory killer, say), the rest is
read in the run's own thread: slower, and nothing lost.
"""

from __future__ import annotations

import collections
import itertools
import multiprocessing
import os
import tempfile
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Callable, Iterator

import numpy as np

from .pipeline import Read, read_one

CHUNK = 16  # files per task


def decode_processes(setting: int | None, gpu: bool, cores: int | None = None) -> int:
    """How many decoding processes a run uses: ``setting`` when given (0: threads, no pool).

    Otherwise (``DECODERS=auto``) all cores but two when an NVIDIA GPU is present (its driver's
    ``nvidia-smi`` lists one) and the machine has at least 4 cores: a GPU embeds faster than the
    threads of one process decode, and the cores are free; else none: on a CPU the model takes
    every core and decoding costs a few percent of its time (VGG16 at 224 px: 16 images/s
    against 1,200 or more files decoded per second on one core of a 2-core Zen 4).

    Raises:
        ValueError: ``setting`` is not a whole number >= 0.
    """
    if setting is not None:
        if not isinstance(setting, int) or isinstance(setting, bool) or setting < 0:
            raise ValueError(f"DECODERS must be auto or a whole number >= 0; received {setting!r}")
        return setting
    if cores is None:
        from .machine import usable_cores

        cores = usable_cores()
    return cores - 2 if gpu and cores >= 4 else 0


def write_known(hashes) -> str | None:
    """Writes the SHA-256 hex digests ``hashes`` as a sorted ``S32`` array to a temporary
    ``.npy`` file; returns its path (None when there are none). The caller deletes it."""
    if not hashes:
        return None
    digests = np.array(sorted(bytes.fromhex(h) for h in hashes), dtype="S32")
    fd, path = tempfile.mkstemp(prefix="embedcmp-known-", suffix=".npy")
    with os.fdopen(fd, "wb") as fh:
        np.save(fh, digests)
    return path


_KNOWN: dict = {}  # path -> memory-mapped digests, in each decoding process


def known_in(path: str | None) -> Callable[[str], bool]:
    """``known(sha256 hex) -> bool`` over the digests of :func:`write_known`'s file."""
    if path is None:
        return lambda sha: False
    if path not in _KNOWN:
        _KNOWN.clear()
        _KNOWN[path] = np.load(path, mmap_mode="r")
    digests = _KNOWN[path]

    def known(sha: str) -> bool:
        key = bytes.fromhex(sha)
        i = int(np.searchsorted(digests, np.array(key, dtype="S32")))
        # NumPy drops trailing zero bytes of S32 items; dropping them from the key too is exact
        return i < len(digests) and digests[i] == key.rstrip(b"\0")

    return known


def read_chunk(items: list[tuple[int, str]], size: int, max_pixels: int,
               known_path: str | None) -> list[Read]:
    """A task: :func:`~extract.pipeline.read_one` for each ``(index, path)`` of a chunk."""
    known = known_in(known_path)
    return [read_one(i, path, size, max_pixels, known) for i, path in items]


def _ignore_ctrl_c() -> None:
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _pool(processes: int) -> ProcessPoolExecutor:
    methods = multiprocessing.get_all_start_methods()
    ctx = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
    if ctx.get_start_method() == "forkserver":
        ctx.set_forkserver_preload(["extract.decoders"])
    return ProcessPoolExecutor(max_workers=processes, mp_context=ctx, initializer=_ignore_ctrl_c)


def read_in_processes(paths: list[str], size: int, max_pixels: int, claims: Callable[[str], bool],
                      known_hashes, processes: int, window: int) -> Iterator[Read]:
    """Yields :class:`~extract.pipeline.Read` for every path, in order, read in ``processes``.

    Args:
        claims: as for :func:`extract.pipeline.read_ahead` (a :class:`~extract.pipeline.Claims`):
            asked for each decoded content; True drops its pixels (known, or claimed already).
        known_hashes: contents known before the run: the processes do not decode them.
        window: about this many files in flight (plus one chunk per process).
    """
    known_path = write_known(known_hashes)
    items = iter(enumerate(paths))
    chunks = iter(lambda: list(itertools.islice(items, CHUNK)), [])
    pool = _pool(max(1, processes))
    try:
        pending: collections.deque = collections.deque()

        def submit() -> None:
            chunk = next(chunks, None)
            if chunk is not None:
                try:
                    pending.append((chunk, pool.submit(read_chunk, chunk, size, max_pixels, known_path)))
                except BrokenProcessPool:
                    pending.append((chunk, None))

        for _ in range(max(1, window // CHUNK) + processes):
            submit()
        while pending:
            chunk, future = pending.popleft()
            submit()
            yield from _reads(chunk, future, size, max_pixels, claims)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        if known_path:
            os.unlink(known_path)


def _reads(chunk, future, size: int, max_pixels: int, claims) -> Iterator[Read]:
    """The reads of a chunk: from its process, or read here when the pool broke."""
    if future is not None:
        try:
            yield from _claimed(future.result(), claims)
            return
        except BrokenProcessPool:
            pass
    for i, path in chunk:  # claims decides here what is decoded, as in the reading threads
        yield read_one(i, path, size, max_pixels, claims)


def _claimed(reads: list[Read], claims) -> Iterator[Read]:
    for r in reads:
        if r.image is not None and claims(r.sha256):
            r.image = None  # decoded by another process too, or known since: embedded once
        yield r
