"""make import: vectors computed elsewhere -> a cache with the stage-1 contract; every refusal."""

from __future__ import annotations

import csv
import hashlib
import json
import pickle

import numpy as np
import pytest

from conftest import run_cli, run_make
from classify.importer import ImportRefused, import_embeddings
from extract.cache import read_cache


def _write(tmp_path, emb, rows, header=("path", "label", "split")):
    e, l = tmp_path / "emb.npy", tmp_path / "labels.csv"
    np.save(e, emb)
    with open(l, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)
    return e, l


def _rows(n, split=""):
    return [(f"img_{n - i:03d}.jpg", "cat" if i % 2 else "dog", split) for i in range(n)]


def test_import_writes_a_cache_that_stage_1_readers_accept(tmp_path):
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(6, 8))  # float64: converted to float32
    emb[4] = emb[1]  # an identical vector: an exact copy
    e, l = _write(tmp_path, emb, _rows(6))
    folder = import_embeddings(e, l, "mine", tmp_path / "features", log=lambda *_: None)
    assert folder == tmp_path / "features" / "mine" / "imported-8"
    X, rows, meta = read_cache(folder)
    assert X.dtype == np.float32 and X.shape == (6, 8)
    assert [r["path"] for r in rows] == sorted(r[0] for r in _rows(6))  # sorted by path
    for x, r in zip(X, rows):  # each row keeps its own vector and label
        i = [p for p, _, _ in _rows(6)].index(r["path"])
        np.testing.assert_array_equal(x, emb[i].astype(np.float32))
        assert r["label"] == _rows(6)[i][1]
        assert r["sha256"] == hashlib.sha256(emb[i].astype(np.float32).tobytes()).hexdigest()
    shas = [r["sha256"] for r in rows]
    assert len(set(shas)) == 5  # the identical vectors share their hash
    assert meta["backbone"] == "imported" and meta["dim"] == 8 and meta["n"] == 6
    assert meta["input_id"] == "mine" and meta["input"].endswith("labels.csv")
    assert meta["class_names"] == ["cat", "dog"] and meta["computed"] == 6 and meta["rejected"] == 0
    assert (folder / "rejected.csv").read_text().strip() == "path,reason"


@pytest.mark.parametrize("emb, rows, dataset, match", [
    (np.zeros((4, 3, 2), np.float32), _rows(4), "d", r"2-D array .* received shape \(4, 3, 2\)"),
    (np.zeros(4, np.float32), _rows(4), "d", r"2-D array .* received shape \(4,\)"),
    (np.zeros((0, 3), np.float32), [], "d", r"N, D >= 1; received shape \(0, 3\)"),
    (np.arange(12).reshape(4, 3), _rows(4), "d", "floating-point vectors .* received dtype int64"),
    (np.where(np.arange(12).reshape(4, 3) == 7, np.nan, 1.0), _rows(4), "d",
     r"1 rows with NaN or infinite values \(first rows, counting from 0: 2\)"),
    (np.array([[1e300, 0.0], [1.0, 1.0]]), _rows(2), "d", r"counting from 0: 0\); a vector must be finite .*float32's range"),
    (np.ones((5, 3), np.float32), _rows(4), "d", "has 4 rows but EMBEDDINGS has 5 vectors"),
    (np.ones((3, 3), np.float32), [("a", "x", ""), ("b", "", ""), ("c", "y", "")], "d",
     r"1 rows have an empty label \(first data rows, counting from 0: 1\)"),
    (np.ones((3, 3), np.float32), [("a", "x", ""), ("b", "y", ""), ("a", "y", "")], "d",
     r"path 'a' appears twice \(rows 0 and 2"),
    (np.ones((2, 3), np.float32), [("a", "x", "holdout"), ("b", "y", "")], "d",
     r"split must be empty or one of .* \['holdout'\]"),
    (np.ones((2, 3), np.float32), _rows(2), "", "DATASET is required"),
    (np.ones((2, 3), np.float32), _rows(2), "../up", "DATASET must be a folder name"),
])
def test_import_refuses_with_a_message_naming_the_rule(tmp_path, emb, rows, dataset, match):
    e, l = _write(tmp_path, emb, rows)
    with pytest.raises(ImportRefused, match=match):
        import_embeddings(e, l, dataset, tmp_path / "features", log=lambda *_: None)
    assert not (tmp_path / "features").exists() or not any((tmp_path / "features").rglob("*.npy"))


