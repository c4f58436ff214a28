"""Exact and near-duplicate images from the cached embeddings, in bounded memory; no TensorFlow.

Shared by ``make audit`` (which lists the pairs) and ``make compare`` (which scores the evaluated
images that have no near-duplicate in the training part, and with ``GROUPS=dups`` keeps every
duplicate cluster on one side of each split).

* Exact duplicates: the same file content (the manifest's ``sha256``), kept as groups: each
  group is listed by its members (``copy_groups``), and its pairs are the first member with each
  other one (n - 1 pairs, not n(n-1)/2: 5,000 copies of one image are 4,999 pairs).
* Near-duplicates: cosine similarity of the (uncentred) embeddings at or above a threshold,
  searched among the distinct contents (the first row of each exact group stands for it).
  Up to ``EXACT_SEARCH_MAX`` distinct vectors, the search is exact, over square blocks of the
  upper triangle of the similarity matrix (memory O(block^2), time O(N^2)). Beyond, each
  vector's ``K_NEIGHBOURS`` nearest neighbours come from a faiss HNSW graph (time about
  O(N log N)); the pairs among the vectors whose nearest neighbour is above the threshold are
  then listed exactly again (block-wise, as they are few), or from the graph's neighbours when
  there are more than ``EXACT_SEARCH_MAX`` of them. BENCHMARKS.md has the measurements.

The default threshold (``auto``) is relative to the data, because random-init weights squeeze
all similarities towards 1 while ImageNet weights spread them. It is an outlier rule on how far
each distinct image is from the *other* images, its reference distance ``r``: the cosine
distance ``d = 1 - cos`` to its nearest neighbour of other content, unless its ``K_NEIGHBOURS - 1``
nearest neighbours show a gap (a neighbour at least ``GAP_AUTO`` times farther than the one
before it; the largest such step counts), in which case the neighbours before the gap are taken
for its own near-copies and ``r`` is the distance to the first one after it. With ``m`` the
median of ``log r`` and ``s`` its scaled median absolute deviation (1.4826 * MAD), a pair is a
near-duplicate when its distance is below ``exp(m - max(Z_AUTO * s, log(RATIO_AUTO)))``: at least
``Z_AUTO`` robust standard deviations *and* a factor ``RATIO_AUTO`` below the typical distance
between distinct images.

Why the gap: taken on the nearest neighbours alone, the rule only works while near-copies are
a minority. When most images have a near-copy (300 images x 4 noisy copies each), the median
nearest neighbour *is* a copy, the cut falls among the copies' own distances and found 6-10 of
1,800 planted pairs. Past the gap, the reference is the distance to a distinct image however many
images have copies, for clusters of up to ``K_NEIGHBOURS - 1`` images; on data without copies
few images show such a gap and the rule is the nearest-neighbour rule. When the pairs found
still join most images, :func:`share_warning` says so. The README's audit section gives the
measurements behind the constants.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pandas as pd

Z_AUTO = 2.0  # robust standard deviations of log nearest-neighbour distance below the median
RATIO_AUTO = 2.0  # and at least this factor below the median nearest-neighbour distance
GAP_AUTO = 2.0  # a neighbour this many times farther than the one before it ends a vector's near-copies
SHARE_WARNING = 0.5  # near-duplicates for more than this share of the images is said to be unusual
BLOCK = 2048  # rows per block: a block of similarities is BLOCK^2 float32 (16 MiB)
MAX_PAIRS = 5_000_000  # more near-duplicate pairs than this means the threshold is far too low
EXACT_SEARCH_MAX = 50_000  # distinct vectors searched exactly (block-wise); beyond, faiss HNSW
K_NEIGHBOURS = 8  # neighbours per vector from the HNSW graph (itself included)
HNSW_LINKS, HNSW_EF_BUILD, HNSW_EF_SEARCH = 16, 64, 64  # faiss IndexHNSWFlat settings
_TINY = 1e-7  # distances below float32 resolution of cosine count as this


@dataclasses.dataclass
class Duplicates:
    """The duplicate pairs of one set of embeddings.

    Attributes:
        pairs: one row per pair, ``i < j`` row numbers, ``similarity`` (cosine) and ``kind``
            (``exact``: same content hash, the group's first row with each other member;
            ``near``: similarity at or above the threshold, between the first rows of two
            distinct contents), sorted by similarity (highest first), then ``i``, ``j``.
        threshold: the cosine similarity used (NaN with fewer than 3 images).
        rule: how the threshold was chosen, in words.
        nn_similarity: per row, the cosine similarity to its nearest neighbour that is not an
            exact copy (-inf when there is none).
        n: number of rows.
        codes: per row, its content code (equal for equal hashes; see :func:`content_codes`).
        search: how the near-duplicates were searched (``exact`` or ``hnsw``), in words.
        basis: what the threshold was computed from (``auto``): ``distinct_vectors``, how many
            of them showed a gap after their own near-copies (``past_near_copies``), the median
            reference distance; empty for a fixed threshold.
    """

    pairs: pd.DataFrame
    threshold: float
    rule: str
    nn_similarity: np.ndarray
    n: int
    codes: np.ndarray
    search: str = "exact"
    basis: dict = dataclasses.field(default_factory=dict)

    def groups(self) -> np.ndarray:
        """Cluster id per row: rows joined by any duplicate pair (transitively) share an id."""
        from scipy.sparse import coo_matrix
        from scipy.sparse.csgraph import connected_components

        i = self.pairs["i"].to_numpy(int)
        j = self.pairs["j"].to_numpy(int)
        graph = coo_matrix((np.ones(len(i), np.int8), (i, j)), shape=(self.n, self.n))
        return connected_components(graph, directed=False)[1]

    def partners_in(self, mask: np.ndarray) -> np.ndarray:
        """Per row: whether it has a duplicate partner among the rows where ``mask`` is true.

        A partner is another row of the same content, or a row of a content that is a
        near-duplicate of this row's content.
        """
        mask = np.asarray(mask, bool)
        _, content = np.unique(self.codes, return_inverse=True)
        in_mask = np.bincount(content, weights=mask, minlength=content.max() + 1 if self.n else 0)
        out = in_mask[content] - mask > 0  # another copy of the same content is in the mask
        near = self.pairs[self.pairs["kind"] == "near"]
        ci, cj = content[near["i"].to_numpy(int)], content[near["j"].to_numpy(int)]
        hit = np.zeros(len(in_mask), bool)
        hit[ci[in_mask[cj] > 0]] = True
        hit[cj[in_mask[ci] > 0]] = True
        return out | hit[content]

    def summary(self) -> dict:
        """Counts for run.json and summary.json: pairs by kind, and how many images have a
        near-duplicate (a near pair with their content; their exact copies included)."""
        near = self.pairs[self.pairs["kind"] == "near"]
        _, content = np.unique(self.codes, return_inverse=True)
        joined = np.zeros(content.max() + 1 if self.n else 0, bool)
        joined[content[near["i"].to_numpy(int)]] = True
        joined[content[near["j"].to_numpy(int)]] = True
        return {"pairs": int(len(self.pairs)), "near_pairs": int(len(near)),
                "exact_pairs": int(len(self.pairs) - len(near)),
                "images_with_near_duplicate": int(joined[content].sum()), "images": int(self.n)}

    def copy_groups(self) -> pd.DataFrame:
        """The exact-copy groups: one row per member (``group``, ``row``, ``size``), largest first."""
        _, content, sizes = np.unique(self.codes, return_inverse=True, return_counts=True)
        rows = np.flatnonzero(sizes[content] > 1)
        frame = pd.DataFrame({"content": content[rows], "row": rows, "size": sizes[content[rows]]})
        frame = frame.sort_values(["size", "content", "row"], ascending=[False, True, True], kind="stable")
        frame["group"] = pd.factorize(frame["content"])[0] + 1
        return frame[["group", "row", "size"]].reset_index(drop=True)


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


CHUNK = 32  # columns per chunk when picking each row's k best of a block (see _top_k)


def _top_k(S: np.ndarray, k: int, axis: int) -> np.ndarray:
    """The ``k`` largest values along ``axis`` of a block (unordered), as (other axis, k).

    Each run of ``CHUNK`` values along ``axis`` is reduced to its maximum first (one fast pass);
    the k best values lie in the k chunks with the largest maxima, so only those are gathered and
    partitioned (2-3x faster than partitioning the whole block, measured on 2,048 x 2,048).
    """
    if axis == 0:
        S = S.T
    rows, cols = S.shape
    if cols <= k * CHUNK:
        return np.partition(S, cols - k, axis=1)[:, -k:] if cols > k else S
    n_chunks = -(-cols // CHUNK)
    if cols % CHUNK:  # pad the last chunk with -inf
        S = np.concatenate([S, np.full((rows, n_chunks * CHUNK - cols), -np.inf, S.dtype)], axis=1)
    if axis == 0:  # the transposed view: reduce along the block's rows, where memory is contiguous
        maxima = S.T.reshape(n_chunks, CHUNK, rows).max(1).T
    else:
        maxima = S.reshape(rows, n_chunks, CHUNK).max(2)
    best = np.argpartition(maxima, n_chunks - k, axis=1)[:, -k:]
    cols_of = (best[:, :, None] * CHUNK + np.arange(CHUNK)).reshape(rows, -1)
    picked = np.take_along_axis(S, cols_of, axis=1)
    return np.partition(picked, picked.shape[1] - k, axis=1)[:, -k:]


def nearest_k(Z: np.ndarray, codes: np.ndarray, k: int, block: int = BLOCK) -> np.ndarray:
    """Per row of the unit rows ``Z``, the ``k`` highest cosine similarities to rows of other
    content, highest first (-inf where there are fewer).

    Block by block over the upper triangle, as :func:`nearest_neighbours`; only the values are
    kept (n x k), never which rows they belong to.
    """
    n = len(Z)
    best = np.full((n, k), -np.inf, np.float32)

    def merge(rows: slice, S: np.ndarray, axis: int) -> None:
        both = np.concatenate([best[rows], _top_k(S, k, axis)], axis=1)
        best[rows] = np.partition(both, both.shape[1] - k, axis=1)[:, -k:]

    for a0, a1, b0, b1 in _blocks(n, block):
        S = _masked_block(Z, codes, a0, a1, b0, b1)
        merge(slice(a0, a1), S, 1)
        if a0 != b0:
            merge(slice(b0, b1), S, 0)
    return -np.sort(-best, axis=1)


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


def reference_distances(neighbour_similarity: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each vector's reference distance: to its nearest neighbour past its own near-copies.

    Args:
        neighbour_similarity: (n, k) cosine similarities to each vector's k nearest neighbours of
            other content, highest first (-inf where there are fewer); (n,) means k = 1.

    Returns:
        (reference cosine distance per vector with at least one neighbour, whether that vector
        showed a gap, i.e. had near-copies before it). The step of the largest ratio between
        consecutive neighbour distances counts, when it is at least ``GAP_AUTO``; otherwise the
        reference is the nearest neighbour's distance.
    """
    sim = np.asarray(neighbour_similarity, np.float64)
    sim = sim.reshape(len(sim), -1)
    sim = sim[np.isfinite(sim[:, 0])]
    d = np.where(np.isfinite(sim), np.maximum(1.0 - sim, _TINY), np.nan)
    if d.shape[1] < 2 or not len(d):
        return d[:, 0] if len(d) else np.empty(0), np.zeros(len(d), bool)
    with np.errstate(invalid="ignore"):
        ratio = np.nan_to_num(d[:, 1:] / d[:, :-1], nan=0.0)
    step = ratio.argmax(1)
    gap = ratio[np.arange(len(d)), step] >= GAP_AUTO
    return np.where(gap, d[np.arange(len(d)), step + 1], d[:, 0]), gap


