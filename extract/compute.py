"""Read the files a plan lists once each, embed the contents not yet known, keep finished work.

``engine="local"`` reads in threads of this process (:mod:`extract.pipeline`) and runs the model
here (:mod:`extract.backend`); ``engine="ray"`` runs the same steps as a Ray Data pipeline
(:mod:`extract.engine_ray`). Either way every result comes back to one :class:`Checkpoint`,
which keeps it for the assembly and saves finished work to the plan's shards every couple of
seconds, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time

import numpy as np

from .backend import NOTHING_RAN, Device
from .model import Settings
from .pipeline import Claims, Read
from .plan import Plan


class Interrupted(RuntimeError):
    """Ctrl-C during a run; finished batches are kept."""


@dataclasses.dataclass
class Computed:
    """What reading and embedding gave, for the assembly."""

    computed: set  # sha256 of the contents embedded by this run
    errors: dict  # path -> (reason, lasting): the file could not be read
    content_errors: dict  # sha256 -> (reason, lasting): these bytes could not be embedded
    device: str


class Checkpoint:
    """Keeps each result of a run and saves finished work to the plan's shards.

    Args:
        p: the plan: new vectors go to ``p.store``, hashes read to ``p.sha``.
        flush_seconds: finished work is saved at least this often.
    """

    def __init__(self, p: Plan, flush_seconds: float):
        self.p = p
        self.flush_seconds = flush_seconds
        self.done = Computed(set(), {}, {}, NOTHING_RAN)
        self._shas: list[str] = []
        self._vectors: list[np.ndarray] = []
        self._seen: list[tuple] = []
        self._at = time.perf_counter()

    def keep(self, r: Read, vec: np.ndarray | None) -> None:
        """Records one read (and its vector, when one was computed)."""
        cand = self.p.todo[r.index]
        if r.sha256:
            self.p.sha[cand.path] = r.sha256
            self._seen.append((cand.path, *cand.stamp, r.sha256))
        if r.error and r.sha256:
            self.done.content_errors.setdefault(r.sha256, (r.error, r.lasting))
        elif r.error:
            self.done.errors[cand.path] = (r.error, r.lasting)
        elif vec is not None and r.sha256 not in self.p.store:
            self.p.store.add(r.sha256, vec)
            self.done.computed.add(r.sha256)
            self._shas.append(r.sha256)
            self._vectors.append(vec)
        if time.perf_counter() - self._at >= self.flush_seconds:
            self.flush()

    def flush(self) -> None:
        """Saves what was kept since the last flush as one shard."""
        emb = np.stack(self._vectors) if self._vectors else None
        shards = self.p.shards
        shards.dim = shards.dim or (None if emb is None else emb.shape[1])
        shards.save(self._shas, emb, self._seen)
        self._shas, self._vectors, self._seen = [], [], []
        self._at = time.perf_counter()


def _stream(p: Plan, settings: Settings, batch: int, max_pixels: int, device: Device, log,
            progress: bool, engine: str, actors: int | None, decoders: int | None):
    """(read, vector or None) for every file of ``p.todo``, from the chosen engine."""
    paths = [c.abspath for c in p.todo]
    if engine == "ray":
        from .engine_ray import ray_embedded

        return ray_embedded(paths, settings, batch, max_pixels, p.store.hashes() | set(p.failed),
                            device, log=log, progress=progress, actors=actors)
    from .backend import embedded
    from .decoders import decode_processes, read_in_processes
    from .machine import gpu_names
    from .pipeline import read_ahead

    workers = min(8, os.cpu_count() or 1)
    claims = Claims(lambda sha: sha in p.store or sha in p.failed)
    processes = decode_processes(decoders, gpu=bool(gpu_names()))
    if processes:
        reads = read_in_processes(paths, settings.size, max_pixels, claims,
                                  p.store.hashes() | set(p.failed), processes, window=2 * batch)
    else:
        reads = read_ahead(paths, settings.size, max_pixels, claims, workers=workers,
                           window=2 * batch + workers)
    return embedded(reads, settings, batch, device, log=log)


def compute(p: Plan, settings: Settings, batch: int, max_pixels: int, progress: bool = True,
            log=print, flush_seconds: float = 2.0, engine: str = "local",
            actors: int | None = None, decoders: int | None = None) -> Computed:
    """Reads the files of ``p.todo`` once each and embeds the contents not yet known.

    ``decoders``: processes that read and decode (0: threads; None: see
    :func:`extract.decoders.decode_processes`); the Ray engine decodes in its own tasks.

    Identical contents are decoded and embedded once (the first read of a content claims it);
    the assembly gives every copy that vector.

    Raises:
        Interrupted: Ctrl-C; the finished work is saved first.
        WeightsUnavailable: the weights cannot be loaded.
    """
    checkpoint = Checkpoint(p, flush_seconds)
    if not p.todo:
        return checkpoint.done
    from tqdm import tqdm

    device = Device()
    bar = tqdm(total=len(p.todo), unit="file", desc="reading", disable=not progress,
               file=sys.stderr, dynamic_ncols=True, smoothing=0.1, delay=1.0,
               mininterval=0.5 if sys.stderr.isatty() else 15)
    try:
        for r, vec in _stream(p, settings, batch, max_pixels, device, log, progress, engine, actors,
                              decoders):
            checkpoint.keep(r, vec)
            bar.update(1)
    except KeyboardInterrupt:
        checkpoint.flush()
        raise Interrupted(f"interrupted: {len(checkpoint.done.computed)} newly embedded images and "
                          f"the hashes read so far are kept in {p.shards.folder}; run the same "
                          "command again to resume") from None
    finally:
        bar.close()
    checkpoint.flush()
    checkpoint.done.device = device.name
    return checkpoint.done
