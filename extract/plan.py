"""A run's plan, decided before any image is read: which files must be read, what is reused.

A file needs no reading when its hash is known: this input's previous cache, or the finished
work of its interrupted run, recorded the file with the same path and the same whole stamp
(size, mtime, inode, ctime; see :mod:`extract.files`). Its vector then comes from wherever that
content is cached: this input's previous cache, a resumed shard, or another input's cache of the
same key. When the previous cache already holds exactly the rows, labels, splits, layout and
rejections this run would write, the plan says so and nothing is read or written at all.
"""

from __future__ import annotations

import dataclasses
import operator
import os
from pathlib import Path

from . import cache, files
from .atomic import read_csv_rows
from .shards import Shards
from .store import VectorStore

ROW_FIELDS = ("path", "label", "split", *files.STAMP_FIELDS)
LASTING_FIELDS = ("path", *files.STAMP_FIELDS, "sha256", "reason")


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
    shards: Shards
    todo: list[files.Candidate]  # files to read
    unchanged: bool  # the previous cache already says everything this run would write
    previous_clean: bool = False  # the previous vectors are as written, or checked finite

    def own_previous(self) -> bool:
        """True when the previous cache was made from this very input folder."""
        return self.previous is not None and made_from(self.previous[2], self.in_dir)


def made_from(meta: dict, in_dir) -> bool:
    """True when a cache's meta.json records ``in_dir`` as its input folder."""
    return meta.get("input") == os.path.abspath(in_dir)


def lasting_entries(meta: dict) -> list[dict]:
    """The files a cache rejected for their content (``rejected_files``), each with its stamp.

    Entries of another form (written before stamps held inode and ctime) are left out: those
    files are read again once.
    """
    entries = meta.get("rejected_files") or []
    return [e for e in entries if isinstance(e, dict) and set(LASTING_FIELDS) <= set(e)]


def same_facts(folder: Path, meta: dict, listing: files.Listing, rejected: list) -> bool:
    """True when a cache records this listing's layout, empty classes and these rejections."""
    if meta.get("layout") != listing.layout or meta.get("empty_classes") != listing.empty_classes:
        return False
    try:
        return read_csv_rows(folder / "rejected.csv") == [{"path": p, "reason": r} for p, r in rejected]
    except (OSError, ValueError):
        return False


def _stamped(manifest) -> bool:
    return all(c in manifest for c in files.STAMP_FIELDS)


def _nothing_changed(listing: files.Listing, folder: Path, previous) -> bool:
    """True when the cache holds exactly the rows (path, label, split, stamp), layout and
    rejections of ``listing``: the files are those it hashed, so its rows are this run's."""
    _, manifest, meta = previous
    if not _stamped(manifest):
        return False
    lasting = {e["path"]: tuple(str(e[k]) for k in files.STAMP_FIELDS) for e in lasting_entries(meta)}
    if len(lasting) != len(meta.get("rejected_files") or []):
        return False
    rows = []
    for c in listing.candidates:
        if c.path in lasting:
            if lasting.pop(c.path) != c.stamp:
                return False
        else:
            rows.append(c)
    if lasting or len(rows) != len(manifest) or not _same_rows(manifest, rows):
        return False
    rejected = sorted(listing.rejected + [(e["path"], e["reason"]) for e in lasting_entries(meta)])
    return same_facts(folder, meta, listing, rejected)


def _same_rows(manifest, rows: list) -> bool:
    """True when ``manifest`` holds exactly the path, label, split and stamp of ``rows``, in order.

    Column by column, so at most one column's text is held at a time.
    """
    for name in ROW_FIELDS:
        text = name in ("path", "label", "split")
        values = (getattr(c, name) for c in rows) if text else (str(getattr(c, name)) for c in rows)
        if not all(map(operator.eq, manifest[name].tolist(), values)):
            return False
    return True


def _known_hashes(listing: files.Listing, previous) -> dict[str, str]:
    """path -> sha256 of the listed files whose path and whole stamp match the cache's record."""
    _, manifest, meta = previous
    if not _stamped(manifest):
        return {}
    columns = [manifest[k].tolist() for k in ("path", *files.STAMP_FIELDS, "sha256")]
    known = {tuple(row[:-1]): row[-1] for row in zip(*columns)}
    known.update({(e["path"], *(str(e[k]) for k in files.STAMP_FIELDS)): e["sha256"]
                  for e in lasting_entries(meta)})
    return {c.path: known[k] for c in listing.candidates if (k := (c.path, *c.stamp)) in known}