def auto_threshold(neighbour_similarity: np.ndarray) -> tuple[float, str, dict]:
    """The default threshold from each distinct vector's nearest neighbours (see the module
    docstring).

    Args:
        neighbour_similarity: (n, k) similarities to each vector's k nearest neighbours of
            other content, highest first; (n,) for the nearest only (no gap can then be seen).

    Returns:
        (cosine similarity threshold, the rule in words with its numbers, its basis as a dict);
        NaN with fewer than 3 vectors that have a neighbour.
    """
    ref, gap = reference_distances(neighbour_similarity)
    if len(ref) < 3:
        return float("nan"), "auto: too few images to estimate the nearest-neighbour distribution", {}
    logd = np.log(ref)
    m = float(np.median(logd))
    s = 1.4826 * float(np.median(np.abs(logd - m)))
    cut = m - max(Z_AUTO * s, math.log(RATIO_AUTO))
    threshold = 1.0 - math.exp(cut)
    k = np.asarray(neighbour_similarity).reshape(len(neighbour_similarity), -1).shape[1]
    basis = {"reference": "each distinct vector's distance to its nearest neighbour past its own "
                          f"near-copies (a gap of {GAP_AUTO:g}x among its {k} nearest)",
             "distinct_vectors": int(len(ref)), "past_near_copies": int(gap.sum()),
             "median_reference_distance": float(f"{math.exp(m):.4g}"),
             "mad_sigma_of_log": float(f"{s:.4g}"), "distance_cut": float(f"{math.exp(cut):.4g}")}
    rule = (f"auto: cosine distance below exp(median log reference distance - max({Z_AUTO:g} x "
            f"MAD-sigma, log {RATIO_AUTO:g})), the reference being each distinct vector's nearest "
            f"neighbour past its own near-copies ({int(gap.sum())} of {len(ref)} had some); median "
            f"reference distance {math.exp(m):.3g}, MAD-sigma of its log {s:.3g}, distance cut "
            f"{math.exp(cut):.3g} -> similarity {threshold:.6f}")
    return threshold, rule, basis


