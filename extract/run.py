"""Stage 1: embed every new or changed image under IN once and write the cache of one setting.

A run has three steps, one function each:

- :func:`plan`: list the input, read this input's previous cache (memory-mapped), the finished
  work of an interrupted run, and decide which files must be read;
- :func:`compute`: read those files once each (hash, and decode only new content), run the
  backbone over new content in batches, and save finished work every couple of seconds;
- :func:`assemble`: write the cache block by block from wherever each vector is (this input's
  previous cache, another input's cache of the same key, finished batches, this run), or write
  nothing at all when nothing changed.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import platform
import sys
import time
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

from . import cache, files
from .load import DEFAULT_MAX_PIXELS
from .model import INIT_SEED, Settings
from .pipeline import Read, read_ahead

NAN_REASON = "the model produced NaN or infinite values for this image"


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


# --------------------------------------------------------------------------- the model

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


class Device:
    """The name of the device the model ran on, known once the first batch ran."""

    def __init__(self):
        self.name = "none needed (everything cached)"


def embedded(reads: Iterable[Read], settings: Settings, batch: int, device: Device,
             log=print) -> Iterator[tuple[Read, np.ndarray | None]]:
    """Runs the backbone over the decoded images of ``reads`` in batches.

    Yields ``(read, vector)`` once per read: with its float32 vector when it was embedded, with
    None when it was not decoded (known content, or an error in ``read.error``; a NaN vector
    becomes such an error). The model is built at the first decoded image only, so a run that
    finds every content cached never loads TensorFlow.
    """
    from .model import preprocess_fn

    run = pre = None
    waiting: list[Read] = []
    for r in [*reads, None]:
        if r is not None and r.image is None:
            yield r, None
            continue
        if r is not None:
            waiting.append(r)
        if not waiting or (r is not None and len(waiting) < batch):
            continue
        if run is None:
            from .model import device_name

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


# --------------------------------------------------------------------------- vectors by content

class VectorStore:
    """Vectors by content hash, from every source a run may reuse; holds no copy of them."""

    def __init__(self):
        self._arrays: list[np.ndarray] = []
        self._index: dict[str, tuple[int, int]] = {}
        self._loose: dict[str, np.ndarray] = {}

    def add_cache(self, emb: np.ndarray, shas: Iterable[str], skip=()) -> None:
        """Adds a (memory-mapped) cache: row i is the vector of ``shas[i]``, except rows in ``skip``."""
        source = len(self._arrays)
        self._arrays.append(emb)
        for row, sha in enumerate(shas):
            if row not in skip:
                self._index.setdefault(sha, (source, row))

    def add(self, sha: str, vector: np.ndarray) -> None:
        self._loose[sha] = vector

    def __contains__(self, sha: str) -> bool:
        return sha in self._loose or sha in self._index

    def get(self, sha: str) -> np.ndarray:
        vec = self._loose.get(sha)
        if vec is not None:
            return vec
        source, row = self._index[sha]
        return self._arrays[source][row]

    def hashes(self) -> set[str]:
        return set(self._index) | set(self._loose)

    def rows(self, shas: list[str]) -> np.ndarray:
        return np.stack([self.get(sha) for sha in shas]).astype(np.float32, copy=False)

    def dim(self) -> int | None:
        if self._loose:
            return int(next(iter(self._loose.values())).shape[0])
        return int(self._arrays[0].shape[1]) if self._arrays else None


# --------------------------------------------------------------------------- plan

@dataclasses.dataclass
class Plan:
    """What a run has to do, decided before any image is read."""

    in_dir: str
    root: Path  # FEATURES/<input-id>
    folder: Path  # FEATURES/<input-id>/<key>
    listing: files.Listing
    previous: tuple | None  # (embeddings memmap, manifest DataFrame, meta) of this input's cache
    sha: dict[str, str]  # path -> sha256, for files whose hash is known without reading them
    failed: dict[str, str]  # sha256 -> reason, lasting failures remembered by content
    store: VectorStore
    shards: cache.Shards
    todo: list[files.Candidate]  # files to read
    unchanged: bool  # the previous cache already says everything this run would write
    previous_clean: bool = False  # the previous vectors are as written, or checked finite


def _previous(folder: Path, log):
    if not folder.exists():
        return None
    try:
        return cache.open_cache(folder, mmap=True, check_values=False)
    except (OSError, cache.CacheError) as err:
        log(f"warning: ignoring the damaged cache {folder} ({err}); its images are computed again")
        return None


def _made_from(meta: dict, in_dir) -> bool:
    """True when a cache's meta.json records ``in_dir`` as its input folder."""
    return meta.get("input") == os.path.abspath(in_dir)


