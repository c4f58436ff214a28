"""Every head on every backbone: ``make compare BACKBONES=vgg16,convnexttiny``.

One :func:`classify.compare.compare` per backbone, on the same images, split and folds (the
hold-out is drawn from each file's content hash and SEED, the folds from SEED, so equal
manifests give equal splits; both are checked). Layout under ``OUT``::

    OUT/<backbone>/         each backbone's full outputs, as `make compare BACKBONE=<backbone>`
    OUT/backbones.csv       backbone,head,accuracy,balanced_accuracy,macro_f1,cv_mean,cv_std,
                            [interval and verdict columns of comparison.csv,]
                            backbone_p_vs_best,backbone_verdict (see backbone_test),
                            dim,features_key
    OUT/backbones.png       the heat map of cv_mean (and held-out accuracy) per cell
    OUT/ (the rest)         a copy of the best backbone's outputs (highest cv_mean of any head),
                            so `make report` and `make predict` work on OUT as after one backbone;
                            run.json records ``backbones``, ``best_backbone`` and ``backbone_test``
                            (each backbone's best head tested against the best cell, one
                            overall verdict). The top level
                            is written aside and swapped in whole (``classify.outdir.new_run``).
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pandas as pd

from extract.atomic import write_csv, write_json
from extract.backbones import BACKBONES
from extract.model import Settings

from .compare import compare
from .data import DataError, load_features
from .outdir import RUN_OUTPUTS, new_run

MATRIX_COLUMNS = ["backbone", "head", "accuracy", "balanced_accuracy", "macro_f1", "cv_mean", "cv_std"]
# Columns of comparison.csv carried into backbones.csv when present (chosen settings, confidence
# intervals, tests against the best head, verdicts).
EXTRA_COLUMN = re.compile(r"(_ci_low|_ci_high)$|^p_vs_|^verdict$|^params$")


def settings_for(backbones: list[str], weights: str, size: int | None, pooling: str,
                 precision: str, layer: str | None, features_dir="features") -> list[Settings]:
    """One checked :class:`Settings` per backbone; ``size`` None gives each its own default.

    ``precision`` ``auto`` becomes the precision ``make features`` chose for each backbone on
    this machine (remembered under ``features_dir``).

    Raises:
        ValueError: a setting one of the backbones does not accept (e.g. a LAYER it lacks), or
            ``auto`` without a remembered choice.
    """
    from extract.precision import resolved_without_calibrating

    return [resolved_without_calibrating(Settings(name, weights, size, pooling, precision, layer),
                                         features_dir).check() for name in backbones]


def check_same_images(features_dir, settings_list: list[Settings], in_dir: str = "in",
                      fallback_none: bool = False, dataset: str | None = None) -> None:
    """Refuses caches that hold different images, so every backbone sees the same split.

    Raises:
        DataError: a cache is missing (naming the command that makes it), or two caches differ
            in their images: the first difference, why (an image one backbone's extraction
            rejected, as its ``rejected.csv`` says; an image one cache lacks; a file whose
            content changed between the extractions) and what fixes it.
    """
    first, reference = None, None
    for settings in settings_list:
        feats = load_features(features_dir, settings, in_dir=in_dir, fallback_none=fallback_none,
                              dataset=dataset)
        images = dict(zip(feats.manifest["path"], feats.manifest["sha256"]))
        if reference is None:
            first, reference, first_folder = settings, images, feats.folder
            continue
        if images != reference:
            differ = sorted(set(images.items()) ^ set(reference.items()))[0][0]
            names = ",".join(s.backbone for s in settings_list)
            again = f"make features BACKBONES={names} IN={in_dir}"
            why = _why_different(differ, (first, first_folder, reference), (settings, feats.folder, images))
            raise DataError(
                f"the caches of {first.backbone} ({first.key}) and {settings.backbone} "
                f"({settings.key}) hold different images (first difference: {differ!r}): {why}; "
                f"every backbone must be compared on the same images: {_fix(why, again)}, then "
                "make compare")


def _rejection(folder: Path, path: str) -> str | None:
    """The reason ``folder/rejected.csv`` gives for ``path``, or None when it is not listed."""
    from extract.atomic import read_csv_rows

    try:
        return next((r.get("reason", "") for r in read_csv_rows(folder / "rejected.csv") if r.get("path") == path),
                    None)
    except (OSError, ValueError):
        return None


def _why_different(path: str, a: tuple, b: tuple) -> str:
    """Why ``path`` differs between two caches, each (settings, folder, {path: sha256})."""
    if path in a[2] and path in b[2]:
        return (f"its content differs between the two caches (the file changed between the "
                f"{a[0].backbone} and {b[0].backbone} extractions)")
    has, lacks = (a, b) if path in a[2] else (b, a)
    reason = _rejection(lacks[1], path)
    if reason is not None:
        return (f"{lacks[0].backbone}'s extraction rejected it ({reason}; listed in "
                f"{lacks[1] / 'rejected.csv'}) while {has[0].backbone}'s embedded it")
    return f"only {has[0].backbone}'s cache holds it (the other was made before it was added or after it was removed)"


def _fix(why: str, again: str) -> str:
    """What to do about a difference :func:`_why_different` explained."""
    if "rejected it" in why:
        return ("make features does not retry a file whose content it could not embed while the file "
                f"stays the same, so fix or replace that file in IN (or delete it), then run {again} "
                "so that every cache holds it or none does")
    return f"run {again}"


def matrix_table(tables: dict[str, pd.DataFrame], settings_list: list[Settings]) -> pd.DataFrame:
    """The rows of backbones.csv: one per (backbone, head), in BACKBONES then HEADS order."""
    frames = []
    for settings in settings_list:
        table = tables[settings.backbone]
        extra = [c for c in table.columns if EXTRA_COLUMN.search(c)]
        frame = table[[c for c in MATRIX_COLUMNS if c != "backbone"] + extra].copy()
        frame.insert(0, "backbone", settings.backbone)
        frame["dim"] = settings.dim
        frame["features_key"] = settings.key
        frames.append(frame)
    matrix = pd.concat(frames, ignore_index=True)
    tail = ["dim", "features_key"]
    return matrix[[c for c in matrix.columns if c not in tail] + tail]


def backbone_test(out: Path, matrix: pd.DataFrame, same_folds: bool) -> dict:
    """Each backbone's best head against the best cell of the matrix, on the shared folds.

    The best cell is the head with the highest ``cv_mean`` of any backbone; every other
    backbone's best head (its own highest ``cv_mean``) is compared with it by the corrected
    resampled paired t on the fold scores of ``OUT/<backbone>/cv_scores.csv`` (fold for fold,
    with the binomial floor of :func:`classify.stats.binomial_floor`), and Holm's adjustment
    over the backbones gives each a verdict (``best``, ``tied``, ``worse``), as the heads get
    within one backbone. The folds must be the same (same split.csv, same repeats and fold
    sizes); otherwise nothing is tested and the verdict says why.

    Returns:
        {"best": backbone, "best_head": ..., "heads": {backbone: its best head},
        "p_vs_best": {backbone: p}, "verdicts": {backbone: word}, "verdict": one sentence,
        "method": in words}; ``p_vs_best`` and ``verdicts`` empty when not tested.
    """
    from . import stats

    cv = matrix.assign(cv_mean=matrix["cv_mean"].astype(float))
    heads = {b: str(g.loc[g["cv_mean"].idxmax(), "head"]) for b, g in cv.groupby("backbone", sort=False)}
    best = best_backbone(matrix)
    result = {"best": best, "best_head": heads[best], "heads": heads, "p_vs_best": {}, "verdicts": {},
              "method": "each backbone's best head against the best one: corrected resampled paired t on "
                        "the shared folds' scores, Holm's adjustment over the backbones, at "
                        f"{stats.ALPHA}"}
    scores = {}
    for b, h in heads.items():
        table = pd.read_csv(out / b / "cv_scores.csv")
        mine = table[table["head"] == h].sort_values(["repeat", "fold"])
        scores[b] = mine
    keys = ["repeat", "fold"] + (["n_images"] if all("n_images" in t for t in scores.values()) else [])
    reference = scores[best][keys].reset_index(drop=True)
    if not same_folds or "n_images" not in keys or any(
            not t[keys].reset_index(drop=True).equals(reference) for t in scores.values()):
        result["verdict"] = ("not tested: the backbones' folds differ (GROUPS=dups draws each backbone's "
                             "clusters from its own embeddings), so their fold scores cannot be paired; "
                             f"{best} ({heads[best]}) has the highest cv_mean")
        return result
    n_folds = int(reference.groupby("repeat")["fold"].nunique().max())
    sizes = reference["n_images"].to_numpy()
    p = {b: stats.corrected_paired_t(scores[b]["score"].to_numpy(), scores[best]["score"].to_numpy(),
                                     1 / n_folds, sizes) for b in heads}
    verdicts = stats.verdicts(best, p)
    result["p_vs_best"] = {b: float(v) for b, v in p.items()}
    result["verdicts"] = verdicts
    others = [b for b in heads if b != best]
    worse = [b for b in others if verdicts[b] == "worse"]
    tied = [b for b in others if verdicts[b] == "tied"]
    if not others:
        sentence = f"{best} ({heads[best]}) is the only backbone"
    elif not tied:
        sentence = (f"{best} ({heads[best]}) is the best backbone: every other one scores worse on the "
                    "same folds (corrected paired t, Holm)")
    else:
        sentence = (f"no backbone is clearly best: {best} ({heads[best]}) has the highest cv_mean, but "
                    f"{', '.join(f'{b} ({heads[b]}, p={p[b]:.3g})' for b in tied)} "
                    f"{'is' if len(tied) == 1 else 'are'} tied with it on the same folds"
                    + (f"; {', '.join(worse)} {'is' if len(worse) == 1 else 'are'} worse" if worse else ""))
    result["verdict"] = sentence
    return result


def best_backbone(matrix: pd.DataFrame) -> str:
    """The backbone of the cell with the highest cv_mean (the first one on a tie)."""
    return str(matrix.loc[matrix["cv_mean"].astype(float).idxmax(), "backbone"])


def same_split(out: Path, backbones: list[str]) -> bool:
    """True when every backbone's split.csv assigns each image the same role."""
    splits = [pd.read_csv(out / name / "split.csv", dtype=str, keep_default_na=False)
              for name in backbones]
    return all(s.equals(splits[0]) for s in splits[1:])


