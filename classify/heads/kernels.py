"""The RBF kernel, computed in blocks of rows with BLAS, in bounded memory (the SVM's arithmetic)."""

from __future__ import annotations

import contextlib
import threading

import numpy as np

BLOCK_ROWS = 2048  # rows of a kernel block computed at once (predict, Gram, Nystroem features)
BLOCK_ENTRIES = 16_000_000  # at most this many float32 temporaries per Gram block (64 MB)
CACHE_ENTRIES = 65_536  # float32 entries of a block passed over several times (256 KiB: stays in cache)
MAP_FROM = 32 * 1024 ** 2  # buffers from this many bytes get their own memory map (see mapped)
KERNEL_BLOCK_ENTRIES = 1_048_576  # float32 entries of a kernel block (4 MiB; 64 MiB measured 15% slower)


def rbf_kernel32(A: np.ndarray, B: np.ndarray, gamma: float, out: np.ndarray | None = None,
                 dtype=np.float32) -> np.ndarray:
    """exp(-gamma * |a - b|^2) for all rows of A and B, via one matrix product in ``dtype``.

    Args:
        A, B: rows.
        gamma: the RBF width.
        out: optional (len(A), len(B)) array (e.g. float64 rows of a larger Gram matrix) to
            write into.
        dtype: precision of the product: float32 (twice as fast; the training Gram matrix) or
            float64 (prediction, so that a row's score does not depend on its batch).

    Returns:
        ``out``, or a new array of ``dtype``.
    """
    A = np.asarray(A, dtype)
    B = np.asarray(B, dtype)
    D = (A * A).sum(1)[:, None] + (B * B).sum(1)[None, :]
    D -= 2.0 * (A @ B.T)
    np.maximum(D, 0, out=D)
    D *= -gamma
    if out is None:
        return np.exp(D, out=D)
    np.exp(D, out=out)
    return out