def share_warning(dups: "Duplicates") -> str | None:
    """A warning when the near-duplicates found join more than ``SHARE_WARNING`` of the images.

    Possible (augmented copies, video frames, bursts of photos), but unusual enough that the
    user should look: with ``auto`` a threshold that is too loose for the data would show so.
    """
    counts = dups.summary()
    if not counts["images"] or counts["images_with_near_duplicate"] <= SHARE_WARNING * counts["images"]:
        return None
    share = counts["images_with_near_duplicate"] / counts["images"]
    return (f"warning: {counts['images_with_near_duplicate']:,} of {counts['images']:,} images ({share:.0%}) "
            f"have a near-duplicate at similarity >= {dups.threshold:.6f} ({dups.rule.split(':')[0]}): "
            "expected if the images are augmented copies, video frames or bursts; otherwise read the "
            "pairs (make audit, OUT/audit/duplicates.csv) and set DUP_THRESHOLD to a similarity that "
            "separates copies from distinct images")


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


def representatives(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(the first row of each distinct content, the content number of each row).

    ``first[content[r]]`` is the row that stands for row ``r``'s content.
    """
    _, first, content = np.unique(codes, return_index=True, return_inverse=True)
    return first, content


def hnsw_neighbours(X, rows: np.ndarray, k: int = K_NEIGHBOURS, block: int = 65_536):
    """Approximate ``k`` nearest neighbours (cosine) of each of ``X[rows]`` among themselves.

    A faiss ``IndexHNSWFlat`` (inner product on unit rows) is built from blocks of unit rows, so
    the only full-size copy is the index's own.

    Returns:
        (similarities float32 (len(rows), k), neighbours int64 (len(rows), k)), neighbours as
        positions in ``rows``; -1 where the graph returned fewer.
    """
    import faiss

    index = faiss.IndexHNSWFlat(X.shape[1], HNSW_LINKS, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = HNSW_EF_BUILD
    for b0 in range(0, len(rows), block):
        index.add(unit_rows(X[rows[b0:b0 + block]]))
    index.hnsw.efSearch = max(HNSW_EF_SEARCH, k)
    sims, nbrs = [], []
    for b0 in range(0, len(rows), block):
        S, I = index.search(unit_rows(X[rows[b0:b0 + block]]), k)
        sims.append(S)
        nbrs.append(I)
    return np.concatenate(sims), np.concatenate(nbrs)


def _graph_nn(S: np.ndarray, I: np.ndarray) -> np.ndarray:
    """Per row of a k-NN result, its similarities to the neighbours other than itself, highest
    first (k - 1 columns; -inf where the graph returned fewer)."""
    own = I == np.arange(len(I))[:, None]
    S = np.where(own | (I < 0), -np.inf, S).astype(np.float32)
    return -np.sort(-S, axis=1)[:, :max(S.shape[1] - 1, 1)]


def _graph_pairs(S: np.ndarray, I: np.ndarray, threshold: float, max_pairs: int = MAX_PAIRS):
    """Pairs ``i < j`` (positions) from a k-NN result with similarity >= threshold, each once."""
    a = np.repeat(np.arange(len(I)), I.shape[1])
    b, s = I.ravel(), S.ravel()
    keep = (b >= 0) & (b != a) & (s >= threshold)
    lo, hi = np.minimum(a[keep], b[keep]), np.maximum(a[keep], b[keep])
    pairs = pd.DataFrame({"i": lo, "j": hi, "s": s[keep]}).drop_duplicates(["i", "j"])
    if len(pairs) > max_pairs:
        raise ValueError(f"more than {max_pairs:,} pairs at similarity >= {threshold:g}: that threshold "
                         "is too low for near-duplicates; raise DUP_THRESHOLD or use auto")
    return pairs["i"].to_numpy(np.int64), pairs["j"].to_numpy(np.int64), pairs["s"].to_numpy(np.float32)


def near_search(X, reps: np.ndarray, block: int = BLOCK):
    """Nearest-neighbour similarities of the distinct contents, and how to list their pairs.

    Returns:
        (per row of ``reps``, the similarities to its ``K_NEIGHBOURS - 1`` nearest other rows,
        highest first (float32, -inf where there are fewer), a function threshold -> (i, j, s)
        pairs as positions in ``reps``, the method in words).
    """
    if len(reps) <= EXACT_SEARCH_MAX:
        Z = unit_rows(X[reps])
        codes = np.arange(len(reps))
        knn = nearest_k(Z, codes, K_NEIGHBOURS - 1, block) if len(Z) else np.empty((0, K_NEIGHBOURS - 1), np.float32)
        return knn, lambda t: pairs_above(Z, codes, t, np.flatnonzero(knn[:, 0] >= t), block), "exact"
    S, I = hnsw_neighbours(X, reps)
    knn = _graph_nn(S, I)
    nn = knn[:, 0]

    def pairs(t):
        cand = np.flatnonzero(nn >= t)
        if len(cand) <= EXACT_SEARCH_MAX:  # few candidates: all their pairs, exactly
            Zc = unit_rows(X[reps[cand]])
            i, j, s = pairs_above(Zc, np.arange(len(cand)), t, None, block)
            return cand[i], cand[j], s
        return _graph_pairs(S, I, t)

    return knn, pairs, (f"hnsw: faiss HNSW graph ({HNSW_LINKS} links, ef {HNSW_EF_BUILD}/{HNSW_EF_SEARCH}), "
                        f"{K_NEIGHBOURS} neighbours per distinct vector")


def exact_pairs(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The exact-copy pairs: in each group of equal codes, its first row with each other row."""
    if not len(codes):
        return np.empty(0, np.int64), np.empty(0, np.int64)
    order = np.argsort(codes, kind="stable")
    sorted_codes = codes[order]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_codes)) + 1]
    first = np.repeat(order[starts], np.diff(np.r_[starts, len(order)]))
    other = order != first
    return first[other], order[other]


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
    X = np.asarray(X)
    if X.ndim != 2:
        raise ValueError(f"embeddings must be a 2-D array (N, D); received shape {X.shape}")
    n = len(X)
    sha = list(sha)
    if len(sha) != n:
        raise ValueError(f"sha must have one hash per embedding row ({n}); received {len(sha)}")
    fixed = parse_threshold(threshold)
    codes = content_codes(sha)
    reps, content = representatives(codes)
    knn, near_pairs, search = near_search(X, reps, block)
    basis = {}
    if fixed is None:
        t, rule, basis = auto_threshold(knn)
    else:
        t, rule = fixed, f"fixed: DUP_THRESHOLD={fixed:g}"
    frames = []
    if np.isfinite(t):
        i, j, s = near_pairs(t)
        a, b = reps[i], reps[j]
        frames.append(pd.DataFrame({"i": np.minimum(a, b), "j": np.maximum(a, b),
                                    "similarity": s.astype(np.float64), "kind": "near"}))
    ex_i, ex_j = exact_pairs(codes)
    if len(ex_i):
        s = np.einsum("ij,ij->i", unit_rows(X[ex_i]), unit_rows(X[ex_j])).astype(np.float64)
        frames.append(pd.DataFrame({"i": np.minimum(ex_i, ex_j), "j": np.maximum(ex_i, ex_j),
                                    "similarity": s, "kind": "exact"}))
    pairs = (pd.concat(frames, ignore_index=True) if frames
             else pd.DataFrame({"i": [], "j": [], "similarity": [], "kind": []}))
    pairs = pairs.astype({"i": np.int64, "j": np.int64, "similarity": np.float64, "kind": object})
    pairs["similarity"] = pairs["similarity"].clip(upper=1.0)
    pairs = pairs.sort_values(["similarity", "i", "j"], ascending=[False, True, True],
                              kind="stable").reset_index(drop=True)
    return Duplicates(pairs, float(t), rule, knn[:, 0][content] if len(knn) else np.empty(0, np.float32),
                      n, codes, search, basis)


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
    import json
    from pathlib import Path

    from extract.atomic import atomic_write

    X = np.ascontiguousarray(X, dtype=np.float32)
    sha = [str(s) for s in sha]
    h = hashlib.sha256()
    h.update(f"v3|{threshold}|{X.shape}|{Z_AUTO}|{RATIO_AUTO}|{GAP_AUTO}|{EXACT_SEARCH_MAX}|{K_NEIGHBOURS}|".encode())
    h.update("\n".join(sha).encode())
    h.update(memoryview(X).cast("B"))
    path = Path(cache_dir) / f"{h.hexdigest()[:32]}.npz"
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as z:
                pairs = pd.DataFrame({"i": z["i"], "j": z["j"], "similarity": z["similarity"],
                                      "kind": np.where(z["exact"], "exact", "near")})
                pairs = pairs.astype({"kind": object})  # as find_duplicates returns it
                return Duplicates(pairs, float(z["threshold"]), str(z["rule"]), z["nn"], len(X),
                                  z["codes"], str(z["search"]), json.loads(str(z["basis"])))
        except (OSError, ValueError, KeyError):  # a JSON error is a ValueError
            pass  # unreadable: compute again and overwrite
    dups = find_duplicates(X, sha, threshold, block)
    path.parent.mkdir(parents=True, exist_ok=True)
    p = dups.pairs
    atomic_write(path, lambda fh: np.savez(
        fh, i=p["i"].to_numpy(np.int64), j=p["j"].to_numpy(np.int64),
        similarity=p["similarity"].to_numpy(np.float64), exact=(p["kind"] == "exact").to_numpy(),
        threshold=np.float64(dups.threshold), rule=np.str_(dups.rule), nn=dups.nn_similarity,
        codes=dups.codes, search=np.str_(dups.search), basis=np.str_(json.dumps(dups.basis))))
    for old in path.parent.glob("*.npz"):  # keep the latest search only
        if old != path and not old.name.startswith("."):
            old.unlink(missing_ok=True)
    return dups