def copy_run(source: Path, target: Path) -> None:
    """Copies the run outputs (``classify.outdir.RUN_OUTPUTS``) of ``source`` into ``target``."""
    for name in sorted(RUN_OUTPUTS):
        if (source / name).is_dir():
            shutil.copytree(source / name, target / name)
        elif (source / name).is_file():
            shutil.copy2(source / name, target / name)


def remove_stale_backbones(out: Path, backbones: list[str]) -> None:
    """Deletes ``out/<name>/`` runs of registry backbones that are not in this matrix."""
    for name in BACKBONES:
        folder = out / name
        if name not in backbones and (folder / "run.json").is_file():
            shutil.rmtree(folder)


def write_heatmap(matrix: pd.DataFrame, path: Path) -> str:
    """Draws the backbone x head heat map of cv_mean and held-out accuracy; returns the file name."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .figures import _save

    backbones = list(dict.fromkeys(matrix["backbone"]))
    heads = list(dict.fromkeys(matrix["head"]))
    cells = matrix.set_index(["backbone", "head"])
    fig, axes = plt.subplots(1, 2, figsize=(2.2 + 2.4 * len(heads), 1.4 + 0.55 * len(backbones)),
                             squeeze=False)
    for ax, (column, title) in zip(axes[0], (("cv_mean", "cross-validated balanced accuracy (mean ± std)"),
                                             ("accuracy", "held-out accuracy"))):
        values = [[float(cells.loc[(b, h), column]) for h in heads] for b in backbones]
        low, high = min(map(min, values)), max(map(max, values))
        image = ax.imshow(values, cmap="viridis", vmin=low, vmax=max(high, low + 1e-9), aspect="auto")
        for i, b in enumerate(backbones):
            for j, h in enumerate(heads):
                text = f"{values[i][j]:.3f}"
                if column == "cv_mean":
                    text += f"\n±{float(cells.loc[(b, h), 'cv_std']):.3f}"
                shade = image.norm(values[i][j])
                ax.text(j, i, text, ha="center", va="center", fontsize=8,
                        color="black" if shade > 0.6 else "white")
        ax.set_xticks(range(len(heads)), heads)
        ax.set_yticks(range(len(backbones)), backbones)
        ax.set_title(title, fontsize=10)
    fig.suptitle("Every head on every backbone, same images, split and folds")
    fig.tight_layout()
    return _save(fig, path)


def compare_backbones(features_dir, settings_list: list[Settings], out_dir, in_dir: str = "in",
                      fallback_none: bool = False, dataset: str | None = None, log=print,
                      **compare_args) -> pd.DataFrame:
    """Compares every head on every backbone; writes the layout of this module's docstring.

    Args:
        features_dir: the cache root (FEATURES).
        settings_list: one extraction setting per backbone (see :func:`settings_for`).
        out_dir: where the outputs go (OUT).
        in_dir: the input folder, for hints in messages.
        fallback_none: (demo) use random-weights caches when the ImageNet ones are missing.
        dataset: ``DATASET``, the input's folder name under FEATURES when not derived from IN.
        log: where messages go.
        **compare_args: passed to :func:`classify.compare.compare` for every backbone (heads,
            seed, test_size, folds, jobs, groups, dup_threshold).

    Returns:
        The matrix (also written to ``out_dir/backbones.csv``).

    Raises:
        DataError: a cache is missing, the caches hold different images, or a compare fails.
        ValueError: two settings name the same backbone, or an unknown head.
    """
    names = [s.backbone for s in settings_list]
    if len(set(names)) != len(names):
        raise ValueError(f"BACKBONES must name each backbone once; received {','.join(names)}")
    check_same_images(features_dir, settings_list, in_dir, fallback_none, dataset)
    out = Path(out_dir)
    tables = {}
    for settings in settings_list:
        log(f"\n== {settings.backbone} ({settings.key}) -> {out / settings.backbone}/")
        tables[settings.backbone] = compare(features_dir, settings, out / settings.backbone,
                                            in_dir=in_dir, fallback_none=fallback_none, log=log,
                                            dataset=dataset, **compare_args)
    split_equal = same_split(out, names)
    if not split_equal:
        log("warning: the backbones' split.csv differ (GROUPS=dups draws each backbone's duplicate "
            "clusters from its own embeddings), so the matrix compares slightly different splits")
    matrix = matrix_table(tables, settings_list)
    best = best_backbone(matrix)
    test = backbone_test(out, matrix, split_equal)
    matrix["backbone_p_vs_best"] = matrix["backbone"].map(test["p_vs_best"]).astype(float)
    matrix["backbone_verdict"] = matrix["backbone"].map(test["verdicts"]).fillna("")
    tail = ["dim", "features_key"]
    matrix = matrix[[c for c in matrix.columns if c not in tail] + tail]
    log(f"backbones: {test['verdict']}")
    remove_stale_backbones(out, names)
    with new_run(out) as run_dir:  # the top level is swapped in whole; OUT/<backbone>/ carry over
        copy_run(out / best, run_dir)
        write_csv(run_dir / "backbones.csv", list(matrix.columns), matrix.itertuples(index=False))
        write_heatmap(matrix, run_dir / "backbones.png")
        run = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
        run.update({"backbones": names, "best_backbone": best, "same_split": split_equal,
                    "backbone_test": test, "backbone_outputs": {n: f"{n}/" for n in names}})
        write_json(run_dir / "run.json", run)
    return matrix
