"""make audit: near-duplicates (block-wise vs brute force), label suspects, leakage-aware scores."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from conftest import run_make, shape_image, write_class_folder
from helpers import run_main

from classify.dups import auto_threshold, cached_duplicates, content_codes, find_duplicates, \
    group_roles, nearest_k, nearest_neighbours, pairs_above, share_warning, unit_rows

SETTINGS = dict(weights="none", size=64)
PLANTED = 5
MOVED = 6


def _extract(in_dir, features_dir):
    import extract

    extract.extract_features(in_dir, features_dir, extract.Settings(**SETTINGS), progress=False)


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """train/ (20 per class) and test/ (6 per class) shapes, plus 5 training images copied into
    test/ resized by 25% and re-encoded as JPEG. Returns (in, features, planted (train, copy) paths)."""
    root = tmp_path_factory.mktemp("planted")
    in_dir, feats = root / "in", root / "features"
    for split, n, base in (("train", 20, 0), ("test", 6, 500)):
        for c, kind in enumerate(("ellipse", "rect")):
            folder = in_dir / split / kind
            folder.mkdir(parents=True)
            for i in range(n):
                shape_image(base + 100 * c + i, kind).save(folder / f"s_{i:03d}.png")
    pairs = []
    for kind, i in (("ellipse", 2), ("ellipse", 11), ("ellipse", 17), ("rect", 5), ("rect", 14)):
        src = f"train/{kind}/s_{i:03d}.png"
        dst = f"test/{kind}/copy_{i:03d}.jpg"
        with Image.open(in_dir / src) as im:
            im.convert("RGB").resize((48, 48), Image.BILINEAR).save(in_dir / dst, quality=85)
        pairs.append((src, dst))
    _extract(in_dir, feats)
    return in_dir, feats, pairs


@pytest.fixture(scope="module")
def mislabelled(tmp_path_factory):
    """Red vs blue, 24 each, no split folders; 6 images moved into the other class's folder."""
    root = tmp_path_factory.mktemp("mislabelled")
    in_dir, feats = root / "in", root / "features"
    write_class_folder(in_dir, 24)
    moved = []
    for src_cls, dst_cls, idx in (("red", "blue", (1, 8, 15)), ("blue", "red", (4, 11, 20))):
        for i in idx:
            dst = f"{dst_cls}/moved_{src_cls}_{i:03d}.png"
            shutil.move(in_dir / src_cls / f"img_{i:03d}.png", in_dir / dst)
            moved.append(dst)
    _extract(in_dir, feats)
    return in_dir, feats, moved


def _settings():
    from extract import Settings

    return Settings(**SETTINGS)


# --- the block-wise search against brute force -------------------------------------------------

def _brute_force(X, sha, threshold):
    Z = X / np.linalg.norm(X, axis=1, keepdims=True)
    S = Z @ Z.T
    same = np.asarray(sha)[:, None] == np.asarray(sha)[None, :]
    S_nn = np.where(same, -np.inf, S)
    near = {(i, j) for i, j in zip(*np.nonzero(np.triu(S >= threshold, 1))) if not same[i, j]}
    exact = {(i, j) for i, j in zip(*np.nonzero(np.triu(same, 1)))}
    return S_nn.max(1), near, exact


@pytest.mark.parametrize("block", [1, 7, 64, 4096])
def test_blockwise_search_matches_brute_force(block):
    rng = np.random.default_rng(3)
    X = rng.normal(size=(150, 12)).astype(np.float32)
    X[100:110] = X[:10] + rng.normal(scale=0.05, size=(10, 12))  # near copies
    X[140] = X[7]  # an exact copy (same content hash below)
    sha = [f"h{i}" for i in range(150)]
    sha[140] = sha[7]
    threshold = 0.95
    nn_ref, near_ref, exact_ref = _brute_force(X.astype(np.float64), sha, threshold)

    Z, codes = unit_rows(X), content_codes(sha)
    np.testing.assert_allclose(nearest_neighbours(Z, codes, block=block), nn_ref, atol=1e-5)
    i, j, s = pairs_above(Z, codes, threshold, block=block)
    assert set(zip(i.tolist(), j.tolist())) == near_ref
    assert len(near_ref) >= 10

    dups = find_duplicates(X, sha, threshold=threshold, block=block)
    got = dups.pairs
    # near pairs are listed between distinct contents, by their first row (140 is a copy of 7)
    assert set(zip(got.i[got.kind == "near"], got.j[got.kind == "near"])) == {
        p for p in near_ref if 140 not in p}
    assert set(zip(got.i[got.kind == "exact"], got.j[got.kind == "exact"])) == exact_ref
    assert (np.diff(got.similarity.to_numpy()) <= 0).all()  # highest first
    # auto: the same threshold whatever the block size, from the nearest neighbours of each
    # distinct content (140 is a copy of 7: its content counts once)
    S = X / np.linalg.norm(X, axis=1, keepdims=True)
    S = np.delete(np.delete(S @ S.T, 140, 0), 140, 1)
    np.fill_diagonal(S, -np.inf)
    knn = -np.sort(-S, axis=1)[:, :7]
    np.testing.assert_allclose(nearest_k(unit_rows(np.delete(X, 140, 0)), np.arange(149), 7, block=block),
                               knn, atol=1e-5)
    assert find_duplicates(X, sha, block=block).threshold == pytest.approx(auto_threshold(knn)[0], abs=1e-5)