def _accounted(manifest, meta: dict) -> list[tuple[str, str, str]]:
    """(path, size, mtime_ns) of every file a cache accounts for, as text, sorted by path.

    The manifest's rows and the files rejected for their content (``rejected_files``), so a
    broken file does not make every later run read it again.
    """
    rows = list(zip(manifest["path"].tolist(), manifest["size"].tolist(), manifest["mtime_ns"].tolist()))
    extra = meta.get("rejected_files") or []
    if extra:
        rows = sorted(rows + [(e[0], str(e[1]), str(e[2])) for e in extra])
    return rows


def _nothing_changed(listing: files.Listing, folder: Path, previous) -> bool:
    """True when the listing has exactly the files, sizes, times and rejections the cache has."""
    _, manifest, meta = previous
    if "size" not in manifest or "mtime_ns" not in manifest:
        return False
    if _accounted(manifest, meta) != [(c.path, str(c.size), str(c.mtime_ns)) for c in listing.candidates]:
        return False
    lasting = [(e[0], e[4]) for e in meta.get("rejected_files") or []]
    return _same_rejections(folder, sorted(list(listing.rejected) + lasting))


def _same_rejections(folder: Path, rejected: list) -> bool:
    try:
        return cache.read_csv_rows(folder / "rejected.csv") == [
            {"path": p, "reason": r} for p, r in rejected]
    except (OSError, ValueError):
        return False


def _known_hashes(listing: files.Listing, previous) -> dict[str, str]:
    """path -> sha256 of the listed files whose path, size and time match the cache's record."""
    _, manifest, meta = previous
    if "size" not in manifest or "mtime_ns" not in manifest:
        return {}
    stamp = {(p, s, m): h for p, s, m, h in zip(manifest["path"], manifest["size"],
                                                  manifest["mtime_ns"], manifest["sha256"])}
    stamp.update({(e[0], str(e[1]), str(e[2])): e[3] for e in meta.get("rejected_files") or []})
    return {c.path: stamp[k] for c in listing.candidates
            if (k := (c.path, str(c.size), str(c.mtime_ns))) in stamp}


def _reuse(store: VectorStore, folder: Path, opened, log) -> bool:
    """Adds a cache's vectors to ``store``; rows with NaN or infinite values are left out.

    The rows are checked only when embeddings.npy is not the file this tool wrote (edited or
    damaged since): their images are then embedded again rather than trusted or copied.

    Returns:
        True when every row was usable.
    """
    emb, manifest, meta = opened
    bad = () if cache.untouched(folder, meta) else set(cache.non_finite_rows(folder).tolist())
    if bad:
        log(f"warning: {len(bad)} vectors in {folder} have NaN or infinite values; those images "
            "are embedded again")
    store.add_cache(emb, manifest["sha256"].tolist(), skip=bad)
    return not bad


def plan(in_dir, features, root: Path, key: str, log=print, progress: bool = False) -> Plan:
    """Decides what a run must read and compute; reads no image.

    Args:
        in_dir: the input folder.
        features: the cache root (FEATURES), where other inputs' caches of ``key`` are found.
        root: ``FEATURES/<input-id>``.
        key: the setting's key.
        progress: show the listing's progress on stderr when it takes more than a second.
    """
    listing = files.list_images(in_dir, progress=progress)
    folder = root / key
    previous = _previous(folder, log)
    shards = cache.Shards(root, key, dim=None if previous is None else previous[0].shape[1],
                          input_dir=str(in_dir))
    # (path, size, mtime) says nothing about content in another folder (DATASET=, a moved input)
    own = previous is not None and _made_from(previous[2], in_dir)
    if own and cache.untouched(folder, previous[2]) and not shards.folder.exists() \
            and _nothing_changed(listing, folder, previous):
        return Plan(str(in_dir), root, folder, listing, previous, {}, {}, VectorStore(), shards,
                    [], unchanged=True, previous_clean=True)
    store, sha, failed, clean = VectorStore(), {}, {}, False
    if previous is not None:
        clean = _reuse(store, folder, previous, log)
        failed = dict(previous[2].get("rejected_sha256", {}))
        sha = _known_hashes(listing, previous) if own else {}
    resumed, hashed, notes = shards.load()
    for note in notes:
        log(f"warning: {note}")
    if resumed or hashed:
        log(f"resuming: {len(resumed)} images embedded and {len(hashed)} files hashed by an "
            "earlier, unfinished run are kept")
    for h, vec in resumed.items():
        store.add(h, vec)
    for c in listing.candidates:
        if c.path not in sha and (c.path, c.size, c.mtime_ns) in hashed:
            sha[c.path] = hashed[(c.path, c.size, c.mtime_ns)]
    todo = [c for c in listing.candidates
            if not (c.path in sha and (sha[c.path] in store or sha[c.path] in failed))]
    if todo:
        for other in cache.caches_of_key(features, key, exclude=folder):
            try:
                opened = cache.open_cache(other, mmap=True, check_values=False)
            except (OSError, cache.CacheError) as err:  # damaged, or another user's, unreadable
                log(f"warning: not reusing vectors from {other} ({err})")
                continue
            if opened[0].shape[1] == (store.dim() or opened[0].shape[1]):
                _reuse(store, other, opened, log)
        todo = [c for c in todo if not (c.path in sha and sha[c.path] in store)]
    return Plan(str(in_dir), root, folder, listing, previous, sha, failed, store, shards, todo,
                unchanged=False, previous_clean=clean)


