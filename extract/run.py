"""Stage 1: embed every new or changed image under IN once and write the cache of one setting.

A run, one module per step: check the arguments, list the input (:mod:`extract.files`), resolve
``PRECISION=auto`` (:mod:`extract.precision`), take the key's lock and tidy what a killed run
left (:mod:`extract.locks`, :mod:`extract.cache`), then :func:`~extract.plan.plan` what must be
read, :func:`~extract.compute.compute` the new vectors and
:func:`~extract.assemble.assemble` the cache.
"""

from __future__ import annotations

import time
from pathlib import Path

from . import cache, files, framework, locks
from .assemble import Summary, assemble
from .atomic import CacheWriteError, read_csv_rows_head
from .compute import Interrupted, compute
from .load import DEFAULT_MAX_PIXELS
from .model import Settings
from .plan import Plan, bytes_needed, plan

__all__ = ["Interrupted", "Summary", "extract_features"]


def _check(in_dir, batch, engine: str, backend: str, decoders) -> None:
    """Raises ValueError (or FileNotFoundError for ``in_dir``) on arguments that cannot run.

    The backend is only looked up (installed, and not another one running in this process);
    it is imported when the first image is embedded.
    """
    framework.check(backend)
    if decoders is not None:
        from .decoders import decode_processes

        decode_processes(decoders, gpu=False)  # raises on a bad value
    if engine not in ("local", "ray"):
        raise ValueError(f"ENGINE must be 'local' or 'ray'; received {engine!r}")
    if not isinstance(batch, int) or isinstance(batch, bool) or batch < 1:
        raise ValueError(f"BATCH must be a positive whole number; received {batch!r}")
    if not Path(in_dir).is_dir():
        files.detect_layout(Path(in_dir))  # raises the message that says what to do


def _resolved(settings: Settings, features_dir, listing, batch: int, max_pixels: int, log,
              extra_meta: dict | None) -> tuple[Settings, dict | None]:
    """``settings`` with ``PRECISION=auto`` resolved, checked; the calibration goes to meta.json."""
    if settings.precision == "auto":
        from .precision import resolve

        settings, info = resolve(settings, features_dir, listing, batch, max_pixels, log=log)
        extra_meta = dict(extra_meta or {}, precision_auto=info)
    return settings.check(), extra_meta


def extract_features(in_dir, features_dir, settings: Settings, batch: int = 32,
                     strict: bool = False, max_pixels: int = DEFAULT_MAX_PIXELS,
                     progress: bool = True, log=print, extra_meta: dict | None = None,
                     flush_seconds: float = 2.0, dataset: str | None = None,
                     engine: str = "local", actors: int | None = None,
                     decoders: int | None = None) -> Summary:
    """Embeds the images under ``in_dir`` into ``features_dir/<input-id>/<key>/``, reusing what is cached.

    Args:
        in_dir: the input folder (``<class>/**`` or ``<split>/<class>/**``).
        features_dir: the cache root (FEATURES).
        settings: backbone, weights, size, pooling, layer and precision (``auto``: see
            :mod:`extract.precision`; the key and meta.json record the precision chosen), and
            the Keras backend that runs the model (not part of the key).
        batch: images per model call.
        strict: accepted for the caller's exit code; rejections never stop the run.
        max_pixels: images with more pixels are rejected.
        progress: show progress bars on stderr.
        log: where messages go.
        extra_meta: merged into ``meta.json`` (the demo records its weights fallback here).
        flush_seconds: finished work is written to ``.partial/`` at least this often.
        dataset: ``DATASET``, the name of the input's folder under ``features_dir`` (default:
            the input folder's name and a hash of its absolute path).
        engine: ``local`` (this process) or ``ray`` (a Ray Data pipeline; ``RAY_ADDRESS``).
        actors: (ray) model actors; default one per GPU, else one per node.
        decoders: processes that decode images (0: threads of this process); None: several
            when the model runs on a GPU, else none (see :func:`extract.decoders.decode_processes`).

    Returns:
        A :class:`Summary` of the run.

    Raises:
        FileNotFoundError: ``in_dir`` is missing.
        ValueError: bad settings, no images at all, or ``dataset`` holds another input's cache.
        BackendUnavailable: the backend is not installed (the message names the command).
        WeightsUnavailable: weights cannot be loaded.
        CacheWriteError: the cache cannot be written (full disk, read-only FEATURES).
        Interrupted: Ctrl-C; finished batches are kept for the next run.
    """
    t0 = time.perf_counter()
    _check(in_dir, batch, engine, settings.backend, decoders)
    root = Path(features_dir) / cache.input_id(in_dir, dataset)
    cache.check_same_input(root, in_dir, dataset)
    try:
        listing = files.list_images(in_dir, progress=progress)
        settings, extra_meta = _resolved(settings, features_dir, listing, batch, max_pixels, log,
                                         extra_meta)
        options = dict(progress=progress, flush_seconds=flush_seconds, engine=engine, actors=actors,
                       decoders=decoders)
        with locks.locked(root, settings.key, log=log):
            p, summary = _locked_run(in_dir, features_dir, root, listing, settings, batch,
                                     max_pixels, log, extra_meta, t0, options)
    except KeyboardInterrupt:
        raise Interrupted(f"interrupted: finished batches are kept and every cache under {root} "
                          "is complete or absent, never half-written; run the same command "
                          "again to resume") from None
    _report(p, summary, log)
    return summary


def _locked_run(in_dir, features_dir, root: Path, listing, settings: Settings, batch: int,
                max_pixels: int, log, extra_meta, t0: float, options: dict) -> tuple[Plan, Summary]:
    """Recover, plan, compute and assemble: the part of a run under the key's lock."""
    for note in cache.recover(root, settings.key):
        log(f"warning: {note}")
    p = plan(in_dir, features_dir, root, settings.key, listing, log=log)
    try:
        done = compute(p, settings, batch, max_pixels, log=log, **options)
        return p, assemble(p, done, settings, t0, batch, extra_meta)
    except CacheWriteError as err:
        if not err.no_space:
            raise
        raise err.needing(bytes_needed(p, p.store.dim() or settings.dim)[1]) from None


def _report(p: Plan, summary: Summary, log) -> None:
    """The closing warnings: empty classes, skipped files, rejected files with reasons."""
    listing = p.listing
    if listing.empty_classes:
        log(f"warning: class folders without images: {', '.join(listing.empty_classes)}")
    if listing.skipped:
        log(f"skipped {len(listing.skipped)} files that are not images "
            f"(by name and content), e.g. {listing.skipped[0]!r}")
    if summary.rejected:
        log(f"rejected {summary.rejected} files that could not be embedded; the list with reasons "
            f"is {p.folder / 'rejected.csv'}")
        for path, reason in read_csv_rows_head(p.folder / "rejected.csv", 5):
            log(f"  {path}: {reason}")
