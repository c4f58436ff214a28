"""Stage 2: train every head on the cached embeddings, cross-validate, evaluate, write the outputs."""

from __future__ import annotations

import dataclasses
import datetime as dt
import platform
import time
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
import sklearn
from sklearn.metrics import accuracy_score, classification_report, top_k_accuracy_score

from extract.atomic import write_csv, write_json
from extract.model import Settings

from .data import (DataError, Features, assign_split, check_coverage, check_input, content_key, copies_across,
                   eval_split_of, features_command, require_two_classes, test_size_for, tune_split_of,
                   cv_folds, describe_conflict, label_conflicts, load_features, unit_ids)
from . import curves, fewshot, stats
from .answer import answer_of
from .budget import apply_plan, plan_for
from .dups import cached_duplicates, share_warning
from .heads.knn import check_normalize, normalize_vectors
from .fits import CV_METRIC, cv_score, fit_all, select_on_validation, tuning_note
from .fits import _fit, fit_all as _fit_all, select_on_validation as _select_on_validation  # noqa: F401 (importers)
from .heads import (INNER_FOLDS, decision_values, fixed_head, format_settings,
                    labels_of, outputs, searched_grid, select_heads)
from .models import MODEL_SUFFIX, TRUSTED_TYPES, load_model, model_sidecar, read_sidecar, save_model  # noqa: F401
from extract.notices import class_counts_line, plural, random_weights_banner, split_like_warning
from .outdir import check_out_dir, new_run

TIMING_COLUMNS = ["fit_seconds", "cv_seconds"]
TOP_K, TOP_K_FROM = 5, 6  # top5_accuracy is reported from 6 classes (with 5 it is always 1)
AUTO_REPEATS_UP_TO = 5000  # REPEATS=auto: 3 repeats up to this many training images, else 1
TUNE_AUTO_UP_TO = 20_000  # TUNE=auto tunes up to this many training images (see choose_tuning)


def format_table(df: pd.DataFrame) -> str:
    """The comparison as an aligned text table."""
    cols = [c for c in df.columns if c != "head"]
    fmt = {c: (lambda v: f"{v:.4f}") for c in cols if df[c].dtype.kind == "f"}
    for c in TIMING_COLUMNS:
        if c in df:
            fmt[c] = lambda v: f"{v:.2f}"
    return df.to_string(index=False, formatters=fmt)


