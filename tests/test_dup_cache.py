"""The duplicate search is remembered by content: read back when nothing changed, redone when
the embeddings (or the content hashes) change."""

from __future__ import annotations

import numpy as np
import pandas as pd

from classify import dups
from classify.dups import cached_duplicates


def _counting(monkeypatch) -> list:
    calls = []
    real = dups.find_duplicates

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(dups, "find_duplicates", counting)
    return calls


def _planted(seed=1):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(60, 8)).astype(np.float32)
    X[50] = X[3] * 1.001
    return X, [str(k) for k in range(60)]


def test_the_same_embeddings_are_searched_once(tmp_path, monkeypatch):
    calls = _counting(monkeypatch)
    X, sha = _planted()
    first = cached_duplicates(X, sha, "auto", tmp_path)
    again = cached_duplicates(X.copy(), list(sha), "auto", tmp_path)
    assert len(calls) == 1
    pd.testing.assert_frame_equal(first.pairs, again.pairs)
    assert (3, 50) in set(zip(again.pairs.i, again.pairs.j))


def test_changed_embeddings_are_searched_again(tmp_path, monkeypatch):
    calls = _counting(monkeypatch)
    X, sha = _planted()
    cached_duplicates(X, sha, "auto", tmp_path)
    moved = X.copy()
    moved[50] = np.random.default_rng(9).normal(size=8)  # no longer a copy of row 3...
    moved[20] = moved[7] * 1.001  # ...but row 20 is one of row 7
    found = cached_duplicates(moved, sha, "auto", tmp_path)
    assert len(calls) == 2
    pairs = set(zip(found.pairs.i, found.pairs.j))
    assert (7, 20) in pairs and (3, 50) not in pairs
    assert len(list(tmp_path.glob("*.npz"))) == 1  # only the latest search is kept
