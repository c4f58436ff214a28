"""Stage 2 at scale: exact copies as groups, the graph search beyond the exact one, imported caches."""

from __future__ import annotations

import csv
import json

import numpy as np
import pandas as pd
import pytest

from classify import dups as dupsmod
from classify.dups import find_duplicates


def _copies(n_copies=5000, n_other=200, dim=16, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n_copies + n_other, dim)).astype(np.float32)
    X[:n_copies] = X[0]
    sha = ["copy"] * n_copies + [f"h{k}" for k in range(n_other)]
    return X, sha


def test_five_thousand_copies_are_one_group_with_a_linear_number_of_pairs():
    X, sha = _copies()
    d = find_duplicates(X, sha)
    exact = d.pairs[d.pairs.kind == "exact"]
    assert len(exact) == 4999 and set(exact.i) == {0}  # the first copy with each other one
    groups = d.copy_groups()
    assert groups.group.nunique() == 1 and len(groups) == 5000 and (groups["size"] == 5000).all()
    assert len(np.unique(d.groups()[:5000])) == 1
    assert np.isfinite(d.nn_similarity[:5000]).all()  # copies' neighbour: another content


def test_partners_in_sees_any_copy_and_near_duplicates_of_the_content():
    rng = np.random.default_rng(2)
    X = rng.normal(size=(60, 8)).astype(np.float32)
    X[1] = X[2] = X[0]  # rows 0, 1, 2: one content
    X[10] = X[0] + 0.001  # a near copy of that content
    sha = ["c", "c", "c"] + [f"h{k}" for k in range(3, 60)]
    d = find_duplicates(X, sha, threshold=0.999)
    mask = np.zeros(60, bool)
    mask[2] = True  # only the third copy is "in train"
    got = d.partners_in(mask)
    assert got[0] and got[1] and not got[2]  # 2's other copies are not in the mask
    assert got[10]  # near-duplicate of the content that has a member in the mask
    assert got.sum() == 3


def test_graph_search_finds_what_the_exact_search_finds(monkeypatch):
    rng = np.random.default_rng(5)
    X = rng.normal(size=(1500, 24)).astype(np.float32) + 1.0
    X[1400:1420] = X[:20] + rng.normal(scale=0.01, size=(20, 24))
    sha = [str(k) for k in range(1500)]
    exact = find_duplicates(X, sha)
    monkeypatch.setattr(dupsmod, "EXACT_SEARCH_MAX", 100)  # forces the faiss HNSW graph
    graph = find_duplicates(X, sha)
    assert exact.search == "exact" and graph.search.startswith("hnsw")
    assert graph.threshold == pytest.approx(exact.threshold, abs=1e-4)
    found = set(zip(graph.pairs.i, graph.pairs.j))
    assert {(k, 1400 + k) for k in range(20)} <= found
    assert found == set(zip(exact.pairs.i, exact.pairs.j))
    np.testing.assert_allclose(np.sort(graph.nn_similarity), np.sort(exact.nn_similarity), atol=0.02)


def _imported(tmp_path, X, labels, name="ds"):
    """Imports X as DATASET=name; returns (FEATURES, the settings that read it back)."""
    from classify.importer import import_embeddings

    np.save(tmp_path / "e.npy", X)
    with open(tmp_path / "l.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "label"])
        w.writerows((f"v{k:05d}", lab) for k, lab in enumerate(labels))
    folder = import_embeddings(tmp_path / "e.npy", tmp_path / "l.csv", name, tmp_path / "features",
                               log=lambda *_: None)
    from extract.model import Settings

    assert folder == tmp_path / "features" / name / f"imported-{X.shape[1]}"
    return tmp_path / "features", Settings(backbone="imported", weights="none")


def test_compare_and_audit_on_imported_vectors_with_5000_copies(tmp_path):
    from classify import compare
    from classify.audit import audit

    X, _ = _copies(n_copies=5000, n_other=300)
    X[5000:5150] += 3.0  # class b is shifted, so the heads have something to learn
    labels = ["a"] * 5000 + ["a"] * 150 + ["b"] * 150
    root, settings = _imported(tmp_path, X, labels)
    out = tmp_path / "out"
    logs = []
    from classify import budget

    # 2 GiB for the fits beside what this process holds (its libraries' pages count: in a test
    # process that has loaded TensorFlow they are about a gigabyte)
    gb = round(budget.resident_bytes() / budget.GIB + 2, 1)
    compare(root, settings, out, folds=3, log=logs.append, memory_gb=gb, dataset="ds")
    run = json.loads((out / "run.json").read_text())
    assert run["memory_plan"]["method"] == "exact" and run["memory_plan"]["memory_gb"] == gb
    assert any(m.startswith(f"memory: MEMORY_GB={gb:g};") and "exact RBF kernel" in m for m in logs)
    summary = audit(root, settings, out, in_dir=tmp_path / "no-images", folds=3, log=logs.append,
                    memory_gb=gb, dataset="ds")
    d = summary["duplicates"]
    assert d["exact_groups"] == 1 and d["images_in_exact_groups"] == 5000 and d["largest_exact_group"] == 5000
    groups = pd.read_csv(out / "audit" / "copy_groups.csv")
    assert len(groups) == 5000 and groups.path.is_unique and set(groups.group) == {1}
    table = pd.read_csv(out / "audit" / "duplicates.csv")
    assert (table.kind == "exact").sum() == 10  # bounded, not 12.5 million
    assert summary["memory_plan"]["method"] == "exact"