def compare(features_dir, settings: Settings, out_dir, heads: str = "logreg,svm,mlp",
            seed: int = 42, test_size: float | None = None, folds: int = 5, jobs: int | None = None,
            in_dir: str = "in", fallback_none: bool = False, log=print, groups: str = "none",
            dup_threshold="auto", dataset: str | None = None, repeats: int | str = "auto", memory_gb="auto",
            tune: str = "auto", stale: str = "stop", normalize: str = "none", shots="",
            shot_draws=fewshot.DEFAULT_DRAWS) -> pd.DataFrame:
    """Trains, cross-validates and evaluates the heads; writes one whole run to ``out_dir``.

    The run is written into a temporary folder beside ``out_dir`` and swapped into place when
    complete (see :mod:`classify.outdir`). Exact copies of a file always stay on one side of the
    hold-out and in one CV fold; copies filed under different labels are reported as label
    conflicts. Classes are checked before anything is fitted (see
    :func:`classify.data.check_coverage`). CV folds are scored by balanced accuracy.

    Args:
        features_dir: the cache root (FEATURES).
        settings: the extraction setting whose embeddings are used.
        out_dir: where the outputs go (OUT).
        heads: comma-separated head names (HEADS).
        seed: random state of the heads, the folds and the hold-out (SEED).
        test_size: hold-out fraction when the input has no split folders (TEST_SIZE; None: not
            given, 0.2; refused beside split folders, see :func:`classify.data.test_size_for`).
        folds: cross-validation folds on the training part (FOLDS).
        jobs: parallel workers (default: every core).
        in_dir: IN: the input folder, whose images are checked against the cache's (the folder
            the cache records as its input, when it records one; see
            :func:`classify.data.check_input`), and named in hints.
        fallback_none: (demo) use the random-weights cache when the ImageNet one is missing.
        log: where messages go.
        groups: ``none``, or ``dups`` (GROUPS): keep each duplicate cluster (exact or near,
            see :mod:`classify.dups`) on one side of the hold-out and in one CV fold, with the
            balanced rule of :func:`classify.data.balanced_holdout`, and whole in the splits
            inside every fit (tuning folds, the SVM's calibration folds, the MLP's
            early-stopping share).
        dup_threshold: ``auto`` or a cosine similarity (DUP_THRESHOLD); decides which evaluated
            images have a near-duplicate in the training part (``accuracy_no_dups``).
        dataset: ``DATASET``, the input's folder name under FEATURES when not derived from IN.
        repeats: ``REPEATS``, how many times the cross-validation is repeated with other fold
            assignments (``auto``: see :func:`choose_repeats`). Every fold score goes to
            ``cv_scores.csv`` and into the intervals and paired tests.
        memory_gb: ``auto`` or GiB (MEMORY_GB): the budget of the concurrent fits, which decides
            the SVM method and the parallel fits (:mod:`classify.budget`).
        tune: ``auto``, ``1`` or ``0`` (TUNE): search each head's grid (:data:`classify.heads.GRIDS`)
            on the validation folder when there is one, else by inner cross-validation inside
            every fit (see :func:`choose_tuning`); ``0`` keeps the fixed settings.
        stale: ``stop`` or ``ok`` (STALE): whether images added to or removed from IN since
            ``make features`` stop the run, or the cache is used as it is.
        normalize: ``none`` or ``l2`` (NORMALIZE): every head sees unit vectors; the cache is unchanged.
        shots, shot_draws: SHOTS (e.g. ``1,2,4``; empty: none) and SHOT_DRAWS (:mod:`classify.fewshot`).

    Returns:
        The comparison table (also written to ``out_dir/comparison.csv``), with each head's chosen
        settings (``params``), 95% intervals
        (``accuracy_ci_*``: Wilson, over the evaluated images; ``cv_ci_*``: corrected resampled
        t, over the folds) and each head's paired test against the best (``p_vs_best``,
        ``p_mcnemar``) and ``verdict`` (see :mod:`classify.stats`).

    Raises:
        DataError: missing or damaged features, images added or removed since they were extracted
            (with ``stale="stop"``), a class with evaluated but no training images, too few
            classes or images, an OUT that cannot be replaced as a whole.
        ValueError: an unknown head, or a budget too small for one fit.
    """
    t_start = time.perf_counter()
    models = select_heads(heads, seed)
    normalize, shots, shot_draws = check_normalize(normalize), fewshot.parse_shots(shots), fewshot.check_draws(shot_draws)
    if groups not in ("none", "dups"):
        raise ValueError(f"GROUPS must be 'none' or 'dups'; received {groups!r}")
    check_out_dir(out_dir)
    data = load_and_split(features_dir, settings, out_dir, in_dir, dataset, fallback_none, stale, test_size,
                          seed, groups, dup_threshold, normalize, log)
    plan = plan_run(data, models, heads, seed, folds, repeats, tune, memory_gb, jobs, groups, log)
    fits = fit_and_cross_validate(data, plan, log)
    with new_run(out_dir) as out:
        comparison, probas = evaluate(out, data, plan, fits, seed, log)
        extras = write_figures_and_curves(out, data, plan, fits, comparison, probas, seed, log)
        extras["fewshot"] = write_fewshot(out, data, plan, heads, shots, shot_draws, seed, log, extras["figures"])
        write_run_json(out, data, plan, fits, comparison, extras,
                       {"seed": seed, "groups": groups, "seconds": time.perf_counter() - t_start})
    return comparison


@dataclasses.dataclass
class Data:
    """The loaded input and its split (:func:`load_and_split`)."""

    feats: Features
    test_size: float
    conflicts: list
    dups: object  # classify.dups' duplicates of the vectors
    cluster: np.ndarray
    role: pd.Series  # train, eval, tune or "" per row
    split_rule: str
    crossing: list  # evaluated images that are exact copies of training ones
    class_names: list[str]
    train_idx: np.ndarray
    eval_idx: np.ndarray
    valid_idx: np.ndarray
    leaked: np.ndarray  # per evaluated image: has a duplicate in the training part
    normalize: str  # NORMALIZE
    X: np.ndarray  # the vectors every head sees: the cache's, NORMALIZE applied (the one place)

    @property
    def man(self) -> pd.DataFrame:
        return self.feats.manifest

    @property
    def y(self) -> np.ndarray:
        return self.man["label"].astype(str).to_numpy()


