"""Embed a list of files with one extraction setting, in memory, without touching the cache.

Stage 2 uses this to classify new images (``make predict``): the files are embedded exactly as
``make features`` would embed them (same loader, resize rule, preprocessing and backbone), but
nothing is written under ``FEATURES``: the cache describes the labelled images of its input only.
"""

from __future__ import annotations

import os

import numpy as np

from .load import DEFAULT_MAX_PIXELS
from .model import Settings


def embed_files(paths, settings: Settings, batch: int = 32, max_pixels: int = DEFAULT_MAX_PIXELS,
                progress: bool = False, log=print) -> tuple[np.ndarray, list[str]]:
    """Runs the backbone of ``settings`` over ``paths`` and returns their embeddings, in order.

    Args:
        paths: image files (absolute or relative to the working directory).
        settings: backbone, weights, size, pooling and precision; the same settings give the
            same vectors as a cache of ``settings.key``.
        batch: images per model call.
        max_pixels: larger images are refused (decompression-bomb guard).
        progress: show a progress bar on stderr.
        log: where messages go.

    Returns:
        ``(embeddings, errors)``: float32 of shape (n, D) (D is 0 when no file could be
        embedded), and one string per path, empty when the file was embedded. A file that
        cannot be embedded (unreadable, not an image, truncated, too large) is not an exception:
        its error says why, as :func:`extract.load_image` words it, and its row is all zeros.

    Raises:
        ValueError: bad settings or batch, or a backend that cannot run in this process
            (``BackendUnavailable`` when it is not installed).
        WeightsUnavailable: the weights cannot be loaded (the message says how to get them).
    """
    from tqdm import tqdm

    from .backend import Device, embedded
    from .framework import check
    from .pipeline import read_ahead

    settings.check()
    check(settings.backend)
    if not isinstance(batch, int) or isinstance(batch, bool) or batch < 1:
        raise ValueError(f"BATCH must be a positive whole number; received {batch!r}")
    paths = [str(p) for p in paths]
    errors = [""] * len(paths)
    if not paths:
        return np.zeros((0, 0), np.float32), errors
    rows: dict[int, np.ndarray] = {}
    bar = tqdm(total=len(paths), unit="img", disable=not progress, delay=1.0)
    workers = min(8, os.cpu_count() or 1)
    reads = read_ahead(paths, settings.size, max_pixels, lambda sha: False, workers=workers,
                       window=2 * batch + workers)
    try:
        for read, vec in embedded(reads, settings, batch, Device(), log=log):
            if read.error:
                errors[read.index] = read.error
            elif vec is not None:
                rows[read.index] = vec
            bar.update(1)
    finally:
        bar.close()
    dim = next(iter(rows.values())).shape[0] if rows else 0
    out = np.zeros((len(paths), dim), np.float32)
    for i in range(len(paths)):
        if i in rows:
            out[i] = rows[i]
        elif not errors[i]:
            errors[i] = "not embedded"
    return out, errors
