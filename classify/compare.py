"""Stage 2: train every head on the cached embeddings, cross-validate, evaluate, write the outputs."""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import platform
import time
import warnings
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
import sklearn
from sklearn.base import clone
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import accuracy_score, balanced_accuracy_score, classification_report, f1_score
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

from extract.cache import atomic_write, write_csv, write_json
from extract.model import Settings

from .budget import plan_for
from .data import DataError, Features, assign_split, load_features
from .dups import cached_duplicates, group_roles
from .heads import scores, select_heads

TIMING_COLUMNS = ["fit_seconds", "cv_seconds"]


def _fit(name: str, fold: int, model, X, y, train_idx, test_idx):
    """One unit of parallel work: fit on train_idx; score on test_idx (a CV fold) or return the model."""
    t0 = time.perf_counter()
    _fit_small_validation(model, y[train_idx])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(X[train_idx], y[train_idx])
    seconds = time.perf_counter() - t0
    if test_idx is None:
        return name, fold, model, seconds
    return name, fold, accuracy_score(y[test_idx], model.predict(X[test_idx])), seconds


def _fit_small_validation(model, y_train) -> None:
    """Enlarges an early-stopping MLP's validation share when the training part is tiny.

    MLPClassifier's stratified validation split needs at least one image per class; 10% of a
    few dozen images is less than that.
    """
    est = model[-1] if hasattr(model, "steps") else model
    if getattr(est, "early_stopping", False):
        n_classes, counts = np.unique(y_train, return_counts=True)
        n_classes = len(n_classes)
        if counts.min() < 2:  # no stratified validation split is possible: train without one
            est.set_params(early_stopping=False)
            return
        need = (n_classes + 1) / max(len(y_train), 1)
        if est.validation_fraction < need:
            est.set_params(validation_fraction=min(0.5, need))


def _check_classes(y_train: np.ndarray, folds: int, log) -> int:
    labels, counts = np.unique(y_train, return_counts=True)
    if len(labels) < 2:
        raise DataError(
            f"only one class ({labels[0] if len(labels) else 'none'!r}) has training images; "
            "a classifier needs at least two class folders under IN"
        )
    smallest = int(counts.min())
    if smallest < 2:
        raise DataError(
            f"class {labels[counts.argmin()]!r} has {smallest} training image; cross-validation "
            "needs at least 2 per class: add images to it or remove its folder"
        )
    if folds < 2:
        raise DataError(f"FOLDS must be at least 2; received {folds}")
    if smallest < folds:
        log(f"warning: class {labels[counts.argmin()]!r} has only {smallest} training images, "
            f"fewer than FOLDS={folds}; using {smallest}-fold cross-validation")
        return smallest
    return folds


def model_sidecar(path: Path) -> Path:
    return Path(path).with_suffix(".json")


def save_model(path: Path, bundle: dict) -> None:
    """Saves a head with its metadata, and a JSON sidecar holding the file's SHA-256.

    :func:`load_model` refuses a joblib file whose hash does not match its sidecar: joblib
    (pickle) files run code when loaded, so only files this tool wrote are opened.
    """
    buf = io.BytesIO()
    joblib.dump(bundle, buf)
    data = buf.getvalue()
    atomic_write(path, lambda fh: fh.write(data))
    digest = hashlib.sha256(data).hexdigest()
    info = {k: v for k, v in bundle.items() if k != "model"}
    info["sha256"] = digest
    write_json(model_sidecar(path), info)


def load_model(path) -> dict:
    """Loads a head saved by :func:`save_model` after checking its hash.

    Raises:
        DataError: the file or its sidecar is missing, or the hash differs.
    """
    path = Path(path)
    side = model_sidecar(path)
    if not path.is_file() or not side.is_file():
        raise DataError(f"model {path} (with its sidecar {side.name}) not found; run make compare first")
    expected = json.loads(side.read_text(encoding="utf-8")).get("sha256")
    data = path.read_bytes()  # hashed and loaded from the same bytes
    if expected != hashlib.sha256(data).hexdigest():
        raise DataError(
            f"refusing to load {path}: its SHA-256 does not match {side.name}, so it changed "
            "after this tool wrote it (joblib files run code when loaded); run make compare to "
            "re-create it"
        )
    return joblib.load(io.BytesIO(data))


def format_table(df: pd.DataFrame) -> str:
    """The comparison as an aligned text table."""
    cols = [c for c in df.columns if c != "head"]
    fmt = {c: (lambda v: f"{v:.4f}") for c in cols if df[c].dtype.kind == "f"}
    for c in TIMING_COLUMNS:
        if c in df:
            fmt[c] = lambda v: f"{v:.2f}"
    return df.to_string(index=False, formatters=fmt)