def load_and_split(features_dir, settings: Settings, out_dir, in_dir: str, dataset: str | None,
                   fallback_none: bool, stale: str, test_size, seed: int, groups: str, dup_threshold,
                   normalize: str, log) -> Data:
    """Step 1: loads and checks the cache of IN, finds duplicates, and splits it into the
    training part, the evaluated images and the validation folder (see :func:`compare`).

    Raises:
        DataError: as :func:`compare` says.
    """
    feats: Features = load_features(features_dir, settings, in_dir=in_dir, fallback_none=fallback_none,
                                    dataset=dataset)
    check_input(feats, in_dir, features_command(settings, in_dir, str(features_dir), dataset), stale, log, dataset)
    man = feats.manifest
    require_two_classes(feats)
    test_size = test_size_for(man, test_size)
    conflicts = label_conflicts(man)
    for conflict in conflicts:
        log(describe_conflict(conflict))
    dups = cached_duplicates(feats.X, man["sha256"], dup_threshold, Path(out_dir) / ".dups")
    if share_warning(dups):
        log(share_warning(dups))
    cluster = dups.groups()
    role, split_rule = assign_split(man, test_size, seed, units=cluster if groups == "dups" else None)
    unit = "duplicate clusters" if groups == "dups" else "exact copies"
    side = "" if (man["split"] != "").any() else " on one side and"  # split folders are the user's
    split_rule += f"; {unit} kept whole{side} in one fold"
    crossing = copies_across(man, role)
    if crossing:
        log(f"warning: {_copies(len(crossing))} of training images (e.g. "
            f"{crossing[0]}); split folders are your decision and are kept, so accuracy counts them: "
            "read accuracy_no_dups, or delete the copies or move them into one split")
    class_names = check_coverage(man, role, log)
    roles = role.to_numpy()
    train_idx, eval_idx = np.flatnonzero(roles == "train"), np.flatnonzero(roles == "eval")
    # the validation folder's images of classes that are trained on (others are ignored, as said)
    valid_idx = np.flatnonzero((roles == "tune") & man["label"].astype(str).isin(class_names).to_numpy())
    if len(class_names) < 2:
        raise DataError(f"only {len(class_names)} class ({', '.join(map(repr, class_names))}) has "
                        "training images; a classifier needs at least two: add images")
    if not len(eval_idx):
        raise DataError("no images to evaluate on: add images (a class needs 3 different ones to "
                        "hold one out), or a test/ folder beside train/")
    leaked = dups.partners_in(roles == "train")[eval_idx]  # eval image with a train duplicate
    return Data(feats, test_size, conflicts, dups, cluster, role, split_rule, crossing, class_names,
                train_idx, eval_idx, valid_idx, leaked, normalize, normalize_vectors(feats.X, normalize))


@dataclasses.dataclass
class Plan:
    """What will be fitted, on which folds, how tuned and how many at once (:func:`plan_run`)."""

    models: dict
    mode: str  # valid, nested or off (choose_tuning)
    tuning_rule: str
    split_use: dict
    repeats: int
    fold_sets: list  # per repeat: (folds, fold id per training row)
    fold_groups: np.ndarray
    inner_groups: np.ndarray | None  # GROUPS=dups: the splits inside every fit keep these whole
    budget: object  # classify.budget's memory plan
    n_jobs: int
    slow_note: str | None = None  # logged when the fits take long (classify.fits.tuning_note)

    @property
    def fold_list(self) -> list:
        return [f for fl, _ in self.fold_sets for f in fl]

    @property
    def fold_ids(self) -> list[tuple[int, int]]:
        return [(r, k) for r, (fl, _) in enumerate(self.fold_sets) for k in range(len(fl))]

    @property
    def n_folds(self) -> int:
        return len(self.fold_sets[0][0])


def plan_run(data: Data, models: dict, heads: str, seed: int, folds: int, repeats, tune, memory_gb,
             jobs, groups: str, log) -> Plan:
    """Step 2: the folds (and their repeats), the tuning mode, what each split is used for, the
    memory plan; logs them, then the classes and what could mislead (:func:`log_notices`)."""
    man, y, train_idx, eval_idx = data.man, data.y, data.train_idx, data.eval_idx
    fold_groups = _fold_groups(man, data.cluster if groups == "dups" else None)
    repeats = choose_repeats(repeats, len(train_idx))
    fold_sets = [cv_folds(y[train_idx], fold_groups[train_idx], folds, seed + r,
                          log if r == 0 else (lambda *_a, **_k: None)) for r in range(repeats)]
    n_folds = len(fold_sets[0][0])
    norm = "" if data.normalize == "none" else f" (NORMALIZE={data.normalize})"
    log(f"features {data.feats.key}: {len(man)} images, {data.X.shape[1]} dims{norm}; {data.split_rule}; "
        f"{len(train_idx)} train, {len(eval_idx)} evaluated; {n_folds}-fold CV"
        f"{f' x {repeats} repeats' if repeats > 1 else ''}; "
        f"heads {', '.join(models)}")
    log(f"duplicates: {data.dups.rule}; search: {data.dups.search}; {int(data.leaked.sum())} of "
        f"{plural(len(eval_idx), 'evaluated image')} {'has' if len(eval_idx) == 1 else 'have'} a "
        "duplicate in the training part")
    valid = tune_split_of(man)
    mode, tuning_rule = choose_tuning(tune, len(train_idx), valid if len(data.valid_idx) else None)
    if mode == "nested":
        models = select_heads(heads, seed, tune=True)
    copies = {"train": len(data.crossing)}
    if mode == "valid":
        chose = copies_across(man, data.role, of="tune")
        if chose:
            log(f"warning: {_copies(len(chose))} of {valid}/ images "
                f"(e.g. {chose[0]}), which choose each head's settings, so the test score is not "
                "independent of that choice: delete the copies or move them into one split")
            copies[valid] = len(chose)
    split_use = _split_use(man, mode, copies, tune)
    log(f"tuning: {tuning_rule}")
    log("splits: " + "; ".join(f"{name}: {use}" for name, use in split_use.items()))
    budget = plan_for(models, data.X, len(train_idx), memory_gb, jobs, log)
    log_notices(man, data.feats.meta, log)
    return Plan(models, mode, tuning_rule, split_use, repeats, fold_sets, fold_groups,
                fold_groups if groups == "dups" else None, budget, budget.n_jobs,
                tuning_note(models, mode, sum(len(fl) for fl, _ in fold_sets) + 1))


