"""Exact and near-duplicate images from the cached embeddings, in bounded memory; no TensorFlow.

Shared by ``make audit`` (which lists the pairs) and ``make compare`` (which scores the evaluated
images that have no near-duplicate in the training part, and with ``GROUPS=dups`` keeps every
duplicate cluster on one side of each split).

* Exact duplicates: the same file content (the manifest's ``sha256``).
* Near-duplicates: cosine similarity of the (uncentred) embeddings at or above a threshold.
  The search runs over square blocks of the upper triangle of the similarity matrix, so memory is
  O(block^2) whatever N is: 200,000 x 512 never builds an N x N matrix.

The default threshold (``auto``) is relative to the data, because random-init weights squeeze
all similarities towards 1 while ImageNet weights spread them. For each image take the cosine
distance ``d = 1 - cos`` to its nearest neighbour that is not an exact copy; with ``m`` the median
of ``log d`` and ``s`` its scaled median absolute deviation (1.4826 * MAD), a pair is a
near-duplicate when its distance is below ``exp(m - max(Z_AUTO * s, log(RATIO_AUTO)))``: at least
``Z_AUTO`` robust standard deviations *and* a factor ``RATIO_AUTO`` below the typical
nearest-neighbour distance. The README's audit section gives the measurements behind it.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pandas as pd

Z_AUTO = 2.0  # robust standard deviations of log nearest-neighbour distance below the median
RATIO_AUTO = 2.0  # and at least this factor below the median nearest-neighbour distance
BLOCK = 2048  # rows per block: a block of similarities is BLOCK^2 float32 (16 MiB)
MAX_PAIRS = 5_000_000  # more near-duplicate pairs than this means the threshold is far too low
_TINY = 1e-7  # distances below float32 resolution of cosine count as this


@dataclasses.dataclass
class Duplicates:
    """The duplicate pairs of one set of embeddings.

    Attributes:
        pairs: one row per pair, ``i < j`` row numbers, ``similarity`` (cosine) and ``kind``
            (``exact``: same content hash; ``near``: similarity at or above the threshold),
            sorted by similarity (highest first), then ``i``, ``j``.
        threshold: the cosine similarity used (NaN with fewer than 3 images).
        rule: how the threshold was chosen, in words.
        nn_similarity: per row, the cosine similarity to its nearest neighbour that is not an
            exact copy (-inf when there is none).
        n: number of rows.
    """

    pairs: pd.DataFrame
    threshold: float
    rule: str
    nn_similarity: np.ndarray
    n: int

    def groups(self) -> np.ndarray:
        """Cluster id per row: rows joined by any duplicate pair (transitively) share an id."""
        from scipy.sparse import coo_matrix
        from scipy.sparse.csgraph import connected_components

        i = self.pairs["i"].to_numpy(int)
        j = self.pairs["j"].to_numpy(int)
        graph = coo_matrix((np.ones(len(i), np.int8), (i, j)), shape=(self.n, self.n))
        return connected_components(graph, directed=False)[1]

    def partners_in(self, mask: np.ndarray) -> np.ndarray:
        """Per row: whether it has a duplicate partner among the rows where ``mask`` is true."""
        mask = np.asarray(mask, bool)
        out = np.zeros(self.n, bool)
        i = self.pairs["i"].to_numpy(int)
        j = self.pairs["j"].to_numpy(int)
        out[i[mask[j]]] = True
        out[j[mask[i]]] = True
        return out


def unit_rows(X) -> np.ndarray:
    """float32 rows scaled to length 1 (all-zero rows stay zero)."""
    Z = np.array(X, dtype=np.float32, copy=True)
    if Z.ndim != 2:
        raise ValueError(f"embeddings must be a 2-D array (N, D); received shape {Z.shape}")
    norms = np.linalg.norm(Z, axis=1)
    norms[norms == 0] = 1.0
    Z /= norms[:, None]
    return Z


def content_codes(sha) -> np.ndarray:
    """An integer per row, equal for equal content hashes; a missing hash never matches another."""
    sha = pd.Series(list(sha), dtype=object).fillna("").astype(str)
    codes, _ = pd.factorize(sha)
    codes = codes.astype(np.int64)
    empty = np.flatnonzero(sha.to_numpy() == "")
    codes[empty] = -1 - empty  # unique negative codes
    return codes


def _blocks(n: int, block: int):
    """Upper-triangular block pairs (a0, a1, b0, b1) with b0 >= a0."""
    for a0 in range(0, n, block):
        for b0 in range(a0, n, block):
            yield a0, min(a0 + block, n), b0, min(b0 + block, n)


def _masked_block(Z, codes, a0, a1, b0, b1) -> np.ndarray:
    """Similarities of rows a0:a1 with b0:b1; self and exact-copy pairs set to -inf."""
    S = Z[a0:a1] @ Z[b0:b1].T
    S[codes[a0:a1, None] == codes[None, b0:b1]] = -np.inf
    if a0 == b0:
        np.fill_diagonal(S, -np.inf)  # already masked by equal codes; kept for clarity
    return S


def nearest_neighbours(Z: np.ndarray, codes: np.ndarray, block: int = BLOCK) -> np.ndarray:
    """Per row of the unit rows ``Z``, the highest cosine similarity to another row of other content.

    Works block by block over the upper triangle (each similarity computed once): memory is
    O(block^2). Rows without such a neighbour get -inf.
    """
    n = len(Z)
    best = np.full(n, -np.inf, np.float32)
    for a0, a1, b0, b1 in _blocks(n, block):
        S = _masked_block(Z, codes, a0, a1, b0, b1)
        np.maximum(best[a0:a1], S.max(1), out=best[a0:a1])
        np.maximum(best[b0:b1], S.max(0), out=best[b0:b1])
    return best


def pairs_above(Z: np.ndarray, codes: np.ndarray, threshold: float, rows=None,
                block: int = BLOCK, max_pairs: int = MAX_PAIRS) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All pairs ``i < j`` of different content whose cosine similarity is >= ``threshold``.

    Args:
        Z: unit rows (see :func:`unit_rows`).
        codes: content codes (see :func:`content_codes`); equal codes are skipped.
        threshold: the cosine similarity.
        rows: optional row numbers to search among (the others cannot be in a pair, e.g. rows
            whose nearest-neighbour similarity is below the threshold).
        block: rows per block.
        max_pairs: stop with an error beyond this many pairs (memory stays bounded).

    Returns:
        (i, j, similarity) arrays, i < j, in the numbering of ``Z``.

    Raises:
        ValueError: more than ``max_pairs`` pairs (the threshold is too low).
    """
    rows = np.arange(len(Z)) if rows is None else np.sort(np.asarray(rows, np.int64))
    Zr, cr = Z[rows], codes[rows]
    found_i, found_j, found_s = [], [], []
    total = 0
    for a0, a1, b0, b1 in _blocks(len(rows), block):
        S = _masked_block(Zr, cr, a0, a1, b0, b1)
        if a0 == b0:
            S[np.tril_indices(a1 - a0, 0, b1 - b0)] = -np.inf
        ii, jj = np.nonzero(S >= threshold)
        total += len(ii)
        if total > max_pairs:
            raise ValueError(f"more than {max_pairs:,} pairs at similarity >= {threshold:g}: that "
                             "threshold is too low for near-duplicates; raise DUP_THRESHOLD or use auto")
        if len(ii):
            found_i.append(rows[ii + a0])
            found_j.append(rows[jj + b0])
            found_s.append(S[ii, jj])
    if not found_i:
        return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.float32)
    i, j, s = np.concatenate(found_i), np.concatenate(found_j), np.concatenate(found_s)
    lo, hi = np.minimum(i, j), np.maximum(i, j)
    return lo, hi, s