# --------------------------------------------------------------------------- compute

@dataclasses.dataclass
class Computed:
    computed: set  # sha256 of the contents embedded by this run
    errors: dict  # path -> (reason, lasting, sha256 or "")
    device: str


def compute(p: Plan, settings: Settings, batch: int, max_pixels: int, progress: bool = True,
            log=print, flush_seconds: float = 2.0, engine: str = "local",
            actors: int | None = None) -> Computed:
    """Reads the files of ``p.todo`` once each and embeds the contents not yet known.

    ``engine="local"`` reads in threads of this process and runs the model here;
    ``engine="ray"`` runs the same steps as a Ray Data pipeline (:mod:`extract.engine_ray`).
    Either way the results come back here and are kept by the same code.

    Adds every new vector to ``p.store`` and every hash read to ``p.sha``; saves finished work to
    ``p.shards`` at least every ``flush_seconds``.

    Raises:
        Interrupted: Ctrl-C; the finished work is saved first.
        WeightsUnavailable: the weights cannot be loaded.
    """
    done = Computed(set(), {}, "none needed (everything cached)")
    if not p.todo:
        return done
    from tqdm import tqdm

    todo = p.todo
    pending = {"sha": [], "emb": [], "seen": [], "at": time.perf_counter()}

    def flush() -> None:
        emb = np.stack(pending["emb"]) if pending["emb"] else None
        p.shards.dim = p.shards.dim or (None if emb is None else emb.shape[1])
        p.shards.save(pending["sha"], emb, pending["seen"])
        for k in ("sha", "emb", "seen"):
            pending[k].clear()
        pending["at"] = time.perf_counter()

    bar = tqdm(total=len(todo), unit="file", desc="reading", disable=not progress, file=sys.stderr,
               dynamic_ncols=True, smoothing=0.1, delay=1.0,
               mininterval=0.5 if sys.stderr.isatty() else 15)

    def on_done(r: Read, vec) -> None:
        cand = todo[r.index]
        if r.sha256:
            p.sha[cand.path] = r.sha256
            pending["seen"].append((cand.path, cand.size, cand.mtime_ns, r.sha256))
        if r.error:
            done.errors[cand.path] = (r.error, r.lasting, r.sha256)
        elif vec is not None and r.sha256 not in p.store:
            p.store.add(r.sha256, vec)
            done.computed.add(r.sha256)
            pending["sha"].append(r.sha256)
            pending["emb"].append(vec)
        bar.update(1)
        if time.perf_counter() - pending["at"] >= flush_seconds:
            flush()

    def known(sha: str) -> bool:
        return sha in p.store or sha in p.failed

    device = Device()
    paths = [c.abspath for c in todo]
    if engine == "ray":
        from .engine_ray import ray_embedded

        stream = ray_embedded(paths, settings, batch, max_pixels, p.store.hashes() | set(p.failed),
                              device, log=log, progress=progress, actors=actors)
    else:
        workers = min(8, os.cpu_count() or 1)
        reads = read_ahead(paths, settings.size, max_pixels, known, workers=workers,
                           window=2 * batch + workers)
        stream = embedded(reads, settings, batch, device, log=log)
    try:
        for r, vec in _remember_failures(stream, p.failed):
            on_done(r, vec)
    except KeyboardInterrupt:
        flush()
        raise Interrupted(f"interrupted: {len(done.computed)} newly embedded images and the hashes "
                          f"read so far are kept in {p.shards.folder}; run the same command "
                          "again to resume") from None
    finally:
        bar.close()
    flush()
    done.device = device.name
    return done