def _previous(folder: Path, log):
    if not folder.exists():
        return None
    try:
        return cache.open_cache(folder, mmap=True, check_values=False)
    except (OSError, cache.CacheError) as err:
        log(f"warning: ignoring the damaged cache {folder} ({err}); its images are computed again")
        return None


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


def _resume(p: Plan, log) -> None:
    """Takes in the finished work of an interrupted run: its vectors, and its hashes of files
    whose whole stamp is unchanged."""
    resumed, hashed, notes = p.shards.load()
    for note in notes:
        log(f"warning: {note}")
    if resumed or hashed:
        log(f"resuming: {len(resumed)} images embedded and {len(hashed)} files hashed by an "
            "earlier, unfinished run are kept")
    for h, vec in resumed.items():
        p.store.add(h, vec)
    for c in p.listing.candidates:
        if c.path not in p.sha and (k := (c.path, *c.stamp)) in hashed:
            p.sha[c.path] = hashed[k]


def _reuse_other_inputs(p: Plan, features, key: str, log) -> None:
    """Adds every other input's cache of ``key`` to the store (vectors shared by content)."""
    for other in cache.caches_of_key(features, key, exclude=p.folder):
        try:
            opened = cache.open_cache(other, mmap=True, check_values=False)
        except (OSError, cache.CacheError) as err:  # damaged, or another user's, unreadable
            log(f"warning: not reusing vectors from {other} ({err})")
            continue
        if opened[0].shape[1] == (p.store.dim() or opened[0].shape[1]):
            _reuse(p.store, other, opened, log)


def _to_read(p: Plan) -> list[files.Candidate]:
    return [c for c in p.listing.candidates
            if not (c.path in p.sha and (p.sha[c.path] in p.store or p.sha[c.path] in p.failed))]


def plan(in_dir, features, root: Path, key: str, listing: files.Listing, log=print) -> Plan:
    """Decides what a run must read and compute; reads no image.

    Args:
        in_dir: the input folder.
        features: the cache root (FEATURES), where other inputs' caches of ``key`` are found.
        root: ``FEATURES/<input-id>``.
        key: the setting's key.
        listing: the input's files (:func:`extract.files.list_images`).
    """
    folder = root / key
    previous = _previous(folder, log)
    shards = Shards(root, key, dim=None if previous is None else previous[0].shape[1],
                    input_dir=str(in_dir))
    p = Plan(str(in_dir), root, folder, listing, previous, {}, {}, VectorStore(), shards, [],
             unchanged=False)
    # A stamp says nothing about content in another folder (DATASET=, a moved input).
    if p.own_previous() and cache.untouched(folder, previous[2]) and not shards.folder.exists() \
            and _nothing_changed(listing, folder, previous):
        p.unchanged = p.previous_clean = True
        return p
    if previous is not None:
        p.previous_clean = _reuse(p.store, folder, previous, log)
        p.failed = dict(previous[2].get("rejected_sha256", {}))
        p.sha = _known_hashes(listing, previous) if p.own_previous() else {}
    _resume(p, log)
    p.todo = _to_read(p)
    if p.todo:
        _reuse_other_inputs(p, features, key, log)
        p.todo = [c for c in p.todo if not (c.path in p.sha and p.sha[c.path] in p.store)]
    return p


def bytes_needed(p: Plan, dim: int) -> tuple[int, str]:
    """What a run must still write, in bytes and in words, for a message about a full disk.

    The new cache is written beside the previous one until the swap; the finished batches in
    ``.partial`` stay until it is in place.
    """
    from .atomic import human_bytes

    n = len(p.listing.candidates)
    vectors = n * dim * 4 + 128
    manifest = sum(len(c.path.encode()) + len(c.label) + len(c.split) for c in p.listing.candidates) \
        + n * 130  # a hash, the stamp, commas and quotes
    new = vectors + manifest
    shards = p.shards.size_on_disk()
    words = (f"about {human_bytes(new)} free for the new cache ({n} vectors of {dim} floats and "
             f"their manifest), written beside the previous cache until it replaces it")
    if shards:
        words += f"; the finished batches in {p.shards.folder} take {human_bytes(shards)} until then"
    return new, words