@dataclasses.dataclass
class Fits:
    """Every head fitted on the training part and cross-validated (:func:`fit_and_cross_validate`)."""

    models: dict  # the unfitted heads, with the validation folder's choice when there is one
    fitted: dict
    cv_scores: dict
    fit_seconds: dict
    cv_seconds: dict
    chosen: dict  # per head: {"final": settings, "folds": [settings per CV fit]}
    tuning_rows: list


def fit_and_cross_validate(data: Data, plan: Plan, log) -> Fits:
    """Step 3: selects each head's settings on the validation folder (mode ``valid``), then fits
    every head on every CV fold and on the whole training part (:func:`classify.fits.fit_all`)."""
    models, tuning_rows = plan.models, []
    if plan.mode == "valid":
        models, tuning_rows = select_on_validation(models, data.X, data.y, data.train_idx, data.valid_idx,
                                                   plan.n_jobs, log, plan.inner_groups)
    fitted, cv_scores, fit_seconds, cv_seconds, chosen = fit_all(models, data.X, data.y, data.train_idx,
                                                                 plan.fold_list, plan.n_jobs, plan.inner_groups,
                                                                 plan.slow_note, log)
    if plan.mode == "nested":
        tuning_rows = [(h, f"repeat {r} fold {k}" if k >= 0 else "final", format_settings(s),
                        "" if k < 0 else round(float(cv_scores[h][i]), 6), "yes" if k < 0 else "")
                       for h in chosen for i, ((r, k), s) in enumerate(
                           zip(plan.fold_ids + [(0, -1)], chosen[h]["folds"] + [chosen[h]["final"]]))]
    return Fits(models, fitted, cv_scores, fit_seconds, cv_seconds, chosen, tuning_rows)


def evaluate(out: Path, data: Data, plan: Plan, fits: Fits, seed: int, log) -> tuple[pd.DataFrame, dict]:
    """Step 4: writes split.csv and tuning.csv, scores every head on the evaluated images
    (predictions.csv, reports/, models/), adds the intervals, paired tests and verdicts
    (comparison.csv) and every fold score (cv_scores.csv).

    Returns:
        (the comparison table, {head: its probabilities on the evaluated images}).
    """
    man, y, eval_idx = data.man, data.y, data.eval_idx
    fold_col = np.full(len(man), "", dtype=object)
    fold_col[data.train_idx] = plan.fold_sets[0][1].astype(str)
    roles = data.role.replace({"": "unused", "tune": "tune" if plan.mode == "valid" else "unused"})
    write_csv(out / "split.csv", ["path", "label", "role", "fold"], zip(man["path"], man["label"], roles, fold_col))
    if fits.tuning_rows:
        write_csv(out / "tuning.csv", ["head", "fit", "params", "score", "chosen"], fits.tuning_rows)
    outs = {h: outputs(m, data.X[eval_idx]) for h, m in fits.fitted.items()}  # each model's one pass
    comparison = _evaluate(out, fits.fitted, outs, fits.cv_scores, fits.fit_seconds, fits.cv_seconds, y, man,
                           eval_idx, data.leaked, data.class_names, data.feats, data.split_rule, seed,
                           len(data.train_idx), {h: fits.chosen[h]["final"] for h in fits.fitted},
                           data.normalize)
    predictions = pd.read_csv(out / "predictions.csv", keep_default_na=False, dtype=str)
    comparison = _compare_heads(comparison, fits.cv_scores, plan.n_folds, [len(te) for _, te in plan.fold_list],
                                y[eval_idx], man["path"].to_numpy()[eval_idx], predictions, log)
    write_csv(out / "comparison.csv", list(comparison.columns), comparison.itertuples(index=False))
    write_csv(out / "cv_scores.csv", ["head", "repeat", "fold", "score", "n_images"],
              ((h, r, k, round(float(s), 6), len(te)) for h in fits.cv_scores
               for (r, k), s, (_, te) in zip(plan.fold_ids, fits.cv_scores[h], plan.fold_list)))
    return comparison, {h: proba for h, (proba, _) in outs.items()}


