"""The feature cache on disk: one folder per setting, written atomically, with resumable shards.

Layout under ``FEATURES``::

    <key>/embeddings.npy    float32 (N, D); row i belongs to row i of manifest.csv
    <key>/manifest.csv      path,label,split,sha256,size,mtime_ns (sorted by path)
    <key>/meta.json         settings, counts, timing, device, versions
    <key>/rejected.csv      path,reason for every file that could not be embedded
    .partial/<key>/*.npz    finished batches of an unfinished run (sha256 + embeddings)
    .locks/<key>.lock       held while a run writes <key>

A key folder is replaced by renaming a complete temporary folder into place, so at every instant
it is either complete or absent. Nothing in this module needs TensorFlow.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np

MANIFEST_COLUMNS = ["path", "label", "split", "sha256", "size", "mtime_ns"]


class CacheError(RuntimeError):
    """A cache folder that is missing pieces or disagrees with itself."""


def atomic_write(path, write) -> None:
    """Writes a file under a temporary name in its folder, then renames it into place.

    Readers see the old file or the new one, never a part; a crash leaves no partial file.

    Args:
        path: the file to (re)write.
        write: called with the open binary temporary file; writes the content.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_json(path: Path, obj) -> None:
    """Writes ``obj`` as indented JSON, atomically."""
    atomic_write(Path(path), lambda fh: fh.write((json.dumps(obj, indent=2, default=str) + "\n").encode()))


def write_csv(path: Path, header: list[str], rows) -> None:
    """Writes a UTF-8 CSV atomically (quoted as needed, so commas and quotes in paths survive)."""
    import io

    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    atomic_write(Path(path), lambda fh: fh.write(buf.getvalue().encode("utf-8")))


def read_csv_rows(path: Path) -> list[dict]:
    """Reads a CSV written by :func:`write_csv` into a list of dicts of strings."""
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def read_cache(folder: Path, mmap: bool = False):
    """Reads and checks one key folder.

    Args:
        folder: ``FEATURES/<key>``.
        mmap: memory-map the embeddings instead of reading them.

    Returns:
        ``(embeddings, manifest rows, meta)``.

    Raises:
        FileNotFoundError: when the folder or one of its files is missing.
        CacheError: when the files disagree (row counts, dtype, shape, NaN rows).
    """
    folder = Path(folder)
    for name in ("embeddings.npy", "manifest.csv", "meta.json"):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"{folder / name} is missing")
    # Open all three before reading any: if a writer swaps the folder meanwhile, the open files
    # still belong to one version, so rows and vectors cannot come from two different runs.
    with open(folder / "embeddings.npy", "rb") as f_emb, \
            open(folder / "manifest.csv", newline="", encoding="utf-8") as f_man, \
            open(folder / "meta.json", encoding="utf-8") as f_meta:
        try:
            if mmap:
                emb = np.load(folder / "embeddings.npy", mmap_mode="r", allow_pickle=False)
            else:
                emb = np.load(f_emb, allow_pickle=False)
        except Exception as err:
            raise CacheError(
                f"{folder / 'embeddings.npy'} cannot be read ({type(err).__name__}: {err}); "
                "it is damaged: run `make features` again to rebuild it"
            ) from None
        rows = list(csv.DictReader(f_man))
        try:
            meta = json.load(f_meta)
        except ValueError as err:
            raise CacheError(f"{folder / 'meta.json'} is not valid JSON ({err}); run `make features` again") from None
    if emb.dtype != np.float32 or emb.ndim != 2:
        raise CacheError(
            f"{folder / 'embeddings.npy'} must be a 2-D float32 array; "
            f"received {emb.dtype} with shape {emb.shape}; run `make features` again"
        )
    if emb.shape[0] != len(rows):
        raise CacheError(
            f"{folder}: embeddings.npy has {emb.shape[0]} rows but manifest.csv has {len(rows)}; "
            "they must be row-aligned: run `make features` again to rebuild the cache"
        )
    if rows and set(MANIFEST_COLUMNS[:4]) - set(rows[0]):
        raise CacheError(f"{folder / 'manifest.csv'} lacks columns {MANIFEST_COLUMNS[:4]}")
    if meta.get("dim") not in (None, emb.shape[1]):
        raise CacheError(
            f"{folder}: meta.json says dim {meta.get('dim')} but embeddings.npy has {emb.shape[1]} columns"
        )
    bad = np.flatnonzero(~np.isfinite(np.asarray(emb)).all(axis=1))
    if bad.size:
        raise CacheError(
            f"{folder / 'embeddings.npy'} has {bad.size} rows with NaN or infinite values "
            f"(first: row {bad[0]}, {rows[bad[0]]['path']!r}); run `make features` again"
        )
    return emb, rows, meta