def test_labels_without_a_label_column_are_refused(tmp_path):
    e, l = _write(tmp_path, np.ones((2, 3), np.float32), [("a", "x"), ("b", "y")], header=("path", "class"))
    with pytest.raises(ImportRefused, match=r"LABELS=.*labels.csv must have a header .* missing \['label'\]"):
        import_embeddings(e, l, "d", tmp_path / "features")


def test_a_pickled_or_unreadable_file_is_refused(tmp_path):
    e, l = _write(tmp_path, np.ones((2, 3), np.float32), _rows(2))
    np.save(e, np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    with pytest.raises(ImportRefused, match="cannot be read as a NumPy .npy array"):
        import_embeddings(e, l, "d", tmp_path / "features")


def test_a_file_that_is_not_a_npy_file_is_named_for_what_it_is(tmp_path):
    # a text file named .npy was called "pickled (object) data" (numpy.load's guess), and a .npz
    # archive passed the loader and was refused as "received shape None"
    e, l = _write(tmp_path, np.ones((2, 3), np.float32), _rows(2))
    e.write_text("0.1,0.2,0.3\n0.4,0.5,0.6\n")
    with pytest.raises(ImportRefused) as err:
        import_embeddings(e, l, "d", tmp_path / "features")
    assert "is a text file (it begins '0.1,0.2,0.3')" in str(err.value) and "numpy.loadtxt" in str(err.value)
    assert "pickle" not in str(err.value)
    npz = tmp_path / "emb.npz"
    np.savez(npz, vectors=np.ones((2, 3), np.float32), ids=np.arange(2))
    with pytest.raises(ImportRefused) as err:
        import_embeddings(npz, l, "d", tmp_path / "features")
    assert ".npz (zip) archive holding vectors, ids" in str(err.value) and "None" not in str(err.value)
    with open(e, "wb") as fh:
        pickle.dump(np.ones((2, 3)), fh)
    with pytest.raises(ImportRefused, match="is a Python pickle, not a .npy file; this tool never loads pickles"):
        import_embeddings(e, l, "d", tmp_path / "features")
    e.write_bytes(bytes(range(256)))
    with pytest.raises(ImportRefused, match="does not begin with NumPy's magic bytes"):
        import_embeddings(e, l, "d", tmp_path / "features")
    assert not (tmp_path / "features").exists()


def test_single_class_imported_vectors_are_told_about_their_labels_file(tmp_path):
    # stage 2 told them to add "class folders under IN", which an import has none of
    from classify import DataError, compare
    from classify.audit import audit
    from extract import Settings

    e, l = _write(tmp_path, np.random.default_rng(0).normal(size=(6, 4)), [(f"v{i}", "cat", "") for i in range(6)])
    import_embeddings(e, l, "one", tmp_path / "features", log=lambda *_: None)
    imported = Settings(backbone="imported")
    for run in (compare, audit):
        with pytest.raises(DataError) as err:
            run(tmp_path / "features", imported, tmp_path / "out", dataset="one", log=lambda *_: None)
        text = str(err.value)
        assert "holds one class only ('cat')" in text and "labels.csv" in text and "class folders" not in text
        assert "make import" in text


def test_make_import_writes_the_cache_and_reports_errors(tmp_path):
    e, l = _write(tmp_path, np.random.default_rng(1).normal(size=(4, 5)).astype(np.float32), _rows(4, "train"))
    feats = tmp_path / "features"
    r = run_make("import", f"EMBEDDINGS={e}", f"LABELS={l}", "DATASET=ext", f"FEATURES={feats}")
    assert r.returncode == 0, r.stderr
    assert "imported 4 vectors of 5 dimensions" in r.stdout
    meta = json.loads((feats / "ext" / "imported-5" / "meta.json").read_text())
    assert meta["backbone"] == "imported" and meta["input_id"] == "ext"
    bad = run_cli("classify.importer", "--embeddings", e, "--labels", l, "--features", feats)
    assert bad.returncode == 2 and "DATASET is required" in bad.stderr