def compare(features_dir, settings: Settings, out_dir, heads: str = "logreg,svm,mlp",
            seed: int = 42, test_size: float = 0.2, folds: int = 5, jobs: int | None = None,
            in_dir: str = "in", fallback_none: bool = False, log=print, groups: str = "none",
            dup_threshold="auto", memory_gb="auto") -> pd.DataFrame:
    """Trains, cross-validates and evaluates the heads; writes everything under ``out_dir``.

    Args:
        features_dir: the cache root (FEATURES).
        settings: the extraction setting whose embeddings are used.
        out_dir: where the outputs go (OUT).
        heads: comma-separated head names (HEADS).
        seed: random state of the heads, the folds and the hold-out (SEED).
        test_size: hold-out fraction when the input has no split folders (TEST_SIZE).
        folds: cross-validation folds on the training part (FOLDS).
        jobs: parallel workers (default: every core).
        in_dir: only for hints in messages.
        fallback_none: (demo) use the random-weights cache when the ImageNet one is missing.
        log: where messages go.
        groups: ``none``, or ``dups`` (GROUPS): keep each duplicate cluster (exact or near,
            see :mod:`classify.dups`) on one side of the hold-out and of every CV fold.
        dup_threshold: ``auto`` or a cosine similarity (DUP_THRESHOLD); decides which evaluated
            images have a near-duplicate in the training part (``accuracy_no_dups``).
        memory_gb: ``auto`` or GiB (MEMORY_GB): the budget of the concurrent fits, which decides
            the SVM method and the parallel fits (:mod:`classify.budget`).

    Returns:
        The comparison table (also written to ``out_dir/comparison.csv``).

    Raises:
        DataError: missing or damaged features, too few classes or images.
        ValueError: an unknown head, or a budget too small for one fit.
    """
    t_start = time.perf_counter()
    models = select_heads(heads, seed)
    if groups not in ("none", "dups"):
        raise ValueError(f"GROUPS must be 'none' or 'dups'; received {groups!r}")
    feats: Features = load_features(features_dir, settings, in_dir=in_dir, fallback_none=fallback_none)
    man = feats.manifest
    if man["label"].nunique() < 2:
        raise DataError(
            f"{feats.folder} holds one class only ({man['label'].iloc[0]!r}); a classifier needs "
            "at least two class folders under IN"
        )
    role, split_rule = assign_split(man, test_size, seed)
    dups = cached_duplicates(feats.X, man["sha256"], dup_threshold, Path(out_dir) / ".dups")
    cluster = dups.groups()
    if groups == "dups":
        role, moved = group_roles(role, cluster, man, seed)
        split_rule += (f"; duplicate clusters kept on one side ({moved} images moved)" if moved
                       else "; duplicate clusters kept on one side of every CV fold")
    train_idx = np.flatnonzero(role.to_numpy() == "train")
    eval_idx = np.flatnonzero(role.to_numpy() == "eval")
    if not len(eval_idx):
        raise DataError("no images to evaluate on: add images, or a test/ folder beside train/")
    y = man["label"].to_numpy()
    folds = _check_classes(y[train_idx], folds, log)
    if groups == "dups":
        n_groups = len(np.unique(cluster[train_idx]))
        if n_groups < folds:
            raise DataError(f"GROUPS=dups leaves {n_groups} duplicate clusters in the training part, "
                            f"fewer than FOLDS={folds}; use fewer FOLDS or GROUPS=none")
    X = feats.X
    leaked = dups.partners_in(role.to_numpy() == "train")[eval_idx]  # eval image with a train duplicate

    out = Path(out_dir)
    for sub in ("reports", "models", "figures"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    # Outputs of an earlier run with other heads or classes must not pass for this run's.
    for stale in [*(out / "figures").glob("*.png"), *(out / "models").glob("*"),
                  *(out / "reports").glob("*")]:
        if stale.is_file() and (stale.parent.name == "figures" or stale.stem not in models):
            stale.unlink()
    write_csv(out / "split.csv", ["path", "label", "role"],
              zip(man["path"], man["label"], role.replace("", "unused")))

    log(f"features {feats.key}: {len(man)} images, {X.shape[1]} dims; {split_rule}; "
        f"{len(train_idx)} train, {len(eval_idx)} evaluated; {folds}-fold CV; heads {', '.join(models)}")
    if groups == "dups":
        cv = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
        fold_list = list(cv.split(train_idx, y[train_idx], cluster[train_idx]))
    else:
        cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
        fold_list = list(cv.split(train_idx, y[train_idx]))
    log(f"duplicates: {dups.rule}; search: {dups.search}; {int(leaked.sum())} of {len(eval_idx)} "
        "evaluated images have a duplicate in the training part")
    plan = plan_for(models, len(train_idx), X.shape[1], memory_gb, jobs, log)
    tasks = []
    for name, model in models.items():
        for k, (tr, te) in enumerate(fold_list):
            tasks.append((name, k, clone(model), train_idx[tr], train_idx[te]))
        tasks.append((name, -1, clone(model), train_idx, None))
    # The SVM's tasks are the longest: start them first so the workers finish together.
    tasks.sort(key=lambda t: (t[0] != "svm", t[0], t[1]))
    n_jobs = plan.n_jobs
    results = joblib.Parallel(n_jobs=min(n_jobs, len(tasks)))(
        joblib.delayed(_fit)(name, k, model, X, y, tr, te) for name, k, model, tr, te in tasks)

    fitted, cv_scores, cv_seconds, fit_seconds = {}, {n: {} for n in models}, dict.fromkeys(models, 0.0), {}
    for name, k, value, seconds in results:
        if k < 0:
            fitted[name], fit_seconds[name] = value, seconds
        else:
            cv_scores[name][k] = value
            cv_seconds[name] += seconds

    class_names = feats.class_names
    y_eval = y[eval_idx]
    pred = pd.DataFrame({"path": man["path"].to_numpy()[eval_idx], "label": y_eval})
    rows = []
    fitted = {name: fitted[name] for name in models}
    for name, model in fitted.items():
        labels, score = scores(model, X[eval_idx])
        pred[name] = labels
        pred[f"{name}_score"] = np.round(score.astype(float), 6)
        folds_acc = np.array([cv_scores[name][k] for k in sorted(cv_scores[name])])
        rows.append({
            "head": name,
            "accuracy": accuracy_score(y_eval, labels),
            "accuracy_no_dups": (accuracy_score(y_eval[~leaked], labels[~leaked]) if (~leaked).any()
                                 else float("nan")),
            "balanced_accuracy": balanced_accuracy_score(y_eval, labels),
            "macro_f1": f1_score(y_eval, labels, average="macro"),
            "cv_mean": float(folds_acc.mean()),
            "cv_std": float(folds_acc.std()),
            "n_train": len(train_idx),
            "n_eval": len(eval_idx),
            "n_eval_no_dups": int((~leaked).sum()),
            "fit_seconds": round(fit_seconds[name], 3),
            "cv_seconds": round(cv_seconds[name], 3),
        })
        report_txt = classification_report(y_eval, labels, labels=class_names, zero_division=0, digits=4)
        report = classification_report(y_eval, labels, labels=class_names, zero_division=0, output_dict=True)
        (out / "reports" / f"{name}.txt").write_text(
            f"head: {name}\nfeatures: {feats.key}\nevaluated on {len(eval_idx)} images ({split_rule})\n\n"
            + report_txt, encoding="utf-8")
        write_json(out / "reports" / f"{name}.json", report)
        save_model(out / "models" / f"{name}.joblib", {
            "model": model, "head": name, "class_names": class_names,
            "features_key": feats.key, "settings": _settings_of(feats.meta),
            "seed": seed, "cv_mean": float(folds_acc.mean()),
            "sklearn": sklearn.__version__,
        })
    comparison = pd.DataFrame(rows)
    write_csv(out / "comparison.csv", list(comparison.columns), comparison.itertuples(index=False))
    pred = pred.sort_values("path", kind="stable")
    write_csv(out / "predictions.csv", list(pred.columns), pred.itertuples(index=False))

    from .figures import write_figures

    figures = write_figures(out / "figures", fitted, X[eval_idx], y_eval, class_names)
    write_json(out / "run.json", {
        "features_key": feats.key,
        "features_folder": str(feats.folder.resolve()),
        "extraction": _settings_of(feats.meta),
        "weights_fallback": feats.meta.get("weights_fallback"),
        "heads": list(models),
        "seed": seed, "test_size": test_size, "folds": folds, "jobs": n_jobs,
        "memory_plan": plan.as_dict(),
        "split_rule": split_rule,
        "groups": groups,
        "duplicates": {"threshold": dups.threshold if np.isfinite(dups.threshold) else None,
                       "rule": dups.rule, "search": dups.search,
                       "pairs": len(dups.pairs), "eval_with_train_duplicate": int(leaked.sum())},
        "n_images": len(man), "n_train": len(train_idx), "n_eval": len(eval_idx),
        "class_names": class_names,
        "figures": figures,
        "seconds": round(time.perf_counter() - t_start, 3),
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "versions": {"python": platform.python_version(), "numpy": np.__version__,
                     "pandas": pd.__version__, "scikit-learn": sklearn.__version__,
                     "joblib": joblib.__version__},
    })
    return comparison


def _settings_of(meta: dict) -> dict:
    return {k: meta.get(k) for k in ("backbone", "weights", "weights_tag", "image_size", "pooling",
                                     "precision", "dim", "key")}