def test_auto_threshold_separates_planted_pairs_from_random_data():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(400, 32)).astype(np.float32) + 5.0  # all similarities squeezed towards 1
    X[300:305] = X[:5] + rng.normal(scale=0.02, size=(5, 32))
    dups = find_duplicates(X, [str(k) for k in range(400)])
    found = set(zip(dups.pairs.i, dups.pairs.j))
    assert {(k, 300 + k) for k in range(5)} <= found
    assert len(found) <= 7, dups.pairs
    assert dups.threshold > 0.99  # relative to the data: far above any fixed ImageNet-style value


def planted_copies(sources: int, copies: int = 4, singles: int = 0, dim: int = 32, noise: float = 0.1,
                   seed: int = 0):
    """``sources`` random vectors with ``copies`` noisy near-copies each (the source itself is not
    kept), then ``singles`` vectors without copies. Returns (X, the cluster of each row)."""
    rng = np.random.default_rng(seed)
    X = np.repeat(rng.normal(size=(sources, dim)), copies, 0)
    X += rng.normal(scale=noise, size=X.shape)
    X = np.vstack([X, rng.normal(size=(singles, dim))]).astype(np.float32)
    return X, np.r_[np.repeat(np.arange(sources), copies), sources + np.arange(singles)]


@pytest.mark.parametrize("sources, singles", [(100, 0), (100, 200), (100, 400), (30, 600)])
def test_auto_threshold_finds_near_copies_when_most_images_have_them(sources, singles):
    # With every image one of 4 noisy copies, the nearest neighbours were all copies: the cut fell
    # among the copies' own distances and found 1 of 600 planted pairs (0 of 400 with a third of
    # the images single)
    X, cluster = planted_copies(sources, singles=singles)
    dups = find_duplicates(X, [str(k) for k in range(len(X))])
    same = cluster[dups.pairs.i.to_numpy()] == cluster[dups.pairs.j.to_numpy()]
    planted = sources * 4 * 3 // 2
    assert same.sum() >= 0.95 * planted and (~same).sum() == 0, (same.sum(), (~same).sum(), dups.rule)
    assert dups.basis["past_near_copies"] == sources * 4 and dups.basis["distinct_vectors"] == len(X)
    assert "past its own near-copies" in dups.rule
    counts = dups.summary()
    assert counts["near_pairs"] == planted and counts["images_with_near_duplicate"] == sources * 4
    warned = share_warning(dups)
    assert (warned is not None) == (sources * 4 > len(X) / 2)  # more than half: said to be unusual
    if warned:
        assert f"{sources * 4:,} of {len(X):,} images" in warned and "DUP_THRESHOLD" in warned


def test_auto_threshold_is_the_nearest_neighbour_rule_on_data_without_copies():
    X, _ = planted_copies(0, singles=800)
    knn = find_duplicates(X, [str(k) for k in range(len(X))])
    assert knn.basis["past_near_copies"] == 0 and len(knn.pairs) == 0
    assert knn.threshold == pytest.approx(auto_threshold(knn.nn_similarity)[0], abs=1e-6)