def rbf_gram64(A: np.ndarray, B: np.ndarray, gamma: float, dtype=np.float32) -> np.ndarray:
    """The float64 kernel matrix libsvm needs, written block by block (8 bytes per entry).

    The temporaries are one block of at most ``BLOCK_ROWS`` rows and ``BLOCK_ENTRIES`` entries,
    so the peak is the float64 result plus 64 MB, not a float32 matrix and its float64 copy.
    ``dtype``: as in :func:`rbf_kernel32`.
    """
    K = np.empty((len(A), len(B)), np.float64)
    rows = max(1, min(BLOCK_ROWS, BLOCK_ENTRIES // max(len(B), 1)))
    for i in range(0, len(A), rows):
        rbf_kernel32(A[i:i + rows], B, gamma, out=K[i:i + rows], dtype=dtype)
    return K



def variance(X) -> float:
    """``X.var()`` over every entry, in float64, ``BLOCK_ROWS`` rows at a time (``X.var()`` makes
    a temporary as large as X: 1.6 GB at 800,000 x 512)."""
    mean = float(np.mean(X, dtype=np.float64))
    total, step = 0.0, 512
    for i in range(0, len(X), step):
        d = X[i:i + step].astype(np.float64)
        d -= mean
        total += float(np.einsum("ij,ij->", d, d))
    return total / X.size



def squared_distances(X: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """|a - b|^2 between all rows of X, as an (n, n) float32 matrix.

    The products X X^T come from one symmetric rank-k update (BLAS ``ssyrk``: half the
    multiply-adds of a general product), which fills one triangle; the other is copied over
    tile by tile.

    Args:
        X: (n, d) rows.
        out: optional float32 buffer of at least n x n entries to write into (see
            :class:`Workspace`); by default a new array.
    """
    from scipy.linalg.blas import ssyrk

    X = np.asarray(X, np.float32)
    n = len(X)
    norms = (X * X).sum(1)
    # X.T is Fortran-ordered (d, n): trans=1 gives X X^T without copying X; the Fortran-ordered
    # upper triangle is, read in C order, the lower one
    if out is None:
        D = ssyrk(1.0, X.T, trans=1).T
    else:
        c = out[:n * n].reshape(n, n, order="F")  # written in place (overwrite_c, a Fortran array)
        D = ssyrk(1.0, X.T, beta=0.0, c=c, trans=1, overwrite_c=1).T
        if not np.shares_memory(D, out):
            raise RuntimeError("ssyrk did not write into the buffer it was given")
    tile = 128  # tile by tile, both in cache: 3-4x faster than whole strips at 10,000 rows
    for i in range(0, n, tile):
        diagonal = D[i:i + tile, i:i + tile]
        diagonal[...] = np.tril(diagonal) + np.tril(diagonal, -1).T
        for j in range(i + tile, n, tile):
            D[i:i + tile, j:j + tile] = D[j:j + tile, i:i + tile].T
    rows = max(1, min(BLOCK_ROWS, CACHE_ENTRIES // max(n, 1)))
    for i in range(0, n, rows):
        block = D[i:i + rows]
        block *= -2.0
        block += norms[i:i + rows, None]
        block += norms[None, :]
        np.maximum(block, 0, out=block)
    return D


def mapped(entries: int, dtype) -> np.ndarray:
    """A new 1-D array in its own anonymous memory map, without the huge-page advice NumPy gives
    its large arrays (``madvise(MADV_HUGEPAGE)``, which NumPy applies to allocations of 4 MiB and
    more on Linux).

    With that advice and the kernel's default ``defrag`` setting (``madvise``), a page fault
    may wait while the kernel compacts memory to make a huge page: on the 2-core reference VM,
    writing a fresh 800 MB array took 0.45-1.7 s that way and 0.30-0.32 s in plain pages, and
    libsvm ran no slower on plain pages. The map is released when the last array using it goes.

    Below :data:`MAP_FROM` bytes the array is NumPy's own: glibc serves those from its heap, and
    freeing them raises glibc's threshold for serving later arrays from the heap (up to 32 MiB),
    which the MLP's many per-epoch arrays gain from when its fits follow the SVM's in a worker
    (mapping the small buffers too made the MLP's fits on 245 rows 15-40% slower).
    """
    import mmap

    nbytes = max(1, int(entries)) * np.dtype(dtype).itemsize
    if nbytes < MAP_FROM:
        return np.empty(max(1, int(entries)), dtype)
    return np.frombuffer(mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS), dtype, int(entries))


class Workspace:
    """The large buffers of exact SVM fits, kept by a process (per thread) from one fit to the next.

    A fit on n rows needs n x n float32 distances and an n x n float64 kernel buffer: 1.2 GB at
    10,000 rows. Fresh memory is slow to write the first time (the kernel maps and zeroes each
    page as it is first written; see :func:`mapped`): on the 2-core reference VM that was a third
    to a half of an exact fit's time at 8,000-10,000 rows. A worker of ``make compare`` runs
    several fits of one head in a row (the CV folds and the final fit, the SVM's first), so
    inside :meth:`reused_by` a buffer is kept after the fit and reused by the next one when
    large enough (replaced, the old one dropped first, when not). The kept buffers are never
    larger than those of the largest fit that ran in the process, so the memory plan of one fit
    per worker (:mod:`classify.budget`) holds; they are dropped when the process turns to
    another head, and by :meth:`release` (the fits' caller does, for its own process, when they
    are done). Outside :meth:`reused_by` every fit gets fresh buffers, freed with it.
    """

    def __init__(self):
        self._local = threading.local()

    def take(self, name: str, entries: int, dtype) -> np.ndarray:
        """A 1-D buffer of at least ``entries`` of ``dtype``: inside :meth:`reused_by`, the one
        named ``name`` when large enough (its contents are what the last fit left), else a new one."""
        state = self._state()
        if not state["keep"]:
            return mapped(entries, dtype)
        held = state["buffers"]
        buf = held.get(name)
        if buf is None or buf.dtype != np.dtype(dtype) or buf.size < entries:
            held.pop(name, None)
            buf = held[name] = mapped(entries, dtype)
        return buf

    @contextlib.contextmanager
    def reused_by(self, owner: str):
        """Within: buffers are kept for the next fit of ``owner`` in this thread (those of another
        owner are dropped first)."""
        state = self._state()
        if state["owner"] != owner:
            self.release()
            state["owner"] = owner
        state["keep"] = True
        try:
            yield self
        finally:
            state["keep"] = False

    def release(self) -> None:
        """Drops every buffer of this thread."""
        state = self._state()
        state["buffers"].clear()
        state["owner"] = None

    def held_bytes(self) -> int:
        """The bytes this thread's buffers hold."""
        return sum(b.nbytes for b in self._state()["buffers"].values())

    def _state(self) -> dict:
        if not hasattr(self._local, "state"):
            self._local.state = {"buffers": {}, "owner": None, "keep": False}
        return self._local.state


WORKSPACE = Workspace()


class KernelBuffers:
    """Kernel matrices exp(-gamma * D) over ranges of rows and columns of squared distances, in
    reused memory.

    The rows are ordered by held-out fold, so a fold's training rows are one or two ranges and
    every kernel is a few strided copies, never a gather. libsvm reads a float64 kernel; the
    entries are computed in float32 blocks (one exponential each, in cache) and written into one
    float64 buffer of n x n entries: a fold's training kernel fills its leading part and the
    fold's held-out kernel the part after it (n_train^2 + n_held_out * n_train <= n^2), the
    final fit's kernel all of it. The buffers come from a :class:`Workspace` (see there why
    memory is reused).
    """

    def __init__(self, D: np.ndarray, workspace: Workspace | None = None):
        self.D = D
        n = len(D)
        workspace = WORKSPACE if workspace is None else workspace
        self.square = workspace.take("kernel", n * n, np.float64)
        self.block_rows = max(1, min(BLOCK_ROWS, KERNEL_BLOCK_ENTRIES // max(n, 1)))
        self.block32 = workspace.take("block", self.block_rows * n, np.float32)
        self._end = 0  # entries of ``square`` the last training kernel holds

    @classmethod
    def of(cls, X: np.ndarray, workspace: Workspace | None = None) -> "KernelBuffers":
        """The buffers of rows X, their squared distances computed into the workspace."""
        workspace = WORKSPACE if workspace is None else workspace
        n = len(X)
        return cls(squared_distances(X, out=workspace.take("distances", n * n, np.float32)), workspace)

    def kernel(self, rows: list, cols: list, gamma: float, side: bool = False) -> np.ndarray:
        """The kernel of the row ranges against the column ranges (lists of (start, stop)), as
        a C-contiguous float64 view of the buffer; ``side=True`` writes after the last training
        kernel, which stays intact."""
        n_rows, n_cols = sum(b - a for a, b in rows), sum(b - a for a, b in cols)
        start = self._end if side else 0
        if start + n_rows * n_cols > self.square.size:
            raise ValueError(f"a {n_rows} x {n_cols} kernel does not fit after {start} entries of the "
                             f"{self.square.size}-entry buffer")
        K = self.square[start:start + n_rows * n_cols].reshape(n_rows, n_cols)
        if not side:
            self._end = n_rows * n_cols
        at = 0
        for a, b in rows:
            for i in range(a, b, self.block_rows):
                r = min(self.block_rows, b - i)
                col = 0
                for c, d in cols:
                    block = self.block32[:r * (d - c)].reshape(r, d - c)
                    np.multiply(self.D[i:i + r, c:d], np.float32(-gamma), out=block)
                    K[at:at + r, col:col + d - c] = np.exp(block, out=block)
                    col += d - c
                at += r
        return K