def write_figures_and_curves(out: Path, data: Data, plan: Plan, fits: Fits, comparison: pd.DataFrame,
                             probas: dict, seed: int, log) -> dict:
    """Step 5a: the figures, and the learning curves at each head's reported settings
    (learning_curve.csv); logs whether more data would help.

    Returns:
        {"figures": file names, "curve": the curves' table, "curve_settings": how their settings
        were chosen, "more_data": the sentence logged}.
    """
    from . import figures

    y_eval = data.y[data.eval_idx]
    figure_names = figures.write_figures(out / "figures", fits.fitted, probas, y_eval, data.class_names)
    settled, curve_settings = _curve_heads(fits.models, fits.chosen, plan.mode, plan.n_folds, seed)
    for heads_of_folds in settled.values():
        apply_plan(dict(enumerate(heads_of_folds)), plan.budget)
    curve = curves.learning_curves(settled, data.X, data.y, plan.fold_sets[0][0], plan.n_jobs, seed,
                                   rows=data.train_idx, groups=plan.inner_groups, settings=curve_settings)
    write_csv(out / "learning_curve.csv", list(curve.columns), curve.itertuples(index=False))
    figure_names.append(curves.plot_learning_curves(curve, out / "figures" / "learning_curve.png"))
    reliability = curves.reliability_diagram(probas, y_eval, data.class_names, out / "figures" / "reliability.png")
    figure_names += [reliability] if reliability else []
    figure_names.append(curves.plot_intervals(comparison, out / "figures" / "intervals.png"))
    more_data = curves.more_data_would_help(curve, best=answer_of(comparison).best.head)
    log(more_data)
    return {"figures": figure_names, "curve": curve, "curve_settings": curve_settings, "more_data": more_data}


def write_run_json(out: Path, data: Data, plan: Plan, fits: Fits, comparison: pd.DataFrame, extras: dict,
                   run: dict) -> None:
    """Step 5b: run.json, every setting of the run and its answer (``run``: seed, groups and the
    seconds so far)."""
    feats, models, dups, curve = data.feats, plan.models, data.dups, extras["curve"]
    y_eval = data.y[data.eval_idx]
    write_json(out / "run.json", {
        "features_key": feats.key,
        "features_folder": str(feats.folder.resolve()),
        "extraction": _settings_of(feats.meta),
        "weights_fallback": feats.meta.get("weights_fallback"),
        "heads": list(models),
        "normalize": data.normalize,
        "fewshot": extras["fewshot"],
        "seed": run["seed"], "test_size": data.test_size, "folds": plan.n_folds, "repeats": plan.repeats,
        "jobs": plan.n_jobs, "engine": _engine(plan.n_jobs),
        "memory_plan": plan.budget.as_dict(),
        "tuning": {"mode": plan.mode, "rule": plan.tuning_rule,
                   "inner_folds": INNER_FOLDS if plan.mode == "nested" else None,
                   **_grids(plan, models, len(data.train_idx)),
                   "chosen": {h: fits.chosen[h]["final"] for h in models}},
        "split_use": plan.split_use,
        "comparison_tests": {"intervals": "95%: Wilson (accuracy), corrected resampled t (CV)",
                             "p_vs_best": "corrected resampled paired t (Nadeau and Bengio) "
                                          "on the fold scores",
                             "p_mcnemar": "McNemar's exact test on the evaluated images",
                             "verdict": f"p_vs_best after Holm's adjustment, at {stats.ALPHA}"},
        "cv_metric": CV_METRIC,
        "split_rule": data.split_rule,
        "groups": run["groups"],
        "duplicates": {"threshold": dups.threshold if np.isfinite(dups.threshold) else None,
                       "rule": dups.rule, "search": dups.search, "basis": dups.basis,
                       **dups.summary(), "eval_with_train_duplicate": int(data.leaked.sum())},
        "label_conflicts": data.conflicts,
        "more_data": extras["more_data"],
        "answer": answer_record(comparison),
        "learning_curve": {"settings": extras["curve_settings"],
                           "folds": int(curve["n_folds"].max()) if len(curve) else 0},
        "n_images": len(data.man), "n_train": len(data.train_idx), "n_eval": len(data.eval_idx),
        "class_names": data.class_names,
        "classes_not_measured": [c for c in data.class_names
                                 if c not in measured_classes(data.class_names, y_eval)],
        "figures": extras["figures"],
        "seconds": round(run["seconds"], 3),
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "versions": _versions(),
    })


def _grids(plan: Plan, models: dict, n_train: int) -> dict:
    """run.json's ``grids`` (what each head searched; the final fit's, with nested tuning) and,
    where a CV fit searched another (fewer rows), ``cv_fit_grids``."""
    if plan.mode == "off":
        return {"grids": None}
    if plan.mode == "valid":  # every candidate, fitted on train, scored on the validation folder
        return {"grids": {h: searched_grid(h) for h in models}}
    final = {h: searched_grid(h, n_train) for h in models}
    smallest = min(len(tr) for tr, _ in plan.fold_list)
    folds = {h: searched_grid(h, smallest) for h in models}
    return {"grids": final, **({"cv_fit_grids": {h: g for h, g in folds.items() if g != final[h]}}
                               if folds != final else {})}