def test_cached_search_gives_the_same_answer(tmp_path):
    rng = np.random.default_rng(1)
    X = rng.normal(size=(60, 8)).astype(np.float32)
    X[50] = X[3] * 1.001
    sha = [str(k) for k in range(60)]
    first = cached_duplicates(X, sha, "auto", tmp_path)
    assert len(list(tmp_path.glob("*.npz"))) == 1
    again = cached_duplicates(X, sha, "auto", tmp_path)
    pd.testing.assert_frame_equal(first.pairs, again.pairs)
    assert again.threshold == first.threshold and (3, 50) in set(zip(again.pairs.i, again.pairs.j))
    X[0] += 1  # other embeddings: a new search, the old file replaced
    cached_duplicates(X, sha, "auto", tmp_path)
    assert len(list(tmp_path.glob("*.npz"))) == 1


def test_threshold_rejects_nonsense():
    with pytest.raises(ValueError, match="DUP_THRESHOLD"):
        find_duplicates(np.ones((3, 2)), ["a", "b", "c"], threshold="high")


def test_group_roles_keeps_clusters_on_one_side():
    man = pd.DataFrame({"path": [f"c/{k}.png" for k in range(20)], "label": ["c"] * 10 + ["d"] * 10,
                        "split": [""] * 20, "sha256": [f"{k:064x}" for k in range(20)]})
    cluster = np.array([0, 0, 1, 1, 1, 2, 3, 4, 5, 6] + list(range(7, 17)))
    for seed in range(20):
        new, moved = group_roles(man, cluster, 0.3, seed=seed)
        for c in np.unique(cluster):
            assert new[cluster == c].nunique() == 1
        assert (new[man.label == "c"] == "eval").sum() == 3 == (new[man.label == "d"] == "eval").sum()
        assert 0 <= moved <= 6
    # split folders are the user's: left alone
    man_split = man.assign(split=["train"] * 16 + ["test"] * 4)
    assert group_roles(man_split, cluster, 0.3, seed=42)[1] == 0


# --- on extracted features (WEIGHTS=none) -----------------------------------------------------

def test_make_audit_finds_resized_copies_across_splits(planted, tmp_path):
    in_dir, feats, pairs = planted
    out = tmp_path / "out"
    proc = run_make("audit", f"IN={in_dir}", f"FEATURES={feats}", f"OUT={out}", "WEIGHTS=none",
                    "SIZE=64", "HEADS=logreg,svm", "FOLDS=3", "JOBS=1")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    audit = out / "audit"
    dup = pd.read_csv(audit / "duplicates.csv", keep_default_na=False)
    for col in ("path_a", "label_a", "split_a", "path_b", "label_b", "split_b", "similarity",
                "cross_split", "label_disagree"):
        assert col in dup.columns
    as_set = [frozenset(p) for p in zip(dup.path_a, dup.path_b)]
    wanted = [frozenset(p) for p in pairs]
    cross = {s for s, c in zip(as_set, dup.cross_split) if c == 1}
    assert sum(w in cross for w in wanted) >= 4, dup.head(10)
    assert sum(w in as_set[:PLANTED] for w in wanted) >= 4, dup.head(10)
    assert (dup.similarity.diff().dropna() <= 0).all()

    summary = json.loads((audit / "summary.json").read_text())
    assert summary["duplicates"]["cross_split"] == int(dup.cross_split.sum())
    assert summary["duplicates"]["label_disagree"] == int(dup.label_disagree.sum())
    assert 0 < summary["dup_threshold"] < 1 and "auto" in summary["dup_threshold_rule"]
    for head in ("logreg", "svm"):
        s = summary["scores"][head]
        for key in ("accuracy", "accuracy_no_dups", "cv_mean", "cv_mean_groups"):
            assert 0 <= s[key] <= 1
        assert s["n_eval_no_dups"] == s["n_eval"] - summary["duplicates"]["eval_with_train_duplicate"]
    assert summary["duplicates"]["eval_with_train_duplicate"] >= 4
    for name in ("duplicates.png", "label_suspects.png", "label_suspects.csv"):
        assert (audit / name).stat().st_size > 0


