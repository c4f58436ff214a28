"""Stage 1: embed every new or changed image under IN once and write the cache for one setting."""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

from . import cache, files
from .load import DEFAULT_MAX_PIXELS
from .model import INIT_SEED, Settings


class Interrupted(RuntimeError):
    """Ctrl-C during a run; finished batches are kept."""


@dataclasses.dataclass
class Summary:
    key: str
    folder: str
    n: int
    computed: int
    reused: int
    rejected: int
    skipped: int
    seconds: float
    device: str

    def line(self) -> str:
        ips = self.computed / self.seconds if self.seconds > 0 else 0.0
        return (f"computed {self.computed}, reused {self.reused}, rejected {self.rejected}, "
                f"skipped {self.skipped}, {self.seconds:.1f} s, {ips:.1f} images/s, "
                f"device {self.device} -> {self.folder}")


def _versions() -> dict:
    import PIL

    out = {"python": platform.python_version(), "numpy": np.__version__, "pillow": PIL.__version__}
    for name in ("tensorflow", "keras"):
        mod = sys.modules.get(name)
        if mod is not None:
            out[name] = getattr(mod, "__version__", "?")
    return out


_EMBEDDERS: dict = {}  # settings.key -> traced model call, so later runs in one process skip build


def embedder(settings: Settings):
    """Returns the traced model call ``f(images float32 (b, s, s, 3)) -> float32 (b, D)``.

    Built once per setting and process (the last two are kept): repeated runs in one process
    (incremental extraction, predict, the benchmark) do not pay the model build and tracing again.
    Not XLA-compiled: ``jit_compile=True`` measured slower than TensorFlow's oneDNN kernels on
    a 2-core Zen 4 CPU (fp32 0.25-0.8x, bf16 0.25-0.4x; see BENCHMARKS.md).
    """
    from ._tf import tensorflow
    from .model import build

    key = settings.key
    if key not in _EMBEDDERS:
        tf = tensorflow()
        model = build(settings)
        _EMBEDDERS[key] = tf.function(lambda x: tf.cast(model(x, training=False), tf.float32),
                                      reduce_retracing=True)
        while len(_EMBEDDERS) > 2:
            _EMBEDDERS.pop(next(iter(_EMBEDDERS)))
    return _EMBEDDERS[key]


def compute(settings: Settings, paths: list[str], batch: int, max_pixels: int,
            on_batch, progress: bool = True, log=print) -> str:
    """Runs the backbone over ``paths`` in order and hands each finished batch to ``on_batch``.

    Args:
        on_batch: called as ``on_batch(indices, embeddings float32 (b, D), errors list[str])``;
            indices are positions in ``paths``.

    Returns:
        The device name.

    Raises:
        WeightsUnavailable: see :func:`extract.model.build`.
    """
    from tqdm import tqdm

    from ._tf import tensorflow
    from .load import make_dataset
    from .model import device_name, preprocess_fn

    tensorflow()
    device = device_name()
    run = embedder(settings)
    ds = make_dataset(paths, settings.size, batch, preprocess_fn(settings.backbone), max_pixels)
    log(f"embedding {len(paths)} images with {settings.key} on {device}")
    bar = tqdm(total=len(paths), unit="img", disable=not progress, file=sys.stderr,
               dynamic_ncols=True, smoothing=0.1,
               mininterval=0.5 if sys.stderr.isatty() else 15)
    start = 0
    try:
        for images, errors in ds:
            emb = run(images).numpy()
            errs = [e.decode("utf-8", "replace") for e in errors.numpy().tolist()]
            on_batch(list(range(start, start + len(errs))), emb, errs)
            start += len(errs)
            bar.update(len(errs))
    finally:
        bar.close()
    return device