def write_fewshot(out: Path, data: Data, plan: Plan, heads: str, shots: list[int], draws: int, seed: int,
                  log, figure_names: list) -> dict | None:
    """Step 5c (``SHOTS``): fewshot.csv and figures/fewshot.png (added to ``figure_names``), every
    head at its fixed settings within the memory plan; returns what run.json records (None
    without shots)."""
    if not shots:
        return None
    models = select_heads(heads, seed)
    apply_plan(models, plan.budget)
    y, train_idx = data.y, data.train_idx
    table = fewshot.fewshot_curves(models, data.X, y, train_idx, data.eval_idx, shots, draws, seed,
                                   plan.n_jobs, log)
    write_csv(out / "fewshot.csv", list(table.columns), table.itertuples(index=False))
    figure_names.append(fewshot.plot_fewshot(table, out / "figures" / "fewshot.png"))
    means = fewshot.summary(table)
    log("few-shot (mean balanced accuracy over the draws): " + "; ".join(
        f"{h} " + ", ".join(f"{k}: {m:.3f}" for k, m in zip(g["shots"], g["score_mean"]))
        for h, g in means.groupby("head", sort=False)))
    left = {str(k): v for k, v in fewshot.draw_rows(y[train_idx], shots, 1, seed)["left_out"].items() if v}
    return {"shots": shots, "draws": draws, "settings": "fixed (TUNE=0's)", "score": CV_METRIC,
            "classes_left_out": left}


def _copies(n: int) -> str:
    """``1 evaluated image is an exact copy``, ``2 evaluated images are exact copies``."""
    return (f"{plural(n, 'evaluated image')} {'is an exact copy' if n == 1 else 'are exact copies'}")


def log_notices(man: pd.DataFrame, meta: dict, log) -> None:
    """Logs what a reader needs before the numbers: the classes with their image counts (most
    first), a warning when a class name looks like a split name, and a banner when the features
    come from random weights (see :mod:`extract.notices`)."""
    counts = man["label"].astype(str).value_counts()
    counts = counts.sort_index().sort_values(ascending=False, kind="stable")
    log(class_counts_line(counts.to_dict()))
    for line in (split_like_warning(counts.index), random_weights_banner(meta.get("weights"),
                                                                         meta.get("weights_fallback"))):
        if line:
            log(line)


def answer_record(comparison: pd.DataFrame) -> dict:
    """The answer of the run as run.json records it (:func:`classify.answer.answer_of` of
    comparison.csv, the same best head by the same rule for every command that reads the run)."""
    answer = answer_of(comparison)
    return {"rule": "best: highest cv_mean (cross-validated balanced accuracy of the reported "
                    "settings); tied: corrected paired t against the best, Holm-adjusted, "
                    f"p >= {stats.ALPHA}",
            "best": answer.best.head, "tied": [h.head for h in answer.tied],
            "worse": [h.head for h in answer.worse], "headline": answer.headline()}


def _curve_heads(models: dict, chosen: dict, mode: str, n_folds: int, seed: int) -> tuple[dict, str]:
    """The learning curves' heads: per head, one unfitted head per fold of the first repeat, and
    how their settings were chosen, in words.

    With nested tuning each fold's curve uses the settings that fold's own fit chose on its
    training rows (``chosen[h]["folds"]``, the first repeat first), so the held-out images the
    curve is scored on never helped choose them; it costs no fit. Otherwise the settings are
    the same in every fold: fixed (TUNE=0), or chosen on the validation folder, which the CV
    folds never score.
    """
    if mode == "nested":
        return ({h: [fixed_head(h, seed, s) for s in chosen[h]["folds"][:n_folds]] for h in models},
                "chosen in each fold on its training rows (nested tuning)")
    words = "fixed (TUNE=0 or above TUNE=auto's size)" if mode == "off" else "chosen on the validation folder"
    return {h: [fixed_head(h, seed, chosen[h]["final"])] * n_folds for h in models}, words


def choose_repeats(repeats, n_train: int) -> int:
    """``REPEATS``: a whole number of at least 1, or ``auto``.

    ``auto`` repeats the cross-validation 3 times up to 5,000 training images, where a fold
    costs little and more fold scores make the paired test less noisy, and once above that.

    Raises:
        ValueError: anything else.
    """
    if repeats == "auto":
        return 3 if n_train <= AUTO_REPEATS_UP_TO else 1
    try:
        value = int(repeats)
    except (TypeError, ValueError):
        value = 0
    if value < 1 or str(repeats).strip() != str(value):
        raise ValueError(f"REPEATS must be a whole number of at least 1, or auto; received {repeats!r}")
    return value