def test_compare_adds_leakage_aware_score_and_groups(planted, tmp_path):
    in_dir, feats, pairs = planted
    common = ["--in", in_dir, "--features", feats, "--weights", "none", "--size", "64",
              "--heads", "logreg", "--folds", "3", "--jobs", "1", "--tune", "0", "--repeats", "1"]
    proc = run_main("classify", "compare", *common, "--out", tmp_path / "plain")
    assert proc.returncode == 0, proc.stderr
    proc = run_main("classify", "compare", *common, "--out", tmp_path / "groups", "--groups", "dups")
    assert proc.returncode == 0, proc.stderr
    from classify.data import assign_split, load_features

    f = load_features(feats, _settings(), in_dir=str(in_dir))
    role = assign_split(f.manifest, 0.2, 42)[0].to_numpy()
    dups = find_duplicates(f.X, f.manifest.sha256)
    leaked_paths = set(f.manifest.path[dups.partners_in(role == "train") & (role == "eval")])
    assert len(leaked_paths & {dst for _, dst in pairs}) >= 4
    for sub in ("plain", "groups"):
        comp = pd.read_csv(tmp_path / sub / "comparison.csv")
        for col in ("head", "accuracy", "balanced_accuracy", "macro_f1", "cv_mean", "cv_std",
                    "fit_seconds", "accuracy_no_dups", "n_eval_no_dups"):
            assert col in comp.columns
        assert list(comp.columns[-2:]) == ["fit_seconds", "cv_seconds"]
        row = comp.iloc[0]
        run = json.loads((tmp_path / sub / "run.json").read_text())
        assert run["duplicates"]["eval_with_train_duplicate"] == len(leaked_paths)
        assert row.n_eval_no_dups == row.n_eval - len(leaked_paths)
        # the same score recomputed from predictions.csv on the images without a train duplicate
        pred = pd.read_csv(tmp_path / sub / "predictions.csv")
        clean = pred[~pred.path.isin(leaked_paths)]
        assert row.accuracy_no_dups == pytest.approx((clean.label == clean.logreg).mean())
    assert run["groups"] == "dups"
    bad = run_main("classify", "compare", *common, "--out", tmp_path / "bad", "--groups", "all")
    assert bad.returncode != 0 and "dups" in bad.stderr


def test_label_suspects_rank_moved_images(mislabelled, tmp_path):
    from classify.audit import audit

    in_dir, feats, moved = mislabelled
    summary = audit(feats, _settings(), tmp_path, in_dir=in_dir, heads="logreg", folds=5, jobs=1,
                    log=lambda *a: None)
    sus = pd.read_csv(tmp_path / "audit" / "label_suspects.csv")
    assert list(sus["rank"][:3]) == [1, 2, 3]
    top = set(sus.path[:12])
    assert sum(m in top for m in moved) >= 4, sus.head(12)
    assert summary["label_suspects"]["count"] == len(sus)
    # the suggested label of a moved image is the class it came from
    hits = sus[sus.path.isin(moved)]
    assert (hits.suggested_label == hits.path.str.extract(r"moved_(\w+)_")[0]).all()


def test_contact_sheets_say_when_images_are_missing(tmp_path):
    from classify.audit import contact_sheets

    table = pd.DataFrame({"path_a": ["a/1.png"], "label_a": ["a"], "role_a": ["train"],
                          "path_b": ["b/2.png"], "label_b": ["b"], "role_b": ["eval"],
                          "similarity": [0.999], "kind": ["near"], "cross_split": [1],
                          "label_disagree": [1]})
    sus = pd.DataFrame({"rank": [1], "path": ["a/1.png"], "label": ["a"], "suggested_label": ["b"],
                        "p_suggested": [0.9]})
    messages = []
    names = contact_sheets(tmp_path / "missing", tmp_path, table, sus, 12, log=messages.append)
    assert names == ["duplicates.png", "label_suspects.png"]
    assert all((tmp_path / n).stat().st_size > 0 for n in names)
    assert any("not available" in m for m in messages)


# --- the audit beside a compare run: same settings, same scores, plain words ------------------

@pytest.mark.parametrize("tune", ["0", "auto"])
def test_the_audit_uses_the_compare_runs_settings_and_says_how_its_scores_relate(mislabelled, tmp_path, tune):
    """make audit printed logreg 0.7190 where compare said 0.7059, without saying why: it fitted
    fixed settings on one repetition of the folds while compare tuned and repeated them."""
    import classify
    from classify.audit import audit
    from classify.heads import format_settings

    in_dir, feats, _ = mislabelled
    out = tmp_path / "out"
    classify.compare(feats, _settings(), out, heads="logreg,mlp", folds=3, jobs=1, in_dir=in_dir,
                     tune=tune, log=lambda *a: None)
    comp = pd.read_csv(out / "comparison.csv").set_index("head")
    run = json.loads((out / "run.json").read_text())
    summary = audit(feats, _settings(), out, in_dir=in_dir, heads="logreg,mlp", folds=3, jobs=1,
                    log=lambda *a: None)
    for head in ("logreg", "mlp"):
        s = summary["scores"][head]
        assert s["accuracy"] == pytest.approx(comp.loc[head, "accuracy"])  # the same split and final model
        assert summary["heads_settings"][head] == format_settings(run["tuning"]["chosen"][head])
        assert s["compare_cv_mean"] == pytest.approx(comp.loc[head, "cv_mean"])
    agree = summary["in_words"][-1]
    if tune == "0":  # fixed settings in both: the very same folds and fits
        for head in ("logreg", "mlp"):
            assert summary["scores"][head]["cv_mean"] == pytest.approx(comp.loc[head, "cv_mean"], abs=1e-9)
        assert agree.startswith("The audit's CV scores are compare's"), agree
    else:
        assert run["tuning"]["mode"] == "nested"
        assert ("are compare's" in agree or "because compare tuned each head's settings inside each fold"
                in agree), agree


