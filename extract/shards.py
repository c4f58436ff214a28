"""Finished work of an unfinished run, under ``<input-id>/.partial/<key>/*.npz``, for resuming.

Each shard holds the vectors embedded since the previous one (``sha256``, ``emb``), the hashes
of every file read since then with its stamp (``path``, ``size``, ``mtime_ns``, ``inode``,
``ctime_ns``, ``path_sha256``; see :mod:`extract.files`), and the key and input folder it belongs
to. A resumed run takes the vectors of shards of its key (vectors are identified by content) and
the hashes only of shards of its own input folder, and only for files whose whole stamp is
unchanged (a path and a stamp say nothing of another folder's files).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
import uuid
from pathlib import Path

import numpy as np

from .atomic import atomic_write, write_failure

SEEN_FIELDS = ("path", "size", "mtime_ns", "inode", "ctime_ns", "path_sha256")


class ShardError(ValueError):
    """A shard that cannot be used: damaged, of another key, or of another width."""


class Shards:
    """The shards of one input and key; a run saves to them and a resumed run loads them."""

    def __init__(self, root: Path, key: str, dim: int | None = None, input_dir: str = ""):
        self.folder = Path(root) / ".partial" / key
        self.key = key
        self.dim = dim
        self.input = os.path.abspath(input_dir) if input_dir else ""
        self._run = f"{int(time.time())}-{uuid.uuid4().hex[:6]}"
        self._count = 0

    def _read(self, path: Path):
        """(sha256, emb, seen or None) of one shard; raises ShardError when it is not usable."""
        with np.load(path, allow_pickle=False) as data:
            shas, emb = data["sha256"], data["emb"]
            key = str(data["key"]) if "key" in data else "(not recorded)"
            source = str(data["input"]) if "input" in data else ""
            own = source and source == self.input and all(k in data for k in SEEN_FIELDS)
            seen = [data[k] for k in SEEN_FIELDS] if own else None
        if key != self.key:
            raise ShardError(f"it belongs to the setting {key}, not {self.key}")
        if emb.ndim != 2 or emb.shape[0] != shas.shape[0] or emb.dtype != np.float32:
            raise ShardError(f"{shas.shape[0]} hashes for embeddings of shape {emb.shape}")
        if emb.shape[0] and self.dim is not None and emb.shape[1] != self.dim:
            raise ShardError(f"vectors {emb.shape[1]} wide, expected {self.dim}")
        if not np.isfinite(emb).all():
            raise ShardError("NaN or infinite values")
        return shas, emb, seen

    def load(self) -> tuple[dict[str, np.ndarray], dict[tuple, str], list[str]]:
        """Returns ({sha256: vector}, {(path, *stamp as text): sha256}, [warnings]).

        Unusable shards (damaged, of another key or none recorded, another width than the
        cache's) are deleted: their images are read and embedded again.
        """
        vectors, hashes, notes = {}, {}, []
        if not self.folder.is_dir():
            return vectors, hashes, notes
        for path in sorted(self.folder.glob("*.npz")):
            try:
                shas, emb, seen = self._read(path)
            except Exception as err:
                notes.append(f"unusable partial file {path.name} ({err}); its images are computed again")
                with contextlib.suppress(OSError):
                    path.unlink()
                continue
            if emb.shape[0] and self.dim is None:
                self.dim = int(emb.shape[1])
            for sha, row in zip(shas.tolist(), emb):
                vectors[sha] = row
            if seen is not None:
                for *key, sha in zip(*(a.tolist() for a in seen)):
                    hashes[tuple(str(v) for v in key)] = sha
        return vectors, hashes, notes

    def save(self, shas: list[str], emb: np.ndarray | None, seen: list[tuple]) -> None:
        """Writes one shard atomically: vectors by hash, the files read, key, input.

        Args:
            shas: content hashes of the rows of ``emb``.
            emb: their vectors, or None when there are none.
            seen: ``(path, size, mtime_ns, inode, ctime_ns, sha256)`` of each file read.

        Raises:
            CacheWriteError: the shard cannot be written.
        """
        if not shas and not seen:
            return
        self._count += 1
        path = self.folder / f"{self._run}-{self._count:05d}.npz"
        if emb is None or not len(shas):
            emb = np.zeros((0, self.dim or 0), np.float32)
        cols = list(zip(*seen)) if seen else [[]] * len(SEEN_FIELDS)
        arrays = {"sha256": np.asarray(shas, dtype="U64"), "emb": np.asarray(emb, np.float32),
                  "key": np.asarray(self.key), "input": np.asarray(self.input)}
        for name, col in zip(SEEN_FIELDS, cols):  # as text: an inode may not fit an int64
            arrays[name] = np.asarray([str(v) for v in col], dtype=str)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            atomic_write(path, lambda fh: np.savez(fh, **arrays))
        except OSError as err:
            raise write_failure(self.folder, err) from None

    def size_on_disk(self) -> int:
        """Bytes the shards take now."""
        try:
            return sum(p.stat().st_size for p in self.folder.glob("*.npz"))
        except OSError:
            return 0

    def clear(self) -> None:
        """Deletes the shards (the cache now holds their work)."""
        shutil.rmtree(self.folder, ignore_errors=True)
        with contextlib.suppress(OSError):
            self.folder.parent.rmdir()  # only when no other key has partial work
