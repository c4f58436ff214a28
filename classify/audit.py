"""``make audit``: duplicates across splits, suspicious labels and leakage-aware scores.

``python -m classify.audit [options]`` reads the cached embeddings (no TensorFlow) and writes
under ``OUT/audit/``:

- ``duplicates.csv``: every near-duplicate pair and, per group of exact copies, its first
  ``EXACT_PAIRS_LISTED`` pairs (the group's first image with another copy): both paths, labels,
  splits and roles, the cosine similarity, and whether the pair crosses train/eval or its labels
  disagree;
- ``copy_groups.csv``: every group of exact copies, each member listed once (largest group first);
- ``label_suspects.csv``: images whose label the cross-validated (out-of-fold) probabilities of
  a head contradict, ranked by cleanlab's label-quality score (worst first);
- ``summary.json``: the counts, the threshold and how it was chosen, and per head the plain and
  the leakage-aware scores;
- ``duplicates.png``, ``label_suspects.png``: contact sheets of the top pairs and suspects.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from .cli import add_features_args, add_heads_args, engine, settings_from

TOP = 12  # pairs and suspects shown on the contact sheets
EXACT_PAIRS_LISTED = 10  # pairs per exact-copy group in duplicates.csv (all members: copy_groups.csv)
PROBA_HEADS = ("logreg", "mlp")  # heads with predict_proba, usable for label suspects


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m classify.audit", description=(
        "Near-duplicates across splits, suspicious labels and leakage-aware scores -> OUT/audit/."))
    add_features_args(p)
    add_heads_args(p)
    p.add_argument("--top", type=int, default=TOP, help="pairs and suspects on the contact sheets")
    return p.parse_args(argv)


def _oof_fold(model, X, y, train, test, groups=None):
    """One fold of the out-of-fold pass: the MLP's early stopping and validation share sized on
    this fold's labels (:func:`classify.heads.fit_head`), the splits inside the fit keeping each
    duplicate cluster (``groups``, per row of X) whole. ``train``, ``test``: rows of X."""
    from sklearn.exceptions import ConvergenceWarning

    from .heads import fit_head

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model, _ = fit_head(model, X[train], y[train], private=True,  # a fresh copy
                            groups=None if groups is None else groups[train])
    return test, model.predict_proba(X[test])


def out_of_fold_probabilities(model, X, y, groups, folds: int, seed: int, jobs: int, rows=None):
    """Cross-validated class probabilities: each row predicted by a model that never saw it.

    The folds are stratified and group-aware (a duplicate cluster is never split), so a
    mislabelled image cannot be vouched for by its own copy in the training folds (nor in the
    splits inside each fit: the SVM's calibration, the MLP's early stopping). Their number
    follows :func:`classify.data.cv_folds`, and each fold sizes the MLP's validation share on
    its own training part.

    Args:
        model: the unfitted head.
        X, y, groups: every image's vector, label and duplicate cluster.
        rows: the images to predict (default all); the others are neither fitted nor predicted,
            and X is read by position, never copied as a whole.

    Returns:
        (pred_probs (len(rows), K), the classes in column order, the folds used).
    """
    import joblib
    from sklearn.base import clone

    from .data import cv_folds

    rows = np.arange(len(y)) if rows is None else np.asarray(rows)
    splits, _ = cv_folds(y[rows], groups[rows], folds, seed, log=lambda *_: None)
    classes = np.unique(y[rows])
    probs = np.zeros((len(rows), len(classes)))
    results = joblib.Parallel(n_jobs=min(jobs, len(splits)))(
        joblib.delayed(_oof_fold)(clone(model), X, y, rows[tr], rows[te], groups) for tr, te in splits)
    for (_, te), (_, p) in zip(splits, results):
        probs[te] = p
    return probs, classes, len(splits)


def label_suspects(man: pd.DataFrame, rows: np.ndarray, role: np.ndarray, probs: np.ndarray,
                   classes: np.ndarray) -> pd.DataFrame:
    """Ranks likely label errors with cleanlab on out-of-fold probabilities.

    Listed: every image that ``cleanlab.filter.find_label_issues`` (confident learning,
    ``prune_by_noise_rate``) flags (``cleanlab_issue=1``), and every image whose out-of-fold
    prediction is another class (confident learning is conservative: an image predicted as the
    other class with a probability below that class's average confidence is not flagged). They
    are ranked by ``cleanlab.rank.get_label_quality_scores`` (``self_confidence``: the
    out-of-fold probability of the image's own label; low is suspicious), then by path.
    """
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    labels = np.searchsorted(classes, man["label"].to_numpy()[rows])
    issues = np.asarray(find_label_issues(labels, probs, filter_by="prune_by_noise_rate", n_jobs=1), bool)
    quality = get_label_quality_scores(labels, probs, method="self_confidence")
    suggested = probs.argmax(1)
    sel = np.flatnonzero(issues | (suggested != labels))
    # a stable order: cleanlab's score, then the path
    sel = np.asarray(sorted(sel, key=lambda k: (round(float(quality[k]), 9), man["path"].iat[rows[k]])), int)
    g = rows[sel]
    return pd.DataFrame({
        "rank": np.arange(1, len(sel) + 1),
        "path": man["path"].to_numpy()[g],
        "label": man["label"].to_numpy()[g],
        "suggested_label": classes[suggested[sel]],
        "label_quality": np.round(quality[sel].astype(float), 6),
        "p_label": np.round(probs[sel, labels[sel]].astype(float), 6),
        "p_suggested": np.round(probs[sel, suggested[sel]].astype(float), 6),
        "cleanlab_issue": issues[sel].astype(int),
        "split": man["split"].to_numpy()[g],
        "role": role[g],
    })


def leakage_scores(models: dict, X, y, role: np.ndarray, leaked: np.ndarray, cluster: np.ndarray,
                   content: np.ndarray, folds: int, seed: int, jobs: int) -> dict:
    """Per head: accuracy on the evaluated images, all and without a train duplicate; the CV
    score (balanced accuracy, as in ``make compare``) on the training part with folds that keep
    exact copies together (``content``) and with folds that keep duplicate clusters together
    (``cluster``; then the splits inside each fit keep them together too)."""
    import joblib
    from sklearn.base import clone
    from sklearn.metrics import accuracy_score

    from .compare import _fit
    from .data import cv_folds

    train_idx = np.flatnonzero(role == "train")
    eval_idx = np.flatnonzero(role == "eval")
    yt = y[train_idx]
    quiet = lambda *_: None  # noqa: E731
    plain = cv_folds(yt, content[train_idx], folds, seed, log=quiet)[0]  # exact copies together
    grouped = cv_folds(yt, cluster[train_idx], folds, seed, log=quiet)[0]
    k_plain, k_groups = len(plain), len(grouped)
    tasks = []
    for name, model in models.items():
        tasks.append((name, ("fit", -1), clone(model), train_idx, None))
        for kind, splits in (("plain", plain), ("groups", grouped)):
            for k, (tr, te) in enumerate(splits):
                tasks.append((name, (kind, k), clone(model), train_idx[tr], train_idx[te]))
    results = joblib.Parallel(n_jobs=min(jobs, len(tasks)))(
        joblib.delayed(_fit)(name, key, model, X, y, tr, te, cluster if key[0] == "groups" else None)
        for name, key, model, tr, te in tasks)
    out = {name: {} for name in models}
    cv = {(name, kind): [] for name in models for kind in ("plain", "groups")}
    for name, (kind, k), value, _, _ in results:
        if kind == "fit":
            pred = value.predict(X[eval_idx])
            keep = ~leaked[eval_idx]
            out[name].update({
                "accuracy": float(accuracy_score(y[eval_idx], pred)),
                "accuracy_no_dups": float(accuracy_score(y[eval_idx][keep], pred[keep])) if keep.any() else None,
                "n_eval": int(len(eval_idx)),
                "n_eval_no_dups": int(keep.sum()),
            })
        else:
            cv[(name, kind)].append((k, value))
    for (name, kind), vals in cv.items():
        acc = np.array([v for _, v in sorted(vals)])
        suffix = "" if kind == "plain" else "_groups"
        out[name][f"cv_mean{suffix}"] = float(acc.mean())
        out[name][f"cv_std{suffix}"] = float(acc.std())
        out[name][f"folds{suffix}"] = k_plain if kind == "plain" else k_groups
    return out


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
            "exact_groups_across_train_eval": int(roles.sum())}


def _thumb(ax, in_dir: Path, rel: str, available: bool, size: int = 160) -> None:
    from extract.files import fs_path
    from extract.load import ImageError, load_image

    ax.set_xticks([])
    ax.set_yticks([])
    if available:
        try:  # upright, RGB, centre-cropped: the image as the CNN saw it
            ax.imshow(load_image(fs_path(in_dir, rel), size))
            return
        except ImageError:
            pass
    ax.text(0.5, 0.5, f"image not available:\n{in_dir / rel}", ha="center", va="center",
            fontsize=7, wrap=True, transform=ax.transAxes)


def _short(path: str, n: int = 38) -> str:
    return path if len(path) <= n else "..." + path[-(n - 3):]


def contact_sheets(in_dir, out: Path, dup_table: pd.DataFrame, suspects: pd.DataFrame, top: int,
                   log=print) -> list[str]:
    """Writes ``duplicates.png`` (pairs side by side) and ``label_suspects.png``; returns the names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    in_dir = Path(in_dir)
    available = in_dir.is_dir()
    if not available:
        log(f"note: IN={in_dir} is not available; the contact sheets show paths instead of images")
    written = []

    pairs = dup_table.head(top)
    n = max(len(pairs), 1)
    fig, axes = plt.subplots(n, 2, figsize=(6.4, 3.0 * n), squeeze=False)
    if pairs.empty:
        for ax in axes[0]:
            ax.axis("off")
        axes[0, 0].text(0.5, 0.5, "no duplicate pairs found", ha="center", va="center")
    for r, row in enumerate(pairs.itertuples(index=False)):
        for c, side in enumerate("ab"):
            path, label, role = getattr(row, f"path_{side}"), getattr(row, f"label_{side}"), getattr(row, f"role_{side}")
            _thumb(axes[r, c], in_dir, path, available)
            axes[r, c].set_title(f"{label} ({role})\n{_short(path)}", fontsize=8)
        flags = [row.kind] + (["crosses splits"] if row.cross_split else []) + \
                (["labels disagree"] if row.label_disagree else [])
        axes[r, 0].set_ylabel(f"#{r + 1} cos {row.similarity:.5f}\n{', '.join(flags)}", fontsize=8)
    fig.suptitle(f"top {len(pairs)} duplicate pairs (of {len(dup_table)})", fontsize=10)
    fig.tight_layout()
    fig.savefig(out / "duplicates.png", dpi=80)
    plt.close(fig)
    written.append("duplicates.png")

    sus = suspects.head(top)
    cols = 4
    nrows = max(1, -(-len(sus) // cols))
    fig, axes = plt.subplots(nrows, cols, figsize=(2.8 * cols, 3.5 * nrows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    if sus.empty:
        axes[0, 0].text(0.5, 0.5, "no label suspects found", ha="left", va="center")
    for k, row in enumerate(sus.itertuples(index=False)):
        ax = axes.ravel()[k]
        ax.axis("on")
        _thumb(ax, in_dir, row.path, available)
        ax.set_title(f"#{row.rank} labelled {row.label}\nlooks like {row.suggested_label} "
                     f"(p={row.p_suggested:.2f})\n{_short(row.path, 30)}", fontsize=7)
    fig.suptitle(f"top {len(sus)} label suspects (of {len(suspects)})", fontsize=10)
    fig.tight_layout()
    fig.savefig(out / "label_suspects.png", dpi=80)
    plt.close(fig)
    written.append("label_suspects.png")
    return written


def audit(features_dir, settings, out_dir, in_dir="in", heads: str = "logreg,svm,mlp", seed: int = 42,
          test_size: float = 0.2, folds: int = 5, jobs: int | None = None, dup_threshold="auto",
          top: int = TOP, log=print, fallback_none: bool = False, dataset: str | None = None,
          memory_gb="auto", stale: str = "stop") -> dict:
    """Finds duplicates and label suspects, scores the heads plainly and leakage-aware.

    Args:
        features_dir: the cache root (FEATURES).
        settings: the extraction setting (``extract.Settings``).
        out_dir: OUT; the audit is written to ``OUT/audit/``.
        in_dir: IN, where the contact sheets read the images (by the manifest's ``path``).
        heads, seed, test_size, folds, jobs: as in ``make compare``.
        dup_threshold: ``auto`` or a cosine similarity (DUP_THRESHOLD).
        top: pairs and suspects on the contact sheets.
        log: where messages go.
        fallback_none: (demo) use the random-weights cache when the ImageNet one is missing.
        dataset: ``DATASET``, the input's folder name under FEATURES when not derived from IN.
        memory_gb: ``auto`` or GiB (MEMORY_GB), as in ``make compare``: decides the SVM method
            and how many fits run at once.
        stale: ``stop`` or ``ok`` (STALE), as in ``make compare``: images added to or removed
            from IN since ``make features`` stop the audit, or the cache is used as it is.

    Returns:
        The summary (also written to ``OUT/audit/summary.json``).

    Raises:
        DataError: missing features, images added or removed since they were extracted (with
            ``stale="stop"``), fewer than two classes, no training or evaluated images.
        ValueError: an unknown head, a bad threshold, or a budget too small for one fit.
    """
    from extract.atomic import write_csv, write_json

    from .budget import plan_for
    from .data import (DataError, assign_split, check_input, content_key, describe_conflict, features_command,
                       label_conflicts, load_features, require_two_classes, unit_ids)
    from .dups import cached_duplicates, share_warning
    from .heads import make_heads, select_heads

    t0 = time.perf_counter()
    models = select_heads(heads, seed)
    feats = load_features(features_dir, settings, in_dir=str(in_dir), fallback_none=fallback_none,
                          dataset=dataset)
    check_input(feats, in_dir, features_command(settings, str(in_dir), str(features_dir), dataset), stale, log, dataset)
    man = feats.manifest
    require_two_classes(feats, "the audit")
    role_s, split_rule = assign_split(man, test_size, seed)
    role = role_s.replace("", "unused").to_numpy()
    X, y = feats.X, man["label"].to_numpy()
    conflicts = label_conflicts(man)
    for conflict in conflicts:
        log(describe_conflict(conflict))
    dups = cached_duplicates(X, man["sha256"], dup_threshold, Path(out_dir) / ".dups")
    # planned after the search, on what the run then holds; the largest SVM fit is the final one
    # on the training part, as in compare
    plan = plan_for(models, X, int((role == "train").sum()), memory_gb, jobs, log)
    jobs = plan.n_jobs
    content = unit_ids(content_key(man))  # exact copies
    cluster = unit_ids(content_key(man), dups.groups())  # joined with near-duplicates
    p = listed_pairs(dups.pairs)
    groups = copy_group_table(dups, man, role)
    i, j = p["i"].to_numpy(int), p["j"].to_numpy(int)
    col = {c: man[c].astype(str).to_numpy() for c in ("path", "label", "split")}
    cross = (((role[i] == "train") & (role[j] == "eval")) | ((role[i] == "eval") & (role[j] == "train")))
    disagree = col["label"][i] != col["label"][j]
    table = pd.DataFrame({
        "path_a": col["path"][i], "label_a": col["label"][i], "split_a": col["split"][i], "role_a": role[i],
        "path_b": col["path"][j], "label_b": col["label"][j], "split_b": col["split"][j], "role_b": role[j],
        "similarity": np.round(p["similarity"].to_numpy(float), 6), "kind": p["kind"].to_numpy(),
        "cross_split": cross.astype(int), "label_disagree": disagree.astype(int),
    })
    leaked = dups.partners_in(role == "train") & (role == "eval")
    log(f"features {feats.key}: {len(man)} images; {split_rule}")
    counts = copy_group_counts(groups)
    log(f"duplicates: {counts['exact_groups']} groups of exact copies ({counts['images_in_exact_groups']} "
        f"images, largest {counts['largest_exact_group']}), {int((p['kind'] == 'near').sum())} near pairs; "
        f"{len(p)} pairs listed, {int(cross.sum())} across train/eval, {int(disagree.sum())} with "
        f"different labels; {dups.rule}; search: {dups.search}")
    if share_warning(dups):
        log(share_warning(dups))

    # label suspects from out-of-fold probabilities of the first head that has them
    proba_name = next((n for n in models if n in PROBA_HEADS), "logreg")
    proba_model = models.get(proba_name) or make_heads(seed)[proba_name]
    rows = np.flatnonzero(role != "unused")
    probs, classes, oof_folds = out_of_fold_probabilities(proba_model, X, y, cluster, folds, seed, jobs, rows)
    suspects = label_suspects(man, rows, role, probs, classes)
    log(f"label suspects: {len(suspects)} of {len(rows)} images (cleanlab on {oof_folds}-fold "
        f"out-of-fold probabilities of {proba_name})")

    if not (role == "train").any() or not (role == "eval").any():
        raise DataError("the audit needs both training and evaluated images; see make compare")
    scores = leakage_scores(models, X, y, role, leaked, cluster, content, folds, seed, jobs)

    out = Path(out_dir) / "audit"
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "duplicates.csv", list(table.columns), table.itertuples(index=False))
    write_csv(out / "copy_groups.csv", list(groups.columns), groups.itertuples(index=False))
    write_csv(out / "label_suspects.csv", list(suspects.columns), suspects.itertuples(index=False))
    sheets = contact_sheets(in_dir, out, table, suspects, top, log)
    nn = dups.nn_similarity[np.isfinite(dups.nn_similarity)]
    sizes = np.bincount(cluster)
    summary = {
        "features_key": feats.key,
        "n_images": int(len(man)), "n_train": int((role == "train").sum()),
        "n_eval": int((role == "eval").sum()), "split_rule": split_rule,
        "dup_threshold": dups.threshold if np.isfinite(dups.threshold) else None,
        "dup_threshold_setting": str(dup_threshold),
        "dup_threshold_rule": dups.rule,
        "dup_threshold_basis": dups.basis,
        "nn_similarity": ({"min": float(nn.min()), "median": float(np.median(nn)), "max": float(nn.max())}
                          if len(nn) else None),
        "duplicates": {
            "pairs": int(len(p)), "exact": int((p["kind"] == "exact").sum()),
            "near": int((p["kind"] == "near").sum()), "cross_split": int(cross.sum()),
            "label_disagree": int(disagree.sum()),
            "cross_split_label_disagree": int((cross & disagree).sum()),
            "clusters": int((sizes > 1).sum()), "images_in_clusters": int(sizes[sizes > 1].sum()),
            "eval_with_train_duplicate": int(leaked.sum()),
            **counts, "exact_pairs_listed_per_group": EXACT_PAIRS_LISTED, "search": dups.search,
        },
        "label_conflicts": conflicts,
        "label_suspects": {"count": int(len(suspects)),
                           "cleanlab_issues": int(suspects["cleanlab_issue"].sum()),
                           "head": proba_name, "folds": oof_folds,
                           "method": "cleanlab.filter.find_label_issues (prune_by_noise_rate) or "
                                     "out-of-fold prediction != label, ranked by "
                                     "cleanlab.rank.get_label_quality_scores (self_confidence)"},
        "scores": scores,
        "memory_plan": plan.as_dict(),
        "seed": seed, "test_size": test_size,
        "files": ["duplicates.csv", "copy_groups.csv", "label_suspects.csv", "summary.json", *sheets],
        "seconds": round(time.perf_counter() - t0, 3),
    }
    write_json(out / "summary.json", summary)
    return summary


def main(argv=None) -> int:
    args = parse(argv)
    from .data import DataError

    try:
        with engine(args.engine):
            summary = audit(args.features, settings_from(args), args.out,
                            fallback_none=args.weights_fallback == "none", in_dir=args.in_dir,
                            heads=args.heads, seed=args.seed, test_size=args.test_size,
                            folds=args.folds, jobs=args.jobs or None,
                            dup_threshold=args.dup_threshold, top=args.top,
                            dataset=args.dataset or None, memory_gb=args.memory_gb, stale=args.stale)
    except (DataError, ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print()
    rows = [{"head": h, **{k: v for k, v in s.items() if not k.startswith(("folds", "n_"))}}
            for h, s in summary["scores"].items()]
    print(pd.DataFrame(rows).to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    d = summary["duplicates"]
    print(f"\n{d['pairs']} duplicate pairs ({d['cross_split']} across train/eval, {d['label_disagree']} "
          f"with different labels), {summary['label_suspects']['count']} label suspects; "
          f"threshold {summary['dup_threshold']}")
    print(f"outputs in {Path(args.out) / 'audit'}/: {', '.join(summary['files'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