def auto_threshold(nn_similarity: np.ndarray) -> tuple[float, str]:
    """The default threshold from the nearest-neighbour similarities (see the module docstring).

    Returns:
        (cosine similarity threshold, the rule in words with its numbers); NaN with fewer than
        3 finite values.
    """
    sim = np.asarray(nn_similarity, np.float64)
    sim = sim[np.isfinite(sim)]
    if len(sim) < 3:
        return float("nan"), "auto: too few images to estimate the nearest-neighbour distribution"
    logd = np.log(np.maximum(1.0 - sim, _TINY))
    m = float(np.median(logd))
    s = 1.4826 * float(np.median(np.abs(logd - m)))
    cut = m - max(Z_AUTO * s, math.log(RATIO_AUTO))
    threshold = 1.0 - math.exp(cut)
    rule = (f"auto: cosine distance below exp(median log NN distance - max({Z_AUTO:g} x MAD-sigma, "
            f"log {RATIO_AUTO:g})); median NN distance {math.exp(m):.3g}, MAD-sigma of its log "
            f"{s:.3g}, distance cut {math.exp(cut):.3g} -> similarity {threshold:.6f}")
    return threshold, rule


def parse_threshold(value) -> float | None:
    """``auto`` (None) or a cosine similarity in (-1, 1].

    Raises:
        ValueError: anything else, naming what was received.
    """
    if value is None or str(value).strip().lower() in ("", "auto"):
        return None
    try:
        t = float(value)
    except ValueError:
        t = float("nan")
    if not -1.0 < t <= 1.0:
        raise ValueError(f"DUP_THRESHOLD must be 'auto' or a cosine similarity in (-1, 1]; received {value!r}")
    return t