def _remember_failures(stream, failed: dict):
    """Turns a read of content that failed before (same hash) into that failure, not decoded."""
    for r, vec in stream:
        if vec is None and not r.error and r.sha256 in failed:
            r.error, r.lasting = failed[r.sha256], True
        yield r, vec


# --------------------------------------------------------------------------- assemble

def assemble(p: Plan, done: Computed, settings: Settings, t0: float, batch: int,
             extra_meta: dict | None = None) -> Summary:
    """Writes the cache of ``p`` (or nothing when nothing changed) and returns the summary.

    Raises:
        ValueError: no image could be embedded at all.
        CacheWriteError: the cache cannot be written; the previous one is intact.
    """
    listing = p.listing
    if p.unchanged:
        n, lasting = len(p.previous[1]), len(p.previous[2].get("rejected_files") or [])
        return Summary(settings.key, str(p.folder), n, 0, n, len(listing.rejected) + lasting,
                       len(listing.skipped), time.perf_counter() - t0, done.device)
    keep, shas, rejected, remembered, lasting = [], [], list(listing.rejected), {}, []
    for cand in listing.candidates:
        sha = p.sha.get(cand.path, "")
        if cand.path in done.errors:
            reason, is_lasting, sha = done.errors[cand.path]
            rejected.append((cand.path, reason))
            if is_lasting and sha:
                remembered[sha] = reason
                lasting.append([cand.path, cand.size, cand.mtime_ns, sha, reason])
        elif sha in p.failed:
            rejected.append((cand.path, p.failed[sha]))
            remembered[sha] = p.failed[sha]
            lasting.append([cand.path, cand.size, cand.mtime_ns, sha, p.failed[sha]])
        elif sha and sha in p.store:
            keep.append(cand)
            shas.append(sha)
        else:
            rejected.append((cand.path, "not embedded"))
    rejected.sort()
    if not keep:
        raise ValueError(
            f"no image could be embedded from {p.in_dir!s} ({len(rejected)} rejected, "
            f"{len(listing.skipped)} skipped); put images in IN/<class>/<image> "
            "(or IN/<split>/<class>/<image>)"
            + (f"; first rejection: {rejected[0][0]}: {rejected[0][1]}" if rejected else ""))
    computed = sum(1 for s in shas if s in done.computed)
    import pandas as pd

    manifest = pd.DataFrame({
        "path": [c.path for c in keep], "label": [c.label for c in keep],
        "split": [c.split for c in keep], "sha256": shas,
        "size": [c.size for c in keep], "mtime_ns": [c.mtime_ns for c in keep]})
    if not computed and _unchanged(p, manifest, rejected, lasting):
        p.shards.clear()
        return Summary(settings.key, str(p.folder), len(keep), 0, len(keep), len(rejected),
                       len(listing.skipped), time.perf_counter() - t0, done.device)
    meta = _meta(p, settings, manifest, computed, len(keep) - computed, rejected, remembered,
                 time.perf_counter() - t0, done.device, batch)
    meta["rejected_files"] = lasting
    meta.update(extra_meta or {})
    same_rows = (not computed and p.previous_clean and p.previous is not None
                 and p.previous[1]["sha256"].tolist() == shas)
    vectors = p.folder / "embeddings.npy" if same_rows else (lambda a, b: p.store.rows(shas[a:b]))
    cache.write_cache(p.root, settings.key, vectors, manifest, meta, rejected, dim=p.store.dim())
    p.shards.clear()
    return Summary(settings.key, str(p.folder), len(keep), computed, len(keep) - computed,
                   len(rejected), len(listing.skipped), time.perf_counter() - t0, done.device)


def _unchanged(p: Plan, manifest, rejected: list, lasting: list) -> bool:
    """True when the previous cache already holds exactly these rows, rejections and vectors."""
    if p.previous is None or not _made_from(p.previous[2], p.in_dir):
        return False
    meta = p.previous[2]
    if not cache.untouched(p.folder, meta) or (meta.get("rejected_files") or []) != lasting:
        return False
    old = p.previous[1]
    if len(old) != len(manifest) or list(old.columns) != list(manifest.columns):
        return False
    for col in manifest.columns:
        if old[col].astype(str).tolist() != manifest[col].astype(str).tolist():
            return False
    return _same_rejections(p.folder, rejected)


