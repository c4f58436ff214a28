"""``make audit``: duplicates across splits, suspicious labels and leakage-aware scores.

``python -m classify.audit [options]`` reads the cached embeddings (no TensorFlow) and writes
under ``OUT/audit/``:

- ``duplicates.csv``: every near-duplicate pair and, per group of exact copies, its first
  ``EXACT_PAIRS_LISTED`` pairs (the group's first image with another copy): both paths, labels,
  splits and roles, the cosine similarity, and whether the pair crosses train/eval or its labels
  disagree;
- ``copy_groups.csv``: every group of exact copies, each member listed once (largest group first);
- ``label_suspects.csv``: images whose label the cross-validated (out-of-fold) probabilities of
  a head contradict, ranked by cleanlab's label-quality score (worst first; :mod:`classify.suspects`);
- ``summary.json``: the counts, the threshold and how it was chosen, per head the settings used
  and the plain and the leakage-aware scores, and ``in_words``: what they mean, in sentences;
- ``duplicates.png``, ``label_suspects.png``: contact sheets of the top pairs and suspects
  (:mod:`classify.sheets`).

When OUT holds a ``make compare`` run of the same cache, the audit uses its split
(``split.csv``), its repeats and the settings it chose for each head (``run.json``), so its
plain scores are compare's, or it says why they differ (settings tuned inside each fold).
IN, FEATURES and the extraction settings default to the run's (:mod:`classify.remembered`).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from .cli import add_features_args, add_heads_args, engine, settings_from
from extract.notices import plural
from .sheets import contact_sheets  # noqa: F401  (part of the audit's API)
from .suspects import PROBA_HEADS, label_suspects, out_of_fold_probabilities  # noqa: F401

TOP = 12  # pairs and suspects shown on the contact sheets
EXACT_PAIRS_LISTED = 10  # pairs per exact-copy group in duplicates.csv (all members: copy_groups.csv)


# --------------------------------------------------------------------------- the compare run

def compare_run(out_dir, feats, log=print) -> dict | None:
    """``OUT/run.json`` when it is a compare run of the cache ``feats``; None otherwise (said)."""
    from .remembered import read_run

    run = read_run(out_dir)
    if run is None:
        return None
    folder = run.get("features_folder")
    if not folder or Path(folder).resolve() != Path(feats.folder).resolve():
        log(f"note: the compare run in {out_dir} is of another cache ({folder}), not of {feats.folder}: "
            "the audit uses its own split and the heads' fixed settings")
        return None
    return run


def heads_as_compared(heads: str, seed: int, run: dict | None) -> tuple[dict, dict, str, str]:
    """The audit's heads: with the settings the compare run chose for each (its ``params``),
    else the fixed ones.

    Returns:
        ({head: unfitted model}, {head: its settings in words}, how they were chosen, and why
        compare's CV scores may differ from the audit's, in words: "" when they should not).
    """
    from .heads import FIXED, fixed_head, format_settings, select_heads

    models = select_heads(heads, seed)
    tuning = (run or {}).get("tuning") or {}
    chosen = tuning.get("chosen") or {}
    mode = tuning.get("mode", "off")
    if run is None or mode == "off" or not chosen:
        rule = "the fixed ones of TUNE=0" + ("" if run is None else ", as in the compare run")
        fixed = {h: {k.split("__", 1)[1]: list(v) if isinstance(v, tuple) else v for k, v in FIXED.items()
                     if k.startswith(m.steps[-1][0] + "__")} for h, m in models.items()}
        return models, {h: format_settings(chosen.get(h) or fixed[h]) for h in models}, rule, ""
    models = {h: fixed_head(h, seed, chosen[h]) if h in chosen else m for h, m in models.items()}
    rule = "those compare chose for its final models (the params column), fixed in every fold"
    reason = ("compare tuned each head's settings inside each fold (nested), the audit fixes the final "
              "ones" if mode == "nested" else
              "compare scaled the SVM's gamma on each fold's own rows, the audit fixes the final value"
              if "svm" in models else "")
    return models, {h: format_settings(chosen.get(h, {})) for h in models}, rule, reason


def roles_of(man: pd.DataFrame, test_size: float, seed: int, run: dict | None, out_dir,
             cluster) -> tuple[np.ndarray, str]:
    """Each image's role (train, eval, tune or unused): the compare run's (``split.csv``) when it
    covers every image, else the rule of ``make compare`` (:func:`classify.data.assign_split`)."""
    from extract.atomic import read_csv_rows

    from .data import assign_split

    units = cluster if (run or {}).get("groups") == "dups" else None
    own, rule = assign_split(man, test_size, seed, units=units)
    own = own.replace("", "unused").to_numpy()
    if run is None:
        return own, rule
    try:
        by_path = {r["path"]: r["role"] for r in read_csv_rows(Path(out_dir) / "split.csv")}
    except (OSError, ValueError, KeyError):
        return own, rule
    paths = man["path"].astype(str).to_numpy()
    if not all(p in by_path for p in paths):
        return own, rule
    role = np.array([by_path[p] for p in paths], dtype=object)
    role[(role == "unused") & (own == "tune")] = "tune"  # the validation folder, for the suspects
    return role.astype(str), str(run.get("split_rule") or rule) + " (the compare run's split.csv)"


# --------------------------------------------------------------------------- scores

def _fold_sets(y, groups, folds: int, seed: int, repeats: int) -> list:
    from .data import cv_folds

    quiet = lambda *_: None  # noqa: E731
    return [f for r in range(repeats) for f in cv_folds(y, groups, folds, seed + r, log=quiet)[0]]


def leakage_scores(models: dict, X, y, role: np.ndarray, leaked: np.ndarray, cluster: np.ndarray,
                   content: np.ndarray, folds: int, seed: int, jobs: int, repeats: int = 1) -> dict:
    """Per head: accuracy on the evaluated images, all and without a train duplicate; the CV
    score (balanced accuracy, as in ``make compare``) on the training part with folds that keep
    exact copies together (``content``; compare's folds) and with folds that keep duplicate
    clusters together (``cluster``; then the splits inside each fit keep them together too),
    each over ``repeats`` fold assignments (seeds ``seed``, ``seed + 1``, ... as compare's)."""
    import joblib
    from sklearn.base import clone

    from .compare import _fit

    train_idx = np.flatnonzero(role == "train")
    eval_idx = np.flatnonzero(role == "eval")
    yt = y[train_idx]
    splits = {"plain": _fold_sets(yt, content[train_idx], folds, seed, repeats),
              "groups": _fold_sets(yt, cluster[train_idx], folds, seed, repeats)}
    tasks = []
    for name, model in models.items():
        tasks.append((name, ("fit", -1), clone(model), train_idx, None))
        for kind, fold_list in splits.items():
            tasks += [(name, (kind, k), clone(model), train_idx[tr], train_idx[te])
                      for k, (tr, te) in enumerate(fold_list)]
    results = joblib.Parallel(n_jobs=min(jobs, len(tasks)))(
        joblib.delayed(_fit)(name, key, model, X, y, tr, te, cluster if key[0] == "groups" else None)
        for name, key, model, tr, te in tasks)
    out = {name: {} for name in models}
    cv = {(name, kind): [] for name in models for kind in splits}
    for name, (kind, k), value, _, _ in results:
        if kind == "fit":
            out[name].update(_eval_scores(value, X, y, eval_idx, leaked))
        else:
            cv[(name, kind)].append((k, value))
    n_folds = {kind: len(f) // max(repeats, 1) for kind, f in splits.items()}
    for (name, kind), vals in cv.items():
        acc = np.array([v for _, v in sorted(vals)])
        suffix = "" if kind == "plain" else "_groups"
        out[name].update({f"cv_mean{suffix}": float(acc.mean()), f"cv_std{suffix}": float(acc.std()),
                          f"folds{suffix}": n_folds[kind]})
    return out


def _eval_scores(model, X, y, eval_idx, leaked) -> dict:
    from sklearn.metrics import accuracy_score

    pred = model.predict(X[eval_idx])
    keep = ~leaked[eval_idx]
    return {"accuracy": float(accuracy_score(y[eval_idx], pred)),
            "accuracy_no_dups": float(accuracy_score(y[eval_idx][keep], pred[keep])) if keep.any() else None,
            "n_eval": int(len(eval_idx)), "n_eval_no_dups": int(keep.sum())}


def agreement(scores: dict, out_dir, run: dict | None, reason: str) -> str | None:
    """One sentence comparing the audit's plain CV scores with compare's (``comparison.csv``),
    with ``reason`` when they differ; adds ``compare_cv_mean`` and ``compare_accuracy`` to
    ``scores``."""
    if run is None or not (Path(out_dir) / "comparison.csv").is_file():
        return None
    table = pd.read_csv(Path(out_dir) / "comparison.csv")
    col = "cv_mean_groups" if run.get("groups") == "dups" else "cv_mean"
    pairs = []
    for row in table.itertuples(index=False):
        if row.head in scores:
            scores[row.head].update(compare_cv_mean=float(row.cv_mean), compare_accuracy=float(row.accuracy))
            pairs.append((row.head, float(row.cv_mean), scores[row.head][col]))
    if not pairs:
        return None
    if all(abs(a - b) < 5e-7 for _, a, b in pairs):
        return (f"The audit's CV scores are compare's ({', '.join(f'{h} {a:.4f}' for h, a, _ in pairs)}): "
                "the same split, folds and settings.")
    shown = "; ".join(f"{h} {b:.4f} here, {a:.4f} in compare" for h, a, b in pairs)
    why = reason or "the split, the folds or the settings differ from the compare run's (see the notes above)"
    return (f"The audit's CV scores differ from compare's ({shown}) because {why}. Compare's are the "
            "reported scores; the audit's plain and leakage-aware scores are computed alike, so their "
            "difference is the leakage.")


def listed_pairs(pairs: pd.DataFrame) -> pd.DataFrame:
    """The pairs for ``duplicates.csv``: every near pair, and ``EXACT_PAIRS_LISTED`` per copy group.

    Exact pairs are a group's first row (``i``) with each other member, so they are grouped by
    ``i``; the table stays bounded however many copies one image has.
    """
    exact = pairs["kind"] == "exact"
    rank = pairs[exact].groupby("i").cumcount()
    keep = ~exact
    keep[rank.index[rank.to_numpy() < EXACT_PAIRS_LISTED]] = True
    return pairs[keep]


def copy_group_table(dups, man: pd.DataFrame, role: np.ndarray) -> pd.DataFrame:
    """``copy_groups.csv``: ``group,size,path,label,split,role``, one row per copy, largest group first."""
    g = dups.copy_groups()
    r = g["row"].to_numpy(int)
    return pd.DataFrame({"group": g["group"].to_numpy(), "size": g["size"].to_numpy(),
                         **{c: man[c].astype(str).to_numpy()[r] for c in ("path", "label", "split")},
                         "role": role[r]})


def copy_group_counts(groups: pd.DataFrame) -> dict:
    """Summary counts of the copy groups: how many, images in them, the largest, across train/eval."""
    roles = groups.groupby("group")["role"].agg(lambda v: {"train", "eval"} <= set(v))
    return {"exact_groups": int(groups["group"].nunique()), "images_in_exact_groups": int(len(groups)),
            "largest_exact_group": int(groups["size"].max()) if len(groups) else 0,
            "exact_groups_across_train_eval": int(roles.astype(bool).sum())}


def pair_table(dups, man: pd.DataFrame, role: np.ndarray) -> pd.DataFrame:
    """``duplicates.csv``: the listed pairs (:func:`listed_pairs`) with both sides' path, label,
    split and role, the similarity, and whether the pair crosses train/eval or its labels differ."""
    p = listed_pairs(dups.pairs)
    i, j = p["i"].to_numpy(int), p["j"].to_numpy(int)
    col = {c: man[c].astype(str).to_numpy() for c in ("path", "label", "split")}
    cross = (((role[i] == "train") & (role[j] == "eval")) | ((role[i] == "eval") & (role[j] == "train")))
    return pd.DataFrame({
        "path_a": col["path"][i], "label_a": col["label"][i], "split_a": col["split"][i], "role_a": role[i],
        "path_b": col["path"][j], "label_b": col["label"][j], "split_b": col["split"][j], "role_b": role[j],
        "similarity": np.round(p["similarity"].to_numpy(float), 6), "kind": p["kind"].to_numpy(),
        "cross_split": cross.astype(int), "label_disagree": (col["label"][i] != col["label"][j]).astype(int),
    })


def duplicates_summary(dups, table: pd.DataFrame, counts: dict, leaked: np.ndarray, cluster) -> dict:
    """The ``duplicates`` block of summary.json."""
    cross, disagree = table["cross_split"].to_numpy(bool), table["label_disagree"].to_numpy(bool)
    sizes = np.bincount(cluster)
    return {
        "pairs": int(len(table)), "exact": int((table["kind"] == "exact").sum()),
        "near": int((table["kind"] == "near").sum()), "cross_split": int(cross.sum()),
        "label_disagree": int(disagree.sum()), "cross_split_label_disagree": int((cross & disagree).sum()),
        "clusters": int((sizes > 1).sum()), "images_in_clusters": int(sizes[sizes > 1].sum()),
        "eval_with_train_duplicate": int(leaked.sum()),
        **counts, "exact_pairs_listed_per_group": EXACT_PAIRS_LISTED, "search": dups.search,
    }


def duplicates_in_words(d: dict, threshold, setting) -> str:
    """The duplicate findings as one sentence, counts with their nouns in the right number."""
    text = (f"Duplicates: {plural(d['pairs'], 'duplicate pair')} listed ({d['exact']:,} of exact copies, "
            f"{d['near']:,} of near-duplicates); {plural(d['cross_split'], 'pair')} across the "
            f"training and evaluated images, {plural(d['label_disagree'], 'pair')} whose labels differ; "
            f"{plural(d['eval_with_train_duplicate'], 'evaluated image')} with a duplicate in training "
            "(accuracy_no_dups leaves them out).")
    if d["exact_groups"]:
        text += (f" {plural(d['exact_groups'], 'group')} of exact copies hold "
                 f"{plural(d['images_in_exact_groups'], 'image')} (the largest {d['largest_exact_group']:,}).")
    if threshold is not None:
        how = "chosen from the data" if str(setting) == "auto" else "DUP_THRESHOLD"
        text += f" Near-duplicates: cosine similarity at least {threshold:.5f} ({how})."
    return text


# --------------------------------------------------------------------------- the audit

def _load(features_dir, settings, in_dir, fallback_none, dataset, stale, log):
    from .data import check_input, features_command, load_features, require_two_classes

    feats = load_features(features_dir, settings, in_dir=str(in_dir), fallback_none=fallback_none,
                          dataset=dataset)
    check_input(feats, in_dir, features_command(settings, str(in_dir), str(features_dir), dataset), stale, log,
                dataset)
    require_two_classes(feats, "the audit")
    return feats


def notices_of(feats) -> list[str]:
    """The classes with their counts, the split-like-name warning, the random-weights banner."""
    from .remembered import notices

    counts = feats.manifest["label"].value_counts()
    counts = dict(sorted(counts.items(), key=lambda kv: (-kv[1], str(kv[0]))))
    return notices(counts, feats.meta.get("weights"), feats.meta.get("weights_fallback"))


def _suspects(models, seed, X, y, man, role, cluster, folds, jobs, scores, log):
    """Label suspects from the out-of-fold probabilities of the first head that has them, and
    their summary block (the sentence included)."""
    from .heads import make_heads
    from .suspects import expected_by_chance, suspects_in_words

    name = next((n for n in models if n in PROBA_HEADS), "logreg")
    model = models.get(name) or make_heads(seed)[name]
    rows = np.flatnonzero(role != "unused")
    probs, classes, oof_folds = out_of_fold_probabilities(model, X, y, cluster, folds, seed, jobs, rows)
    suspects = label_suspects(man, rows, role, probs, classes)
    accuracy = (scores.get(name) or {}).get("cv_mean", float("nan"))
    issues = int(suspects["cleanlab_issue"].sum())
    words = suspects_in_words(len(suspects), len(rows), name, accuracy, issues)
    log(f"label suspects: {len(suspects):,} of {len(rows):,} images ({name}'s out-of-fold predictions)")
    block = {"count": int(len(suspects)), "cleanlab_issues": issues, "checked": int(len(rows)),
             "head": name, "folds": oof_folds,
             "method": "cleanlab.filter.find_label_issues (prune_by_noise_rate) or out-of-fold prediction "
                       "!= label, ranked by cleanlab.rank.get_label_quality_scores (self_confidence)"}
    if accuracy == accuracy:  # not NaN
        block["expected_by_chance"], block["expected_sd"] = expected_by_chance(len(rows), accuracy)
    return suspects, block, words


def _write(out: Path, in_dir, table, groups, suspects, top: int, log) -> list[str]:
    """Writes the tables and the contact sheets; returns the names of every file of the audit."""
    from extract.atomic import write_csv

    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "duplicates.csv", list(table.columns), table.itertuples(index=False))
    write_csv(out / "copy_groups.csv", list(groups.columns), groups.itertuples(index=False))
    write_csv(out / "label_suspects.csv", list(suspects.columns), suspects.itertuples(index=False))
    sheets = contact_sheets(in_dir, out, table, suspects, top, log)
    return ["duplicates.csv", "copy_groups.csv", "label_suspects.csv", "summary.json", *sheets]


def _duplicates(dups, man, role, cluster, dup_threshold, log):
    """(duplicates.csv's table, copy_groups.csv's, which evaluated images have a duplicate in
    training, the summary block); the findings are logged in words."""
    from .dups import share_warning

    table, groups = pair_table(dups, man, role), copy_group_table(dups, man, role)
    leaked = dups.partners_in(role == "train") & (role == "eval")
    d = duplicates_summary(dups, table, copy_group_counts(groups), leaked, cluster)
    log(f"duplicates: {plural(d['pairs'], 'pair')} listed, {d['cross_split']:,} across the split")
    if share_warning(dups):
        log(share_warning(dups))
    return table, groups, leaked, d


def _similarities(dups) -> dict | None:
    nn = dups.nn_similarity[np.isfinite(dups.nn_similarity)]
    return {"min": float(nn.min()), "median": float(np.median(nn)), "max": float(nn.max())} if len(nn) else None


def audit(features_dir, settings, out_dir, in_dir="in", heads: str = "logreg,svm,mlp", seed: int = 42,
          test_size: float = 0.2, folds: int = 5, jobs: int | None = None, dup_threshold="auto",
          top: int = TOP, log=print, fallback_none: bool = False, dataset: str | None = None,
          memory_gb="auto", stale: str = "stop") -> dict:
    """Finds duplicates and label suspects, scores the heads plainly and leakage-aware.

    Args:
        features_dir: the cache root (FEATURES).
        settings: the extraction setting (``extract.Settings``).
        out_dir: OUT; the audit is written to ``OUT/audit/``. A compare run of the same cache
            there gives the split, the repeats and each head's settings (see :func:`compare_run`).
        in_dir: IN, where the contact sheets read the images (by the manifest's ``path``).
        heads, seed, test_size, folds, jobs, memory_gb, stale: as in ``make compare`` (HEADS,
            SEED, TEST_SIZE, FOLDS, JOBS, MEMORY_GB, STALE).
        dup_threshold: ``auto`` or a cosine similarity (DUP_THRESHOLD).
        top: pairs and suspects on the contact sheets.
        log: where messages go.
        fallback_none: (demo) use the random-weights cache when the ImageNet one is missing.
        dataset: ``DATASET``, the input's folder name under FEATURES when not derived from IN.

    Returns:
        The summary (also written to ``OUT/audit/summary.json``).

    Raises:
        DataError: missing features, images added or removed since they were extracted (with
            ``stale="stop"``), fewer than two classes, no training or evaluated images.
        ValueError: an unknown head, a bad threshold, or a budget too small for one fit.
    """
    from extract.atomic import write_json

    from .budget import plan_for
    from .data import DataError, content_key, describe_conflict, label_conflicts, unit_ids
    from .dups import cached_duplicates

    t0 = time.perf_counter()
    feats = _load(features_dir, settings, in_dir, fallback_none, dataset, stale, log)
    man, X, y = feats.manifest, feats.X, feats.manifest["label"].to_numpy()
    for line in notices_of(feats):
        log(line)
    run = compare_run(out_dir, feats, log)
    models, used, settings_rule, reason = heads_as_compared(heads, seed, run)
    conflicts = label_conflicts(man)
    for conflict in conflicts:
        log(describe_conflict(conflict))
    dups = cached_duplicates(X, man["sha256"], dup_threshold, Path(out_dir) / ".dups")
    content, cluster = unit_ids(content_key(man)), unit_ids(content_key(man), dups.groups())
    role, split_rule = roles_of(man, test_size, seed, run, out_dir, dups.groups())
    if not (role == "train").any() or not (role == "eval").any():
        raise DataError("the audit needs both training and evaluated images; see make compare")
    # planned after the search, on what the run then holds; the largest SVM fit is the final one
    plan = plan_for(models, X, int((role == "train").sum()), memory_gb, jobs, log)
    log(f"features {feats.key}: {len(man)} images; {split_rule}")
    table, groups, leaked, d = _duplicates(dups, man, role, cluster, dup_threshold, log)
    threshold = dups.threshold if np.isfinite(dups.threshold) else None
    words = [duplicates_in_words(d, threshold, dup_threshold)]
    repeats = int((run or {}).get("repeats") or 1)  # compare's fold assignments
    scores = {h: {"settings": used[h], **s} for h, s in leakage_scores(
        models, X, y, role, leaked, cluster, content, folds, seed, plan.n_jobs, repeats).items()}
    suspects, suspect_block, suspect_words = _suspects(models, seed, X, y, man, role, cluster, folds,
                                                       plan.n_jobs, scores, log)
    words.append(suspect_words)
    agree = agreement(scores, out_dir, run, reason)
    words += [agree] if agree else []
    files = _write(Path(out_dir) / "audit", in_dir, table, groups, suspects, top, log)
    summary = {
        "features_key": feats.key, "in_words": words,
        "n_images": int(len(man)), "n_train": int((role == "train").sum()),
        "n_eval": int((role == "eval").sum()), "split_rule": split_rule,
        "dup_threshold": threshold, "dup_threshold_setting": str(dup_threshold),
        "dup_threshold_rule": dups.rule, "dup_threshold_basis": dups.basis, "nn_similarity": _similarities(dups),
        "duplicates": d, "label_conflicts": conflicts, "label_suspects": suspect_block,
        "heads_settings": {"rule": settings_rule, **used}, "scores": scores, "memory_plan": plan.as_dict(),
        "seed": seed, "test_size": test_size, "folds": folds, "repeats": repeats, "compare_run": bool(run),
        "files": files, "seconds": round(time.perf_counter() - t0, 3),
    }
    write_json(Path(out_dir) / "audit" / "summary.json", summary)
    return summary


# --------------------------------------------------------------------------- command line

REMEMBERED = ("in_dir", "features", "dataset", "backbone", "weights", "size", "layer", "pooling", "precision",
              "heads", "seed", "test_size", "folds")


def parse(argv=None) -> argparse.Namespace:
    """The flags; those the run in OUT remembers default to None (not given: the run's)."""
    p = argparse.ArgumentParser(prog="python -m classify.audit", description=(
        "Near-duplicates across splits, suspicious labels and leakage-aware scores -> OUT/audit/. "
        "IN, FEATURES, the extraction settings, HEADS, SEED, TEST_SIZE and FOLDS default to the "
        "compare run's in OUT (run.json)."))
    add_features_args(p)
    add_heads_args(p)
    p.add_argument("--top", type=int, default=TOP, help="pairs and suspects on the contact sheets")
    p.set_defaults(**dict.fromkeys(REMEMBERED))
    return p.parse_args(argv)


def resolve(args: argparse.Namespace, log=print) -> argparse.Namespace:
    """Fills the flags that were not given from the run in OUT (:func:`classify.remembered.remember`).

    Raises:
        DataError: a given value that conflicts with the run's input, cache or settings.
    """
    from .remembered import remember

    inputs = remember(args.out, {k: getattr(args, k) for k in REMEMBERED}, soft=True)
    for k in REMEMBERED:
        setattr(args, k, inputs[k])
    args.dataset = inputs.dataset_arg or ""
    args.layer = args.layer or ""
    for line in [inputs.said(), *inputs.notes]:
        if line:
            log(line)
    for name, given, known in inputs.differs:
        log(f"note: {name}={given} was given, the compare run in {args.out} used {name}={known}: the "
            "audit's scores are then not compare's")
    return args


def score_table(summary: dict) -> str:
    """The console table of the scores: one line per head, within 100 columns."""
    rows = []
    for head, s in summary["scores"].items():
        row = {"head": head, "accuracy": s.get("accuracy"), "no dups": s.get("accuracy_no_dups"),
               "CV": s.get("cv_mean"), "CV groups": s.get("cv_mean_groups")}
        if "compare_cv_mean" in s:
            row["compare's CV"] = s["compare_cv_mean"]
        rows.append(row)
    text = pd.DataFrame(rows).to_string(index=False, na_rep="-", float_format=lambda v: f"{v:.4f}")
    return "\n".join(line[:100] for line in text.splitlines())


def main(argv=None) -> int:
    args = parse(argv)
    from .data import DataError

    try:
        args = resolve(args)
        with engine(args.engine):
            summary = audit(args.features, settings_from(args), args.out,
                            fallback_none=args.weights_fallback == "none", in_dir=args.in_dir,
                            heads=args.heads, seed=int(args.seed), test_size=float(args.test_size),
                            folds=int(args.folds), jobs=args.jobs or None,
                            dup_threshold=args.dup_threshold, top=args.top,
                            dataset=args.dataset or None, memory_gb=args.memory_gb, stale=args.stale)
    except (DataError, ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    settings = summary["heads_settings"]
    print()
    print(score_table(summary))
    print("accuracy: on the evaluated images; no dups: without those that have a duplicate in training; "
          "CV: balanced accuracy cross-validated on the training part; CV groups: with duplicate "
          "clusters kept whole")
    print(f"heads' settings, {settings['rule']}: "
          + "; ".join(f"{h} {v or '-'}" for h, v in settings.items() if h != "rule"))
    print()
    for sentence in summary["in_words"]:
        print(sentence)
    print(f"\noutputs in {Path(args.out) / 'audit'}/: {', '.join(summary['files'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
