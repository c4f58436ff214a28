"""The RBF kernel, computed in blocks of rows with BLAS, in bounded memory (the SVM's arithmetic)."""

from __future__ import annotations

import numpy as np

BLOCK_ROWS = 2048  # rows of a kernel block computed at once (predict, Gram, Nystroem features)
BLOCK_ENTRIES = 16_000_000  # at most this many float32 temporaries per Gram block (64 MB)


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



def squared_distances(X: np.ndarray) -> np.ndarray:
    """|a - b|^2 between all rows of X, as an (n, n) float32 matrix.

    The products X X^T come from one symmetric rank-k update (BLAS ``ssyrk``: half the
    multiply-adds of a general product), which fills one triangle; the other is copied over
    block by block.
    """
    from scipy.linalg.blas import ssyrk

    X = np.asarray(X, np.float32)
    norms = (X * X).sum(1)
    # X.T is Fortran-ordered (d, n): trans=1 gives X X^T without copying X; the Fortran-ordered
    # upper triangle is, read in C order, the lower one
    D = ssyrk(1.0, X.T, trans=1).T
    rows = 256
    for i in range(0, len(X), rows):
        diagonal = D[i:i + rows, i:i + rows]
        diagonal[...] = np.tril(diagonal) + np.tril(diagonal, -1).T
        D[i:i + rows, i + rows:] = D[i + rows:, i:i + rows].T
    rows = max(1, min(BLOCK_ROWS, BLOCK_ENTRIES // max(len(X), 1)))
    for i in range(0, len(X), rows):
        block = D[i:i + rows]
        block *= -2.0
        block += norms[i:i + rows, None]
        block += norms[None, :]
        np.maximum(block, 0, out=block)
    return D


class KernelBuffers:
    """Kernel matrices exp(-gamma * D) over ranges of rows and columns of squared distances, in
    reused memory.

    The rows are ordered by held-out fold, so a fold's training rows are one or two ranges and
    every kernel is a few strided copies, never a gather. libsvm reads a float64 kernel; the
    entries are computed in float32 blocks (one exponential each) and written into one float64
    buffer of n x n entries, whose leading part holds a fold's smaller matrix. Reusing memory
    matters: on the machines measured, first writes to fresh pages cost up to 1-2 s per GB when
    memory was busy, more than computing the kernel itself.
    """

    def __init__(self, D: np.ndarray):
        self.D = D
        n = len(D)
        self.square = np.empty(n * n, np.float64)  # a fold's training kernel, or the final one
        self.side = np.empty(0, np.float64)  # held-out rows against training rows
        self.block_rows = max(1, min(BLOCK_ROWS, BLOCK_ENTRIES // max(n, 1)))
        self.block32 = np.empty(self.block_rows * n, np.float32)

    def kernel(self, rows: list, cols: list, gamma: float, side: bool = False) -> np.ndarray:
        """The kernel of the row ranges against the column ranges (lists of (start, stop)), as
        a C-contiguous float64 view of a buffer; ``side=True`` uses the second buffer, so that a
        fold's training kernel stays intact."""
        n_rows, n_cols = sum(b - a for a, b in rows), sum(b - a for a, b in cols)
        if side:
            if self.side.size < n_rows * n_cols:
                self.side = np.empty(n_rows * n_cols, np.float64)
            K = self.side[:n_rows * n_cols].reshape(n_rows, n_cols)
        else:
            K = self.square[:n_rows * n_cols].reshape(n_rows, n_cols)
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