def _meta(p: Plan, settings: Settings, manifest, computed: int, reused: int, rejected: list,
          remembered: dict, seconds: float, device: str, batch: int) -> dict:
    labels = manifest["label"]
    return {
        "key": settings.key,
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
        "dim": p.store.dim(),
        "n": len(manifest),
        "class_names": sorted(set(labels)),
        "splits": sorted({s for s in manifest["split"] if s}),
        "layout": p.listing.layout,
        "empty_classes": p.listing.empty_classes,
        "computed": computed,
        "reused": reused,
        "rejected": len(rejected),
        "skipped": len(p.listing.skipped),
        "rejected_sha256": remembered,
        "seconds": round(seconds, 3),
        "images_per_second": round(computed / seconds, 3) if seconds > 0 else None,
        "device": device,
        "batch": batch,
        "input": os.path.abspath(p.in_dir),
        "input_id": p.root.name,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "versions": _versions(),
    }


# --------------------------------------------------------------------------- the whole run

def extract_features(in_dir, features_dir, settings: Settings, batch: int = 32,
                     strict: bool = False, max_pixels: int = DEFAULT_MAX_PIXELS,
                     progress: bool = True, log=print, extra_meta: dict | None = None,
                     flush_seconds: float = 2.0, dataset: str | None = None,
                     engine: str = "local", actors: int | None = None) -> Summary:
    """Embeds the images under ``in_dir`` into ``features_dir/<input-id>/<key>/``, reusing what is cached.

    Args:
        in_dir: the input folder (``<class>/**`` or ``<split>/<class>/**``).
        features_dir: the cache root (FEATURES).
        settings: backbone, weights, size, pooling and precision (``auto``: see
            :mod:`extract.precision`; the key and meta.json record the precision chosen).
        batch: images per model call.
        strict: accepted for the caller's exit code; rejections never stop the run.
        max_pixels: images with more pixels are rejected.
        progress: show a progress bar on stderr.
        log: where messages go.
        extra_meta: merged into ``meta.json`` (the demo records its weights fallback here).
        flush_seconds: finished work is written to ``.partial/`` at least this often.
        dataset: ``DATASET``, the name of the input's folder under ``features_dir`` (default:
            the input folder's name and a hash of its absolute path).
        engine: ``local`` (this process) or ``ray`` (a Ray Data pipeline; ``RAY_ADDRESS``
            selects a cluster). Planning, resume, rejections and the cache are the same.
        actors: (ray) model actors; default one per GPU, else one per node.

    Returns:
        A :class:`Summary` of the run.

    Raises:
        FileNotFoundError: ``in_dir`` is missing.
        ValueError: bad settings, or no images at all.
        WeightsUnavailable: weights cannot be loaded.
        CacheWriteError: the cache cannot be written (full disk, read-only FEATURES).
        Interrupted: Ctrl-C; finished batches are kept for the next run.
    """
    t0 = time.perf_counter()
    if engine not in ("local", "ray"):
        raise ValueError(f"ENGINE must be 'local' or 'ray'; received {engine!r}")
    if not isinstance(batch, int) or isinstance(batch, bool) or batch < 1:
        raise ValueError(f"BATCH must be a positive whole number; received {batch!r}")
    if not Path(in_dir).is_dir():
        files.detect_layout(Path(in_dir))  # raises the message that says what to do
    if settings.precision == "auto":
        from .precision import CALIBRATION_IMAGES, resolve

        settings, info = resolve(settings, features_dir,
                                 lambda: files.first_images(in_dir, 4 * CALIBRATION_IMAGES),
                                 max_pixels, log=log)
        extra_meta = dict(extra_meta or {}, precision_auto=info)
    settings.check()
    root = Path(features_dir) / cache.input_id(in_dir, dataset)
    key = settings.key
    try:
        with cache.locked(root, key, log=log):
            for note in cache.recover(root, key):
                log(f"warning: {note}")
            p = plan(in_dir, features_dir, root, key, log=log, progress=progress)
            done = compute(p, settings, batch, max_pixels, progress=progress, log=log,
                           flush_seconds=flush_seconds, engine=engine, actors=actors)
            summary = assemble(p, done, settings, t0, batch, extra_meta)
    except KeyboardInterrupt:
        raise Interrupted(f"interrupted: finished batches are kept and {root / key} is complete or "
                          "absent, never half-written; run the same command again to resume") from None
    _report(p, summary, log)
    return summary


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
        for path, reason in cache.read_csv_rows_head(p.folder / "rejected.csv", 5):
            log(f"  {path}: {reason}")