def extract_features(in_dir, features_dir, settings: Settings, batch: int = 32,
                     strict: bool = False, max_pixels: int = DEFAULT_MAX_PIXELS,
                     progress: bool = True, log=print, extra_meta: dict | None = None,
                     flush_seconds: float = 2.0) -> Summary:
    """Embeds the images under ``in_dir`` into ``features_dir/<key>/``, reusing what is cached.

    Args:
        in_dir: the input folder (``<class>/**`` or ``<split>/<class>/**``).
        features_dir: the cache root.
        settings: backbone, weights, size, pooling and precision.
        batch: images per model call.
        strict: accepted for the caller's exit code; rejections never stop the run.
        max_pixels: images with more pixels are rejected.
        progress: show a progress bar on stderr.
        log: where messages go.
        extra_meta: merged into ``meta.json`` (the demo records its weights fallback here).
        flush_seconds: finished batches are written to ``.partial/`` at least this often.

    Returns:
        A :class:`Summary` of the run.

    Raises:
        FileNotFoundError: ``in_dir`` is missing.
        ValueError: bad settings, or no images at all.
        WeightsUnavailable: weights cannot be loaded.
        Interrupted: Ctrl-C; finished batches are kept for the next run.
    """
    t0 = time.perf_counter()
    settings.check()
    if not isinstance(batch, int) or batch < 1:
        raise ValueError(f"BATCH must be a positive whole number; received {batch!r}")
    features = Path(features_dir)
    features.mkdir(parents=True, exist_ok=True)
    key = settings.key
    folder = features / key
    try:
        with cache.locked(features, key, log=log):
            for note in cache.recover(features, key):
                log(f"warning: {note}")
            listing = files.list_images(in_dir)
            previous_emb, previous_rows, previous_meta = None, [], {}
            if folder.exists():
                try:
                    previous_emb, previous_rows, previous_meta = cache.read_cache(folder)
                except (FileNotFoundError, cache.CacheError) as err:
                    log(f"warning: ignoring the damaged cache {folder} ({err}); its images are computed again")
            known_sha = {(r["path"], int(r.get("size") or -1), int(r.get("mtime_ns") or -1)): r["sha256"]
                         for r in previous_rows}
            unreadable = files.fill_hashes(listing.candidates, known_sha)
            store = {r["sha256"]: i for i, r in enumerate(previous_rows)}
            shards = cache.Shards(features, key, dim=None if previous_emb is None else previous_emb.shape[1])
            resumed, notes = shards.load()
            for note in notes:
                log(f"warning: {note}")
            if resumed:
                log(f"resuming: {len(resumed)} images were embedded by an earlier, unfinished run")

            def lookup(sha):
                if sha in store:
                    return previous_emb[store[sha]]
                return resumed.get(sha)

            # Contents that failed to load before fail again: do not start the model for them.
            # A too-large image is retried, since MAX_PIXELS may have been raised.
            failed: dict[str, str] = {
                sha: reason for sha, reason in previous_meta.get("rejected_sha256", {}).items()
                if not reason.startswith("image too large")}
            todo: dict[str, files.Candidate] = {}
            for cand in listing.candidates:
                if lookup(cand.sha256) is None and cand.sha256 not in todo and cand.sha256 not in failed:
                    todo[cand.sha256] = cand
            fresh: dict[str, np.ndarray] = {}
            device = "none needed (everything cached)"
            if todo:
                order = list(todo.values())
                pending_sha, pending_emb, last_flush = [], [], time.perf_counter()

                def on_batch(indices, emb, errs):
                    for i, row, err in zip(indices, emb, errs):
                        sha = order[i].sha256
                        if err:
                            failed[sha] = err
                        elif not np.isfinite(row).all():
                            failed[sha] = "the model produced NaN or infinite values for this image"
                        else:
                            fresh[sha] = row
                            pending_sha.append(sha)
                            pending_emb.append(row)
                    if time.perf_counter() - last_flush >= flush_seconds:
                        flush()

                def flush():
                    nonlocal last_flush
                    if pending_sha:
                        shards.save(pending_sha, np.stack(pending_emb))
                        pending_sha.clear()
                        pending_emb.clear()
                    last_flush = time.perf_counter()

                try:
                    device = compute(settings, [c.abspath for c in order], batch, max_pixels,
                                     on_batch, progress=progress, log=log)
                except KeyboardInterrupt:
                    flush()
                    raise Interrupted(
                        f"interrupted: {len(fresh)} newly embedded images are kept in "
                        f"{shards.folder}; run the same command again to resume"
                    ) from None
                flush()

            rows, vectors, rejected = [], [], list(listing.rejected) + unreadable
            computed = reused = 0
            for cand in listing.candidates:
                vec = fresh.get(cand.sha256)
                if vec is not None:
                    computed += 1
                else:
                    vec = lookup(cand.sha256)
                    if vec is None:
                        rejected.append((cand.path, failed.get(cand.sha256, "not embedded")))
                        continue
                    reused += 1
                vectors.append(vec)
                rows.append({"path": cand.path, "label": cand.label, "split": cand.split,
                             "sha256": cand.sha256, "size": cand.size, "mtime_ns": cand.mtime_ns})
            rejected.sort()
            if not rows:
                raise ValueError(
                    f"no image could be embedded from {in_dir!s} ({len(rejected)} rejected, "
                    f"{len(listing.skipped)} skipped); put images in IN/<class>/<image> "
                    "(or IN/<split>/<class>/<image>)"
                    + (f"; first rejection: {rejected[0][0]}: {rejected[0][1]}" if rejected else "")
                )
            emb = np.stack(vectors).astype(np.float32)
            seconds = time.perf_counter() - t0
            meta = {
                "key": key,
                "backbone": settings.backbone,
                "weights": settings.weights if settings.weights in ("imagenet", "none")
                else os.path.abspath(settings.weights),
                "weights_tag": settings.weights_tag,
                "init_seed": INIT_SEED if settings.weights == "none" else None,
                "image_size": settings.size,
                "pooling": settings.pooling,
                "layer": settings.layer,  # None: the last block
                "precision": settings.precision,
                "resize": "exif-upright, first frame, RGB on white, centre square crop, bilinear",
                "dim": int(emb.shape[1]),
                "n": len(rows),
                "class_names": sorted({r["label"] for r in rows}),
                "splits": sorted({r["split"] for r in rows if r["split"]}),
                "layout": listing.layout,
                "empty_classes": listing.empty_classes,
                "computed": computed,
                "reused": reused,
                "rejected": len(rejected),
                "skipped": len(listing.skipped),
                "rejected_sha256": {c.sha256: failed[c.sha256] for c in listing.candidates
                                    if c.sha256 in failed},
                "seconds": round(seconds, 3),
                "images_per_second": round(computed / seconds, 3) if seconds > 0 else None,
                "device": device,
                "batch": batch,
                "input": os.path.abspath(in_dir),
                "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                "versions": _versions(),
            }
            meta.update(extra_meta or {})
            cache.write_cache(features, key, emb, rows, meta, rejected)
            shards.clear()
    except KeyboardInterrupt:
        raise Interrupted(f"interrupted: finished batches are kept and {folder} is complete or "
                          "absent, never half-written; run the same command again to resume") from None
    if listing.empty_classes:
        log(f"warning: class folders without images: {', '.join(listing.empty_classes)}")
    if listing.skipped:
        log(f"skipped {len(listing.skipped)} files that are not images "
            f"(by name and content), e.g. {listing.skipped[0]!r}")
    if rejected:
        log(f"rejected {len(rejected)} files that could not be embedded; the list with reasons "
            f"is {folder / 'rejected.csv'}")
        for path, reason in rejected[:5]:
            log(f"  {path}: {reason}")
    return Summary(key, str(folder), len(rows), computed, reused, len(rejected),
                   len(listing.skipped), seconds, device)
