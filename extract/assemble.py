"""Write the cache of a run from wherever each vector is, or nothing when nothing changed.

Every listed file becomes a row (its vector found by content in this input's previous cache,
another input's cache of the key, a resumed shard or this run) or a rejection with its reason.
When the rows, vectors, layout and rejections are exactly the previous cache's, it is left as it
is; when only the manifest changed (a touched file, a relabelled folder) the vectors are
hard-linked, not copied.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import platform
import sys
import time

import numpy as np

from . import cache
from .compute import Computed
from .files import STAMP_FIELDS
from .model import INIT_RULE, INIT_SEED, Settings
from .plan import Plan, lasting_entries, same_facts


@dataclasses.dataclass
class Summary:
    """What one run did, for its closing line."""

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


@dataclasses.dataclass
class Rows:
    """The rows and rejections a run writes."""

    keep: list  # candidates with a vector, sorted by path
    shas: list[str]  # their content hashes
    rejected: list[tuple[str, str]]  # (path, reason), sorted
    remembered: dict[str, str]  # sha256 -> reason of content that fails whatever its name
    lasting: list[dict]  # the files rejected for their content, with their stamps


def _failure(p: Plan, done: Computed, cand, sha: str) -> tuple[str, bool] | None:
    """(reason, lasting) when ``cand`` cannot be a row; None when its vector is there."""
    if cand.path in done.errors:
        return done.errors[cand.path]
    if sha and sha in p.store:
        return None
    if sha in done.content_errors:
        return done.content_errors[sha]
    if sha in p.failed:
        return p.failed[sha], True
    return "not embedded", False


def sort_rows(p: Plan, done: Computed) -> Rows:
    """Sorts every listed file into a row or a rejection."""
    rows = Rows([], [], list(p.listing.rejected), {}, [])
    for cand in p.listing.candidates:
        sha = p.sha.get(cand.path, "")
        failure = _failure(p, done, cand, sha)
        if failure is None:
            rows.keep.append(cand)
            rows.shas.append(sha)
            continue
        reason, lasting = failure
        rows.rejected.append((cand.path, reason))
        if lasting and sha:
            rows.remembered[sha] = reason
            stamp = {k: getattr(cand, k) for k in STAMP_FIELDS}
            rows.lasting.append({"path": cand.path, **stamp, "sha256": sha, "reason": reason})
    rows.rejected.sort()
    return rows


def _manifest(rows: Rows):
    """The manifest of ``rows``: :data:`extract.cache.MANIFEST_COLUMNS`, one row per vector."""
    import pandas as pd

    columns = {k: [getattr(c, k) for c in rows.keep] for k in cache.MANIFEST_COLUMNS if k != "sha256"}
    columns["sha256"] = rows.shas
    return pd.DataFrame({k: columns[k] for k in cache.MANIFEST_COLUMNS})


def _unchanged(p: Plan, manifest, rows: Rows) -> bool:
    """True when the previous cache already holds exactly these rows, rejections and vectors."""
    if not p.own_previous():
        return False
    meta = p.previous[2]
    if not cache.untouched(p.folder, meta) or lasting_entries(meta) != rows.lasting \
            or len(meta.get("rejected_files") or []) != len(rows.lasting):
        return False
    old = p.previous[1]
    if len(old) != len(manifest) or list(old.columns) != list(manifest.columns):
        return False
    for col in manifest.columns:
        if old[col].astype(str).tolist() != manifest[col].astype(str).tolist():
            return False
    return same_facts(p.folder, meta, p.listing, rows.rejected)


def _summary(p: Plan, settings: Settings, rows: Rows, computed: int, t0: float, device: str) -> Summary:
    return Summary(settings.key, str(p.folder), len(rows.keep), computed, len(rows.keep) - computed,
                   len(rows.rejected), len(p.listing.skipped), time.perf_counter() - t0, device)


def assemble(p: Plan, done: Computed, settings: Settings, t0: float, batch: int,
             extra_meta: dict | None = None) -> Summary:
    """Writes the cache of ``p`` (or nothing when nothing changed) and returns the summary.

    Raises:
        ValueError: no image could be embedded at all.
        CacheWriteError: the cache cannot be written; the previous one is intact.
    """
    if p.unchanged:
        n, lasting = len(p.previous[1]), len(p.previous[2].get("rejected_files") or [])
        return Summary(settings.key, str(p.folder), n, 0, n, len(p.listing.rejected) + lasting,
                       len(p.listing.skipped), time.perf_counter() - t0, done.device)
    rows = sort_rows(p, done)
    if not rows.keep:
        raise ValueError(
            f"no image could be embedded from {p.in_dir!s} ({len(rows.rejected)} rejected, "
            f"{len(p.listing.skipped)} skipped); put images in IN/<class>/<image> "
            "(or IN/<split>/<class>/<image>)"
            + (f"; first rejection: {rows.rejected[0][0]}: {rows.rejected[0][1]}" if rows.rejected else ""))
    computed = len(done.computed.intersection(rows.shas))
    manifest = _manifest(rows)
    if not computed and _unchanged(p, manifest, rows):
        p.shards.clear()
        return _summary(p, settings, rows, 0, t0, done.device)
    meta = _meta(p, settings, manifest, rows, computed, time.perf_counter() - t0, done.device, batch)
    meta.update(extra_meta or {})
    same_rows = (not computed and p.previous_clean and p.previous is not None
                 and p.previous[1]["sha256"].tolist() == rows.shas)
    vectors = p.folder / "embeddings.npy" if same_rows else (lambda a, b: p.store.rows(rows.shas[a:b]))
    cache.write_cache(p.root, settings.key, vectors, manifest, meta, rows.rejected, dim=p.store.dim())
    p.shards.clear()
    return _summary(p, settings, rows, computed, t0, done.device)


def _versions() -> dict:
    import PIL

    out = {"python": platform.python_version(), "numpy": np.__version__, "pillow": PIL.__version__}
    for name in ("tensorflow", "jax", "jaxlib", "torch", "keras"):
        mod = sys.modules.get(name)
        if mod is not None:
            out[name] = getattr(mod, "__version__", "?")
    return out


def _meta(p: Plan, settings: Settings, manifest, rows: Rows, computed: int, seconds: float,
          device: str, batch: int) -> dict:
    return {
        "key": settings.key,
        "backbone": settings.backbone,
        "weights": settings.weights if settings.weights in ("imagenet", "none")
        else os.path.abspath(settings.weights),
        "weights_tag": settings.weights_tag,
        "init_seed": INIT_SEED if settings.weights == "none" else None,
        # how WEIGHTS=none draws its weights (extract.randinit; the same on every backend)
        "init_rule": INIT_RULE if settings.weights == "none" else None,
        "image_size": settings.size,
        "pooling": settings.pooling,
        "layer": settings.layer,  # None: the last block
        "precision": settings.precision,
        "resize": "exif-upright, first frame, RGB on white, centre square crop, bilinear",
        "dim": p.store.dim(),
        "n": len(manifest),
        "class_names": sorted(set(manifest["label"])),
        "splits": sorted({s for s in manifest["split"] if s}),
        "layout": p.listing.layout,
        "empty_classes": p.listing.empty_classes,
        "computed": computed,
        "reused": len(manifest) - computed,
        "rejected": len(rows.rejected),
        "skipped": len(p.listing.skipped),
        "rejected_sha256": rows.remembered,
        "rejected_files": rows.lasting,
        "seconds": round(seconds, 3),
        "images_per_second": round(computed / seconds, 3) if seconds > 0 else None,
        "device": device,
        "backend": settings.backend,
        "batch": batch,
        "input": os.path.abspath(p.in_dir),
        "input_id": p.root.name,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "versions": _versions(),
    }