def test_the_audit_summary_is_in_plain_words(mislabelled, tmp_path):
    """'label suspects: 125 of 398 images' said neither what a suspect is nor how many the heads'
    own errors give."""
    from classify.audit import audit

    in_dir, feats, _ = mislabelled
    summary = audit(feats, _settings(), tmp_path, in_dir=in_dir, heads="logreg", folds=3, jobs=1,
                    log=lambda *a: None)
    s = summary["label_suspects"]
    words = " ".join(summary["in_words"])
    assert f"Label suspects: {s['count']} images of {s['checked']} whose label the cross-validated " \
           "predictions of logreg contradict" in words
    assert f"contradicts about {s['expected_by_chance']} (± {s['expected_sd']}) of {s['checked']} labels " \
           "even when every label is right" in words
    cv = summary["scores"]["logreg"]["cv_mean"]
    assert s["expected_by_chance"] == round(s["checked"] * (1 - cv))


def test_audit_messages_count_in_the_right_number(tmp_path, monkeypatch, capsys):
    """'1 duplicate pairs', '1 errors'."""
    from classify import audit as A
    from classify.suspects import suspects_in_words

    d = {"pairs": 1, "exact": 1, "near": 0, "cross_split": 1, "label_disagree": 1,
         "eval_with_train_duplicate": 1, "exact_groups": 1, "images_in_exact_groups": 2,
         "largest_exact_group": 2}
    text = A.duplicates_in_words(d, 0.99, "auto")
    assert "1 duplicate pair listed" in text and "1 pair across" in text and "1 evaluated image with" in text
    assert "pairs" not in text.split("listed")[0]
    assert "1 image of 10 whose" in suspects_in_words(1, 10, "logreg", 0.9, 1)
    summary = {"scores": {"logreg": {"accuracy": 0.9, "accuracy_no_dups": 0.9, "cv_mean": 0.9,
                                     "cv_mean_groups": 0.9}},
               "heads_settings": {"rule": "fixed", "logreg": "C=1"}, "in_words": [text], "files": []}
    monkeypatch.setattr(A, "audit", lambda *a, **k: summary)
    assert A.main(["--out", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    assert "1 duplicate pair listed" in printed and "1 duplicate pairs" not in printed
    assert max(len(line) for line in A.score_table(summary).splitlines()) <= 100


def test_make_audit_takes_its_settings_from_the_run_in_out(planted, tmp_path):
    """Every command needed every setting again: `make audit OUT=<out>` must find the run's
    input, cache and settings, and refuse one that conflicts, naming both values."""
    in_dir, feats, _ = planted
    out = tmp_path / "out"
    proc = run_main("classify", "compare", "--in", in_dir, "--features", feats, "--out", out,
                    "--weights", "none", "--size", "64", "--heads", "logreg", "--folds", "3",
                    "--jobs", "1", "--tune", "0")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    proc = run_make("audit", f"OUT={out}", "JOBS=1")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"IN={in_dir}" in proc.stdout and "WEIGHTS=none SIZE=64" in proc.stdout
    assert "classes (2): ellipse 29, rect 28" in proc.stdout and "RANDOM WEIGHTS" in proc.stdout
    assert "The audit's CV scores are compare's" in proc.stdout
    summary = json.loads((out / "audit" / "summary.json").read_text())
    assert set(summary["scores"]) == {"logreg"} and summary["folds"] == 3
    proc = run_make("audit", f"OUT={out}", "SIZE=128")
    assert proc.returncode != 0
    assert "SIZE=128 was given" in proc.stderr and "SIZE=64" in proc.stderr, proc.stderr