def write_cache(features: Path, key: str, emb: np.ndarray, rows: list[dict], meta: dict,
                rejected: list[tuple[str, str]]) -> Path:
    """Writes a complete key folder and renames it into place.

    The old folder (if any) is moved aside and removed only after the new one is in place.
    """
    features = Path(features)
    features.mkdir(parents=True, exist_ok=True)
    final = features / key
    old = None
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{key}-", dir=features))
    try:
        emb = np.ascontiguousarray(emb, dtype=np.float32)
        atomic_write(tmp / "embeddings.npy", lambda fh: np.save(fh, emb, allow_pickle=False))
        write_csv(tmp / "manifest.csv", MANIFEST_COLUMNS,
                  ([r[c] for c in MANIFEST_COLUMNS] for r in rows))
        write_csv(tmp / "rejected.csv", ["path", "reason"], rejected)
        write_json(tmp / "meta.json", meta)
        os.chmod(tmp, 0o755)
        if final.exists():
            old = features / f".old-{key}-{uuid.uuid4().hex[:8]}"
            os.replace(final, old)
        os.replace(tmp, final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if old is not None and old.exists() and not final.exists():
            os.replace(old, final)  # interrupted between the two renames: put the old one back
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def recover(features: Path, key: str) -> list[str]:
    """Tidies what a process killed inside :func:`write_cache` can leave; call under the lock.

    A killed run may leave ``.tmp-<key>-*`` (an unfinished new folder: deleted) and, between its
    two renames, ``.old-<key>-*`` without ``<key>`` (the previous complete cache: put back).

    Returns:
        What was done, for the log.
    """
    features = Path(features)
    notes = []
    olds = sorted(features.glob(f".old-{key}-*"), key=lambda p: p.stat().st_mtime)
    if olds and not (features / key).exists():
        os.replace(olds.pop(), features / key)
        notes.append(f"restored the previous cache {features / key} left aside by a killed run")
    for stale in [*olds, *features.glob(f".tmp-{key}-*")]:
        shutil.rmtree(stale, ignore_errors=True)
    return notes


class Shards:
    """Finished batches of a run, kept under ``FEATURES/.partial/<key>/`` until the cache is written."""

    def __init__(self, features: Path, key: str, dim: int | None = None):
        self.folder = Path(features) / ".partial" / key
        self.dim = dim
        self._run = f"{int(time.time())}-{uuid.uuid4().hex[:6]}"
        self._count = 0

    def load(self) -> tuple[dict[str, np.ndarray], list[str]]:
        """Returns ({sha256: embedding}, [warnings]) from every intact shard; damaged ones are deleted."""
        found, notes = {}, []
        if not self.folder.is_dir():
            return found, notes
        for path in sorted(self.folder.glob("*.npz")):
            try:
                with np.load(path, allow_pickle=False) as data:
                    shas, emb = data["sha256"], data["emb"]
                if emb.ndim != 2 or emb.shape[0] != shas.shape[0] or emb.dtype != np.float32:
                    raise CacheError(f"{shas.shape[0]} hashes for embeddings of shape {emb.shape}")
                if self.dim is not None and emb.shape[1] != self.dim:
                    raise CacheError(f"width {emb.shape[1]}, expected {self.dim}")
                if not np.isfinite(emb).all():
                    raise CacheError("NaN or infinite values")
            except Exception as err:
                notes.append(f"damaged partial file {path.name} ({err}); its images are computed again")
                path.unlink(missing_ok=True)
                continue
            for sha, row in zip(shas.tolist(), emb):
                found[sha] = row
        return found, notes

    def save(self, shas: list[str], emb: np.ndarray) -> None:
        """Writes one shard atomically."""
        if not shas:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        self._count += 1
        path = self.folder / f"{self._run}-{self._count:05d}.npz"
        arr = np.asarray(shas)
        atomic_write(path, lambda fh: np.savez(fh, sha256=arr, emb=np.asarray(emb, np.float32)))

    def clear(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
        with contextlib.suppress(OSError):
            self.folder.parent.rmdir()  # only when no other key has partial work


@contextlib.contextmanager
def locked(features: Path, key: str, log=print):
    """Holds ``FEATURES/.locks/<key>.lock`` for the block; waits (saying so) while another run holds it.

    The lock is an OS file lock, so it is released when its process dies, even after ``kill -9``.
    """
    from filelock import FileLock, Timeout

    folder = Path(features) / ".locks"
    folder.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(folder / f"{key}.lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        log(f"another extraction is writing {Path(features) / key}; waiting for it to finish "
            "(Ctrl-C to stop waiting)")
        sys.stdout.flush()
        lock.acquire()
    try:
        yield
    finally:
        lock.release()
