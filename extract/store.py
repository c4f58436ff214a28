"""Vectors by content hash, from every source a run may reuse, without copying them."""

from __future__ import annotations

from typing import Iterable

import numpy as np


class VectorStore:
    """Vectors by SHA-256 of the image bytes: rows of (memory-mapped) caches and loose vectors.

    Rows of a cache stay where they are (a memory map is not read until a row is asked for);
    vectors computed or resumed by a run are held loose. The first source to name a content wins.
    """

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
        """Adds one loose vector."""
        self._loose[sha] = vector

    def __contains__(self, sha: str) -> bool:
        return sha in self._loose or sha in self._index

    def get(self, sha: str) -> np.ndarray:
        """The vector of ``sha`` (KeyError when there is none)."""
        vec = self._loose.get(sha)
        if vec is not None:
            return vec
        source, row = self._index[sha]
        return self._arrays[source][row]

    def hashes(self) -> set[str]:
        """Every content hash with a vector."""
        return set(self._index) | set(self._loose)

    def rows(self, shas: list[str]) -> np.ndarray:
        """The vectors of ``shas``, in order, as one float32 array."""
        return np.stack([self.get(sha) for sha in shas]).astype(np.float32, copy=False)

    def dim(self) -> int | None:
        """The width of the vectors, or None while there are none."""
        if self._loose:
            return int(next(iter(self._loose.values())).shape[0])
        return int(self._arrays[0].shape[1]) if self._arrays else None