def _compare_heads(comparison: pd.DataFrame, cv_scores: dict, n_folds: int, fold_sizes: list, y_eval,
                   paths_eval, pred: pd.DataFrame, log) -> pd.DataFrame:
    """Adds 95% intervals, each head's paired tests against the best head, and the verdicts.

    The best head is the one with the best ``cv_mean`` (as for ``make predict``). ``p_vs_best``
    is the corrected resampled paired t on the fold scores (they come from the same folds; each
    fold's held-out images, ``fold_sizes``, set the least variance a fold score can have);
    ``p_mcnemar`` is McNemar's exact test on the evaluated images. ``verdict`` is ``best``,
    ``tied`` or ``worse`` (``p_vs_best`` below 0.05 after Holm's adjustment).
    """
    table = comparison.copy()
    best = str(table.loc[table["cv_mean"].astype(float).idxmax(), "head"])
    y_eval = np.asarray(y_eval).astype(str)
    by_path = pred.set_index("path")
    right = {h: by_path.loc[paths_eval, h].to_numpy().astype(str) == y_eval for h in table["head"]}
    ci = [stats.wilson_interval(int(right[h].sum()), len(y_eval)) for h in table["head"]]
    cv_ci = [stats.corrected_t_interval(cv_scores[h], 1 / n_folds, fold_sizes) for h in table["head"]]
    p_cv = {h: stats.corrected_paired_t(cv_scores[h], cv_scores[best], 1 / n_folds, fold_sizes)
            for h in table["head"]}
    p_mc = {h: stats.mcnemar_exact(right[h], right[best]) for h in table["head"]}
    verdict = stats.verdicts(best, p_cv)
    at = list(table.columns).index("cv_std") + 1
    for offset, (name, values) in enumerate((
            ("accuracy_ci_low", [c[0] for c in ci]), ("accuracy_ci_high", [c[1] for c in ci]),
            ("cv_ci_low", [c[0] for c in cv_ci]), ("cv_ci_high", [c[1] for c in cv_ci]),
            ("p_vs_best", [p_cv[h] for h in table["head"]]),
            ("p_mcnemar", [p_mc[h] for h in table["head"]]),
            ("verdict", [verdict[h] for h in table["head"]]))):
        table.insert(at + offset, name, values)
    tied = [h for h in table["head"] if verdict[h] == "tied"]
    if tied:
        log(f"{', '.join(tied)} {'is' if len(tied) == 1 else 'are'} tied with the best head, {best}: "
            "the difference is within what other folds could give (corrected paired t, Holm)")
    return table


def _fold_groups(man: pd.DataFrame, cluster) -> np.ndarray:
    """The unit the folds never split: an image with its exact copies, joined with its duplicate
    cluster under GROUPS=dups."""
    keys = [content_key(man)]
    if cluster is not None:
        keys.append(cluster)
    return unit_ids(*keys)


def choose_tuning(tune, n_train: int, valid: str | None) -> tuple[str, str]:
    """``TUNE``: ``auto``, ``1`` or ``0`` -> (mode, the rule in words).

    Modes: ``valid`` (a validation folder beside test/: each candidate is fitted on train and the
    one with the best balanced accuracy on the validation folder is kept), ``nested`` (every fit,
    those of the CV folds included, searches its grid on inner folds of its own training rows,
    so the CV scores are those of the whole tune-then-fit procedure), ``off`` (fixed settings).
    ``auto`` tunes up to :data:`TUNE_AUTO_UP_TO` training images (measured: 42 s for the three
    heads on 9,936 training images, see BENCHMARKS.md), and keeps the fixed settings above.

    Raises:
        ValueError: another value.
    """
    value = str(tune).strip().lower()
    if value not in ("auto", "1", "0"):
        raise ValueError(f"TUNE must be auto, 1 or 0; received {tune!r}")
    if value == "0":
        return "off", "off (TUNE=0): fixed settings"
    if value == "auto" and n_train > TUNE_AUTO_UP_TO:
        return "off", (f"off: {n_train:,} training images, above TUNE=auto's {TUNE_AUTO_UP_TO:,}; fixed "
                       "settings (TUNE=1 tunes anyway, at several times the time)")
    if valid:
        return "valid", (f"each head's grid fitted on 'train' and selected on the validation folder "
                         f"'{valid}' (balanced accuracy); the test score is untouched by the choice")
    return "nested", (f"each head's grid searched by {INNER_FOLDS}-fold inner cross-validation inside "
                      "every fit (nested: the CV scores include the tuning)")


def _split_use(man: pd.DataFrame, mode: str, copies: dict | None = None, tune="0") -> dict:
    """What each split folder (or the hold-out) was used for, for the console, run.json and report.

    ``copies``: {split: how many evaluated images are exact copies of its images}; any such
    copies qualify "untouched". ``tune``: TUNE as given, which says why tuning is off.
    """
    evaluated = eval_split_of(man)
    trained = "fitted on, and cross-validated on" + (" (tuning nested in every fit)" if mode == "nested" else "")
    seen = {k: n for k, n in (copies or {}).items() if n}
    score = "the reported score, untouched by fitting and tuning" + "".join(
        f", except {n} exact copies of {k}/ images" for k, n in seen.items())
    if evaluated is None:
        return {"train": trained, "hold-out": score}
    use = {"train": trained, evaluated: score}
    valid = tune_split_of(man)
    if valid:
        off = ("TUNE=0" if str(tune).strip() == "0" else
               f"tuning off: TUNE=auto tunes up to {TUNE_AUTO_UP_TO:,} training images")
        use[valid] = "tuning: selects each head's settings" if mode == "valid" else f"not used ({off})"
    for other in sorted(set(man["split"]) - {"", "train", evaluated, valid}):
        use[other] = "not used"
    return use