def find_duplicates(X, sha, threshold="auto", block: int = BLOCK) -> Duplicates:
    """Exact duplicates (same ``sha``) and near-duplicates (cosine >= threshold) of the rows of X.

    Args:
        X: embeddings (N, D).
        sha: content hash per row (the manifest's ``sha256``).
        threshold: ``"auto"`` (from the nearest-neighbour distribution) or a cosine similarity.
        block: rows per block; memory is O(block^2 + N * D).

    Returns:
        A :class:`Duplicates`.

    Raises:
        ValueError: a bad threshold, or ``sha`` not row-aligned with ``X``.
    """
    Z = unit_rows(X)
    n = len(Z)
    sha = list(sha)
    if len(sha) != n:
        raise ValueError(f"sha must have one hash per embedding row ({n}); received {len(sha)}")
    fixed = parse_threshold(threshold)
    codes = content_codes(sha)
    nn = nearest_neighbours(Z, codes, block) if n else np.empty(0, np.float32)
    if fixed is None:
        t, rule = auto_threshold(nn)
    else:
        t, rule = fixed, f"fixed: DUP_THRESHOLD={fixed:g}"

    frames = []
    if np.isfinite(t):
        candidates = np.flatnonzero(nn >= t)  # a row in a pair has its nearest neighbour above t
        i, j, s = pairs_above(Z, codes, t, candidates, block)
        frames.append(pd.DataFrame({"i": i, "j": j, "similarity": s.astype(np.float64), "kind": "near"}))
    # exact copies: every pair of rows within a group of equal hashes
    ex_i, ex_j = [], []
    for members in pd.Series(np.arange(n)).groupby(codes).groups.values():
        members = np.sort(np.asarray(members))
        if len(members) > 1:
            a, b = np.triu_indices(len(members), 1)
            ex_i.append(members[a])
            ex_j.append(members[b])
    if ex_i:
        i, j = np.concatenate(ex_i), np.concatenate(ex_j)
        s = np.einsum("ij,ij->i", Z[i], Z[j]).astype(np.float64)
        frames.append(pd.DataFrame({"i": i, "j": j, "similarity": s, "kind": "exact"}))
    pairs = (pd.concat(frames, ignore_index=True) if frames
             else pd.DataFrame({"i": [], "j": [], "similarity": [], "kind": []}))
    pairs = pairs.astype({"i": np.int64, "j": np.int64, "similarity": np.float64, "kind": object})
    pairs["similarity"] = pairs["similarity"].clip(upper=1.0)
    pairs = pairs.sort_values(["similarity", "i", "j"], ascending=[False, True, True],
                              kind="stable").reset_index(drop=True)
    return Duplicates(pairs, float(t), rule, nn, n)


def group_roles(manifest: pd.DataFrame, cluster: np.ndarray, test_size: float,
                seed: int) -> tuple[pd.Series, int]:
    """The hold-out of ``GROUPS=dups``: whole duplicate clusters, in a balanced share.

    Each cluster (joined with the exact copies of its members) goes to one side as a whole, by
    the rule of :func:`classify.data.balanced_holdout`: the evaluated share stays close to
    ``test_size`` overall and per class, and no class loses its training images (a class that is
    one cluster stays in training). Split folders are the user's decision and are left as they
    are (the leakage then shows in ``accuracy_no_dups`` and in ``make audit``).

    Returns:
        (the roles, how many images are on another side than in the plain hold-out).
    """
    from .data import assign_split

    plain, _ = assign_split(manifest, test_size, seed)
    role, _ = assign_split(manifest, test_size, seed, units=np.asarray(cluster))
    return role, int((role != plain).sum())


def cached_duplicates(X, sha, threshold="auto", cache_dir=None, block: int = BLOCK) -> Duplicates:
    """:func:`find_duplicates`, remembered in ``cache_dir`` (e.g. ``OUT/.dups``) by content.

    The file name is a SHA-256 of the embeddings' bytes, the content hashes and the threshold
    setting, so any change of the inputs is a new file; ``make compare`` and ``make audit`` on
    the same features then search once. Only the latest search is kept. Without ``cache_dir``
    nothing is stored.
    """
    if cache_dir is None:
        return find_duplicates(X, sha, threshold, block)
    import hashlib
    from pathlib import Path

    from extract.cache import atomic_write

    X = np.ascontiguousarray(X, dtype=np.float32)
    sha = [str(s) for s in sha]
    h = hashlib.sha256()
    h.update(f"v1|{threshold}|{X.shape}|{Z_AUTO}|{RATIO_AUTO}|".encode())
    h.update("\n".join(sha).encode())
    h.update(memoryview(X).cast("B"))
    path = Path(cache_dir) / f"{h.hexdigest()[:32]}.npz"
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as z:
                pairs = pd.DataFrame({"i": z["i"], "j": z["j"], "similarity": z["similarity"],
                                      "kind": np.where(z["exact"], "exact", "near")})
                pairs = pairs.astype({"kind": object})  # as find_duplicates returns it
                return Duplicates(pairs, float(z["threshold"]), str(z["rule"]), z["nn"], len(X))
        except (OSError, ValueError, KeyError):
            pass  # unreadable: compute again and overwrite
    dups = find_duplicates(X, sha, threshold, block)
    path.parent.mkdir(parents=True, exist_ok=True)
    p = dups.pairs
    atomic_write(path, lambda fh: np.savez(
        fh, i=p["i"].to_numpy(np.int64), j=p["j"].to_numpy(np.int64),
        similarity=p["similarity"].to_numpy(np.float64), exact=(p["kind"] == "exact").to_numpy(),
        threshold=np.float64(dups.threshold), rule=np.str_(dups.rule), nn=dups.nn_similarity))
    for old in path.parent.glob("*.npz"):  # keep the latest search only
        if old != path and not old.name.startswith("."):
            old.unlink(missing_ok=True)
    return dups