def _evaluate(out: Path, fitted: dict, outs: dict, cv_scores: dict, fit_seconds: dict, cv_seconds: dict, y,
              man: pd.DataFrame, eval_idx, leaked, class_names: list[str], feats: Features,
              split_rule: str, seed: int, n_train: int, settings: dict, normalize: str = "none") -> pd.DataFrame:
    """Scores every fitted head on the evaluated images and writes comparison.csv,
    predictions.csv, reports/ and models/ under ``out``. ``outs``: each head's
    :func:`classify.heads.outputs` on the evaluated images.

    macro-F1 has one definition: the unweighted mean of the per-class F1 over the model's
    classes that have evaluated images (:func:`measured_classes`), read from the same
    classification report that is written. A class with no evaluated image has no F1 to measure
    (counting it as 0 would make a perfect head score below 1); it is named in the report.
    ``top5_accuracy`` (from 6 classes): the share of evaluated images whose class is among the
    head's 5 most probable. ``normalize``: NORMALIZE, saved with each model for ``make predict``.
    """
    for sub in ("reports", "models"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    y_eval = y[eval_idx]
    measured = measured_classes(class_names, y_eval)
    left_out = [c for c in class_names if c not in measured]
    note = ("" if not left_out else "not measured (no evaluated image; left out of every average): "
            + ", ".join(map(repr, left_out)) + "\n")
    pred = pd.DataFrame({"path": man["path"].to_numpy()[eval_idx], "label": y_eval})
    rows = []
    for name, model in fitted.items():
        if list(model.classes_) != class_names:
            raise RuntimeError(f"head {name} learnt classes {list(model.classes_)}, not {class_names}")
        proba, margins = outs[name]
        labels, score = labels_of(model, proba)
        pred[name] = labels
        pred[f"{name}_score"] = np.round(score.astype(float), 6)
        decision = decision_values(model, margins, labels)
        if decision is not None:
            pred[f"{name}_decision"] = np.round(decision.astype(float), 6)
        report = classification_report(y_eval, labels, labels=measured, zero_division=0, output_dict=True)
        report_txt = classification_report(y_eval, labels, labels=measured, zero_division=0, digits=4)
        folds_score = cv_scores[name]
        rows.append({
            "head": name,
            "params": format_settings(settings[name]),
            "accuracy": accuracy_score(y_eval, labels),
            "accuracy_no_dups": (accuracy_score(y_eval[~leaked], labels[~leaked]) if (~leaked).any()
                                 else float("nan")),
            "balanced_accuracy": cv_score(y_eval, labels),
            "macro_f1": float(report["macro avg"]["f1-score"]),
            **({f"top{TOP_K}_accuracy": float(top_k_accuracy_score(y_eval, proba, k=TOP_K, labels=class_names))}
               if len(class_names) >= TOP_K_FROM else {}),
            "cv_mean": float(folds_score.mean()),
            "cv_std": float(folds_score.std()),
            "n_train": n_train,
            "n_eval": len(eval_idx),
            "n_eval_no_dups": int((~leaked).sum()),
            "fit_seconds": round(fit_seconds[name], 3),
            "cv_seconds": round(cv_seconds[name], 3),
        })
        (out / "reports" / f"{name}.txt").write_text(
            f"head: {name}\nfeatures: {feats.key}\nevaluated on {len(eval_idx)} images ({split_rule})\n"
            + note + "\n" + report_txt, encoding="utf-8")
        write_json(out / "reports" / f"{name}.json", report)
        save_model(out / "models" / f"{name}{MODEL_SUFFIX}", {
            "model": model, "head": name, "class_names": class_names,
            "features_key": feats.key, "settings": _settings_of(feats.meta),
            "seed": seed, "cv_mean": float(folds_score.mean()), "cv_metric": CV_METRIC,
            "params": settings[name], "normalize": normalize,
            "sklearn": sklearn.__version__,
        })
    comparison = pd.DataFrame(rows)
    write_csv(out / "comparison.csv", list(comparison.columns), comparison.itertuples(index=False))
    pred = pred.sort_values("path", kind="stable")
    write_csv(out / "predictions.csv", list(pred.columns), pred.itertuples(index=False))
    return comparison


def measured_classes(class_names: list[str], y_eval) -> list[str]:
    """The model's classes that have at least one evaluated image, in the model's order: the
    classes whose precision, recall and F1 can be measured (and averaged)."""
    present = set(np.asarray(y_eval).astype(str))
    return [c for c in class_names if c in present]


def _engine(n_jobs: int) -> str:
    """Where the fits ran: ``ray`` when they went through joblib (more than one job) inside
    ``ENGINE=ray``'s block, else ``local`` (one job fits in this process, Ray or not)."""
    from joblib.parallel import get_active_backend

    on_ray = type(get_active_backend()[0]).__name__ == "RayBackend"
    return "ray" if on_ray and n_jobs > 1 else "local"


def _versions() -> dict:
    import skops

    return {"python": platform.python_version(), "numpy": np.__version__, "pandas": pd.__version__,
            "scikit-learn": sklearn.__version__, "joblib": joblib.__version__,
            "skops": skops.__version__}


def _settings_of(meta: dict) -> dict:
    return {k: meta.get(k) for k in ("backbone", "weights", "weights_tag", "image_size", "pooling",
                                     "layer", "precision", "dim", "key")}
